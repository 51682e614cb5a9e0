"""`SanitizerConfig` (what to mask) and `SanitizedGroup` (what was masked)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ...siblings import SiblingGroup


@dataclass
class SanitizerConfig:
    """What the `Sanitizer` masks.

    Field names are matched after normalizing them to snake case (`accessToken`, `Access-Token` and `access token`
    are all `access_token`). A name whose trailing words form a listed name matches too (`new_password`,
    `spotify_access_token`, `Your routing number`), except single-word oracle names (`answer`, `label`), which
    match only whole (`final_answer` is not an oracle field).

    Args:
        credential_keys: field names whose values are credentials.
        credential_key_suffixes: a field ending with one of these is a credential field too (`new_password`, ...).
        payment_keys: field names whose values are payment values.
        account_keys: field names whose values are account identifiers.
        email_keys: field names whose values are e-mail addresses (masked whatever their format).
        phone_keys: field names whose values are phone numbers (masked whatever their format).
        oracle_keys: field names of evaluator/oracle reports, gold actions and expected answers; the whole value
            (even a nested object) is replaced by one placeholder.
        oracle_key_prefixes: a field starting with one of these is an oracle field too (`gold_path`, `judge_score`).
        oracle_tags: tag names whose `<tag>...</tag>` blocks are oracle reports (case-insensitive; attributes
            allowed; an unclosed tag masks the rest of the text).
        ignored_keys: field names never masked by name, although they end like a sensitive one (`page_token`).
        oracle_patterns: extra regexes for free-text evaluator reports; every match is masked.
        payment_patterns: regexes for payment-method identifiers in free text.
        account_patterns: regexes for account identifiers in free text.
        extra_patterns: additional `category -> regexes`; a new category name adds a new placeholder type.
        mask_credentials: mask API keys, bearer tokens, JWTs and private keys found in free text (detect-secrets'
            regex plugins and a few more key formats).
        entropy_limit: also mask runs of base64 characters (20+ long, mixing lower case, upper case and digits)
            whose Shannon entropy reaches this many bits per character (detect-secrets' default, 4.5); `None`
            turns it off. Hex strings (ids, hashes) are never masked for their entropy alone.
        mask_cards: mask Luhn-valid card numbers in free text.
        mask_ibans: mask mod-97-valid IBANs in free text.
        mask_emails: mask e-mail addresses in free text.
        mask_phones: mask phone numbers in free text.
        answer_literals_key: the `group.metadata` key holding the answer-bearing literals.
        placeholder: format of a mask; `{category}` is replaced by the upper-case category.
        parse_python_literals: also parse strings that hold a printed Python dict/list (AppWorld prints them).
        max_parse_chars: strings longer than this are masked as text without being parsed.
        max_literal_chars: masked values longer than this are not reported as literals (they are whole reports).
        min_literal_chars: masked values shorter than this are not reported as literals (answer literals always
            are), so short values such as a PIN do not mask every matching token of a rollout.
    """

    credential_keys: tuple[str, ...] = (
        "password",
        "passwd",
        "pwd",
        "pass",
        "passphrase",
        "passcode",
        "secret",
        "client_secret",
        "secret_key",
        "secret_access_key",
        "access_key",
        "api_key",
        "apikey",
        "api_token",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "auth_token",
        "session_token",
        "bearer_token",
        "csrf_token",
        "authorization",
        "proxy_authorization",
        "credentials",
        "cookie",
        "set_cookie",
        "session_id",
        "private_key",
        "otp",
        "pin",
        "cvv",
        "cvv2",
        "cvc",
        "security_code",
        "verification_code",
        "mfa_code",
        "ssn",
        "social_security_number",
        "contrasena",
        "contraseña",
    )
    credential_key_suffixes: tuple[str, ...] = (
        "_password",
        "_passwd",
        "_passphrase",
        "_secret",
        "_api_key",
        "_apikey",
        "_token",
        "_private_key",
        "_secret_key",
        "_access_key",
    )
    payment_keys: tuple[str, ...] = (
        "payment_id",
        "payment_method",
        "payment_method_id",
        "card_number",
        "credit_card_number",
        "credit_card",
        "debit_card",
        "card_no",
        "card_num",
        "cc_number",
        "pan",
        "last_four",
        "card_last_four",
        "expiration_date",
        "expiry_date",
        "card_expiry",
    )
    account_keys: tuple[str, ...] = (
        "account_number",
        "account_no",
        "account_num",
        "acct_no",
        "acct_number",
        "account_id",
        "bank_account",
        "bank_account_number",
        "iban",
        "routing_number",
        "routing_no",
        "aba",
        "aba_number",
        "sort_code",
        "bsb",
        "swift",
        "swift_code",
        "bic",
    )
    email_keys: tuple[str, ...] = ("email", "e_mail", "email_address", "user_email", "mail")
    phone_keys: tuple[str, ...] = (
        "phone",
        "phone_number",
        "phone_no",
        "mobile",
        "mobile_number",
        "cell",
        "telephone",
        "tel",
        "fax",
    )
    oracle_keys: tuple[str, ...] = (
        "answer",
        "answers",
        "label",
        "expected",
        "gold",
        "solution",
        "solutions",
        "rubric",
        "rubrics",
        "evaluation",
        "evaluation_report",
        "evaluation_result",
        "evaluator",
        "evaluator_report",
        "eval_report",
        "eval_result",
        "reward_info",
        "judge_feedback",
        "grader_feedback",
        "gold_actions",
        "gold_action",
        "gold_answer",
        "correct_answer",
        "correct_answers",
        "correct_output",
        "correct_solution",
        "expected_actions",
        "expected_answer",
        "expected_output",
        "expected_result",
        "expected_solution",
        "ground_truth",
        "groundtruth",
        "possible_answer",
        "oracle",
        "oracle_report",
        "answer_key",
        "reference_answer",
        "reference_solution",
    )
    oracle_key_prefixes: tuple[str, ...] = ("gold_", "oracle_", "judge_", "grader_", "evaluator_", "ground_truth_")
    oracle_tags: tuple[str, ...] = (
        "gold",
        "answer",
        "solution",
        "label",
        "rubric",
        "evaluation",
        "evaluator_report",
        "oracle",
        "gold_actions",
        "gold_action",
        "gold_answer",
        "expected_answer",
        "expected_output",
        "correct_answer",
        "reference_answer",
        "ground_truth",
        "judge_feedback",
    )
    ignored_keys: tuple[str, ...] = (
        "boarding_pass",
        "page_token",
        "next_page_token",
        "pagination_token",
        "continuation_token",
        "next_token",
        "max_tokens",
        "token_type",
        "token_count",
        "e_mail_verified",
    )
    oracle_patterns: tuple[str, ...] = ()
    payment_patterns: tuple[str, ...] = (r"\b(?:credit_card|debit_card|gift_card|certificate|bank_account)_\d{3,}\b",)
    account_patterns: tuple[str, ...] = ()
    extra_patterns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    mask_credentials: bool = True
    entropy_limit: float | None = 4.5
    mask_cards: bool = True
    mask_ibans: bool = True
    mask_emails: bool = True
    mask_phones: bool = True
    answer_literals_key: str = "answer_literals"
    placeholder: str = "<MASKED:{category}>"
    parse_python_literals: bool = True
    max_parse_chars: int = 1_000_000
    max_literal_chars: int = 200
    min_literal_chars: int = 3

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if (
                f.name.endswith(("_keys", "_suffixes", "_prefixes", "_tags", "_patterns"))
                and f.name != "extra_patterns"
            ):
                # A bare string would be read as one name per character.
                if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                    raise TypeError(f"SanitizerConfig.{f.name} must be a tuple of strings, got {value!r}")
            elif f.name.startswith(("max_", "min_")) and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ValueError(f"SanitizerConfig.{f.name} must be a non-negative int, got {value!r}")
        limit = self.entropy_limit
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 0 < limit <= 8 or limit != limit
        ):
            raise ValueError(f"SanitizerConfig.entropy_limit must be None or a number in (0, 8], got {limit!r}")
        for category, patterns in self.extra_patterns.items():
            if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
                raise TypeError(f"SanitizerConfig.extra_patterns[{category!r}] must be a tuple of regexes")
        if "{category}" not in self.placeholder:
            raise ValueError("SanitizerConfig.placeholder must contain '{category}'")


@dataclass
class SanitizedGroup:
    """The result of `Sanitizer.sanitize(group)`.

    Args:
        group: a sanitized copy of the group (its metadata no longer holds the answer literals).
        counts: number of masked values per category (every category present, zeros included).
        masked_values: the original values that were masked, deduplicated, for credit masking. Sensitive: never log
            or cache them.
    """

    group: SiblingGroup
    counts: dict[str, int]
    masked_values: list[str]

    @property
    def total(self) -> int:
        return sum(self.counts.values())
