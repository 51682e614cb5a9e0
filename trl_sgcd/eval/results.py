"""Evaluation records and their summary: `EpisodeRecord`, `EvalResult` (JSON), `summarize` and `format_table`."""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .metrics import EnvironmentMetrics, category_success, mean_ci95, pass_at_k, pass_hat_k


@dataclass
class EpisodeRecord:
    """One evaluated rollout.

    Args:
        task: the task's key (the row's `task_id` column, else its index in the dataset).
        trial: which of the task's trials this is (0-based).
        category: the row's category column, or None.
        reward: total reward (weighted sum of the reward sources that scored it); NaN when none did (None once
            saved and reloaded, JSON having no NaN).
        success: `reward >= success_threshold`.
        num_tool_calls: tool calls the policy made.
        num_tool_errors: tool calls that raised (unknown tool, bad arguments, a failing tool).
        stop: why the episode ended: `"answer"` (an assistant message without tool calls), `"max_tool_calls"`,
            `"length"` (token budget), or `"error"` (the policy failed, see `error`).
        error: the policy's error message, if any.
        messages: the completion (assistant turns and tool results) in TRL's message format.
        info: what the environment recorded about the episode (e.g. the offline airline `Episode`, AppWorld's
            evaluation result), when it exposes one.
    """

    task: str
    trial: int
    category: str | None
    reward: float | None
    success: bool
    num_tool_calls: int
    num_tool_errors: int = 0
    stop: str = "answer"
    error: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalResult:
    """The result of `evaluate`: summary metrics, per-category success, every episode, and the run's settings.

    `metrics` holds `pass@1` (the mean success over all attempts; greedy pass@1 with one trial) with its 95% t-interval
    over tasks (`pass@1/ci95_low`, `pass@1/ci95_high`), `pass^k` and `pass@k` for k = 1..trials, `mean_reward`, the
    zero-tool audit (`tool_calls_per_rollout`, `tool_calls_per_success`, `zero_tool_success_frac`),
    `tool_errors_per_rollout`, counts (`num_tasks`, `num_trials`, `num_episodes`, `num_unscored`, `num_errors`,
    `num_truncated`) and, for AppWorld, `tgc`/`sgc` (percent) from `appworld_metrics`. `categories` maps each category
    to `{"success", "num_tasks", "num_episodes"}`.
    """

    metrics: dict[str, float]
    categories: dict[str, dict[str, float]]
    episodes: list[EpisodeRecord]
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "metrics": self.metrics,
            "categories": self.categories,
            "episodes": [asdict(episode) for episode in self.episodes],
        }

    def save(self, path: str | Path) -> Path:
        """Writes `to_dict()` as standard JSON (NaN as `null`, other objects as strings) and returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(_json_safe(self.to_dict()), indent=1, default=str, ensure_ascii=False, allow_nan=False)
        path.write_text(text + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> EvalResult:
        """Reads a result written by `save` (NaN values come back as None)."""
        data = json.loads(Path(path).read_text())
        episodes = [EpisodeRecord(**episode) for episode in data["episodes"]]
        return cls(data["metrics"], data["categories"], episodes, data.get("config", {}))


def _scored(reward: float | None) -> bool:
    return reward is not None and not math.isnan(reward)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def summarize(
    episodes: Sequence[EpisodeRecord],
    config: dict[str, Any] | None = None,
    environment_metrics: EnvironmentMetrics | None = None,
    communication_tools: Collection[str] = (),
) -> EvalResult:
    """Computes the metrics of a set of episodes (every task must have the same number of trials).

    Args:
        episodes: the evaluated rollouts.
        config: settings to record in the result.
        environment_metrics: an environment class whose `evaluation_metrics` adds metrics of its own (AppWorld's
            TGC/SGC, from task ids `<scenario>_<n>` and the difficulty in `info`).
        communication_tools: tools that only talk to the user, left out of the zero-tool audit.
    """
    from trl_sgcd.diagnostics import tool_audit

    if not episodes:
        raise ValueError("No episodes to summarize.")
    by_task: dict[str, list[EpisodeRecord]] = {}
    for episode in episodes:
        by_task.setdefault(episode.task, []).append(episode)
    trial_counts = {len(attempts) for attempts in by_task.values()}
    if len(trial_counts) != 1:
        raise ValueError(f"Every task needs the same number of trials, got {sorted(trial_counts)}.")
    num_trials = trial_counts.pop()
    successes = [[episode.success for episode in attempts] for attempts in by_task.values()]
    per_task_rate = mean_ci95([sum(trials) / num_trials for trials in successes])
    rewards = [episode.reward for episode in episodes if _scored(episode.reward)]
    metrics: dict[str, float] = {
        "pass@1": per_task_rate.mean,
        "pass@1/ci95_low": per_task_rate.low,
        "pass@1/ci95_high": per_task_rate.high,
    }
    for k in range(1, num_trials + 1):
        metrics[f"pass^{k}"] = pass_hat_k(successes, k)
    for k in range(2, num_trials + 1):
        metrics[f"pass@{k}"] = pass_at_k(successes, k)
    completions = [episode.messages for episode in episodes]
    metrics.update(
        mean_reward=sum(rewards) / len(rewards) if rewards else math.nan,
        **tool_audit(completions, [episode.success for episode in episodes], communication_tools),
        tool_errors_per_rollout=sum(episode.num_tool_errors for episode in episodes) / len(episodes),
        num_tasks=len(by_task),
        num_trials=num_trials,
        num_episodes=len(episodes),
        num_unscored=len(episodes) - len(rewards),
        num_errors=sum(episode.stop == "error" for episode in episodes),
        num_truncated=sum(episode.stop in ("max_tool_calls", "length") for episode in episodes),
    )
    if environment_metrics is not None:
        records = [
            {
                "task_id": episode.task,
                "trial": episode.trial,
                "success": episode.success,
                "reward": episode.reward,
                "category": episode.category,
                "info": episode.info,
            }
            for episode in episodes
        ]
        metrics.update(environment_metrics.evaluation_metrics(records))

    categories: dict[str, dict[str, float]] = {}
    if any(episode.category is not None for episode in episodes):
        labels = [str(episode.category) for episode in episodes]
        rates = category_success(labels, [episode.success for episode in episodes])
        for label, rate in rates.items():
            members = [episode for episode in episodes if str(episode.category) == label]
            categories[label] = {
                "success": rate,
                "num_tasks": len({episode.task for episode in members}),
                "num_episodes": len(members),
            }
    return EvalResult(metrics=metrics, categories=categories, episodes=list(episodes), config=dict(config or {}))


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_table(result: EvalResult) -> str:
    """A plain-text report of an `EvalResult`: headline metrics, per-category success, the tool audit, TGC/SGC."""
    m, config = result.metrics, result.config
    header = " ".join(
        f"{key}={config[key]}" for key in ("environment", "split", "model") if config.get(key) not in (None, "")
    )
    lines = [f"Evaluation {header}".rstrip(), ""]
    rows = [
        ("tasks x trials", f"{int(m['num_tasks'])} x {int(m['num_trials'])} = {int(m['num_episodes'])} episodes"),
        ("pass@1", f"{_fmt(m['pass@1'])}  (95% CI {_fmt(m['pass@1/ci95_low'])} .. {_fmt(m['pass@1/ci95_high'])})"),
    ]
    rows += [(f"pass^{k}", _fmt(m[f"pass^{k}"])) for k in range(2, int(m["num_trials"]) + 1)]
    rows += [(f"pass@{k}", _fmt(m[f"pass@{k}"])) for k in range(2, int(m["num_trials"]) + 1)]
    rows += [
        ("mean reward", _fmt(m["mean_reward"])),
        ("tool calls / rollout", _fmt(m["tool_calls_per_rollout"], 2)),
        ("tool calls / success", _fmt(m["tool_calls_per_success"], 2)),
        ("zero-tool successes", _fmt(m["zero_tool_success_frac"])),
        ("tool errors / rollout", _fmt(m["tool_errors_per_rollout"], 2)),
    ]
    if "tgc" in m:
        rows += [("TGC (%)", _fmt(m["tgc"], 1)), ("SGC (%)", _fmt(m["sgc"], 1))]
        rows += [(key, _fmt(value, 1)) for key, value in m.items() if "/difficulty_" in key]
    problems = [f"{int(m[key])} {name}" for key, name in (("num_errors", "errors"), ("num_unscored", "unscored"))]
    rows.append(("stopped early", f"{int(m['num_truncated'])} (tool-call or token budget)"))
    rows.append(("failures", ", ".join(problems)))
    width = max(len(name) for name, _ in rows)
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    if result.categories:
        lines += ["", f"{'category':<20} {'tasks':>6} {'episodes':>9} {'success':>8}"]
        for category, stats in result.categories.items():
            lines.append(
                f"{category:<20} {int(stats['num_tasks']):>6} {int(stats['num_episodes']):>9} "
                f"{_fmt(stats['success']):>8}"
            )
    return "\n".join(lines)
