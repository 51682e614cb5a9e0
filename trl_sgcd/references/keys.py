"""API-key values known to this process, and scrubbing them from provider text (replies, references, errors).

The sanitizer finds credentials by their shape; an API key may have none (a self-hosted server's key can be any
string). So the values themselves are looked up: every environment variable whose name says it holds a credential
(`OPENAI_API_KEY`, `ANTHROPIC_API_KEY`, `HF_TOKEN`, `AWS_SECRET_ACCESS_KEY`, a provider's `api_key_env`, ...), plus
any value the caller adds, and every occurrence is replaced by `<MASKED:CREDENTIAL>`. Values shorter than
`MIN_KEY_CHARS` are left alone, since replacing them would mangle ordinary text.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable


KEY_PLACEHOLDER = "<MASKED:CREDENTIAL>"
MIN_KEY_CHARS = 8
# A name part that says "credential": OPENAI_API_KEY, HF_TOKEN, AWS_SECRET_ACCESS_KEY, DB_PASSWORD, MY_APIKEY, ...
_KEY_NAME = re.compile(r"(?:^|_)(?:API_?KEY|KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)(?:_|$)", re.IGNORECASE)
# ... unless the name says the value is something else: a path, an address, a setting.
_NOT_A_KEY = re.compile(r"_(?:PATH|FILE|DIR|URL|URI|HOST|PORT|BASE|TYPE|VERSION|REGION|SOCK)$", re.I)


def is_key_name(name: str) -> bool:
    """Whether an environment variable or keyword argument named `name` holds a credential."""
    return bool(_KEY_NAME.search(name)) and not _NOT_A_KEY.search(name)


def known_keys(names: Iterable[str | None] = (), values: Iterable[object] = ()) -> list[str]:
    """Credential values to scrub, longest first: the environment's credential variables, the variables `names`
    (whatever they are called), and the strings in `values`; read now, so a key set or rotated later is included."""
    found = {v for k, v in os.environ.items() if is_key_name(k)}
    found.update(os.environ.get(name, "") for name in names if name)
    found.update(v for v in values if isinstance(v, str))
    return sorted((v for v in found if len(v.strip()) >= MIN_KEY_CHARS), key=len, reverse=True)


def scrub_keys(text: str, keys: Iterable[str]) -> tuple[str, int]:
    """`text` with every occurrence of each key replaced by `<MASKED:CREDENTIAL>`, and the number replaced."""
    count = 0
    for key in keys:
        if key in text:
            count += text.count(key)
            text = text.replace(key, KEY_PLACEHOLDER)
    return text, count
