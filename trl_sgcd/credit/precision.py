"""Credit precision: does the extra weight of a failed rollout land on the step where it left the expert's path?

A dataset may carry an optional `expert_action` column: the expert's tool calls for the task, in order, as a list of
`{"name": ..., "arguments": {...}}` dicts (or that list as JSON). For each failed rollout whose group got a credit
reference, the *deviation* is the first call that leaves the expert's path (`path_deviation`: reads in any order,
writes in order after their reads; a tool is a read when its name starts with a read verb, as in
`ContrastCreditReference`), or the final answer when the rollout stops before the path is complete. Its tokens are
the deviating call's tokens (between the `index`-th `<tool_call>` and its `</tool_call>` in the decoded completion,
the markup of Qwen-style chat templates) or the last run of trained tokens.

`credit_precision_metrics` returns, over such rollouts with extra weight (`W > 1` somewhere):

- `precision`: the share of the extra weight `W - 1` on deviation tokens, pooled over rollouts;
- `deviation_share`: the share of the credited tokens that are deviation tokens (what a uniform weight would give);
- `lift`: the per-rollout ratio of the two, averaged (1.0 = no localization; the issue's "per-rollout lift");
- `rollouts`: how many rollouts were measured.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from ..references.alignment import ToolStep, path_deviation
from ..references.contrast import DEFAULT_READ_PREFIXES


def _steps(calls: Any) -> list[ToolStep]:
    if isinstance(calls, str):
        calls = json.loads(calls)
    steps = []
    for call in calls or []:
        function = call.get("function", call)
        args = function.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass
        canonical = "" if args in (None, "", {}, []) else json.dumps(args, sort_keys=True, ensure_ascii=False)
        steps.append(ToolStep(name=str(function.get("name")), args=canonical, raw_args=args))
    return steps


def _is_read(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower().startswith(DEFAULT_READ_PREFIXES)


def rollout_calls(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tool calls of a rollout's messages, in order."""
    return [call for m in messages if m.get("role") == "assistant" for call in m.get("tool_calls") or []]


def deviation_tokens(
    expert_action: Any, messages: Sequence[dict[str, Any]], tokens: Sequence[str], trained: Sequence[bool]
) -> list[bool] | None:
    """Mask of the tokens of a failed rollout's first deviation from the expert's path, or None when there is none.

    Args:
        expert_action: the expert's tool calls (list of dicts, or JSON).
        messages: the rollout's completion messages.
        tokens: the completion's tokens, decoded one by one.
        trained: which tokens the loss trains on (assistant tokens).
    """
    calls = _steps(rollout_calls(messages))
    index = path_deviation(_steps(expert_action), calls, _is_read)
    return None if index is None else step_tokens(index, len(calls), tokens, trained)


def step_tokens(index: int, n_calls: int, tokens: Sequence[str], trained: Sequence[bool]) -> list[bool] | None:
    """Mask of the tokens of tool call `index` (or of the final answer when `index == n_calls`), None if not found."""
    mask = [False] * len(tokens)
    if index < n_calls:
        opens = [t for t, tok in enumerate(tokens) if tok.strip() == "<tool_call>"]
        if index >= len(opens):
            return None
        start = opens[index]
        end = next((t for t in range(start, len(tokens)) if tokens[t].strip() == "</tool_call>"), len(tokens) - 1)
        for t in range(start, end + 1):
            mask[t] = bool(trained[t])
    else:  # stopped early: the deviation is the final answer, the last run of trained tokens
        t = len(tokens) - 1
        while t >= 0 and not trained[t]:
            t -= 1
        while t >= 0 and trained[t]:
            mask[t] = True
            t -= 1
    return mask if any(mask) else None


def precision_sums(rows: Sequence[dict[str, Any]]) -> list[float]:
    """`[extra weight on deviations, extra weight, deviation tokens, credited tokens, sum of lifts, rollouts]`.

    Sums, so that processes can add theirs before `precision_from_sums`. Each row: `expert_action`, `messages`,
    `tokens` (decoded one by one), `weights` (`W` per token), `credit_mask` (tokens that can earn credit), `success`.
    Rows that succeeded, have no `expert_action`, no deviation, or no extra weight are skipped.
    """
    sums = [0.0] * 6
    for row in rows:
        if row.get("success") or row.get("expert_action") in (None, "", []):
            continue
        credit = [bool(c) for c in row["credit_mask"]]
        mask = deviation_tokens(row["expert_action"], row["messages"], row["tokens"], credit)
        if mask is None:
            continue
        extra = [max(float(w) - 1.0, 0.0) if c else 0.0 for w, c in zip(row["weights"], credit, strict=True)]
        r_extra = math.fsum(extra)
        if r_extra <= 0:
            continue
        r_dev = math.fsum(e for e, m in zip(extra, mask, strict=True) if m)
        n_credit, n_dev = sum(credit), sum(mask)
        for k, value in enumerate((r_dev, r_extra, n_dev, n_credit, (r_dev / r_extra) / (n_dev / n_credit), 1.0)):
            sums[k] += value
    return sums


def precision_from_sums(sums: Sequence[float]) -> dict[str, float]:
    """The metrics of the module docstring from `precision_sums` (added over processes); `{}` without rollouts."""
    extra_dev, extra, tokens_dev, tokens, lift_sum, n = (float(v) for v in sums)
    if n == 0:
        return {}
    return {
        "precision": extra_dev / extra,
        "deviation_share": tokens_dev / tokens,
        "lift": lift_sum / n,
        "rollouts": n,
    }


def credit_precision_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Credit precision over failed rollouts (see the module docstring and `precision_sums`)."""
    return precision_from_sums(precision_sums(rows))
