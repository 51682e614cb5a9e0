"""GSPO's token-level importance ratio ("GSPO-token", Zheng et al. 2025, Eq. 13-14) on TRL's token path.

Sequence-level importance sampling (GSPO) gives every token of sequence `i` the ratio `s_i = exp(mean_t log(π_θ/π_old))`.
With a per-sequence advantage that is fine; with SGCD's per-token advantages `A·W_t`, TRL's sequence path averages the
token terms and the weights act only through their mean. GSPO-token keeps one ratio value per sequence but lets each
token carry its own advantage:

    ratio_t = sg[s_i] · π_θ(y_t) / sg[π_θ(y_t)]

Its value is `s_i` for every token (so clipping acts on `s_i`, exactly as in GSPO) and its gradient is
`s_i · ∇log π_θ(y_t)`. With per-sequence advantages its gradient equals GSPO's.

TRL's token path computes `ratio_t = exp(log π_θ(y_t) − old_t)`. Feeding it the "old" log-probabilities
`old_t = sg[log π_θ(y_t)] − sg[log s_i]` makes that exactly the GSPO-token ratio, so TRL's own clipping, loss types,
KL and metrics run unchanged.
"""

from __future__ import annotations

import torch


def sequence_log_ratio(logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`log s_i`: the length-normalised sequence log-ratio `Σ_t m_t (log π_θ − log π_old) / Σ_t m_t`, shape `(B, 1)`."""
    mask = mask.to(logps.dtype)
    total = ((logps - old_logps) * mask).sum(-1, keepdim=True)
    return total / mask.sum(-1, keepdim=True).clamp(min=1.0)


def gspo_token_old_logps(logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The "old" log-probabilities that turn TRL's token ratio `exp(logps − old)` into GSPO-token's ratio.

    Args:
        logps: `(B, T)` log-probabilities of the current policy (with or without a graph; it is detached here).
        old_logps: `(B, T)` log-probabilities of the policy that sampled the batch.
        mask: `(B, T)` tokens of the loss.

    Returns:
        `(B, T)` detached `sg[logps] − sg[log s_i]`.
    """
    current = logps.detach()
    return current - sequence_log_ratio(current, old_logps.detach(), mask)
