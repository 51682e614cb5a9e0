"""A small on-disk cache of finalized credit references, keyed by the sanitized evidence.

One JSON file per key (`<dir>/<key[:2]>/<key>.json`), where the key is the sha256 of the exact sanitized prompt
messages, the model, the prompt version and the sampling settings. Writes go to a temporary file in the same directory
and are published with `os.replace`, which is atomic on POSIX and Windows: a reader sees either no file or a complete
one, a crash mid-write leaves only an ignored `.tmp` file, and several processes (ranks, jobs) can share one directory
(the last writer of a key wins; both wrote a reference for the same evidence). Unreadable or malformed entries are
treated as misses and overwritten by the next successful call.

A record holds the finalized reference text (masked, capped, API-key values scrubbed: never the raw reply), fields the
caller adds (`LiteLLMCreditReference`: the reply's own literals to mask, the model, the prompt version, the token
usage) and a timestamp. It never holds request parameters such as API keys, the raw (unsanitized) evidence, nor the
values the sanitizer masked. Simplification: there is no eviction; delete the directory to reset it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


CACHE_FORMAT = 2  # 1 held raw replies; its entries are never read (the format is part of the key)


def cache_key(messages: list[dict[str, Any]], model: str, prompt_version: str, **settings: Any) -> str:
    """sha256 of the sanitized prompt messages, the model, the prompt version and any sampling `settings`."""
    payload = {
        "format": CACHE_FORMAT,
        "prompt_version": prompt_version,
        "model": model,
        "settings": settings,
        "messages": messages,
    }
    encoded = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


class ReferenceCache:
    """Directory-backed cache of `key -> record` JSON files, safe to share between processes.

    Args:
        directory: where the files live (created if missing).
    """

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.errors = 0

    def path(self, key: str) -> Path:
        if len(key) < 8 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"cache keys are sha256 hex digests, got {key!r}")
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The record stored under `key`, or `None` if it is missing, partial or malformed."""
        path = self.path(key)
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            self.errors += 1
            return None
        if not isinstance(record, dict) or record.get("key") != key or not isinstance(record.get("reference"), str):
            self.errors += 1
            return None
        return record

    def put(self, key: str, reference: str, **fields: Any) -> Path:
        """Atomically stores the finalized `reference` text (and JSON-serializable `fields`) under `key`."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"key": key, "format": CACHE_FORMAT, "created_at": time.time(), **fields, "reference": reference}
        data = json.dumps(record, ensure_ascii=False, indent=1, default=str)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:16]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return path
