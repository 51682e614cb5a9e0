"""Patterns, checksums and scanners shared by the sanitizer (all linear-time on hostile input)."""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any


CATEGORIES = ("credential", "payment", "account", "email", "phone", "oracle", "answer")
PLACEHOLDER_RE = re.compile(r"<MASKED:[A-Z_]+>")

# Message fields that carry structure, not content.
_PROTECTED_MESSAGE_KEYS = frozenset({"role", "name", "tool_call_id", "id", "type"})
_NON_VALUES = frozenset({"", "null", "none", "true", "false", "undefined", "nan"})
_AUTH_SCHEMES = frozenset({"bearer", "basic", "token"})


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


_BARE_TOKEN_RE = re.compile(r"[^\s,;&(){}\[\]<>\"']+")


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
    match = _BARE_TOKEN_RE.match(text, start)
    return match.end() if match else start


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
