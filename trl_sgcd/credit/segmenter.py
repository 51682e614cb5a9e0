"""The divergence-spike / entropy-termination segmenter `g` (paper §4.4).

The paper describes the segmenter qualitatively: "within each rollout we normalize d, mark divergence spikes, and
extend a high-credit span while the teacher entropy remains stable; entropy rises or a divergence reset terminate the
span". It gives no thresholds. This module implements a concrete, deterministic rule; every threshold is a field of
`SegmenterConfig` (whose defaults `SGCDConfig` uses) and of `SGCDConfig`:

1. normalise `d` per rollout with a robust z-score `z = (d - median) / (1.4826 · MAD)` over valid tokens (the mean
   absolute deviation replaces the MAD when more than half the tokens share the median), and a magnitude
   `dn = clip(d / q99(d), 0, 1)`;
2. a *spike* is a valid token with `z ≥ spike_z` and `d ≥ min_spike_divergence`;
3. from each spike `t0`, grow a span rightwards while the next token is valid, the teacher entropy stays within
   `entropy_tolerance` nats of `H[t0]` and `z ≥ reset_z`, up to `max_span_tokens`;
4. saliency `s = max(dn, saliency_floor)` inside spans, 0 elsewhere;
5. if spans cover more than `max_selected_fraction` of the valid tokens, keep the spans with the highest mean `z`.

Option (this package's own, not in the paper): `noise_floor`, an absolute divergence in nats below which a token is
never a spike nor part of a span. Steps 1-2 are scale-free, so without it a policy whose teacher and student barely
differ (a random-weight model: mean `d` ≈ 1.5e-4 nats, max ≈ 7e-4) still gets spans and weights up to `W = c` from
noise; with a floor above the noise, such a rollout keeps `W ≡ 1`. The default `0.0` is the paper's scale-free rule.

Option (this package's own): *signed* disagreement on the observed token (`signed_agreement`). The divergence is
unsigned: it is as large where the reference makes the teacher *more* sure of the token the rollout took (a correct
opening move) as where it makes it less sure (the wrong call). With `segment_signed`, a failed rollout (`A < 0`) keeps
the divergence only where the teacher gives the observed token a lower log-probability than the student, and a
successful one (`A > 0`) only where it gives it a higher one; elsewhere `d` is 0 and earns no credit.

Option (this package's own): the *baseline* step 1 measures a spike against (`baseline`). A summary reference in
context shifts a small policy's distribution on every token, by much the same amount on the siblings' shared
opening moves; measured against the rollout's own tokens alone, that shared shift is what stands out.

- `"rollout"` (the paper's "within each rollout we normalize d"): step 1 as above.
- `"group"`: the median, MAD and `q99` of step 1 are pooled over the valid tokens of the rollout's whole sibling
  group, so a rollout whose divergence is high only in the way all its siblings' is earns no spike.
- `"position"`: step 1 runs on the residual `d - b`, where `b` at each token is the mean divergence of the *other*
  siblings at the aligned position (same assistant turn, same offset in it); where no sibling reaches that
  position, `b` is the median of the siblings' divergence. The magnitude is `clip(r⁺ / q99(r⁺), 0, 1)`.
- `"success_position"`: as `"position"`, with `b` from the siblings with a positive advantage only (the ones on a
  good path; all other siblings when none is left).

The group options need each row's group (`groups`); a row without siblings in the batch (or any row, when no groups
are given) gets the `"rollout"` rule. `min_spike_divergence` and `noise_floor` always apply to the raw divergence.

The default is `"success_position"`, chosen on the localization benchmark's dev split (`docs/results.md`); the
paper's rule is `baseline="rollout"`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch


Baseline = Literal["rollout", "group", "position", "success_position"]
BASELINES = ("rollout", "group", "position", "success_position")


@dataclass(frozen=True)
class SegmenterConfig:
    """Thresholds of the saliency segmenter (see the module docstring)."""

    spike_z: float = 3.0
    entropy_tolerance: float = 0.5
    reset_z: float = 0.5
    max_span_tokens: int = 64
    saliency_floor: float = 0.5
    max_selected_fraction: float = 0.25
    min_spike_divergence: float = 1e-4
    noise_floor: float = 0.0
    baseline: Baseline = "success_position"

    def __post_init__(self):
        if self.baseline not in BASELINES:
            raise ValueError(f"Unknown segment baseline {self.baseline!r}; expected one of {BASELINES}.")


@dataclass
class Span:
    """A selected span `[start, end]` (inclusive, token positions in the completion) of one rollout."""

    row: int
    start: int
    end: int
    mean_z: float

    def __len__(self) -> int:
        return self.end - self.start + 1


def _pools(mask: torch.Tensor, groups: torch.Tensor | None) -> list[list[int]]:
    """The rows whose valid tokens share one normalisation: each row alone, or each group's rows."""
    if groups is None:
        return [[i] for i in range(mask.size(0))]
    return [torch.nonzero(groups == g).flatten().tolist() for g in groups.unique().tolist()]


