"""Pure metric functions of the evaluation harness: pass^k, pass@k, per-category success and a 95% t-interval; the
benchmarks' own summaries (τ³ pass@1, AppWorld TGC/SGC); and `EnvironmentMetrics`, how an environment adds its own.

Standard library only, so they can be imported and tested without torch or TRL.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable


class MeanCI(NamedTuple):
    """A sample mean with its two-sided 95% confidence interval (`low`, `high`) and sample size `n`."""

    mean: float
    low: float
    high: float
    n: int


def _check_trials(successes_per_task: Sequence[Sequence[bool]], k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    if not successes_per_task:
        raise ValueError("successes_per_task is empty: there is no task to average over.")
    too_few = [len(trials) for trials in successes_per_task if len(trials) < k]
    if too_few:
        raise ValueError(f"Every task needs at least k={k} trials; some have only {min(too_few)}.")


def pass_hat_k(successes_per_task: Sequence[Sequence[bool]], k: int) -> float:
    """τ-bench's pass^k: the probability that `k` independent trials of a task *all* succeed, averaged over tasks.

    With `n` trials of a task of which `c` succeeded, the unbiased per-task estimate is `C(c, k) / C(n, k)` (the share
    of `k`-subsets of the trials that are all successes); the result is the mean over tasks. `pass^1` is the mean
    success rate, i.e. pass@1.

    Args:
        successes_per_task: for each task, the outcome of each of its trials (at least `k` per task).
        k: number of trials that must all succeed.
    """
    _check_trials(successes_per_task, k)
    per_task = [math.comb(sum(map(bool, t)), k) / math.comb(len(t), k) for t in successes_per_task]
    return sum(per_task) / len(per_task)


def pass_at_k(successes_per_task: Sequence[Sequence[bool]], k: int) -> float:
    """pass@k: the probability that *at least one* of `k` trials of a task succeeds, averaged over tasks.

    Per task the unbiased estimate is `1 - C(n - c, k) / C(n, k)` (Chen et al., 2021); `pass@1 == pass^1`.

    Args:
        successes_per_task: for each task, the outcome of each of its trials (at least `k` per task).
        k: number of trials of which one must succeed.
    """
    _check_trials(successes_per_task, k)
    per_task = [1.0 - math.comb(len(t) - sum(map(bool, t)), k) / math.comb(len(t), k) for t in successes_per_task]
    return sum(per_task) / len(per_task)


def category_success(categories: Sequence[str], successes: Sequence[bool]) -> dict[str, float]:
    """Success rate per category (e.g. action / information / transfer / no-action), over all attempts.

    With several trials per task every attempt counts once, so each category's rate is also the mean of its tasks'
    success rates. Categories are returned sorted by name.

    Args:
        categories: the category of each attempt.
        successes: whether each attempt succeeded.
    """
    if len(categories) != len(successes):
        raise ValueError(f"Got {len(categories)} categories for {len(successes)} outcomes.")
    totals: dict[str, list[int]] = {}
    for category, success in zip(categories, successes, strict=True):
        counts = totals.setdefault(category, [0, 0])
        counts[0] += bool(success)
        counts[1] += 1
    return {category: totals[category][0] / totals[category][1] for category in sorted(totals)}


def _abs_t_cdf(t: float, df: int) -> float:
    """`P(|T| <= t)` for Student's t with an integer number of degrees of freedom (closed-form finite series)."""
    theta = math.atan(t / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:
        term = total = 1.0
        for j in range(1, df // 2):
            term *= cos2 * (2 * j - 1) / (2 * j)
            total += term
        return sin * total
    if df == 1:
        return 2.0 * theta / math.pi
    term = total = 1.0
    for j in range(1, (df - 1) // 2):
        term *= cos2 * (2 * j) / (2 * j + 1)
        total += term
    return 2.0 / math.pi * (theta + sin * math.cos(theta) * total)


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (the half-width factor of a 95% interval).

    Solved by bisection on the exact distribution function; above 10,000 degrees of freedom the normal quantile is used.
    """
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}.")
    if df > 10_000:
        return 1.959963984540054
    low, high = 0.0, 1000.0
    for _ in range(100):
        middle = (low + high) / 2
        if _abs_t_cdf(middle, df) < 0.95:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def mean_ci95(values: Sequence[float]) -> MeanCI:
    """Mean and two-sided 95% Student-t confidence interval: `mean ± t_{0.975, n-1} · s / sqrt(n)`.

    `s` is the sample standard deviation (`n - 1` in the denominator). The harness applies it to per-task success rates
    (one value per task, the mean over its trials), so the interval reflects task-to-task variation. It is the usual
    normal-theory interval: with few tasks and rates near 0 or 1 it is crude and may extend beyond [0, 1]; it is not
    clipped. With a single value the bounds are NaN.

    Args:
        values: the sample.
    """
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci95 needs at least one value.")
    mean = sum(values) / n
    if n == 1:
        return MeanCI(mean, math.nan, math.nan, 1)
    variance = sum((value - mean) ** 2 for value in values) / (n - 1)
    half_width = t_quantile_975(n - 1) * math.sqrt(variance / n)
    return MeanCI(mean, mean - half_width, mean + half_width, n)


@runtime_checkable
class EnvironmentMetrics(Protocol):
    """An environment class whose evaluation reports metrics of its own (e.g. AppWorld's TGC/SGC).

    `evaluate` calls `evaluation_metrics` once, on the environment class, with one dict per episode: `task_id`, `trial`,
    `success`, `reward`, `category` and `info` (the environment's `episode_info()`, `{}` without one). The returned
    metrics are merged into `EvalResult.metrics`.
    """

    @classmethod
    def evaluation_metrics(cls, episodes: Sequence[Mapping[str, Any]]) -> Mapping[str, float]: ...


def summarize_pass_at_1(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """pass@1 (mean success over tasks, each task averaged over its trials), overall and per task category.

    Args:
        records: Dicts with `task_id`, `category` and `success` (e.g. from `evaluate_with_tau2_orchestrator`).

    Returns:
        `{"pass@1": ..., "pass@1/<category>": ..., "num_tasks": ...}`
    """
    per_task: dict[str, list[float]] = {}
    category_of: dict[str, str] = {}
    for record in records:
        per_task.setdefault(str(record["task_id"]), []).append(float(record["success"]))
        category_of[str(record["task_id"])] = record["category"]
    task_means = {task_id: sum(v) / len(v) for task_id, v in per_task.items()}
    summary = {"pass@1": sum(task_means.values()) / len(task_means) if task_means else float("nan")}
    for category in sorted(set(category_of.values())):
        means = [m for task_id, m in task_means.items() if category_of[task_id] == category]
        if means:
            summary[f"pass@1/{category}"] = sum(means) / len(means)
    summary["num_tasks"] = float(len(task_means))
    return summary


def _percent(numerator: float, denominator: float) -> float:
    return 100.0 * numerator / denominator if denominator else float("nan")


def appworld_metrics(results: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Task and scenario goal completion (TGC, SGC), in percent, overall and per difficulty.

    TGC is the share of tasks whose evaluation succeeded; SGC the share of scenarios (task id prefix before `_`, e.g.
    `82e2fac` for `82e2fac_1`) all of whose tasks succeeded. A scenario's difficulty is its tasks' highest.

    Each result needs `task_id` and `success`, and `difficulty` for the breakdown (`AppWorldEnv` records these). With
    several attempts per task (e.g. several generations in evaluation), the k-th attempts of all tasks form run k:
    TGC and SGC are averaged over runs, so every task must have the same number of attempts.

    Returns:
        `tgc`, `sgc`, `num_tasks`, `num_scenarios`, `num_runs`, and `tgc/difficulty_{d}`, `sgc/difficulty_{d}` for
        each difficulty present.
    """
    attempts: dict[str, list[bool]] = defaultdict(list)
    difficulty: dict[str, int] = {}
    for result in results:
        task_id = str(result["task_id"])
        attempts[task_id].append(bool(result["success"]))
        if result.get("difficulty") is not None:
            difficulty[task_id] = int(result["difficulty"])
    if not attempts:
        return {"tgc": float("nan"), "sgc": float("nan"), "num_tasks": 0, "num_scenarios": 0, "num_runs": 0}
    attempt_counts = {len(runs) for runs in attempts.values()}
    if len(attempt_counts) != 1:
        raise ValueError(f"Every task needs the same number of attempts to aggregate runs, got {attempt_counts}.")
    num_runs = attempt_counts.pop()
    scenarios: dict[str, list[str]] = defaultdict(list)
    for task_id in attempts:
        scenarios[task_id.split("_")[0]].append(task_id)
    scenario_difficulty = {
        scenario: max((difficulty[t] for t in tasks if t in difficulty), default=None)
        for scenario, tasks in scenarios.items()
    }

    def tgc(task_ids: list[str]) -> float:
        return _percent(sum(sum(attempts[t]) for t in task_ids), len(task_ids) * num_runs)

    def sgc(scenario_ids: list[str]) -> float:
        solved = sum(all(attempts[t][run] for t in scenarios[s]) for s in scenario_ids for run in range(num_runs))
        return _percent(solved, len(scenario_ids) * num_runs)

    metrics: dict[str, float] = {
        "tgc": tgc(list(attempts)),
        "sgc": sgc(list(scenarios)),
        "num_tasks": len(attempts),
        "num_scenarios": len(scenarios),
        "num_runs": num_runs,
    }
    for level in sorted(set(difficulty.values())):
        metrics[f"tgc/difficulty_{level}"] = tgc([t for t in attempts if difficulty.get(t) == level])
        metrics[f"sgc/difficulty_{level}"] = sgc([s for s in scenarios if scenario_difficulty[s] == level])
    return metrics
