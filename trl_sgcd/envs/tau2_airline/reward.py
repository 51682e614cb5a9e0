"""`tau2_airline_reward`: tau2's evaluator on the recorded conversation, with the agent's closing message."""

from __future__ import annotations

import re
from typing import Any

from .env import Tau2AirlineEnv
from .tasks import task_category


# ── reward function ────────────────────────────────────────────────────────────────────────────────────────────────

_THINK_RE = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)


def _closing_message(completion: Any) -> tuple[str | None, bool]:
    """The rollout's final plain assistant text (reasoning removed), and whether it ended on an unexecuted tool call."""
    if isinstance(completion, str):
        return _THINK_RE.sub("", completion).strip() or None, False
    if not completion:
        return None, False
    last = completion[-1]
    if last.get("role") != "assistant":
        return None, False
    if last.get("tool_calls"):
        return None, True
    content = last.get("content")
    if isinstance(content, list):
        content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    text = _THINK_RE.sub("", content or "").strip()
    return text or None, False


def tau2_airline_reward(completions: list[Any], environments: list[Any] | None = None, **kwargs: Any) -> list:
    """TRL reward function: tau2's official score, counting the rollout's closing message.

    TRL ends a rollout at the first assistant message without a tool call, and that message never reaches the
    environment. This function hands it over (as the agent's closing message to the customer, which tau2's
    `COMMUNICATE` check reads like any agent message) and scores the episode. A rollout that ends on a tool call that
    was never executed (tool-call or length budget exhausted) is a premature termination and scores 0, as in tau2.

    The environment's own `get_reward` column then returns `None` for these rollouts, which TRL ignores, so the reward is
    counted once. Rows whose environment is not a `Tau2AirlineEnv` get `None`.

    Through TRL's `log_metric`, it also logs per step (prefixed `eval_` in evaluation): `tau2_airline/success/<category>`
    (success rate per task category, i.e. pass@1 per category over the sampled rollouts), `tau2_airline/tool_calls` and
    `tau2_airline/user_turns` (means per rollout), `tau2_airline/customer_stop` (fraction of conversations the customer
    ended) and `tau2_airline/unfinished` (fraction ending on an unexecuted tool call).

    Args:
        completions: TRL's completions (lists of messages).
        environments: TRL's per-rollout environment instances (passed by TRL when `environment_factory` is used).
        **kwargs: TRL's other reward arguments; `category` (a dataset column) and `log_metric` are used when present.
    """
    if environments is None:
        raise ValueError(
            "tau2_airline_reward needs TRL's `environments`: use it with environment_factory=Tau2AirlineEnv."
        )
    log_metric = kwargs.get("log_metric")
    categories = kwargs.get("category")
    rewards = []
    for i, (completion, env) in enumerate(zip(completions, environments, strict=True)):
        if not isinstance(env, Tau2AirlineEnv):
            rewards.append(None)
            continue
        final_message, truncated = _closing_message(completion)
        reward = env._claim_reward(final_message, truncated)
        rewards.append(reward)
        if callable(log_metric) and reward is not None:
            category = categories[i] if categories is not None else task_category(env.task)
            log_metric(f"tau2_airline/success/{category}", float(reward >= 1.0 - 1e-6))
            log_metric("tau2_airline/tool_calls", float(env.num_tool_calls))
            log_metric("tau2_airline/user_turns", float(env.num_user_turns))
            log_metric("tau2_airline/customer_stop", float(env.customer_stopped))
            log_metric("tau2_airline/unfinished", float(truncated))
    return rewards