def robust_zscore(d: torch.Tensor, mask: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Robust z-score of `d` over `mask`ed positions, per row or, with `groups` (`(B,)` ids), with the median and
    scale pooled over each group's rows (0 where the pool has no spread)."""
    z = torch.zeros_like(d, dtype=torch.float32)
    for rows in _pools(mask, groups):
        valid = d[rows][mask[rows]].float()
        if valid.numel() == 0:
            continue
        med = valid.median()
        scale = 1.4826 * (valid - med).abs().median()
        if scale <= 1e-8:
            # More than half the tokens sit exactly on the median (a mostly-agreeing teacher): fall back to the mean
            # absolute deviation, which a handful of disagreeing tokens cannot inflate the way they inflate the std.
            scale = 1.2533 * (valid - med).abs().mean()
        if scale <= 1e-8:
            continue
        z[rows] = (d[rows].float() - med) / scale
    return z * mask


def _magnitude(d: torch.Tensor, mask: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """`clip(d / q99(d), 0, 1)` with `q99` over each row's (or each group's) valid tokens."""
    out = torch.zeros_like(d, dtype=torch.float32)
    for rows in _pools(mask, groups):
        valid = d[rows][mask[rows]].float()
        if valid.numel() == 0:
            continue
        top = torch.quantile(valid, 0.99)
        if top > 0:
            out[rows] = (d[rows].float() / top).clamp(0.0, 1.0)
    return out * mask


def aligned_positions(assistant_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(turn, offset)` of every token: the index of its run of assistant tokens in the row and its place in it."""
    a = assistant_mask.bool()
    starts = a & ~torch.nn.functional.pad(a[:, :-1], (1, 0))
    turn = (starts.cumsum(1) - 1).clamp(min=0)
    pos = torch.arange(a.size(1)).expand_as(a)
    offset = pos - torch.where(starts, pos, 0).cummax(1).values
    return turn, offset


def position_baseline(
    d: torch.Tensor,
    mask: torch.Tensor,
    assistant_mask: torch.Tensor,
    groups: torch.Tensor,
    positive: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per token, the mean divergence of the row's other siblings at the aligned position (see the module docstring).

    Args:
        d, mask: `(B, T)` divergence and valid tokens.
        assistant_mask: `(B, T)` assistant tokens, which define the turns positions are aligned by.
        groups: `(B,)` group id of each row.
        positive: `(B,)` rows that may serve as baseline (the siblings with `A > 0`); all siblings when None or when
            a row has no such sibling.

    Returns:
        `(B, T)` baseline, 0 for rows without a sibling that has valid tokens.
    """
    d, mask = d.float(), mask.bool()
    turn, offset = aligned_positions(assistant_mask)
    grid = torch.zeros(d.size(0), int(turn.max()) + 1 if d.numel() else 1, d.size(1))
    count = torch.zeros_like(grid)
    rows, cols = torch.nonzero(mask, as_tuple=True)
    grid[rows, turn[rows, cols], offset[rows, cols]] = d[rows, cols]
    count[rows, turn[rows, cols], offset[rows, cols]] = 1.0
    has = mask.any(1)
    base = torch.zeros_like(d)
    for i in range(d.size(0)):
        siblings = (groups == groups[i]) & has
        siblings[i] = False
        if positive is not None and (siblings & positive.bool()).any():
            siblings &= positive.bool()
        if not siblings.any():
            continue
        total, n = grid[siblings].sum(0), count[siblings].sum(0)
        level = d[siblings][mask[siblings]].median()
        aligned_sum, aligned_n = total[turn[i], offset[i]], n[turn[i], offset[i]]
        base[i] = torch.where(aligned_n > 0, aligned_sum / aligned_n.clamp(min=1.0), level)
    return base * mask


@torch.no_grad()
def saliency_segments(
    divergence: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    config: SegmenterConfig = SegmenterConfig(),
    *,
    groups: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    assistant_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[Span]]:
    """Computes the saliency `s ∈ [0, 1]` of every token from the detached credit features.

    Args:
        divergence: `(B, T)` teacher/student divergence `d`.
        entropy: `(B, T)` teacher entropy `H`.
        mask: `(B, T)` valid positions (assistant tokens of rows that have a credit reference, minus masked literals).
        config: segmenter thresholds.
        groups: `(B,)` sibling-group id of each row. Without it every row is alone, and every baseline is the paper's
            within-rollout rule.
        advantages: `(B,)` sequence advantages; `"success_position"` takes its baseline from the rows with `A > 0`.
        assistant_mask: `(B, T)` assistant tokens, whose runs are the turns `"position"` aligns by (default `mask`).

    Returns:
        `(s, spans)`: the `(B, T)` float32 saliency (0 outside spans and on invalid positions) and the selected spans.
    """
    mask = mask.bool()
    d = divergence.detach().float().cpu()
    h = entropy.detach().float().cpu()
    m = mask.cpu()
    strong = (m & (d >= config.noise_floor)).tolist()
    raw = d.tolist()
    if config.baseline == "rollout" or groups is None:
        z, dn = robust_zscore(d, m), _magnitude(d, m)
    elif config.baseline == "group":
        z, dn = robust_zscore(d, m, groups.cpu()), _magnitude(d, m, groups.cpu())
    elif config.baseline in ("position", "success_position"):
        positive = None
        if config.baseline == "success_position":
            if advantages is None or advantages.dim() != 1:
                raise ValueError("segment baseline 'success_position' needs the (B,) sequence advantages")
            positive = advantages.detach().cpu() > 0
        aligned = m if assistant_mask is None else assistant_mask.cpu()
        r = d - position_baseline(d, m, aligned, groups.cpu(), positive)
        z, dn = robust_zscore(r, m), _magnitude(r.clamp(min=0.0), m)
    else:
        raise ValueError(f"Unknown segment baseline {config.baseline!r}; expected one of {BASELINES}.")
    saliency = torch.zeros_like(d)
    spans: list[Span] = []
    num_cols = d.size(1)
    for i in range(d.size(0)):
        zi, hi, mi, di, si = z[i].tolist(), h[i].tolist(), m[i].tolist(), raw[i], strong[i]
        row_spans: list[Span] = []
        t = 0
        while t < num_cols:
            if not (si[t] and zi[t] >= config.spike_z and di[t] >= config.min_spike_divergence):
                t += 1
                continue
            start, h0, end = t, hi[t], t
            while (
                end + 1 < num_cols
                and si[end + 1]
                and hi[end + 1] <= h0 + config.entropy_tolerance
                and zi[end + 1] >= config.reset_z
                and end + 1 - start < config.max_span_tokens
            ):
                end += 1
            row_spans.append(Span(i, start, end, sum(zi[start : end + 1]) / (end - start + 1)))
            t = end + 1

        budget = int(config.max_selected_fraction * sum(mi))
        if sum(len(s) for s in row_spans) > budget:
            kept, used = [], 0
            for span in sorted(row_spans, key=lambda s: -s.mean_z):
                if used + len(span) <= budget:
                    kept.append(span)
                    used += len(span)
            row_spans = sorted(kept, key=lambda s: s.start)
        for span in row_spans:
            saliency[i, span.start : span.end + 1] = dn[i, span.start : span.end + 1].clamp(min=config.saliency_floor)
        spans.extend(row_spans)
    return (saliency * m).to(divergence.device), spans


def signed_agreement(log_ratio: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """`1` where the teacher's shift on the observed token agrees with the advantage's sign, else `0`.

    Args:
        log_ratio: `(B, T)` `log q_teacher(y_t) - log p_student(y_t)` on the observed tokens.
        advantages: `(B,)` sequence or `(B, T)` token advantages.
    """
    a = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    return ((log_ratio * a.to(log_ratio.dtype)) > 0).to(log_ratio.dtype)
