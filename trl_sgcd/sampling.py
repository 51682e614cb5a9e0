"""Sibling groups across the global batch and mixed-group dynamic sampling (paper §4.2, DAPO-style refill).

TRL lays a generation batch out as consecutive blocks of `num_generations` rows per prompt, sharded contiguously across
processes, so a group may straddle two ranks. Everything here works on the *gathered* (global) rows, which are
identical on every rank; every decision derived from them (which groups are mixed, whether to resample, which groups
fill the batch) is therefore identical on every rank too, and all ranks issue the same collective calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .siblings import Sibling, SiblingGroup, is_mixed


@dataclass
class GlobalRollouts:
    """The rollouts of one generation batch, gathered from all processes, in global row order.

    Args:
        prompts: student prompts (after any environment `reset` observation was appended).
        completions: rollout transcripts as chat messages (or strings for non-conversational data).
        rewards: total (weighted) reward per row; NaN for unscorable rows.
        num_generations: group size `n`.
        success_threshold: success means `reward >= success_threshold`.
        environments: per-row environment name (multi-environment runs) or `None`.
        metadata: per-row metadata forwarded to providers (e.g. `task_id`, `answer_literals`).
        local_start, local_end: the rows this process holds.
    """

    prompts: list[Any]
    completions: list[Any]
    rewards: list[float]
    num_generations: int
    success_threshold: float
    environments: list[Any] | None = None
    metadata: list[dict[str, Any]] = field(default_factory=list)
    local_start: int = 0
    local_end: int = 0

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def num_groups(self) -> int:
        return len(self.rewards) // self.num_generations

    def success(self, row: int) -> bool:
        reward = self.rewards[row]
        return reward == reward and reward >= self.success_threshold  # NaN (unscorable) is never a success

    def group_rows(self, group: int) -> range:
        return range(group * self.num_generations, (group + 1) * self.num_generations)

    def group_of(self, row: int) -> int:
        return row // self.num_generations

    def is_mixed(self, group: int) -> bool:
        return is_mixed([self.success(r) for r in self.group_rows(group)])

    def mixed_groups(self) -> list[int]:
        return [g for g in range(self.num_groups) if self.is_mixed(g)]

    def sibling_group(self, group: int) -> SiblingGroup:
        rows = self.group_rows(group)
        siblings = [
            Sibling(messages=_as_messages(self.completions[r]), reward=float(self.rewards[r]), success=self.success(r))
            for r in rows
        ]
        metadata = dict(self.metadata[rows[0]]) if self.metadata else {}
        return SiblingGroup(prompt=self.prompts[rows[0]], siblings=siblings, metadata=metadata)

    def select(self, rows: list[int]) -> GlobalRollouts:
        """A new `GlobalRollouts` restricted to `rows` (in that order)."""
        return GlobalRollouts(
            prompts=[self.prompts[r] for r in rows],
            completions=[self.completions[r] for r in rows],
            rewards=[self.rewards[r] for r in rows],
            num_generations=self.num_generations,
            success_threshold=self.success_threshold,
            environments=None if self.environments is None else [self.environments[r] for r in rows],
            metadata=[self.metadata[r] for r in rows] if self.metadata else [],
        )

    @staticmethod
    def concat(parts: list[GlobalRollouts]) -> GlobalRollouts:
        first = parts[0]
        return GlobalRollouts(
            prompts=[p for part in parts for p in part.prompts],
            completions=[c for part in parts for c in part.completions],
            rewards=[r for part in parts for r in part.rewards],
            num_generations=first.num_generations,
            success_threshold=first.success_threshold,
            environments=None
            if first.environments is None
            else [e for part in parts for e in part.environments or [None] * len(part)],
            metadata=[m for part in parts for m in (part.metadata or [{}] * len(part))],
        )


def _as_messages(completion: Any) -> list[dict[str, Any]]:
    if isinstance(completion, str):
        return [{"role": "assistant", "content": completion}]
    return list(completion)


def plan_refill(candidates: list[tuple[int, int, bool]], target_groups: int) -> tuple[list[tuple[int, int]], int]:
    """Chooses the groups of the final batch from every group sampled this step.

    Args:
        candidates: `(round, group, is_mixed)` for every sampled group, in sampling order.
        target_groups: number of groups the generation batch holds.

    Returns:
        `(chosen, filled)`: the `(round, group)` pairs to train on (mixed groups first, in sampling order, then the
        earliest non-mixed groups when too few mixed groups exist) and how many non-mixed groups filled the batch.
    """
    mixed = [(r, g) for r, g, m in candidates if m]
    rest = [(r, g) for r, g, m in candidates if not m]
    chosen = mixed[:target_groups]
    filled = max(0, target_groups - len(chosen))
    return chosen + rest[:filled], filled


def pad_to_width(tensor: torch.Tensor, width: int, value: float, left: bool) -> torch.Tensor:
    """Pads dim 1 of `tensor` to `width` on the left or right."""
    missing = width - tensor.size(1)
    if missing <= 0:
        return tensor
    shape = (tensor.size(0), missing, *tensor.shape[2:])
    filler = torch.full(shape, value, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([filler, tensor] if left else [tensor, filler], dim=1)
