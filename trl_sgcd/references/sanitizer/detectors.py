"""Free-text detectors: credentials (detect-secrets plugins), cards, IBANs, e-mail addresses and phone numbers.

Every scanner is linear in the input length: a pattern whose first part is an unbounded run only starts where that
run starts (a negative lookbehind of its own characters), so a megabyte of `eyJ` or `sk-` is read once, and the
private-key scanner looks for each block's end once, from where it stopped.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterator
from functools import lru_cache

from .rules import iban_valid, luhn_valid


# A detect-secrets plugin's match is widened to the whole token it sits in, so a key longer than the plugin's fixed
# length (Stripe's 24 characters, GitHub's 36) is masked whole, not cut with its tail left visible.
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
# Plugins whose pattern begins with an unbounded run: anchored at the start of that run (linear on `eyJeyJ...`).
_RUN_ANCHORS = {"JwtTokenDetector": r"(?<![A-Za-z0-9_\-=.])", "OpenAIDetector": r"(?<![A-Za-z0-9_\-])"}
# A substring every match of the plugin contains: the pattern is skipped when the text lacks it.
_REQUIRED = {
    "AWSKeyDetector": None,
    "AzureStorageKeyDetector": "AccountKey=",
    "DiscordBotTokenDetector": ".",
    "GitHubTokenDetector": "_",
    "GitLabTokenDetector": "-",
    "JwtTokenDetector": "eyJ",
    "MailchimpDetector": "-us",
    "OpenAIDetector": "T3BlbkFJ",
    "PypiTokenDetector": "pypi-",
    "SendGridDetector": "SG.",
    "SlackDetector": None,
    "SquareOAuthDetector": "sq0csp-",
    "StripeDetector": "k_live_",
    "TelegramBotTokenDetector": ":",
    "TwilioKeyDetector": None,
}
# Key formats detect-secrets does not list (or lists for live keys only).
_EXTRA_KEY_PATTERNS = (
    (r"\bsk-(?:proj-|ant-|live-|test-|svcacct-)?[A-Za-z0-9_\-]{16,}", "sk-"),
    (r"\b(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{10,}", "k_"),
    (r"\bgh[pousr]_[A-Za-z0-9]{30,}\b", "gh"),
    (r"\bgithub_pat_[A-Za-z0-9_]{30,}\b", "github_pat_"),
    (r"\bhf_[A-Za-z0-9]{30,}\b", "hf_"),
    (r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b", "xox"),
    (r"\bAIza[0-9A-Za-z_\-]{35}\b", "AIza"),
    (r"\bnpm_[A-Za-z0-9]{36}\b", "npm_"),
    (r"\b(?:glpat|gldt|glrt|glptt)-[A-Za-z0-9_\-]{16,}", "gl"),
)
_PRIVATE_KEY_BEGIN_RE = re.compile(r"-----BEGIN[ A-Z0-9]{0,40} PRIVATE KEY(?: BLOCK)?-----|PuTTY-User-Key-File-\d")
_PRIVATE_KEY_BODY_RE = re.compile(r"[A-Za-z0-9+/=\s:,\-.]*")
# An AWS secret access key's shape (the charset and length detect-secrets' AWS plugin verifies).
_AWS_SECRET_RE = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_CANDIDATE_RE = re.compile(r"(?<![A-Za-z0-9_\-+/=.:~])(?!MASKED:[A-Z_]+>)[A-Za-z0-9_\-+/=.:~]{16,}")
_HAS_DIGIT_RE, _HAS_UPPER_RE, _HAS_LOWER_RE = re.compile(r"\d"), re.compile(r"[A-Z]"), re.compile(r"[a-z]")
_LOWER_RUN_RE = re.compile(r"[a-z]{3,}")
_HIGH_ENTROPY_RE = re.compile(r"(?<![A-Za-z0-9+/=_\-])[A-Za-z0-9+/=_\-]{20,}")
BEARER_RE = re.compile(
    r"\b((?i:bearer)|Basic)([ \t]+)((?<=Basic[ \t])[A-Za-z0-9+/]{12,}={0,2}|[A-Za-z0-9._~+/\-]{16,}=*)"
)
URL_CREDENTIALS_RE = re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^\s:/@]+:)([^\s@/]+)(@)")

EMAIL_RE = re.compile(
    r"(?<![\w.+%\-])[\w.%+\-]+(?:@|%40)[\w\-]+(?:\.[\w\-]+)*\.(?:[^\W\d_]{2,}|xn--[\w\-]+)(?![\w\-])"
)
# International (+CC, 00CC, trunk prefix `(0)`), North American `(555) 123-4567`, `555.123.4567`, `555-123-4567`.
PHONE_RES = (
    re.compile(r"(?<![\w+])\+\d{1,3}[ .\-]{0,2}(?:\(\d{1,4}\)[ .\-]?)?\d{1,4}(?:[ .\-]{0,2}\d{2,4}){1,4}\b"),
    re.compile(r"(?<![\w+])00\d{1,3}[ .\-](?:\(\d{1,4}\)[ .\-]?)?\d{1,4}(?:[ .\-]\d{2,4}){1,4}\b"),
    re.compile(r"(?<![\w(])\(\d{3}\)[ .\-]?\d{3}[ .\-]\d{4}\b"),
    re.compile(r"(?<![\w.\-])\d{3}([.\- ])\d{3}\1\d{4}(?![\w\-]|\.\d)"),
)
# US social security numbers (a credential field's value anywhere else).
SSN_RE = re.compile(r"(?<![\w\-])\d{3}-\d{2}-\d{4}(?![\w\-])")
# Cards: a digit run, or groups with one separator kind (space, double space, dot, dash) used throughout.
CARD_RES = (
    re.compile(r"(?<![\w\-.])\d{13,19}(?![\w\-]|\.\d)"),
    re.compile(r"(?<![\w\-.])\d{4}( {1,2}|\.|-)\d{4,6}\1\d{4,5}(?:\1\d{1,4}){0,2}(?![\w\-]|\.\d)"),
    re.compile(r"(?<![\w\-])(?:\d[ \-]?){12,18}\d(?![\w\-])"),
)
IBAN_RE = re.compile(r"(?i)(?<![\w\-])[A-Z]{2}\d{2}(?:[ \-]?[A-Z0-9]{4}){2,7}(?:[ \-]?[A-Z0-9]{1,3})?(?![\w\-])")
_NON_DIGIT_RE = re.compile(r"\D")
_DIGIT_RE = re.compile(r"\d")


@lru_cache(maxsize=1)
def vendor_patterns() -> tuple[tuple[re.Pattern[str], str | None], ...]:
    """The credential patterns: detect-secrets' regex plugins (anchored where needed) and the extra key formats."""
    from detect_secrets.plugins import (
        aws,
        azure_storage_key,
        discord,
        github_token,
        gitlab_token,
        jwt,
        mailchimp,
        openai,
        pypi_token,
        sendgrid,
        slack,
        square_oauth,
        stripe,
        telegram_token,
        twilio,
    )

    plugins = (
        aws.AWSKeyDetector,
        azure_storage_key.AzureStorageKeyDetector,
        discord.DiscordBotTokenDetector,
        github_token.GitHubTokenDetector,
        gitlab_token.GitLabTokenDetector,
        jwt.JwtTokenDetector,
        mailchimp.MailchimpDetector,
        openai.OpenAIDetector,
        pypi_token.PypiTokenDetector,
        sendgrid.SendGridDetector,
        slack.SlackDetector,
        square_oauth.SquareOAuthDetector,
        stripe.StripeDetector,
        telegram_token.TelegramBotTokenDetector,
        twilio.TwilioKeyDetector,
    )
    out: list[tuple[re.Pattern[str], str | None]] = []
    for plugin in plugins:
        name = plugin.__name__
        for i, regex in enumerate(plugin.denylist):
            if name == "AWSKeyDetector" and i > 0:
                continue  # `aws ... key = "<40 chars>"` spans quotes: the keyed rules and the AWS-secret shape cover it
            pattern = _RUN_ANCHORS.get(name, "") + regex.pattern
            out.append((re.compile(pattern, regex.flags), _REQUIRED[name]))
    out += [(re.compile(p), required) for p, required in _EXTRA_KEY_PATTERNS]
    return tuple(out)


