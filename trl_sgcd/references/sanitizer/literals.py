"""Answer literals: matched case- and whitespace-insensitively, numbers by value across formats.

A numeric literal (`1250`, `1,250`, `$1,250.00`, `1.250,00 EUR`, `42.0`) matches every number in the text with the
same value, whatever its thousands separators, decimal mark, trailing zeros or currency: `1250` masks `1,250`,
`1250.00` and `$1,250.00`; `42` masks `42.0` but not `142`, `4.2` or `42.5`. A number written as `1.250` is read
both ways (1.25 and 1250), so it is masked for either literal.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from .rules import PLACEHOLDER_RE


# A number: digits with optional thousands groups (`,` `.` `'`, no-break or thin spaces, or a space before exactly
# three digits) and an optional decimal part. It never starts inside a word or right after a `.`/`,` digit group.
NUMBER_RE = re.compile(
    r"(?<![\w.,])[-+]?(?:\d{1,3}(?:(?:[,.'\u00a0\u202f]|[ ](?=\d{3}(?!\d)))\d{3})+|\d+)(?:[.,]\d+)?(?![\w]|[.,]\d)"
)
_CURRENCY_RE = re.compile(
    r"(?i)^(?:[$€£¥₹]|usd|eur|gbp|jpy|chf|cad|aud|inr)?\s*(.*?)\s*(?:[$€£¥₹]|usd|eur|gbp|jpy|chf|cad|aud|inr)?$"
)
_GROUP_CHARS = str.maketrans("", "", "'\u00a0\u202f ")


@lru_cache(maxsize=8192)
def number_values(token: str) -> frozenset[Decimal]:
    """The values a number token can mean (`1,250` is 1250 with US separators, 1.25 with European ones)."""
    text = token.translate(_GROUP_CHARS)
    sign = ""
    if text[:1] in "+-":
        sign, text = text[0].replace("+", ""), text[1:]
    out: set[Decimal] = set()
    for thousands, decimal in ((",", "."), (".", ",")):
        if text.count(decimal) > 1:
            continue
        integer, _, fraction = text.partition(decimal)
        groups = integer.split(thousands)
        if len(groups) > 1 and (not 1 <= len(groups[0]) <= 3 or any(len(g) != 3 for g in groups[1:])):
            continue
        if not fraction.isdigit() and fraction:
            continue
        try:
            out.add(Decimal(sign + "".join(groups) + ("." + fraction if fraction else "")))
        except InvalidOperation:
            continue
    return frozenset(out)


class LiteralMatcher:
    """Finds a group's answer literals in text. Build with `LiteralMatcher.build(literals)` (None when empty)."""

    def __init__(self, regex: re.Pattern[str] | None, numbers: frozenset[Decimal]):
        self.regex = regex
        self.numbers = numbers

    @classmethod
    def build(cls, literals: Iterable[Any]) -> LiteralMatcher | None:
        parts: list[str] = []
        numbers: set[Decimal] = set()
        for lit in literals:
            if lit is None or isinstance(lit, bool):
                continue
            text = str(lit).strip()
            if not text or text in parts or PLACEHOLDER_RE.fullmatch(text):
                continue
            parts.append(text)
            bare = _CURRENCY_RE.match(text).group(1)
            if NUMBER_RE.fullmatch(bare):
                numbers |= number_values(bare)
        if not parts:
            return None
        alternatives = []
        for text in sorted(parts, key=len, reverse=True):
            pattern = r"\s+".join(re.escape(word) for word in text.split())
            # Word boundaries only where the literal starts/ends with a word character, so "42" does not hit "142"
            # or "4.42", while a literal like "$3.50" still matches next to punctuation.
            if text[0].isalnum() or text[0] == "_":
                pattern = r"(?<![\w])(?<!\d[.,])" + pattern
            if text[-1].isalnum() or text[-1] == "_":
                pattern = pattern + r"(?![\w])(?![.,]\d)"
            alternatives.append(pattern)
        return cls(re.compile("|".join(alternatives), re.IGNORECASE), frozenset(numbers))

    def sub(self, text: str, hit: Callable[[str], str]) -> str:
        """`text` with every literal (and every number equal to a numeric literal) replaced by `hit(value)`."""
        if self.regex is not None:
            text = self.regex.sub(lambda m: hit(m.group(0)), text)
        if self.numbers and any(c.isdigit() for c in text):
            text = NUMBER_RE.sub(
                lambda m: hit(m.group(0)) if number_values(m.group(0)) & self.numbers else m.group(0), text
            )
        return text
