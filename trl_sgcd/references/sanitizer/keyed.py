"""Values under sensitive key names in unparsed text, and oracle tags (`<gold>...</gold>`), in linear time.

Forms read: `key: value`, `key=value`, `key = value`, `"key": "value"`, escaped JSON (`{\\"key\\": \\"value\\"}`),
`key := value`, `key => value`, `key -> value`, full-width colons (`key：value`), `key is value`, `pin 4821` (3+
digits after a key), `--password value`, `d["api_key"] = value`, YAML values on the next line (or in a `|`/`>`
block), headers (`Authorization: Token ...`), query strings (`?api_key=...&`), keyword arguments in code, and
XML/HTML: `<password>...</password>`, `<input type="password" value="...">`. Keys may be snake, camel, kebab or space
case (`accessToken`, `X-Api-Key`, `Routing number`).

Prose is not a value: after a bare `key:` (no quotes, no `=`) a credential is masked only when it looks like one (a
digit, a symbol, inner capitals, 16+ characters) or is the last word of its line, so "Password: must be reset on the
website" stays; after `key is`, only when it looks like one. In assistant and user messages an oracle key followed by
a bare `:` is prose ("Evaluation: the cheaper flight is ..."); elsewhere (tool results, system text) the rest of the
line is masked.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING

from .rules import _NON_VALUES, PLACEHOLDER_RE, _value_end


if TYPE_CHECKING:
    from .core import Sanitizer
    from .rules import _Context


_KEYED_RE = re.compile(
    r"(?<![A-Za-z0-9_\-])(?P<flag>--)?(?P<key>[A-Za-z_][A-Za-z0-9_\-]{0,63})(?P<cq>\\{0,3}[\"']?\]?)[ \t]*"
    r"(?:(?P<sep>[:：]=?|==?>?|->)|(?<=[ \t])(?P<is>is|was)(?=[ \t])"
    r"|(?<=[ \t])(?P<sp>)(?(flag)(?=[^\s\-])|(?=[+(]?\d)))[ \t]*"
)
_AUTH_SCHEMES = frozenset({"bearer", "basic", "token", "digest", "apikey", "api-key", "negotiate", "ntlm", "hmac"})
_BARE_RE = re.compile(r"[^\s,;&(){}\[\]<>\"'\\]+")
# A number-like value: groups of word characters separated by one or two of ` .-/`, each group after the first
# starting with a digit or `(` (cards, IBANs, phones, account numbers written with spaces).
_NUMERIC_RE = re.compile(r"\+?\(?[\w]+\)?(?:[ .\-/]{1,2}\(?\d[\w]*\)?)*")
_ANGLE_RE = re.compile(r"<[^<>\n]{1,200}>")
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,40}")
_EXPRESSION_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*[ \t]*(?=[\[(]|[ \t]*$|[ \t]*\n)")
_DOTTED_NAME_RE = re.compile(r"[a-z_]+(?:\.[a-z_]+)+")
_FIELD_RE = re.compile(r"\{[^{}]{0,80}\}")
_TEMPLATE_WORDS_RE = re.compile(r"[A-Za-z \t:]*")
_IDENTIFIER_RE = re.compile(r"[a-z_][a-z_]*")
_PROSE_TRAIL = ".,;:!?)"
_BLOCK_MARK_RE = re.compile(r"[|>][-+]?[ \t]*(?:\r?\n|\Z)")
_THREE_DIGITS_RE = re.compile(r"(?:\D*\d){3}")
_SECRETISH_RE = re.compile(r"[\W\d_]|(?<=.)[A-Z]")
_STRUCTURED = ("payment", "account", "phone")


def _looks_secret(token: str) -> bool:
    """A digit, a symbol, an inner capital, or 16+ characters: not a prose word."""
    token = token.rstrip(_PROSE_TRAIL)
    return len(token) >= 16 or _SECRETISH_RE.search(token) is not None


def _last_word(text: str, end: int) -> bool:
    """Whether only trailing punctuation and spaces follow `end` on its line."""
    i = end
    while i < len(text) and text[i] in _PROSE_TRAIL + " \t\r":
        i += 1
    return i >= len(text) or text[i] == "\n"


def _line_start(text: str, start: int) -> bool:
    """Whether only indentation or list markers precede `start` on its line."""
    i = start
    while i > 0 and start - i < 16 and text[i - 1] in " \t-*#>":
        i -= 1
    return i == 0 or text[i - 1] == "\n"


def _yaml_block(text: str, key_start: int, start: int, whole: bool) -> tuple[int, int] | None:
    """The value of `key:` at the end of its line: the lines below indented deeper than the key's line."""
    line_start = text.rfind("\n", max(0, key_start - 200), key_start) + 1  # bounded: deeper text is no YAML key
    indent = len(text[line_start:key_start]) - len(text[line_start:key_start].lstrip(" \t"))
    pos = text.find("\n", start)
    if pos == -1:
        return None
    first, last = -1, -1
    while pos != -1 and pos + 1 < len(text):
        line = pos + 1
        nxt = text.find("\n", line)
        end = len(text) if nxt == -1 else nxt
        body = text[line:end]
        stripped = body.lstrip(" \t")
        if not stripped.strip():
            pos = nxt
            continue
        if len(body) - len(stripped) <= indent:
            break
        if first == -1:
            first = line + len(body) - len(stripped)
        last = line + len(body.rstrip())
        if not whole:
            break
        pos = nxt
    if first == -1:
        return None
    return first, last


