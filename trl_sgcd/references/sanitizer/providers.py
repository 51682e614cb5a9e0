"""Finalizing provider references and wrapping user providers so they only ever see sanitized evidence."""

from __future__ import annotations

import json
from typing import Any

from ...siblings import CreditReference, SiblingGroup
from ..base import CreditReferenceProvider, as_provider, run_blocking
from ..keys import known_keys, scrub_keys
from .config import SanitizedGroup
from .core import Sanitizer
from .rules import PLACEHOLDER_RE


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
       the sanitizer missed), the value of any API key in the environment (`keys.known_keys`), plus anything the
       sanitizer's patterns catch.
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
    text, scrubbed = scrub_keys(reference.text, known_keys())
    text, counts = sanitizer.sanitize_text(text, literals=[*answer_literals, *sanitized.masked_values], prose=True)
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
    return CreditReference(text=text, masked_literals=literals, metadata=metadata), scrubbed + sum(counts.values())


class SanitizingProvider(CreditReferenceProvider):
    """Runs the `Sanitizer` in front of a provider that does not sanitize by itself (e.g. a user callable).

    The wrapped provider only ever sees the sanitized group; its reference is finalized with `finalize_reference`.
    Sanitizing and finalizing run on worker threads, off the event loop.

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
        sanitized = await run_blocking(self.sanitizer.sanitize, group)
        self._hits += sanitized.total
        reference = CreditReference.coerce(await self.provider.abuild(sanitized.group))
        if reference is None:
            return None
        return (await run_blocking(self._finalize, reference, group, sanitized))[0]

    def _finalize(self, reference: CreditReference, group: SiblingGroup, sanitized: SanitizedGroup):
        return finalize_reference(reference, group, sanitized, self.sanitizer, self.max_reference_chars)

    @property
    def batches_natively(self) -> bool:
        return self.provider.batches_natively

    async def abuild_many(self, groups):
        if not self.provider.batches_natively:
            return await super().abuild_many(groups)
        sanitized = await run_blocking(lambda: [self.sanitizer.sanitize(group) for group in groups])
        self._hits += sum(s.total for s in sanitized)
        results = await self.provider.abuild_many([s.group for s in sanitized])
        return await run_blocking(self._finalize_many, groups, sanitized, results)

    def _finalize_many(self, groups, sanitized, results) -> list:
        finalized: list = []
        for group, clean, result in zip(groups, sanitized, results, strict=True):
            try:
                reference = result if isinstance(result, BaseException) else CreditReference.coerce(result)
            except TypeError as exc:
                reference = exc
            if isinstance(reference, CreditReference):
                reference = self._finalize(reference, group, clean)[0]
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
