"""The sanitizer that runs on every sibling trace before a credit-reference provider sees it (paper App. B).

It masks, with typed placeholders such as `<MASKED:EMAIL>`:

- credentials: API keys (`sk-...`, `AKIA...`, `ghp_...`, `hf_...`, JWTs, private-key blocks), bearer tokens, and values
  of password/secret/token fields (JSON fields, `key=value` and `key: value` text, Python keyword arguments);
- payment and account values: card numbers (Luhn-checked), IBANs (mod-97-checked), payment-method ids such as
  `credit_card_7815826`, and values under configurable field names (`payment_id`, `card_number`, `account_number`...);
- e-mail addresses and phone numbers;
- evaluator/oracle reports and gold actions: values under configurable keys (`evaluation`, `gold_actions`,
  `expected_answer`, `oracle`, ...) and free-text reports matched by configurable regexes;
- answer-bearing literals a benchmark adapter declares in `group.metadata["answer_literals"]`.

Tool results are often JSON (sometimes JSON inside JSON, or a printed Python dict): such strings are parsed, walked,
masked and re-serialized; strings without any hit keep their exact formatting. Simplifications: detection is
pattern-based (no NER), so a person's name or a free-text address is not masked, and re-serialized JSON loses its
original whitespace. Masking is idempotent: placeholders are never matched again.

The original values that were masked are returned (`SanitizedGroup.masked_values`) so providers can list them as
literals that receive no credit; they stay in memory and must never be logged or cached.
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..siblings import CreditReference, Sibling, SiblingGroup
from .base import CreditReferenceProvider, as_provider


CATEGORIES = ("credential", "payment", "account", "email", "phone", "oracle", "answer")
PLACEHOLDER_RE = re.compile(r"<MASKED:[A-Z_]+>")

# Message fields that carry structure, not content.
_PROTECTED_MESSAGE_KEYS = frozenset({"role", "name", "tool_call_id", "id", "type"})
_NON_VALUES = frozenset({"", "null", "none", "true", "false", "undefined", "nan"})
_AUTH_SCHEMES = frozenset({"bearer", "basic", "token"})


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


_API_KEY_PATTERNS = (
    r"\bsk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_\-]{16,}",
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    r"\bgh[pousr]_[A-Za-z0-9]{30,}\b",
    r"\bgithub_pat_[A-Za-z0-9_]{30,}\b",
    r"\bhf_[A-Za-z0-9]{30,}\b",
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b",
    r"\bAIza[0-9A-Za-z_\-]{35}\b",
    r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
)
# Token lengths keep prose such as "basic economy." from looking like HTTP auth.
_API_KEY_RE = re.compile("|".join(f"(?:{p})" for p in _API_KEY_PATTERNS))
_DIGIT_RE = re.compile(r"\d")
_NON_DIGIT_RE = re.compile(r"\D")
_BEARER_RE = re.compile(
    r"\b((?i:bearer)|Basic)([ \t]+)((?<=Basic[ \t])[A-Za-z0-9+/]{12,}={0,2}|[A-Za-z0-9._~+/\-]{16,}=*)"
)
_URL_CREDENTIALS_RE = re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^\s:/@]+:)([^\s@/]+)(@)")
_EMAIL_RE = re.compile(r"(?<![\w.+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b")
_PHONE_RES = (
    re.compile(r"(?<![\w+])\+\d{1,3}[ .\-]?(?:\(\d{1,4}\)|\d{1,4})(?:[ .\-]?\d{2,4}){2,4}(?![\w])"),
    re.compile(r"(?<![\w(])\(\d{3}\)[ ]?\d{3}[ .\-]\d{4}(?![\w])"),
    re.compile(r"(?<![\w.\-])\d{3}[.\-]\d{3}[.\-]\d{4}(?![\w\-])"),
)
_CARD_RE = re.compile(r"(?<![\w\-])(?:\d[ \-]?){12,18}\d(?![\w\-])")
_IBAN_RE = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
# `key: value`, `key=value`, `"key": "value"`, `key="value"` (Python kwargs, query strings, YAML-ish lines).
_KEYED_RE = re.compile(r"(?P<q>[\"']?)\b(?P<key>[A-Za-z_][A-Za-z0-9_\-]{0,63})(?P=q)[ \t]*(?::|==?)[ \t]*")


def luhn_valid(digits: str) -> bool:
    """Whether a digit string passes the Luhn checksum (card numbers)."""
    if not digits.isdigit() or len(set(digits)) == 1:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """Whether a string is an IBAN with a valid mod-97 checksum."""
    s = iban.replace(" ", "").upper()
    if not (15 <= len(s) <= 34) or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    rearranged = s[4:] + s[:4]
    try:
        number = int("".join(str(int(ch, 36)) for ch in rearranged))
    except ValueError:
        return False
    return number % 97 == 1


_NON_KEY_CHARS_RE = re.compile(r"[^a-z0-9]+")


def _norm_key(key: str) -> str:
    return _NON_KEY_CHARS_RE.sub("_", key.lower()).strip("_")


def _literal_regex(literals: Iterable[Any]) -> re.Pattern[str] | None:
    parts = []
    seen = set()
    for lit in literals:
        if lit is None or isinstance(lit, bool):
            continue
        text = str(lit).strip()
        if not text or text in seen or PLACEHOLDER_RE.fullmatch(text):
            continue
        seen.add(text)
        parts.append(text)
    if not parts:
        return None
    alternatives = []
    for text in sorted(parts, key=len, reverse=True):
        pattern = re.escape(text)
        # Word boundaries only where the literal starts/ends with a word character, so "42" does not hit "142" or
        # "4.42", while a literal like "$3.50" still matches next to punctuation.
        if text[0].isalnum() or text[0] == "_":
            pattern = r"(?<![\w])(?<!\d\.)" + pattern
        if text[-1].isalnum() or text[-1] == "_":
            pattern = pattern + r"(?![\w])(?!\.\d)"
        alternatives.append(pattern)
    return re.compile("|".join(alternatives), re.IGNORECASE)


class _Context:
    """Per-call bookkeeping: counts per category and the original masked values."""

    def __init__(self, literal_re: re.Pattern[str] | None):
        self.literal_re = literal_re
        self.counts: Counter[str] = Counter()
        self.values: list[tuple[str, str]] = []
        # Siblings of one task repeat most strings (tool results, ids, answers): each distinct string is masked
        # once per call, and a repeat replays its result and its hits, so the counts stay per occurrence.
        self.memo: dict[str, tuple[str, list[tuple[str, str | None]]]] = {}
        self.hits: list[tuple[str, str | None]] = []


class Sanitizer:
    """Masks secrets, payment/account values, contact data, oracle reports and answer literals in sibling evidence.

    Args:
        config: what to mask; defaults to `SanitizerConfig()`.

    Example:
        >>> clean, counts = Sanitizer().sanitize_group(group)
        >>> counts["email"]
        2
    """

    def __init__(self, config: SanitizerConfig | None = None):
        self.config = config or SanitizerConfig()
        cfg = self.config
        self._key_category: dict[str, str] = {}
        # Later assignments win: oracle > credential > payment > account > email > phone.
        for category, keys in (
            ("phone", cfg.phone_keys),
            ("email", cfg.email_keys),
            ("account", cfg.account_keys),
            ("payment", cfg.payment_keys),
            ("credential", cfg.credential_keys),
            ("oracle", cfg.oracle_keys),
        ):
            for key in keys:
                self._key_category[_norm_key(key)] = category
        self._credential_suffixes = tuple(_norm_key(s.lstrip("_")) for s in cfg.credential_key_suffixes)
        self._key_memo: dict[str, str | None] = {}  # field names repeat across messages and siblings
        self._oracle_res = [re.compile(p) for p in cfg.oracle_patterns]
        self._pattern_rules: list[tuple[str, re.Pattern[str]]] = []
        if cfg.mask_credentials:
            self._pattern_rules.append(("credential", _API_KEY_RE))
        self._pattern_rules += [("payment", re.compile(p)) for p in cfg.payment_patterns]
        self._pattern_rules += [("account", re.compile(p)) for p in cfg.account_patterns]
        for category, patterns in cfg.extra_patterns.items():
            self._pattern_rules += [(category, re.compile(p)) for p in patterns]

    # ------------------------------------------------------------------ public API

    def sanitize_group(self, group: SiblingGroup) -> tuple[SiblingGroup, dict[str, int]]:
        """Returns a sanitized copy of `group` and the number of masked values per category."""
        result = self.sanitize(group)
        return result.group, result.counts

    def sanitize(self, group: SiblingGroup) -> SanitizedGroup:
        """Like `sanitize_group`, also returning the original masked values (for credit masking)."""
        cfg = self.config
        metadata = dict(group.metadata or {})
        metadata.pop(cfg.answer_literals_key, None)  # never forwarded: the sanitized group must not carry the answers
        ctx = _Context(_literal_regex(self.answer_literals(group)))
        prompt = (
            self._mask_string(group.prompt, ctx)
            if isinstance(group.prompt, str)
            else self._mask_messages(group.prompt, ctx)
        )
        siblings = [
            Sibling(messages=self._mask_messages(s.messages, ctx), reward=s.reward, success=s.success)
            for s in group.siblings
        ]
        clean_metadata = self._mask_obj(metadata, ctx) if metadata else {}
        sanitized = SiblingGroup(prompt=prompt, siblings=siblings, metadata=clean_metadata)
        return SanitizedGroup(group=sanitized, counts=self._counts(ctx), masked_values=self._masked_values(ctx))

    def sanitize_text(self, text: str, literals: Iterable[Any] = ()) -> tuple[str, dict[str, int]]:
        """Masks one string (JSON-aware); `literals` are treated as answer literals."""
        ctx = _Context(_literal_regex(literals))
        return self._mask_string(text, ctx), self._counts(ctx)

    def sanitize_messages(self, messages: list[dict[str, Any]], literals: Iterable[Any] = ()) -> list[dict[str, Any]]:
        """Returns a masked copy of a list of chat messages."""
        return self._mask_messages(messages, _Context(_literal_regex(literals)))

    def answer_literals(self, group: SiblingGroup) -> list[str]:
        """The answer-bearing literals the benchmark adapter declared for `group` (a string or a list of values)."""
        raw = (group.metadata or {}).get(self.config.answer_literals_key)
        if raw is None:
            return []
        if isinstance(raw, (str, int, float)) and not isinstance(raw, bool):
            raw = [raw]
        return [str(v).strip() for v in raw if v is not None and not isinstance(v, bool) and str(v).strip()]

    def placeholder(self, category: str) -> str:
        return self.config.placeholder.format(category=category.upper())

    # ------------------------------------------------------------------ internals

    def _counts(self, ctx: _Context) -> dict[str, int]:
        counts = {c: 0 for c in CATEGORIES}
        counts.update(ctx.counts)
        return counts

    def _masked_values(self, ctx: _Context) -> list[str]:
        cfg = self.config
        out: list[str] = []
        seen = set()
        for category, value in ctx.values:
            value = value.strip()
            if not value or value in seen or len(value) > cfg.max_literal_chars:
                continue
            if category != "answer" and len(value) < cfg.min_literal_chars:
                continue
            seen.add(value)
            out.append(value)
        return out

    def _hit(self, ctx: _Context, category: str, value: str | None) -> str:
        ctx.counts[category] += 1
        ctx.hits.append((category, value))
        if value is not None:
            ctx.values.append((category, value))
        return self.placeholder(category)

    def category_of_key(self, key: str) -> str | None:
        """The category of a field name, or `None` when its values are not masked by name."""
        if key in self._key_memo:
            return self._key_memo[key]
        norm = _norm_key(key)
        category = self._key_category.get(norm)
        if category is None and any(norm.endswith("_" + s) for s in self._credential_suffixes):
            category = "credential"
        if len(self._key_memo) < 65_536:
            self._key_memo[key] = category
        return category

    def _mask_messages(self, messages: list[dict[str, Any]], ctx: _Context) -> list[dict[str, Any]]:
        out = []
        for message in messages or []:
            if not isinstance(message, dict):
                out.append(self._mask_obj(message, ctx))
                continue
            clean = {}
            for key, value in message.items():
                if key in _PROTECTED_MESSAGE_KEYS:
                    clean[key] = value
                elif key == "tool_calls" and isinstance(value, list):
                    clean[key] = [self._mask_tool_call(call, ctx) for call in value]
                else:
                    clean[key] = self._mask_obj(value, ctx)
            out.append(clean)
        return out

    def _mask_tool_call(self, call: Any, ctx: _Context) -> Any:
        if not isinstance(call, dict):
            return self._mask_obj(call, ctx)
        clean = dict(call)
        function = call.get("function")
        if isinstance(function, dict):
            function = dict(function)
            if "arguments" in function:
                function["arguments"] = self._mask_obj(function["arguments"], ctx)
            clean["function"] = function
        return clean

    def _mask_value(self, value: Any, category: str, ctx: _Context) -> Any:
        """Masks the value of a sensitive field."""
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, (dict, list, tuple)):
            if category == "oracle" or category == "credential":
                return self._hit(ctx, category, None)
            if isinstance(value, dict):
                return {k: self._mask_value(v, category, ctx) for k, v in value.items()}
            return [self._mask_value(v, category, ctx) for v in value]
        text = str(value)
        if text.strip().lower() in _NON_VALUES or PLACEHOLDER_RE.fullmatch(text.strip()):
            return value
        if category == "oracle" and len(text) > self.config.max_literal_chars:
            return self._hit(ctx, category, None)
        return self._hit(ctx, category, text)

    def _mask_obj(self, obj: Any, ctx: _Context) -> Any:
        if isinstance(obj, dict):
            out = {}
            for key, value in obj.items():
                category = self.category_of_key(key) if isinstance(key, str) else None
                new_key = self._mask_text(key, ctx) if isinstance(key, str) else key
                if new_key != key and new_key in out:  # two ids masked to the same placeholder: keep both entries
                    n = 2
                    while f"{new_key} ({n})" in out:
                        n += 1
                    new_key = f"{new_key} ({n})"
                out[new_key] = self._mask_value(value, category, ctx) if category else self._mask_obj(value, ctx)
            return out
        if isinstance(obj, list):
            return [self._mask_obj(v, ctx) for v in obj]
        if isinstance(obj, tuple):
            return tuple(self._mask_obj(v, ctx) for v in obj)
        if isinstance(obj, str):
            return self._mask_string(obj, ctx)
        if isinstance(obj, (int, float)) and not isinstance(obj, bool):
            text = str(obj)
            masked = self._mask_text(text, ctx)
            return obj if masked == text else masked
        return obj

    def _mask_string(self, text: str, ctx: _Context) -> str:
        """Masks a string; JSON (or printed Python) containers are parsed, walked and re-serialized."""
        stripped = text.strip()
        if stripped[:1] in ("{", "[", '"') and len(stripped) <= self.config.max_parse_chars:
            before = sum(ctx.counts.values())
            parsed, dump = _parse_container(stripped, self.config.parse_python_literals)
            if dump is not None:
                masked = self._mask_obj(parsed, ctx)
                return dump(masked) if sum(ctx.counts.values()) != before else text
        return self._mask_text(text, ctx)

    def _mask_text(self, text: str, ctx: _Context) -> str:
        """Masks free text with the regex rules (oracle reports first, contact data last)."""
        if not text:
            return text
        memo = ctx.memo.get(text)
        if memo is None:
            hits_before = len(ctx.hits)
            masked = self._mask_text_rules(text, ctx)
            memo = ctx.memo[text] = (masked, ctx.hits[hits_before:])
        else:
            for category, value in memo[1]:
                self._hit(ctx, category, value)
        return memo[0]

    def _mask_text_rules(self, text: str, ctx: _Context) -> str:
        cfg = self.config
        for regex in self._oracle_res:
            text = regex.sub(lambda m: self._hit(ctx, "oracle", None), text)
        if ctx.literal_re is not None:
            text = ctx.literal_re.sub(lambda m: self._hit(ctx, "answer", m.group(0)), text)
        if cfg.mask_credentials:
            text = _BEARER_RE.sub(lambda m: m.group(1) + m.group(2) + self._hit(ctx, "credential", m.group(3)), text)
            if "://" in text:
                text = _URL_CREDENTIALS_RE.sub(
                    lambda m: m.group(1) + self._hit(ctx, "credential", m.group(2)) + m.group(3), text
                )
        text = self._mask_keyed_text(text, ctx)
        for category, regex in self._pattern_rules:
            text = regex.sub(lambda m, c=category: self._hit(ctx, c, m.group(0)), text)
        if cfg.mask_emails and "@" in text:
            text = _EMAIL_RE.sub(lambda m: self._hit(ctx, "email", m.group(0)), text)
        if not _DIGIT_RE.search(text):  # the remaining rules all need digits
            return text
        if cfg.mask_cards:
            text = _CARD_RE.sub(lambda m: self._card(m.group(0), ctx), text)
        if cfg.mask_ibans:
            text = _IBAN_RE.sub(
                lambda m: self._hit(ctx, "account", m.group(0)) if iban_valid(m.group(0)) else m.group(0), text
            )
        if cfg.mask_phones:
            for regex in _PHONE_RES:
                text = regex.sub(lambda m: self._hit(ctx, "phone", m.group(0)), text)
        return text

    def _card(self, match: str, ctx: _Context) -> str:
        digits = _NON_DIGIT_RE.sub("", match)
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            return self._hit(ctx, "payment", match)
        return match

    def _mask_keyed_text(self, text: str, ctx: _Context) -> str:
        """Masks `key: value` / `key=value` pairs whose key names a sensitive field, in unparsed text."""
        if ":" not in text and "=" not in text:
            return text
        out = []
        pos = 0
        for match in _KEYED_RE.finditer(text):
            if match.start() < pos:
                continue
            category = self.category_of_key(match.group("key"))
            if category is None:
                continue
            start = match.end()
            end = _value_end(text, start)
            raw = text[start:end]
            if end <= start:
                continue
            inner_start, inner_end = start, end
            if raw[0] in "\"'" and len(raw) >= 2 and raw[-1] == raw[0]:
                inner_start, inner_end = start + 1, end - 1
            value = text[inner_start:inner_end]
            if value.strip().lower() in _NON_VALUES or PLACEHOLDER_RE.fullmatch(value.strip()):
                continue
            if raw[0] not in "\"'[{":
                if value.lower() in _AUTH_SCHEMES and text[end : end + 1].isspace():
                    continue  # `Authorization: Bearer <token>`: the token itself is masked by the bearer rule
                if text[end : end + 1] == "(":
                    continue  # `token = apis.login(...)`: code assigning a call's result, not a literal
            whole = raw[0] in "[{"
            if whole and category not in ("oracle", "credential"):
                continue  # a structure under e.g. `payment_id`: the regex rules below still see its contents
            recorded = None if whole or len(value) > self.config.max_literal_chars else value
            out.append(text[pos:inner_start])
            out.append(self._hit(ctx, category, recorded))
            pos = inner_end
        if not out:
            return text
        out.append(text[pos:])
        return "".join(out)


def _value_end(text: str, start: int) -> int:
    """End index of the value starting at `start`: a quoted string, a bracketed structure, or a bare token."""
    if start >= len(text):
        return start
    ch = text[start]
    if ch in "\"'":
        i = start + 1
        while i < len(text):
            if text[i] == "\\":
                i += 2
                continue
            if text[i] == ch:
                return i + 1
            i += 1
        return len(text)
    if ch in "[{":
        depth = 0
        quote = None
        i = start
        while i < len(text):
            c = text[i]
            if quote:
                if c == "\\":
                    i += 2
                    continue
                if c == quote:
                    quote = None
            elif c in "\"'":
                quote = c
            elif c in "[{":
                depth += 1
            elif c in "]}":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return len(text)  # unbalanced (truncated) structure: mask to the end
    match = re.match(r"[^\s,;&(){}\[\]<>\"']+", text[start:])
    return start + (match.end() if match else 0)


def _parse_container(text: str, python_literals: bool) -> tuple[Any, Any]:
    """Parses a JSON (or printed Python) container; returns `(obj, serializer)` or `(None, None)`."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        obj = None
    else:
        if isinstance(obj, (dict, list)):
            return obj, lambda o: json.dumps(o, ensure_ascii=False)
        if isinstance(obj, str):  # JSON-encoded string (double-encoded payloads)
            return obj, lambda o: json.dumps(o, ensure_ascii=False)
        return None, None
    if python_literals and text[:1] in "{[":
        try:
            obj = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None, None
        if isinstance(obj, (dict, list)):
            return obj, repr
    return None, None


