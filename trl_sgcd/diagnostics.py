"""Credit diagnostics and the validity guard (paper §5.4 and App. B).

The paper declares a run invalid when the dense features are all zero, the credit weights are inert, the response
masks include prompt or tool-observation tokens, or the detached divergence becomes a direct actor-gradient loss.
`ValidityGuard` checks each of these every step, counts violations (logged as `sgcd/guard/*`) and warns loudly, at
the first occurrence and then every `warn_every` occurrences, instead of stopping training.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from typing import Any

import torch


logger = logging.getLogger("trl_sgcd")


def credit_statistics(
    weights: torch.Tensor,
    token_advantages: torch.Tensor,
    raw_weights: torch.Tensor,
    divergence: torch.Tensor,
    entropy: torch.Tensor,
    cap: float,
) -> dict[str, float]:
    """Summary statistics over the credit-eligible tokens of the (global) batch; all inputs are 1-D and aligned.

    `raw_weights` is `1 + γ·s` before clipping, so `clip_frac` is the share of tokens where the cap binds.
    """
    if weights.numel() == 0:
        return {}
    w = weights.float()
    q = torch.quantile(w, torch.tensor([0.5, 0.9, 0.99], dtype=w.dtype, device=w.device)).tolist()
    boosted = w > 1.0
    pos, neg = token_advantages > 0, token_advantages < 0
    stats = {
        "weights/mean": w.mean().item(),
        "weights/max": w.max().item(),
        "weights/p50": q[0],
        "weights/p90": q[1],
        "weights/p99": q[2],
        "weights/clip_frac": (raw_weights.float() > cap).float().mean().item(),
        "weights/boosted_frac": boosted.float().mean().item(),
        "weights/boosted_frac_pos_adv": boosted[pos].float().mean().item() if pos.any() else 0.0,
        "weights/boosted_frac_neg_adv": boosted[neg].float().mean().item() if neg.any() else 0.0,
        "weights/mean_pos_adv": w[pos].mean().item() if pos.any() else 1.0,
        "weights/mean_neg_adv": w[neg].mean().item() if neg.any() else 1.0,
        "divergence/mean": divergence.float().mean().item(),
        "divergence/max": divergence.float().max().item(),
        "teacher_entropy/mean": entropy.float().mean().item(),
    }
    return stats


class ValidityGuard:
    """Counts and warns about the paper's invalid-run conditions; never raises."""

    def __init__(self, inert_warning_steps: int = 20, warn_every: int = 50):
        self.inert_warning_steps = inert_warning_steps
        self.warn_every = warn_every
        self.counts = {"zero_features": 0, "inert_weights": 0, "mask_violation": 0, "grad_on_weights": 0}
        self._inert_streak = 0

    def _warn(self, key: str, message: str) -> None:
        self.counts[key] += 1
        if self.counts[key] == 1 or self.counts[key] % self.warn_every == 0:
            logger.warning("[SGCD validity guard] %s (occurrence %d)", message, self.counts[key])

    def check(
        self,
        has_references: bool,
        features_all_zero: bool,
        weights_inert: bool,
        mask_violation: bool,
        weights_require_grad: bool,
    ) -> dict[str, float]:
        if has_references and features_all_zero:
            self._warn(
                "zero_features",
                "the teacher/student divergence is zero on every credit token although credit references exist: "
                "the teacher context is not reaching the teacher pass.",
            )
        if has_references and weights_inert:
            self._inert_streak += 1
            if self._inert_streak >= self.inert_warning_steps:
                self._warn(
                    "inert_weights",
                    f"the credit weights have been W = 1 everywhere for {self._inert_streak} consecutive steps with "
                    "references present: check the segmenter thresholds (segment_spike_z, segment_min_divergence).",
                )
        elif has_references:
            self._inert_streak = 0
        if mask_violation:
            self._warn("mask_violation", "credit weights > 1 landed on prompt, padding or tool-observation tokens.")
        if weights_require_grad:
            self._warn("grad_on_weights", "the credit weights carry a gradient; they must be detached.")
        return {f"guard/{k}": float(v) for k, v in self.counts.items()} | {"guard/inert_streak": self._inert_streak}


def _call_name(call: Any) -> str | None:
    if not isinstance(call, dict):
        return None
    function = call.get("function")
    return (function if isinstance(function, dict) else call).get("name")


def tool_audit(
    completions: list[Any], successes: list[bool], communication_tools: Collection[str] = ()
) -> dict[str, float]:
    """The paper's zero-tool audit: tool calls per rollout and per success, share of successes with no tool call.

    Calls to `communication_tools` (e.g. τ³'s `send_message_to_user`, which only talks to the customer) are not
    environment tool calls: a success reached by messaging the user alone counts as zero-tool.
    """
    calls = []
    for completion in completions:
        messages = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else completion
        calls.append(
            sum(
                _call_name(call) not in communication_tools
                for m in messages
                if m.get("role") == "assistant"
                for call in m.get("tool_calls") or []
            )
        )
    success_calls = [n for n, ok in zip(calls, successes, strict=True) if ok]
    return {
        "tool_calls_per_rollout": sum(calls) / max(1, len(calls)),
        "tool_calls_per_success": sum(success_calls) / len(success_calls) if success_calls else 0.0,
        "zero_tool_success_frac": (sum(n == 0 for n in success_calls) / len(success_calls) if success_calls else 0.0),
    }


def declared_communication_tools(environments: Iterable[Any]) -> frozenset[str]:
    """The union of the `communication_tools` the environments (instances or classes) declare; empty if none do."""
    return frozenset(name for env in environments for name in getattr(env, "communication_tools", ()) or ())