def _with_leading_words(san: Sanitizer, text: str, start: int, key: str) -> tuple[str, int]:
    """`Routing number:`, `Final answer:`: the key with up to three words before it on its line, and where it starts,
    when its last word ends a multi-word key name (so `number` alone costs nothing)."""
    last = key.rsplit("_", 1)[-1].rsplit("-", 1)[-1].lower()
    if last not in san.multiword_tails:
        return key, start
    window = text[max(0, start - 80) : start].rsplit("\n", 1)[-1].split()
    words: list[str] = []
    for word in reversed(window[-3:]):
        if not _WORD_RE.fullmatch(word):
            break
        words.insert(0, word)
    key_start = start
    for word in reversed(words):
        key_start = text.rfind(word, 0, key_start)
    return " ".join([*words, key]), key_start


def mask_keyed(san: Sanitizer, text: str, ctx: _Context) -> str:
    """Masks the values of sensitive keys in unparsed text."""
    out: list[str] = []
    pos = 0
    # Every scan below either advances `pos` past what it read or is a bare-token scan whose end is remembered, so
    # hostile input (`"payment_id={" * N`, `"token=" * N + "("`) is masked in linear time.
    bare = (-1, -1)
    skip = 0
    for match in _KEYED_RE.finditer(text):
        if match.start() < max(pos, skip):
            continue
        flag, key, cq, sep, is_, sp = match.group("flag", "key", "cq", "sep", "is", "sp")
        key_start = match.start()
        if key_start >= 2 and text[key_start - 1] in " -" and text[key_start - 2].isalnum():
            key, key_start = _with_leading_words(san, text, key_start, key)
        category = san.category_of_key(key)
        if category is None:
            continue
        quoted_key = bool(cq)
        # `key is value`, `pin 4821` (a key, a space, a number) read like prose; `--password value` like `=`.
        spaced = sp is not None and not flag
        loose = is_ is not None or spaced
        if loose and category == "oracle":
            continue
        colon = sep in (":", "：") and not quoted_key
        start = match.end()
        span = _value_span(san, text, match, key_start, category, colon, loose, ctx, bare)
        if span is None:
            continue
        inner_start, inner_end, whole, bare_end = span
        if bare_end is not None:
            bare = (start, bare_end)
            if text[bare_end : bare_end + 1] == "(":
                skip = bare_end
                continue  # `token = apis.login(...)`: code assigning a call's result, not a literal
        value = text[inner_start:inner_end]
        if spaced and _THREE_DIGITS_RE.match(value) is None:
            continue  # "token 3 of 5": a count, not a PIN
        if value.strip().lower() in _NON_VALUES or PLACEHOLDER_RE.fullmatch(value.strip()):
            continue
        recorded = None if whole or len(value) > san.config.max_literal_chars else value
        out.append(text[pos:inner_start])
        out.append(san._hit(ctx, category, recorded))
        pos = inner_end
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def _value_span(
    san: Sanitizer,
    text: str,
    match: re.Match[str],
    key_start: int,
    category: str,
    colon: bool,
    loose: bool,
    ctx: _Context,
    bare: tuple[int, int],
) -> tuple[int, int, bool, int | None] | None:
    """`(inner_start, inner_end, whole, bare_end)` of the value after a sensitive key, or None to leave it."""
    n = len(text)
    start = match.end()
    ch = text[start] if start < n else "\n"
    if ch in "\r\n" and match.group("sep") is not None:  # YAML: the value is on the next line(s)
        if match.group("sep") not in (":", "："):
            return None
        block = _yaml_block(text, key_start, start, category in ("credential", "oracle"))
        return None if block is None else (*block, category == "oracle", None)
    if ch in "|>" and colon and _BLOCK_MARK_RE.match(text, start):
        block = _yaml_block(text, key_start, start, True)
        return None if block is None else (*block, category == "oracle", None)
    if ch == "\\" and text[start + 1 : start + 2] in "\"'":  # escaped JSON: `\"value\"`
        quote = text[start : start + 2]
        end = text.find(quote, start + 2)
        end = n if end == -1 else end
        return start + 2, end, False, None
    template = ch in "fF" and text[start + 1 : start + 2] in ("'", '"')
    if template:  # f'Bearer {token}': a template of names, not a literal, unless it has more than words
        start, ch = start + 1, text[start + 1]
    if ch in "\"'":
        end = _value_end(text, start)
        inner_end = end - 1 if end - start >= 2 and text[end - 1] == ch else end
        if template and _TEMPLATE_WORDS_RE.fullmatch(_FIELD_RE.sub("", text[start + 1 : inner_end])):
            return None
        return start + 1, inner_end, False, None
    if ch in "[{":
        if category not in ("oracle", "credential"):
            return None  # a structure under e.g. `payment_id`: the regex rules still see its contents
        return start, _value_end(text, start), True, None
    if ch == "<":
        angle = _ANGLE_RE.match(text, start)
        if angle is None or PLACEHOLDER_RE.match(text, start):
            return None
        return start, angle.end(), False, None
    if category == "oracle":
        if colon and (ctx.prose or not _line_start(text, key_start)):
            return None  # "Evaluation: the cheaper flight is ..." in a message, or mid-sentence, is prose
        if colon:
            end = text.find("\n", start)
            end = n if end == -1 else end
            return start, len(text[:end].rstrip()), True, None
    if not colon and not loose and _expression(text, start):
        return None  # `phone_number = user['phone_number']`, `token = apis.login(...)`: code, not a literal
    if category in _STRUCTURED:
        numeric = _NUMERIC_RE.match(text, start)
        end = numeric.end() if numeric else start
        while end > start and text[end - 1] in ".-/ ":
            end -= 1
        value = text[start:end]
        if end <= start or not (any(c.isdigit() for c in value) or (value.isupper() and len(value) >= 6)):
            return None  # "Phone: not provided", `SWIFT: DEUTDEFF` is masked
        return start, end, False, None
    if bare[0] <= start < bare[1]:
        end = bare[1]
    else:
        token = _BARE_RE.match(text, start)
        end = token.end() if token else start
    if end <= start:
        return None
    value = text[start:end]
    if category == "credential" and value.lower() in _AUTH_SCHEMES and text[end : end + 1] in (" ", "\t"):
        token = _BARE_RE.match(text, end + 1)  # `Authorization: Token <credential>`
        if token is None:
            return None
        return token.start(), token.end(), False, token.end()
    if category == "email" and "@" not in value and "%40" not in value:
        return None
    if category == "credential":
        if loose and not _looks_secret(value):
            return None
        if colon and not (_looks_secret(value) or _last_word(text, end)):
            return None
        if not colon and not loose and _variable(san, match.group("key"), value, text, end):
            return None
    value_end = end
    while colon and value_end > start and text[value_end - 1] in _PROSE_TRAIL and not _looks_secret(value):
        value_end -= 1
    return start, value_end, False, end


