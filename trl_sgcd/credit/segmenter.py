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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


@dataclass
class Span:
    """A selected span `[start, end]` (inclusive, token positions in the completion) of one rollout."""

    row: int
    start: int
    end: int
    mean_z: float

    def __len__(self) -> int:
        return self.end - self.start + 1


def robust_zscore(d: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row robust z-score of `d` over `mask`ed positions (0 where the row has no spread)."""
    z = torch.zeros_like(d, dtype=torch.float32)
    for i in range(d.size(0)):
        valid = d[i][mask[i]].float()
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
        z[i] = (d[i].float() - med) / scale
    return z * mask


def _magnitude(d: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row `clip(d / q99(d), 0, 1)` over valid tokens."""
    out = torch.zeros_like(d, dtype=torch.float32)
    for i in range(d.size(0)):
        valid = d[i][mask[i]].float()
        if valid.numel() == 0:
            continue
        top = torch.quantile(valid, 0.99)
        if top > 0:
            out[i] = (d[i].float() / top).clamp(0.0, 1.0)
    return out * mask


@torch.no_grad()
def saliency_segments(
    divergence: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    config: SegmenterConfig = SegmenterConfig(),
) -> tuple[torch.Tensor, list[Span]]:
    """Computes the saliency `s ∈ [0, 1]` of every token from the detached credit features.

    Args:
        divergence: `(B, T)` teacher/student divergence `d`.
        entropy: `(B, T)` teacher entropy `H`.
        mask: `(B, T)` valid positions (assistant tokens of rows that have a credit reference, minus masked literals).
        config: segmenter thresholds.

    Returns:
        `(s, spans)`: the `(B, T)` float32 saliency (0 outside spans and on invalid positions) and the selected spans.
    """
    mask = mask.bool()
    d = divergence.detach().float().cpu()
    h = entropy.detach().float().cpu()
    m = mask.cpu()
    z = robust_zscore(d, m)
    strong = (m & (d >= config.noise_floor)).tolist()
    dn = _magnitude(d, m)
    saliency = torch.zeros_like(d)
    spans: list[Span] = []
    num_cols = d.size(1)
    for i in range(d.size(0)):
        zi, hi, mi, di, si = z[i].tolist(), h[i].tolist(), m[i].tolist(), d[i].tolist(), strong[i]
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