def _widen(text: str, start: int, end: int, floor: int) -> tuple[int, int]:
    while start > floor and text[start - 1] in _TOKEN_CHARS:
        start -= 1
    while end < len(text) and text[end] in _TOKEN_CHARS:
        end += 1
    return start, end


def _private_key_spans(text: str) -> Iterator[tuple[int, int]]:
    """Private-key blocks: from a BEGIN line to its END line, or to the end of the base64 body when it is cut."""
    pos = 0
    has_end = True  # once no END follows some position, none follows a later one: each search runs once (linear)
    while True:
        match = _PRIVATE_KEY_BEGIN_RE.search(text, pos)
        if match is None:
            return
        end = text.find("-----END", match.end()) if has_end else -1
        has_end = end != -1
        if end != -1:
            close = text.find("-----", end + 8)
            end = len(text) if close == -1 else close + 5
        else:
            end = _PRIVATE_KEY_BODY_RE.match(text, match.end()).end()
        yield match.start(), end
        pos = end


def credential_spans(text: str, entropy_limit: float | None, aws_secrets: bool) -> list[tuple[int, int]]:
    """Non-overlapping spans of credentials in `text`, in order.

    The patterns only run on the runs of key characters at least 16 long (joined by newlines), so ordinary prose,
    whose words are short, costs one scan.

    Args:
        entropy_limit: mask runs of base64 characters (at least 20 long, with lower- and upper-case letters and
            digits) whose Shannon entropy reaches this limit (detect-secrets' default is 4.5); `None` turns it off.
        aws_secrets: mask 40-character base64 runs with mixed case and digits (the shape of an AWS secret key).
    """
    spans: list[tuple[int, int]] = []
    if "PRIVATE KEY" in text or "PuTTY" in text:
        spans += _private_key_spans(text)
    candidates = [m.span() for m in _CANDIDATE_RE.finditer(text)]
    if not candidates:
        return _merge(spans)
    if len(candidates) == 1 and candidates[0] == (0, len(text)):
        joined, starts = text, [0]
    else:
        joined = "\n".join(text[a:b] for a, b in candidates)
        starts, offset = [], 0
        for a, b in candidates:
            starts.append(offset)
            offset += b - a + 1

    def to_text(start: int, end: int) -> tuple[int, int]:
        i = bisect_right(starts, start) - 1
        shift = candidates[i][0] - starts[i]
        return start + shift, end + shift

    for regex, required in vendor_patterns():
        if required is not None and required not in joined:
            continue
        floor = 0  # widening never re-reads what an earlier match of this pattern covered (linear)
        for match in regex.finditer(joined):
            if match.start() >= floor:
                start, end = _widen(joined, match.start(), match.end(), floor)
                floor = end
                spans.append(to_text(start, end))
    if aws_secrets:
        spans += [to_text(*m.span()) for m in _AWS_SECRET_RE.finditer(joined) if _mixed(m.group(0))]
    if entropy_limit is not None:
        seen: dict[str, bool] = {}
        for match in _HIGH_ENTROPY_RE.finditer(joined):
            token = match.group(0).rstrip("=")
            hit = seen.get(token)
            if hit is None:
                hit = seen[token] = _random_looking(token, entropy_limit)
            if hit:
                spans.append(to_text(*match.span()))
    return _merge(spans)