def _expression(text: str, start: int) -> bool:
    """`name[...]`, `name(...)`, `a.b.c` alone on its line: an expression in code."""
    match = _EXPRESSION_RE.match(text, start)
    if match is None:
        return False
    value = match.group().strip()
    if text[match.end() : match.end() + 1] in ("[", "("):
        return True
    return "." in value and _DOTTED_NAME_RE.fullmatch(value) is not None  # `profile.email`, not `Secret.Pass2`


def _variable(san: Sanitizer, key: str, value: str, text: str, end: int) -> bool:
    """`access_token=token`, `password=passwords['x']` in code: a variable passed by name (a lowercase identifier
    named like a credential, or subscripted), not a literal."""
    if not _IDENTIFIER_RE.fullmatch(value) or text[end : end + 1] not in (",", ")", "["):
        return False
    return text[end : end + 1] == "[" or value == key or san.category_of_key(value) == "credential"


@lru_cache(maxsize=256)
def _close_re(tag: str) -> re.Pattern[str]:
    return re.compile(rf"</\s*{re.escape(tag)}\s*>", re.IGNORECASE)


_OPEN_TAG_RE = re.compile(r"<\s*([A-Za-z_][\w\-.:]{0,63})(?:\s[^<>]{0,200})?>")


_ATTR_RE = re.compile(r"([A-Za-z_][\w\-:]*)\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s\"'>]+))")
_INPUT_TYPES = {"password": "credential", "email": "email", "tel": "phone"}


