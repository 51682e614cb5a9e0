"""Masking credit-dump records before they reach disk (the dump writer applies it unless `credit_dump_raw`)."""

from __future__ import annotations

from typing import Any

from ...siblings import Sibling, SiblingGroup
from ..keys import known_keys, scrub_keys
from .core import Sanitizer


def mask_tokens(tokens: list[str], values: list[str], placeholder: str = "<MASKED>") -> list[str]:
    """Masks every occurrence of `values` in the decoded `tokens`, keeping one entry per token.

    A value usually spans several tokens: the first token it touches becomes `placeholder`, the others `""`, so the
    token list stays aligned with the weights.
    """
    text = "".join(tokens)
    covered = [False] * len(text)
    for value in sorted({v for v in values if v}, key=len, reverse=True):
        start = text.find(value)
        while start != -1:
            covered[start : start + len(value)] = [True] * len(value)
            start = text.find(value, start + len(value))
    out: list[str] = []
    pos = 0
    previous = False
    for token in tokens:
        hit = any(covered[pos : pos + len(token)])
        out.append(("" if previous else placeholder) if hit else token)
        previous = hit
        pos += len(token)
    return out


def mask_credit_record(record: dict[str, Any], sanitizer: Sanitizer | None = None) -> dict[str, Any]:
    """A copy of a credit-dump record with its messages, metadata, reference and tokens sanitized, and the value of
    every API key in the environment (`keys.known_keys`) masked, whatever its format."""
    sanitizer = sanitizer or Sanitizer()
    keys = known_keys()
    record = {
        **record,
        **{f: _scrub(record.get(f), keys) for f in ("messages", "metadata", "reference") if f in record},
    }
    messages = record.get("messages")
    as_text = isinstance(messages, str)
    chat = [{"role": "assistant", "content": messages}] if as_text else list(messages or [])
    group = SiblingGroup(
        prompt="",
        siblings=[Sibling(messages=chat, reward=float(record.get("reward") or 0.0), success=False)],
        metadata=dict(record.get("metadata") or {}),
    )
    clean = sanitizer.sanitize(group)
    masked = dict(record)
    masked_chat = clean.group.siblings[0].messages
    masked["messages"] = masked_chat[0]["content"] if as_text else masked_chat
    masked["metadata"] = clean.group.metadata
    values = list(clean.masked_values)
    if record.get("reference") is not None:
        masked["reference"], _ = sanitizer.sanitize_text(str(record["reference"]), literals=values, prose=True)
    if record.get("tokens") is not None:
        # Values the text rules find in the joined completion too (e.g. a key the tokenizer split).
        joined = "".join(record["tokens"])
        values += sanitizer.sanitize(SiblingGroup(prompt=joined, siblings=[])).masked_values + keys
        masked["tokens"] = mask_tokens(record["tokens"], values)
    return masked


def _scrub(obj: Any, keys: list[str]) -> Any:
    if isinstance(obj, str):
        return scrub_keys(obj, keys)[0]
    if isinstance(obj, (list, tuple)):
        return [_scrub(v, keys) for v in obj]
    if isinstance(obj, dict):
        return {k: _scrub(v, keys) for k, v in obj.items()}
    return obj
