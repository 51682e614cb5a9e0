"""Sibling evidence: the data a credit-reference provider sees, and what it returns.

A *sibling group* is the set of rollouts the policy sampled for one task (prompt). SGCD only builds a credit
reference for *mixed* groups: at least one success and one failure (paper Eq. 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


Message = dict[str, Any]


def is_mixed(successes: Sequence[bool]) -> bool:
    """Whether a group of siblings is mixed (paper Eq. 1): `0 < #successes < n`."""
    return 0 < sum(successes) < len(successes)


@dataclass
class Sibling:
    """One rollout of a task.

    Args:
        messages: the rollout transcript as chat messages (assistant turns, tool calls and tool results), exactly as
            the policy produced and observed them. Never contains the credit reference.
        reward: the verifier reward of the rollout.
        success: whether the reward reaches the success threshold.
    """

    messages: list[Message]
    reward: float
    success: bool


@dataclass
class SiblingGroup:
    """All siblings of one task.

    Args:
        prompt: the task as chat messages (or a plain string), exactly as the student saw it.
        siblings: the group's rollouts, in sampling order.
        metadata: optional benchmark metadata (e.g. `task_id`, or `answer_literals`: strings the sanitizer must mask
            because they give the answer away).
    """

    prompt: list[Message] | str
    siblings: list[Sibling]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def successes(self) -> list[Sibling]:
        return [s for s in self.siblings if s.success]

    @property
    def failures(self) -> list[Sibling]:
        return [s for s in self.siblings if not s.success]

    @property
    def is_mixed(self) -> bool:
        return is_mixed([s.success for s in self.siblings])

    @property
    def task_text(self) -> str:
        """The task as plain text (the content of the user turns, or the prompt string)."""
        if isinstance(self.prompt, str):
            return self.prompt
        return "\n".join(str(m.get("content") or "") for m in self.prompt if m.get("role") == "user")


@dataclass
class CreditReference:
    """A training-only, stepwise credit reference for one sibling group.

    Args:
        text: the reference inserted into the teacher-side scoring context. Never shown to the student.
        masked_literals: literals that must receive no credit (their tokens get saliency 0).
        metadata: provider bookkeeping (model, tokens, cost, cache hit, ...). Never inserted anywhere.
    """

    text: str
    masked_literals: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def coerce(cls, value: CreditReference | str | None) -> CreditReference | None:
        """Normalizes a provider's return value; empty or whitespace-only references become `None`."""
        if value is None:
            return None
        if isinstance(value, str):
            value = cls(text=value)
        if not isinstance(value, CreditReference):
            raise TypeError(
                f"A credit-reference provider must return a CreditReference, a str or None, got {type(value).__name__}."
            )
        if not value.text or not value.text.strip():
            return None
        return value