def _form_field(san: Sanitizer, tag: str) -> tuple[str, int, int] | None:
    """`<input name="password" value="...">`: the category and span of a form field's value, by its name or type."""
    attrs = {m.group(1).lower(): m for m in _ATTR_RE.finditer(tag)}
    value = attrs.get("value")
    if value is None:
        return None
    category = None
    for attr in ("type", "name", "id", "autocomplete"):
        found = attrs.get(attr)
        if found is not None:
            text = next(g for g in found.groups()[1:] if g is not None)
            category = _INPUT_TYPES.get(text.lower()) if attr == "type" else san.category_of_key(text)
            if category is not None:
                break
    if category is None:
        return None
    group = next(i for i in (2, 3, 4) if value.group(i) is not None)
    return category, *value.span(group)


def mask_tags(san: Sanitizer, text: str, ctx: _Context) -> str:
    """Masks XML-style elements of sensitive names: a whole `<gold>...</gold>` block for oracle tags (an unclosed one
    masks the rest of the text), the content of `<password>...</password>`, `<apiKey>...</apiKey>`, ..., and the
    value of an HTML form field named or typed like one (`<input type="password" value="...">`)."""
    if "<" not in text:
        return text
    out: list[str] = []
    last = pos = 0  # text[:last] is in `out`; the next tag is searched from `pos`
    closes: dict[str, int] = {}  # first closing tag at or after the last search for it (-1: none): linear scans

    def close_of(name: str, start: int) -> int:
        found = closes.get(name)
        if found is None or (found != -1 and found < start):
            match = _close_re(name).search(text, start)
            found = closes[name] = -1 if match is None else match.start()
        return found

    while True:
        match = _OPEN_TAG_RE.search(text, pos)
        if match is None:
            break
        name = match.group(1).lower()
        category = "oracle" if name in san.oracle_tags else san.category_of_key(match.group(1))
        pos = match.end()
        if category is None:
            field = _form_field(san, match.group(0)) if "value" in match.group(0) else None
            if field is not None:
                category, start, end = field[0], match.start() + field[1], match.start() + field[2]
                value = text[start:end]
                if value.strip() and not PLACEHOLDER_RE.fullmatch(value.strip()):
                    out += [text[last:start], san._hit(ctx, category, value)]
                    last = end
            continue
        close = close_of(name, pos)
        close_end = -1 if close == -1 else _close_re(name).match(text, close).end()
        if category == "oracle":
            out += [text[last : match.start()], san._hit(ctx, "oracle", None)]
            last = pos = len(text) if close == -1 else close_end
            continue
        if close == -1:
            continue
        value = text[pos:close].strip()
        if value and not PLACEHOLDER_RE.fullmatch(value) and value.lower() not in _NON_VALUES:
            recorded = value if len(value) <= san.config.max_literal_chars else None
            out += [text[last:pos], san._hit(ctx, category, recorded)]
            last = close
        pos = close_end
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)
