"""Patterns, checksums and scanners shared by the sanitizer (all linear-time on hostile input)."""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from .literals import LiteralMatcher


CATEGORIES = ("credential", "payment", "account", "email", "phone", "oracle", "answer")
PLACEHOLDER_RE = re.compile(r"<MASKED:[A-Z_]+>")

# Message fields that carry structure, not content.
_PROTECTED_MESSAGE_KEYS = frozenset({"role", "name", "tool_call_id", "id", "type"})
_NON_VALUES = frozenset({"", "null", "none", "true", "false", "undefined", "nan"})


_LUHN_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def luhn_valid(digits: str) -> bool:
    """Whether a digit string passes the Luhn checksum (card numbers)."""
    if not digits.isdigit() or len(set(digits)) == 1:
        return False
    reverse = digits[::-1]
    total = sum(map(int, reverse[0::2])) + sum(_LUHN_DOUBLED[int(c)] for c in reverse[1::2])
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """Whether a string is an IBAN with a valid mod-97 checksum."""
    s = iban.replace(" ", "").replace("-", "").upper()
    if not (15 <= len(s) <= 34) or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    rearranged = s[4:] + s[:4]
    try:
        number = int("".join(str(int(ch, 36)) for ch in rearranged))
    except ValueError:
        return False
    return number % 97 == 1


_CAMEL_RE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NON_KEY_CHARS_RE = re.compile(r"[\W_]+")


def key_words(key: str) -> list[str]:
    """A field name's words, lower case: `accessToken`, `Access-Token` and `access token` are `[access, token]`."""
    return [w for w in _NON_KEY_CHARS_RE.split(_CAMEL_RE.sub("_", key).lower()) if w]


def _norm_key(key: str) -> str:
    return "_".join(key_words(key))


class _Context:
    """Per-call bookkeeping: counts per category and the original masked values."""

    def __init__(self, literals: LiteralMatcher | None, prose: bool = False):
        self.literals = literals
        # In assistant and user messages a bare `Oracle-key: ...` line is prose, not a report.
        self.prose = prose
        self.counts: Counter[str] = Counter()
        self.values: list[tuple[str, str]] = []
        # Siblings of one task repeat most strings (tool results, ids, answers): each distinct string is masked
        # once per call, and a repeat replays its result and its hits, so the counts stay per occurrence.
        self.memo: dict[tuple[str, bool], tuple[str, list[tuple[str, str | None]]]] = {}
        self.hits: list[tuple[str, str | None]] = []


_BARE_TOKEN_RE = re.compile(r"[^\s,;&(){}\[\]<>\"']+")


_QUOTED_RES = {q: re.compile(rf"{q}(?:[^{q}\\]|\\.)*(?:{q}|\\?\Z)", re.S) for q in "\"'"}
_STRUCTURE_CHARS_RE = re.compile(r"[\[\]{}\"'\\]")


def _value_end(text: str, start: int) -> int:
    """End index of the value starting at `start`: a quoted string, a bracketed structure, or a bare token."""
    if start >= len(text):
        return start
    ch = text[start]
    if ch in "\"'":
        return _QUOTED_RES[ch].match(text, start).end()  # unclosed: to the end of the text
    if ch in "[{":
        depth = 0
        quote = None
        escaped = -1
        for match in _STRUCTURE_CHARS_RE.finditer(text, start):
            i, c = match.start(), match.group()
            if i == escaped:
                continue
            if quote:
                if c == "\\":
                    escaped = i + 1
                elif c == quote:
                    quote = None
            elif c in "\"'":
                quote = c
            elif c in "[{":
                depth += 1
            elif c in "]}":
                depth -= 1
                if depth == 0:
                    return i + 1
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
