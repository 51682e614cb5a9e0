"""Bounded credit weights and credit-weighted advantages (paper §4.5, Eqs. 3-4, App. A).

`W = clip(1 + γ·s, 1, c)` is detached, never below 1 and never above `c`, so the token advantage `Â = A·W` keeps the
sign of `A` and `|Â| ≤ c·|A|` (Corollary 1). The weight multiplies the advantage only; a reference-KL penalty, if any,
is added by TRL afterwards and is therefore not scaled.
"""

from __future__ import annotations

import torch


def credit_weights(saliency: torch.Tensor, gamma: float = 1.0, cap: float = 2.0) -> torch.Tensor:
    """Paper Eq. (4): `W = clip(1 + γ·s, 1, c)`, detached."""
    return (1.0 + gamma * saliency.detach()).clamp(min=1.0, max=cap)


def uniform_weights(weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The `uniform` ablation: each rollout's weights replaced by their mean over its valid tokens.

    The advantage mass of the rollout is unchanged; only the localisation is removed. Rows without valid tokens keep
    weight 1.
    """
    mask = mask.to(weights.dtype)
    count = mask.sum(-1, keepdim=True)
    mean = torch.where(count > 0, (weights * mask).sum(-1, keepdim=True) / count.clamp(min=1.0), 1.0)
    return torch.where(mask.bool(), mean.expand_as(weights), torch.ones_like(weights))


def credit_advantages(advantages: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Paper Eq. (3): per-token advantages `Â_{i,t} = A_i · W_{i,t}` of shape `(B, T)`."""
    return advantages.unsqueeze(-1) * weights.detach()
