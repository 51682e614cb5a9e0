"""`SanitizerConfig` (what to mask) and `SanitizedGroup` (what was masked)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...siblings import SiblingGroup


@dataclass
class SanitizerConfig:
    """What the `Sanitizer` masks. Field names are matched case-insensitively after normalizing `-`/spaces to `_`.

    Args:
        credential_keys: field names whose values are credentials.
        credential_key_suffixes: a field ending with one of these is a credential field too (`new_password`, ...).
        payment_keys: field names whose values are payment values.
        account_keys: field names whose values are account identifiers.
        email_keys: field names whose values are e-mail addresses (masked whatever their format).
        phone_keys: field names whose values are phone numbers (masked whatever their format).
        oracle_keys: field names of evaluator/oracle reports, gold actions and expected answers; the whole value
            (even a nested object) is replaced by one placeholder.
        oracle_patterns: regexes for free-text evaluator reports; every match is masked.
        payment_patterns: regexes for payment-method identifiers in free text.
        account_patterns: regexes for account identifiers in free text.
        extra_patterns: additional `category -> regexes`; a new category name adds a new placeholder type.
        mask_credentials: mask API keys, bearer tokens, JWTs and private keys found in free text.
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
        "passcode",
        "secret",
        "client_secret",
        "api_key",
        "apikey",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "auth_token",
        "session_token",
        "authorization",
        "private_key",
        "otp",
        "pin",
        "cvv",
        "cvc",
        "security_code",
        "ssn",
    )
    credential_key_suffixes: tuple[str, ...] = (
        "_password",
        "_passwd",
        "_secret",
        "_api_key",
        "_token",
        "_private_key",
    )
    payment_keys: tuple[str, ...] = (
        "payment_id",
        "payment_method_id",
        "card_number",
        "credit_card_number",
        "card_no",
        "last_four",
        "card_last_four",
        "expiration_date",
        "card_expiry",
    )
    account_keys: tuple[str, ...] = (
        "account_number",
        "account_no",
        "account_id",
        "bank_account",
        "iban",
        "routing_number",
        "sort_code",
        "swift",
        "bic",
    )
    email_keys: tuple[str, ...] = ("email", "email_address", "user_email")
    phone_keys: tuple[str, ...] = ("phone", "phone_number", "mobile", "telephone")
    oracle_keys: tuple[str, ...] = (
        "evaluation",
        "evaluation_report",
        "evaluator",
        "evaluator_report",
        "eval_report",
        "reward_info",
        "gold_actions",
        "gold_action",
        "gold_answer",
        "expected_actions",
        "expected_answer",
        "expected_output",
        "ground_truth",
        "oracle",
        "oracle_report",
        "answer_key",
        "reference_answer",
    )
    oracle_patterns: tuple[str, ...] = (
        r"(?is)<(evaluation|evaluator_report|oracle|gold_actions?|expected_answer|ground_truth)\b[^>]*>.*?</\1\s*>",
        r"(?im)^[ \t]*(?:evaluator|evaluation|oracle|grader)(?:[ \t]+(?:report|result|feedback|verdict))?[ \t]*:.*$",
        r"(?im)^[ \t]*(?:gold|expected|correct)[ \t_]+(?:actions?|answers?|outputs?|solutions?)[ \t]*:.*$",
        r"(?im)^[ \t]*ground[ \t_-]*truth[ \t]*:.*$",
    )
    payment_patterns: tuple[str, ...] = (r"\b(?:credit_card|debit_card|gift_card|certificate|bank_account)_\d{3,}\b",)
    account_patterns: tuple[str, ...] = ()
    extra_patterns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    mask_credentials: bool = True
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