def shannon_entropy(token: str) -> float:
    """Bits per character, as detect-secrets' `Base64HighEntropyString` computes it (over the token's characters)."""
    n = len(token)
    return -sum(c / n * math.log2(c / n) for c in Counter(token).values())


def _random_looking(token: str, limit: float) -> bool:
    """Mixed case and digits, few lower-case words, and high entropy for its length.

    A random base64 string of n < 64 characters cannot reach log2(64) bits per character; 99% of random 28- to
    40-character keys reach 85% of log2(n), which identifiers such as `ShowSongLibraryV2Response` (mostly
    lower-case runs) and shorter tokens do not have to clear: below 28 characters the limit itself applies.
    """
    needed = limit if len(token) < 28 else min(limit, 0.85 * math.log2(len(token)))
    if len(set(token)) < 2**needed:  # entropy is at most log2(distinct characters): a cheap first test
        return False
    if not _mixed(token) or sum(len(w) for w in _LOWER_RUN_RE.findall(token)) * 2 >= len(token):
        return False
    return shannon_entropy(token) >= needed


def _mixed(token: str) -> bool:
    return bool(_HAS_DIGIT_RE.search(token) and _HAS_UPPER_RE.search(token) and _HAS_LOWER_RE.search(token))


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start < out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def replace_spans(text: str, spans: list[tuple[int, int]], replace: Callable[[str], str]) -> str:
    """`text` with each (sorted, non-overlapping) span replaced by `replace(span_text)`."""
    if not spans:
        return text
    out, pos = [], 0
    for start, end in spans:
        out.append(text[pos:start])
        out.append(replace(text[start:end]))
        pos = end
    out.append(text[pos:])
    return "".join(out)


@lru_cache(maxsize=4096)
def is_card(match: str) -> bool:
    digits = _NON_DIGIT_RE.sub("", match)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


@lru_cache(maxsize=4096)
def is_iban(match: str) -> bool:
    return iban_valid(match)


def has_digit(text: str) -> bool:
    return _DIGIT_RE.search(text) is not None