# ---------------------------------------------------------------------------------------------------- providers


def _group_haystack(group: SiblingGroup) -> str:
    """All sibling transcripts as one string (contents, tool-call arguments, tool results), for literal lookups."""
    parts = []
    for sibling in group.siblings:
        for message in sibling.messages:
            parts.append(str(message.get("content") or ""))
            parts.append(json.dumps(message.get("tool_calls") or [], ensure_ascii=False, default=str))
    return "\n".join(parts)


def finalize_reference(
    reference: CreditReference,
    group: SiblingGroup,
    sanitized: SanitizedGroup,
    sanitizer: Sanitizer,
    max_chars: int | None = None,
) -> tuple[CreditReference, int]:
    """Makes a provider's reference safe to use as teacher context and completes its literals.

    1. Masks in the reference text any answer literal or original sensitive value it repeats (a guess, or evidence
       the sanitizer missed), plus anything the sanitizer's patterns catch.
    2. Caps the text at `max_chars` (at a line boundary when possible).
    3. Sets `masked_literals` to the answer literals, the original masked values, and the provider's own literals
       that occur verbatim in the raw rollouts (placeholders and descriptions that match nothing are dropped, since
       the trainer matches literals against rollout text).

    Args:
        reference: the provider's reference, built from `sanitized.group`.
        group: the raw group (for answer literals and the literal filter).
        sanitized: the sanitizer's result for `group`.
        sanitizer: the sanitizer used.
        max_chars: cap on the reference text.

    Returns:
        The finalized reference and the number of masks applied to its text.
    """
    answer_literals = sanitizer.answer_literals(group)
    text, counts = sanitizer.sanitize_text(reference.text, literals=[*answer_literals, *sanitized.masked_values])
    if max_chars is not None and len(text) > max_chars:
        cut = text.rfind("\n", 0, max_chars)
        text = text[: cut if cut > max_chars // 2 else max_chars].rstrip()
    haystack = _group_haystack(group) if reference.masked_literals else ""
    literals: list[str] = []
    for literal in [*answer_literals, *sanitized.masked_values]:
        if literal not in literals:
            literals.append(literal)
    for literal in reference.masked_literals:
        literal = str(literal).strip()
        if literal and literal not in literals and not PLACEHOLDER_RE.search(literal) and literal in haystack:
            literals.append(literal)
    metadata = dict(reference.metadata)
    metadata["sanitizer_hits"] = sanitized.total
    return CreditReference(text=text, masked_literals=literals, metadata=metadata), sum(counts.values())


class SanitizingProvider(CreditReferenceProvider):
    """Runs the `Sanitizer` in front of a provider that does not sanitize by itself (e.g. a user callable).

    The wrapped provider only ever sees the sanitized group; its reference is finalized with `finalize_reference`.

    Args:
        provider: the provider (or callable) to protect.
        sanitizer: the sanitizer (defaults to `Sanitizer()`).
        max_reference_chars: optional cap on the reference text.
    """

    sanitizes_input = True

    def __init__(self, provider: Any, sanitizer: Sanitizer | None = None, max_reference_chars: int | None = None):
        self.provider = as_provider(provider)
        self.sanitizer = sanitizer or Sanitizer()
        self.max_reference_chars = max_reference_chars
        self.name = f"sanitized({self.provider.name})"
        self._hits = 0

    async def abuild(self, group: SiblingGroup) -> CreditReference | None:
        sanitized = self.sanitizer.sanitize(group)
        self._hits += sanitized.total
        reference = CreditReference.coerce(await self.provider.abuild(sanitized.group))
        if reference is None:
            return None
        reference, _ = finalize_reference(reference, group, sanitized, self.sanitizer, self.max_reference_chars)
        return reference

    @property
    def batches_natively(self) -> bool:
        return self.provider.batches_natively

    async def abuild_many(self, groups):
        if not self.provider.batches_natively:
            return await super().abuild_many(groups)
        sanitized = [self.sanitizer.sanitize(group) for group in groups]
        self._hits += sum(s.total for s in sanitized)
        results = await self.provider.abuild_many([s.group for s in sanitized])
        finalized: list = []
        for group, clean, result in zip(groups, sanitized, results, strict=True):
            try:
                reference = result if isinstance(result, BaseException) else CreditReference.coerce(result)
            except TypeError as exc:
                reference = exc
            if isinstance(reference, CreditReference):
                reference = finalize_reference(reference, group, clean, self.sanitizer, self.max_reference_chars)[0]
            finalized.append(reference)
        return finalized

    def pop_metrics(self) -> dict[str, float]:
        metrics = dict(self.provider.pop_metrics())
        metrics["sanitizer_hits"] = metrics.get("sanitizer_hits", 0.0) + float(self._hits)
        self._hits = 0
        return metrics


def ensure_sanitized(provider: Any, sanitizer: Sanitizer | None = None) -> CreditReferenceProvider:
    """Returns `provider` as a `CreditReferenceProvider` whose input is sanitized.

    Built-in providers sanitize by themselves (`sanitizes_input = True`) and are returned as they are; anything else
    (a user provider or callable) is wrapped in a `SanitizingProvider`.
    """
    provider = as_provider(provider)
    if getattr(provider, "sanitizes_input", False):
        return provider
    return SanitizingProvider(provider, sanitizer=sanitizer)
