"""The `Sanitizer`: walks messages, tool calls and structured tool results and masks what the rules find."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ...siblings import Sibling, SiblingGroup
from .config import SanitizedGroup, SanitizerConfig
from .detectors import (
    BEARER_RE,
    CARD_RES,
    EMAIL_RE,
    IBAN_RE,
    PHONE_RES,
    SSN_RE,
    URL_CREDENTIALS_RE,
    credential_spans,
    has_digit,
    is_card,
    is_iban,
    replace_spans,
)
from .keyed import mask_keyed, mask_tags
from .literals import LiteralMatcher
from .rules import (
    _NON_VALUES,
    _PROTECTED_MESSAGE_KEYS,
    CATEGORIES,
    PLACEHOLDER_RE,
    _Context,
    _norm_key,
    _parse_container,
    key_words,
)


_PROSE_ROLES = frozenset({"assistant", "user"})
_TOOL_CALL_KEYS = frozenset({"id", "type", "name"})
_NAME_FIELDS = ("name", "key", "field", "param", "parameter", "variable", "header")


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
        self._oracle_prefixes = tuple(_norm_key(p) + "_" * p.endswith("_") for p in cfg.oracle_key_prefixes)
        self._ignored = frozenset(_norm_key(k) for k in cfg.ignored_keys)
        # Last words of multi-word names (`number` for `routing_number`), and single-word oracle names (so that
        # `Final answer:` is read whole): free text looks at the words before such a key.
        self.multiword_tails = frozenset(
            k.rsplit("_", 1)[-1] for k, c in self._key_category.items() if "_" in k or c == "oracle"
        )
        self._placeholders = {c: self.placeholder(c) for c in CATEGORIES}
        self.oracle_tags = frozenset(t.lower() for t in cfg.oracle_tags)
        self._key_memo: dict[str, str | None] = {}  # field names repeat across messages and siblings
        self._oracle_res = [re.compile(p) for p in cfg.oracle_patterns]
        self._pattern_rules: list[tuple[str, re.Pattern[str]]] = []
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
        ctx = _Context(LiteralMatcher.build(self.answer_literals(group)))
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

    def sanitize_text(
        self, text: str, literals: Iterable[Any] = (), prose: bool = False
    ) -> tuple[str, dict[str, int]]:
        """Masks one string (JSON-aware); `literals` are treated as answer literals.

        `prose=True` reads it as an assistant message does: a bare `Evaluation: ...` line is text, not a report
        (used for references, which a model writes from already sanitized evidence).
        """
        ctx = _Context(LiteralMatcher.build(literals), prose=prose)
        return self._mask_string(text, ctx), self._counts(ctx)

    def sanitize_messages(self, messages: list[dict[str, Any]], literals: Iterable[Any] = ()) -> list[dict[str, Any]]:
        """Returns a masked copy of a list of chat messages."""
        return self._mask_messages(messages, _Context(LiteralMatcher.build(literals)))

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
        placeholder = self._placeholders.get(category)
        return placeholder if placeholder is not None else self.placeholder(category)

    def category_of_key(self, key: str) -> str | None:
        """The category of a field name, or `None` when its values are not masked by name."""
        if key in self._key_memo:
            return self._key_memo[key]
        words = key_words(key)
        norm = "_".join(words)
        category = None
        if norm not in self._ignored:
            category = self._key_category.get(norm)
            if category is None and norm.startswith(self._oracle_prefixes):
                category = "oracle"
            for i in range(1, len(words) if category is None else 0):
                suffix = "_".join(words[i:])
                if suffix in self._ignored:
                    break
                found = self._key_category.get(suffix)
                if found is not None and not (found == "oracle" and "_" not in suffix):
                    category = found  # `new_password`, `Your routing number`; not `final_answer`
                    break
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
            prose = message.get("role") in _PROSE_ROLES
            for key, value in message.items():
                if key in _PROTECTED_MESSAGE_KEYS:
                    clean[key] = value
                elif key in ("tool_calls", "function_call"):
                    calls = value if isinstance(value, list) else [value]
                    masked = [self._mask_tool_call(call, ctx) for call in calls]
                    clean[key] = masked if isinstance(value, list) else masked[0]
                else:
                    ctx.prose = prose and key == "content"
                    clean[key] = self._mask_obj(value, ctx)
                    ctx.prose = False
            out.append(clean)
        return out

    def _mask_tool_call(self, call: Any, ctx: _Context) -> Any:
        """Masks a tool call in the function-style (`{"function": {"name", "arguments"}}`) or flat form."""
        if not isinstance(call, dict):
            return self._mask_obj(call, ctx)
        clean = {}
        for key, value in call.items():
            if key in _TOOL_CALL_KEYS and isinstance(value, str):
                clean[key] = value
            elif key == "function" and isinstance(value, dict):
                clean[key] = self._mask_tool_call(value, ctx)
            else:
                clean[key] = self._mask_obj(value, ctx)
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
            named = self._named_value_category(obj)
            for key, value in obj.items():
                category = self.category_of_key(key) if isinstance(key, str) else None
                if key == "value" and named is not None:
                    category = named
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

    def _named_value_category(self, obj: dict[Any, Any]) -> str | None:
        """`{"name": "DB_PASSWORD", "value": "..."}` (environment listings, headers, form fields): the name's category."""
        if "value" not in obj:
            return None
        for field in _NAME_FIELDS:
            name = obj.get(field)
            if isinstance(name, str) and len(name) <= 64:
                category = self.category_of_key(name)
                if category is not None:
                    return category
        return None

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
        memo = ctx.memo.get((text, ctx.prose))
        if memo is None:
            hits_before = len(ctx.hits)
            masked = self._mask_text_rules(text, ctx)
            memo = ctx.memo[(text, ctx.prose)] = (masked, ctx.hits[hits_before:])
        else:
            for category, value in memo[1]:
                self._hit(ctx, category, value)
        return memo[0]

    def _mask_text_rules(self, text: str, ctx: _Context) -> str:
        cfg = self.config
        for regex in self._oracle_res:
            text = regex.sub(lambda m: self._hit(ctx, "oracle", None), text)
        text = mask_tags(self, text, ctx)
        if ctx.literals is not None:
            text = ctx.literals.sub(text, lambda v: self._hit(ctx, "answer", v))
        if cfg.mask_credentials and "://" in text:
            text = URL_CREDENTIALS_RE.sub(
                lambda m: m.group(1) + self._hit(ctx, "credential", m.group(2)) + m.group(3), text
            )
        text = mask_keyed(self, text, ctx)
        if cfg.mask_credentials:
            spans = credential_spans(text, cfg.entropy_limit, aws_secrets=True)
            text = replace_spans(text, spans, lambda v: self._hit(ctx, "credential", v))
            text = BEARER_RE.sub(lambda m: m.group(1) + m.group(2) + self._hit(ctx, "credential", m.group(3)), text)
        for category, regex in self._pattern_rules:
            text = regex.sub(lambda m, c=category: self._hit(ctx, c, m.group(0)), text)
        if cfg.mask_emails and ("@" in text or "%40" in text):
            text = EMAIL_RE.sub(lambda m: self._hit(ctx, "email", m.group(0)), text)
        if not has_digit(text):  # the remaining rules all need digits
            return text
        if cfg.mask_credentials:
            text = SSN_RE.sub(lambda m: self._hit(ctx, "credential", m.group(0)), text)
        if cfg.mask_cards:
            for regex in CARD_RES:
                text = regex.sub(
                    lambda m: self._hit(ctx, "payment", m.group(0)) if is_card(m.group(0)) else m.group(0), text
                )
        if cfg.mask_ibans:
            text = IBAN_RE.sub(
                lambda m: self._hit(ctx, "account", m.group(0)) if is_iban(m.group(0)) else m.group(0), text
            )
        if cfg.mask_phones:
            for regex in PHONE_RES:
                text = regex.sub(lambda m: self._hit(ctx, "phone", m.group(0)), text)
        return text
