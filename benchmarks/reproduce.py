"""A CPU-scale miniature of the paper's comparisons on the built-in offline airline environment.

    python benchmarks/reproduce.py --out outputs/reproduce &   # the outcome comparison (docs/results.md); two processes
    python benchmarks/reproduce.py --out outputs/reproduce     # with the same arguments share the runs, one core each
    python benchmarks/reproduce.py --out outputs/reproduce --report_only --figures docs/results   # table, stats, plots
    python benchmarks/reproduce.py --quick                  # the whole pipeline with minimal budgets (a CI smoke test)

1. Warm start: a tiny locally built model, SFT on the scripted expert's conversations (the paper's τ³ SFT start).
   Held-out greedy pass@1 and per-category success are reported for it.
2. From that checkpoint, every mode (`off` = matched GRPO with the same dynamic sampling, `sgcd`, `uniform`,
   `sibling_context`, `direct_sd`; `sdpo` on request) trains for the same number of steps and samples, for 5 seeds.
   The credit reference is the LLM-free `ContrastCreditReference` (no API key on this machine). Runs are taken in
   seed-major order and claimed by file, so processes started with the same `--out` split them.
3. Reported per mode, on 120 held-out tasks: greedy pass@1 (mean over seeds and a 95% t-interval), success on action
   vs information-only tasks, the zero-tool audit over training, and *credit precision*: the share of the extra
   weight `W - 1` that lands on the tokens where a failed sibling first leaves the expert's path (known exactly in
   this environment, `first_deviation`), against the share those tokens have of all credit-eligible tokens; and where
   the rest lands (before or after the deviation, `weight_position`).
4. Paired against `off` (`paired_against_off`): per seed on the same tasks, with a t-interval over the seeds' paired
   differences; a bootstrap over tasks; and the (seed, task) pairs each side solved alone, with an exact McNemar test.

Results go to `--out`: a JSON file per run (per-task successes included), `warm_start.json`, `summary.json` and
`results_table.md`; plots (`outcome.png`, `training_reward.png`, `credit_precision.png`) and `outcome.json` go to
`--figures` (default `--out`). `docs/results.md` reports a full run and reads it.
A tiny model on a toy environment is not the paper's setting: read the numbers as a check of the mechanism, not as
a replication of its effect sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODES = ["off", "sgcd", "uniform", "sibling_context", "direct_sd", "sdpo"]
COMPARED = ["off", "sgcd", "uniform", "sibling_context", "direct_sd"]
ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/reproduce")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--modes", nargs="+", default=COMPARED, choices=MODES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=25)
    # The warm start: digits kept out of the tokenizer's merges (ids then tokenize alike in requests, tool calls and
    # observations, which a tiny model needs to copy them), one pass over 9000 expert conversations at batch 4.
    parser.add_argument("--sft_examples", type=int, default=9000)
    parser.add_argument("--sft_epochs", type=float, default=1.0)
    parser.add_argument("--sft_learning_rate", type=float, default=3e-3)
    parser.add_argument("--sft_batch_size", type=int, default=4)
    parser.add_argument("--sft_warmup_steps", type=int, default=20)
    parser.add_argument("--isolate_digits", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--eval_tasks", type=int, default=120)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    # The paper's within-rollout segmenter, with which docs/results.md's comparison was run (the package default is
    # now "success_position").
    parser.add_argument("--segment_baseline", default="rollout")
    parser.add_argument(
        "--report_only", action="store_true", help="recompute metrics, table and plots from the runs already in --out"
    )
    parser.add_argument("--figures", default=None, help="where the plots and outcome.json go (default: --out)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.sft_examples, args.sft_epochs, args.eval_tasks = [0, 1], 1, 32, 1.0, 6
        args.modes = [m for m in args.modes if m in ("off", "sgcd")] or args.modes[:1]
    return args


# ---------------------------------------------------------------------------------------------- credit precision


def deviation_token_mask(record: dict) -> list[int] | None:
    """Tokens of a failed rollout's first deviation: its first off-path tool call, or its premature final answer.

    Returns `None` for rollouts that are not failures, have no known deviation, or whose tokens cannot be aligned.
    """
    from trl_sgcd.envs.offline_airline import completion_tool_calls, first_deviation, task_from_id

    task_id = record.get("metadata", {}).get("task_id")
    if record["success"] or task_id is None:
        return None
    calls = completion_tool_calls(record["messages"])
    index = first_deviation(task_from_id(task_id), calls)
    if index is None:
        return None
    tokens, assistant = record["tokens"], record["assistant_mask"]
    mask = [0] * len(tokens)
    if index < len(calls):
        opens = [t for t, tok in enumerate(tokens) if tok == "<tool_call>"]
        if index >= len(opens):
            return None
        start = opens[index]
        end = next((t for t in range(start, len(tokens)) if tokens[t] == "</tool_call>"), len(tokens) - 1)
        for t in range(start, end + 1):
            mask[t] = assistant[t]
    else:  # stopped early: the deviation is the final answer, the last run of assistant tokens
        t = len(tokens) - 1
        while t >= 0 and not assistant[t]:
            t -= 1
        while t >= 0 and assistant[t]:
            mask[t] = 1
            t -= 1
    return mask if any(mask) else None


def _scored_failures(dump_dir: Path, category: str | None = None):
    """`(record, first-deviation mask)` of every failed rollout in the credit dumps whose group had a reference and
    whose deviation is known; with `category`, only that task category's."""
    from trl_sgcd.credit_dump import iter_records

    for record in iter_records(dump_dir):
        if record["reference"] is None or record["success"]:
            continue
        if category is not None and record.get("metadata", {}).get("category") != category:
            continue
        mask = deviation_token_mask(record)
        if mask is not None:
            yield record, mask


def credit_precision(dump_dir: Path, category: str | None = None) -> dict[str, float]:
    """Extra weight on the deviation tokens of failed rollouts, against their share of credit tokens.

    Pooled: `Σ (W-1) on deviation tokens / Σ (W-1)` over all scored rollouts, against the pooled token share. Pooling
    favours deviation tokens even without localisation (short failures have both a larger deviation share and more
    weight per token under `uniform`), so the per-rollout version is reported too: within each rollout that received
    extra weight, the share of its extra weight on its deviation tokens, against its own deviation-token share; a
    rollout-level `uniform` weight gives exactly lift 1 there. With `category`, only that task category's rollouts
    count (e.g. `"action"`, where the first deviation is a wrong write call or argument).
    """
    extra_on_dev = extra_total = dev_tokens = credit_tokens = 0.0
    per_rollout_precision, per_rollout_share = [], []
    rollouts = 0
    for record, mask in _scored_failures(dump_dir, category):
        rollouts += 1
        r_extra = r_extra_dev = r_dev = r_tokens = 0.0
        for w, c, dev in zip(record["weights"], record["credit_mask"], mask, strict=True):
            if not c:
                continue
            r_tokens += 1
            r_extra += w - 1.0
            if dev:
                r_dev += 1
                r_extra_dev += w - 1.0
        credit_tokens += r_tokens
        dev_tokens += r_dev
        extra_total += r_extra
        extra_on_dev += r_extra_dev
        if r_extra > 1e-9 and r_tokens:
            per_rollout_precision.append(r_extra_dev / r_extra)
            per_rollout_share.append(r_dev / r_tokens)
    nan = float("nan")
    share = dev_tokens / credit_tokens if credit_tokens else nan
    precision = extra_on_dev / extra_total if extra_total > 0 else nan
    rollout_precision = statistics.mean(per_rollout_precision) if per_rollout_precision else nan
    rollout_share = statistics.mean(per_rollout_share) if per_rollout_share else nan
    return {
        "credit_precision": precision,
        "deviation_token_share": share,
        "precision_lift": precision / share if share and precision == precision else nan,
        "rollout_precision": rollout_precision,
        "rollout_deviation_share": rollout_share,
        "rollout_precision_lift": rollout_precision / rollout_share
        if rollout_share and rollout_share == rollout_share
        else nan,
        "failed_rollouts_scored": rollouts,
        "rollouts_with_extra_weight": len(per_rollout_precision),
    }


POSITIONS = ("before", "on", "after")


def weight_position(dump_dir: Path) -> dict[str, float]:
    """Where the extra weight of failed rollouts lands relative to their first deviation: before, on or after it.

    Per rollout that received extra weight, the share of its `Σ (W − 1)` on the credit tokens before the deviation's
    first token, on the deviation, and after its last token, against those tokens' shares of the rollout's credit
    tokens; both averaged over rollouts. `lift_<position>` = weight share / token share (1 everywhere for `uniform`).
    Says where a mode's weight goes when it misses the deviation.
    """
    weight_shares: dict[str, list[float]] = {k: [] for k in POSITIONS}
    token_shares: dict[str, list[float]] = {k: [] for k in POSITIONS}
    for record, mask in _scored_failures(dump_dir):
        first, last = mask.index(1), len(mask) - 1 - mask[::-1].index(1)
        credit = [t for t, c in enumerate(record["credit_mask"]) if c]
        extra = sum(record["weights"][t] - 1.0 for t in credit)
        if extra <= 1e-9:
            continue
        positions = {
            "before": [t for t in credit if t < first],
            "on": [t for t in credit if mask[t]],
            "after": [t for t in credit if t > last],
        }
        for position, tokens in positions.items():
            weight_shares[position].append(sum(record["weights"][t] - 1.0 for t in tokens) / extra)
            token_shares[position].append(len(tokens) / len(credit))
    result: dict[str, float] = {}
    for position in POSITIONS:
        weight = statistics.mean(weight_shares[position]) if weight_shares[position] else float("nan")
        share = statistics.mean(token_shares[position]) if token_shares[position] else float("nan")
        result[f"weight_{position}"] = weight
        result[f"tokens_{position}"] = share
        result[f"lift_{position}"] = weight / share if share else float("nan")
    return result


def _precision_metrics(dump_dir: Path) -> dict[str, float]:
    action = credit_precision(dump_dir, category="action")
    return (
        credit_precision(dump_dir)
        | {
            "action_rollout_precision_lift": action["rollout_precision_lift"],
            "action_rollouts_with_extra_weight": action["rollouts_with_extra_weight"],
        }
        | weight_position(dump_dir)
    )


# ---------------------------------------------------------------------------------------------- runs


def evaluate_checkpoint(path: str, num_tasks: int) -> dict:
    from trl_sgcd.envs.offline_airline import OfflineAirlineEnv, make_dataset, offline_airline_reward
    from trl_sgcd.eval import TransformersPolicy, evaluate

    policy = TransformersPolicy.from_pretrained(path, max_new_tokens=160)
    # Greedy; 40 episodes in lockstep: a tiny model's generation costs about the same per call at 8 or at 40.
    dataset = make_dataset("test", n=num_tasks, seed=0)
    result = evaluate(policy, OfflineAirlineEnv, dataset, reward_funcs=offline_airline_reward, batch_size=40)
    tasks = {record.task: record.success for record in result.episodes}
    return {"metrics": result.metrics, "categories": result.categories, "tasks": tasks,
            "task_categories": {record.task: record.category for record in result.episodes}}  # fmt: skip


def train_mode(sft: str, mode: str, seed: int, args, out: Path) -> dict:
    from transformers import PrinterCallback

    from trl_sgcd import ContrastCreditReference, SGCDGRPOTrainer
    from trl_sgcd.envs.offline_airline import OfflineAirlineEnv, make_dataset, offline_airline_reward
    from trl_sgcd.warm_start import offline_airline_rl_config

    run_dir = out / f"{mode}-seed{seed}"
    config = offline_airline_rl_config(
        run_dir,
        credit_mode=mode,
        learning_rate=args.learning_rate,
        segment_baseline=args.segment_baseline,
        max_steps=args.steps,
        credit_log_steps=1,
        disable_tqdm=True,
        seed=seed,
    )
    trainer = SGCDGRPOTrainer(
        model=sft,
        reward_funcs=offline_airline_reward,
        args=config,
        train_dataset=make_dataset("train", n=512, seed=0),
        environment_factory=OfflineAirlineEnv,
        credit_reference=ContrastCreditReference(),
    )
    trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    trainer.train()
    train_minutes = (time.perf_counter() - start) / 60
    trainer.save_model(str(run_dir / "final"))
    start = time.perf_counter()
    evaluation = evaluate_checkpoint(str(run_dir / "final"), args.eval_tasks)
    logs = [h for h in trainer.state.log_history if "reward" in h]
    result = {
        "mode": mode,
        "seed": seed,
        "train_minutes": train_minutes,
        "curve": {
            key: [h.get(key) for h in logs]
            for key in (
                "reward",
                "sgcd/groups/mixed_frac",
                "sgcd/tools/tool_calls_per_success",
                "sgcd/tools/zero_tool_success_frac",
                "sgcd/weights/mean",
                "sgcd/advantage_inflation",
            )
        },
        "eval": evaluation,
        "eval_minutes": (time.perf_counter() - start) / 60,
    }
    result.update(_precision_metrics(run_dir / "sgcd_credit"))
    (run_dir / "result.json").write_text(json.dumps(result, indent=1, default=str))
    return result


# ---------------------------------------------------------------------------------------------- report


def _mean_ci(values: list[float]) -> str:
    from trl_sgcd.eval import mean_ci95

    values = [v for v in values if v == v]
    if not values:
        return "n/a"
    ci = mean_ci95(values)
    if len(values) == 1:
        return f"{ci.mean:.3f}"
    return f"{ci.mean:.3f} [{ci.low:.3f}, {ci.high:.3f}]"


def _success(run: dict, category: str | None) -> dict[str, bool]:
    tasks, categories = run["eval"]["tasks"], run["eval"]["task_categories"]
    return {task: ok for task, ok in tasks.items() if category is None or categories[task] == category}


def _two_sided_sign_test(gained: int, lost: int) -> float:
    """Exact McNemar test: two-sided binomial p-value of `gained` against `lost` discordant pairs at p = 1/2."""
    from math import comb

    n = gained + lost
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(gained, lost) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_against_off(results: list[dict], mode: str, category: str | None = None, resamples: int = 10000) -> dict:
    """`mode` − `off` on the same held-out tasks, paired by seed and by task.

    - Per seed: the difference of pass@1 on the tasks both runs were evaluated on; the mean over seeds with a 95%
      t-interval over the paired differences (the seed-to-seed spread of training).
    - Per task: each task's success rate over seeds, `mode` minus `off`; a percentile bootstrap over tasks of their
      mean (the task-sampling spread).
    - Flips: (seed, task) pairs that `off` failed and `mode` solved (`gained`) or the reverse (`lost`), with the exact
      McNemar p-value of that split.
    With `category`, only that category's tasks count.
    """
    import random

    from trl_sgcd.eval import mean_ci95

    off = {r["seed"]: r for r in results if r["mode"] == "off"}
    runs = {r["seed"]: r for r in results if r["mode"] == mode}
    seeds = sorted(set(off) & set(runs))
    nan = float("nan")
    if not seeds:
        return {"seeds": [], "diff": nan, "ci": [nan, nan], "task_ci": [nan, nan], "gained": 0, "lost": 0, "p": nan}
    diffs, gained, lost = [], 0, 0
    per_task: dict[str, list[float]] = {}
    for seed in seeds:
        a, b = _success(off[seed], category), _success(runs[seed], category)
        common = sorted(set(a) & set(b))
        if not common:
            continue
        diffs.append(sum(b[t] for t in common) / len(common) - sum(a[t] for t in common) / len(common))
        gained += sum(b[t] and not a[t] for t in common)
        lost += sum(a[t] and not b[t] for t in common)
        for t in common:
            per_task.setdefault(t, []).append(float(b[t]) - float(a[t]))
    if not diffs:
        return {"seeds": [], "diff": nan, "ci": [nan, nan], "task_ci": [nan, nan], "gained": 0, "lost": 0, "p": nan}
    ci = mean_ci95(diffs)
    task_means = [statistics.mean(v) for v in per_task.values()]
    rng = random.Random(0)
    boot = sorted(statistics.fmean(rng.choices(task_means, k=len(task_means))) for _ in range(resamples))
    return {
        "seeds": seeds,
        "per_seed": diffs,
        "diff": ci.mean,
        "ci": [ci.low, ci.high],
        "tasks": len(task_means),
        "task_ci": [boot[int(0.025 * resamples)], boot[int(0.975 * resamples) - 1]],
        "gained": gained,
        "lost": lost,
        "p": _two_sided_sign_test(gained, lost),
    }


def _fmt_paired(entry: dict) -> str:
    lo, hi = entry["ci"]
    if entry["diff"] != entry["diff"]:
        return "n/a"
    interval = f" [{lo:+.3f}, {hi:+.3f}]" if lo == lo else ""
    return f"{entry['diff']:+.3f}{interval}"


PAIRED_CATEGORIES = {"all": None, "action": "action", "information": "information"}


def summarize(results: list[dict], warm: dict) -> tuple[str, dict]:
    rows, summary = [], {"warm_start": warm, "modes": {}}
    header = (
        "| mode | pass@1 (95% CI over seeds) | action | information | zero-tool success share (last 5 steps) "
        "| tool calls / success | credit precision | deviation-token share | lift | per-rollout lift "
        "| per-rollout lift, action tasks |"
    )
    rows.append(header)
    rows.append("|" + "---|" * 11)
    for mode in MODES:
        runs = [r for r in results if r["mode"] == mode]
        if not runs:
            continue

        def cat(run, name):
            return run["eval"]["categories"].get(name, {}).get("success", float("nan"))

        def late(run, key):
            values = [v for v in run["curve"][key][-5:] if v is not None]
            return statistics.mean(values) if values else float("nan")

        entry = {
            "pass@1": [r["eval"]["metrics"]["pass@1"] for r in runs],
            "action": [cat(r, "action") for r in runs],
            "information": [cat(r, "information") for r in runs],
            "zero_tool_success_frac": [late(r, "sgcd/tools/zero_tool_success_frac") for r in runs],
            "tool_calls_per_success": [late(r, "sgcd/tools/tool_calls_per_success") for r in runs],
            "credit_precision": [r["credit_precision"] for r in runs],
            "deviation_token_share": [r["deviation_token_share"] for r in runs],
            "precision_lift": [r["precision_lift"] for r in runs],
            "rollout_precision_lift": [r.get("rollout_precision_lift", float("nan")) for r in runs],
            "action_rollout_precision_lift": [r.get("action_rollout_precision_lift", float("nan")) for r in runs],
        }
        entry.update({f"weight_{p}": [r.get(f"weight_{p}", float("nan")) for r in runs] for p in POSITIONS})
        entry.update({f"tokens_{p}": [r.get(f"tokens_{p}", float("nan")) for r in runs] for p in POSITIONS})
        summary["modes"][mode] = entry
        rows.append(
            f"| `{mode}` | {_mean_ci(entry['pass@1'])} | {_mean_ci(entry['action'])} | "
            f"{_mean_ci(entry['information'])} | {_mean_ci(entry['zero_tool_success_frac'])} | "
            f"{_mean_ci(entry['tool_calls_per_success'])} | {_mean_ci(entry['credit_precision'])} | "
            f"{_mean_ci(entry['deviation_token_share'])} | {_mean_ci(entry['precision_lift'])} | "
            f"{_mean_ci(entry['rollout_precision_lift'])} | {_mean_ci(entry['action_rollout_precision_lift'])} |"
        )
    rows += ["", "Where the extra weight of failed rollouts lands: share of `W - 1` (95% CI over seeds) / share of credit "
             "tokens, per rollout:", ""]  # fmt: skip
    rows.append("| mode | before the first deviation | on it | after it |")
    rows.append("|---|---|---|---|")
    for mode, entry in summary["modes"].items():
        if all(v != v for v in entry["weight_on"]):
            continue
        cells = [f"{_mean_ci(entry[f'weight_{p}'])} / {statistics.mean(entry[f'tokens_{p}']):.3f}" for p in POSITIONS]
        rows.append(f"| `{mode}` | " + " | ".join(cells) + " |")
    if "off" in summary["modes"]:
        rows += ["", "Paired against `off` on the same held-out tasks: pass@1 difference, mean over seeds [95% t-interval "
                 "over the per-seed differences]; the task bootstrap's 95% interval; (seed, task) pairs `off` failed and "
                 "the mode solved / the reverse, with the exact McNemar p-value:", ""]  # fmt: skip
        rows.append("| mode | Δ pass@1 | per seed | task bootstrap | solved / lost (p) | Δ action | Δ information |")
        rows.append("|---|---|---|---|---|---|---|")
        summary["paired"] = {}
        for mode in summary["modes"]:
            if mode == "off":
                continue
            entry = {name: paired_against_off(results, mode, cat) for name, cat in PAIRED_CATEGORIES.items()}
            summary["paired"][mode] = entry
            overall = entry["all"]
            if not overall["seeds"]:
                continue
            lo, hi = overall["task_ci"]
            rows.append(
                f"| `{mode}` | {_fmt_paired(overall)} | {' '.join(f'{d:+.3f}' for d in overall['per_seed'])} | "
                f"[{lo:+.3f}, {hi:+.3f}] | {overall['gained']} / {overall['lost']} ({overall['p']:.2f}) | "
                f"{_fmt_paired(entry['action'])} | {_fmt_paired(entry['information'])} |"
            )
    return "\n".join(rows), summary


COLORS = {"off": "#555555", "sgcd": "#d62728", "uniform": "#1f77b4", "sibling_context": "#2ca02c",
          "direct_sd": "#9467bd", "sdpo": "#8c564b"}  # fmt: skip


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what exists so far)."""
    return [statistics.fmean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def _curve_band(runs: list[dict], key: str, window: int) -> tuple[list[float], list[float], list[float]]:
    """Seed mean of the smoothed curves and its 95% t-band over seeds (no band with one seed)."""
    from trl_sgcd.eval import mean_ci95

    curves = [_smooth([v if v is not None else float("nan") for v in r["curve"][key]], window) for r in runs]
    length = min(len(c) for c in curves)
    stats = [mean_ci95([c[i] for c in curves if c[i] == c[i]] or [float("nan")]) for i in range(length)]
    return [s.mean for s in stats], [s.low for s in stats], [s.high for s in stats]


def plot(results: list[dict], summary: dict, figures: Path) -> list[Path]:
    """Three figures, one question per panel: `outcome.png` (pass@1 by mode; paired difference against `off`),
    `training_reward.png` (each mode against `off`, smoothed seed means with 95% bands) and `credit_precision.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 12, "axes.titlesize": 13, "axes.spines.top": False, "axes.spines.right": False})
    modes = [m for m in MODES if m in summary["modes"]]
    paths = []

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1, 1.15]})
    for i, mode in enumerate(modes):
        values = summary["modes"][mode]["pass@1"]
        mean = statistics.fmean(values)
        if len(values) > 1:
            from trl_sgcd.eval import mean_ci95

            ci = mean_ci95(values)
            left.errorbar(i, mean, yerr=[[mean - ci.low], [ci.high - mean]], fmt="o", color=COLORS[mode], capsize=6,
                          markersize=9, lw=2)  # fmt: skip
        else:
            left.plot(i, mean, "o", color=COLORS[mode], markersize=9)
        left.scatter([i + 0.18] * len(values), values, s=14, color=COLORS[mode], alpha=0.5)
    warm = summary["warm_start"]["metrics"]["pass@1"]
    left.axhline(warm, ls="--", color="black", lw=1, label="warm start")
    left.legend(fontsize=10, loc="lower left")
    left.set_xticks(range(len(modes)), modes, rotation=15)
    left.set_ylabel("held-out pass@1")
    left.set_title("pass@1 by mode (mean, 95% CI over seeds; dots: seeds)")

    paired = summary.get("paired", {})
    compared = [m for m in modes if m in paired and paired[m]["all"]["seeds"]]
    offsets = {"all": -0.22, "action": 0.0, "information": 0.22}
    markers = {"all": "o", "action": "s", "information": "^"}
    for i, mode in enumerate(compared):
        for name, offset in offsets.items():
            entry = paired[mode][name]
            lo, hi = entry["ci"]
            yerr = [[entry["diff"] - lo], [hi - entry["diff"]]] if lo == lo else None
            right.errorbar(i + offset, entry["diff"], yerr=yerr, fmt=markers[name], color=COLORS[mode], capsize=4,
                           markersize=8, lw=1.8, alpha=1.0 if name == "all" else 0.6,
                           label=name if i == 0 else None)  # fmt: skip
    right.axhline(0, color="black", lw=1)
    right.set_xticks(range(len(compared)), compared, rotation=15)
    right.set_ylabel("pass@1 minus off (same tasks, same seed)")
    right.set_title("paired difference against off (95% CI over seeds)")
    right.legend(title="tasks", fontsize=10, loc="best")
    fig.tight_layout()
    paths.append(figures / "outcome.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    others = [m for m in modes if m != "off"]
    if others:
        off_runs = [r for r in results if r["mode"] == "off"]
        steps = max(len(r["curve"]["reward"]) for r in results)
        window = max(1, steps // 5)
        fig, axes = plt.subplots(1, len(others), figsize=(3.6 * len(others) + 1, 4), sharey=True, squeeze=False)
        for ax, mode in zip(axes[0], others, strict=True):
            for name in (["off"] if off_runs else []) + [mode]:
                runs = [r for r in results if r["mode"] == name]
                mean, low, high = _curve_band(runs, "reward", window)
                x = range(1, len(mean) + 1)
                ax.plot(x, mean, color=COLORS[name], lw=2, label=f"{name} ({len(runs)} seeds)")
                if len(runs) > 1:
                    ax.fill_between(x, low, high, color=COLORS[name], alpha=0.18, lw=0)
            ax.set_title(f"{mode} against off")
            ax.set_ylim(0, 1)  # a success rate; a two-seed t-band can reach far beyond it
            ax.set_xlabel("RL step")
            ax.legend(fontsize=9, loc="lower right")
        axes[0][0].set_ylabel(f"training reward ({window}-step mean)")
        fig.suptitle("training reward: seed mean and 95% band over seeds", fontsize=13)
        fig.tight_layout()
        paths.append(figures / "training_reward.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

    scored = [m for m in modes if any(v == v for v in summary["modes"][m]["rollout_precision_lift"])]
    if scored:
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        for i, mode in enumerate(scored):
            entry = summary["modes"][mode]
            bottom = 0.0
            for position, shade in zip(POSITIONS, (0.35, 1.0, 0.6), strict=True):
                share = statistics.fmean(v for v in entry[f"weight_{position}"] if v == v)
                ax.bar(i, share, bottom=bottom, color=COLORS[mode], alpha=shade, edgecolor="white")
                ax.text(i, bottom + share / 2, position, ha="center", va="center", fontsize=9)
                bottom += share
            token_on = statistics.fmean(v for v in entry["tokens_on"] if v == v)
            token_before = statistics.fmean(v for v in entry["tokens_before"] if v == v)
            ax.plot([i - 0.4, i + 0.4], [token_before] * 2, color="black", lw=1.5)
            ax.plot([i - 0.4, i + 0.4], [token_before + token_on] * 2, color="black", lw=1.5, ls=":")
        ax.set_xticks(range(len(scored)), scored)
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of extra weight W − 1")
        ax.set_title("failed rollouts: where the extra weight lands\n(lines: the token shares before / up to the end "
                     "of the first deviation)", fontsize=11)  # fmt: skip
        fig.tight_layout()
        paths.append(figures / "credit_precision.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def _claim(path: Path) -> bool:
    """Claims a run for this process (several processes can share one `--out`); False if another has it."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from trl_sgcd.warm_start import offline_airline_base_model, sft_warm_start

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        return report_only(out, args.figures)
    start = time.perf_counter()
    sft = out / "sft"
    if not (sft / "config.json").exists():
        base = offline_airline_base_model(out / "base", isolate_digits=args.isolate_digits)
        sft_warm_start(
            base,
            sft,
            num_examples=args.sft_examples,
            num_epochs=args.sft_epochs,
            learning_rate=args.sft_learning_rate,
            batch_size=args.sft_batch_size,
            warmup_steps=args.sft_warmup_steps,
        )
    sft_minutes = (time.perf_counter() - start) / 60
    if _claim(out / "warm_start.claim"):
        warm = evaluate_checkpoint(str(sft), args.eval_tasks)
        (out / "warm_start.json").write_text(json.dumps(warm, indent=1))
        print(f"warm start: pass@1 {warm['metrics']['pass@1']:.3f} ({sft_minutes:.1f} min)", flush=True)
    (out / "args.json").write_text(json.dumps(vars(args), indent=1))

    # Seed-major order: stopped early, the finished runs are whole seeds of every mode. Each run is claimed first, so
    # two processes started with the same arguments share the list, one core each.
    for seed in args.seeds:
        for mode in args.modes:
            if not _claim(out / f"{mode}-seed{seed}.claim"):
                continue
            result = train_mode(str(sft), mode, seed, args, out)
            print(
                f"{mode:16s} seed {seed}: pass@1 {result['eval']['metrics']['pass@1']:.3f}, "
                f"credit precision {result['credit_precision']:.3f} (deviation share "
                f"{result['deviation_token_share']:.3f}), {result['train_minutes']:.1f} + "
                f"{result['eval_minutes']:.1f} min",
                flush=True,
            )
    missing = [
        f"{m}-seed{s}" for s in args.seeds for m in args.modes if not (out / f"{m}-seed{s}" / "result.json").exists()
    ]
    if missing or not (out / "warm_start.json").exists():
        print(f"other processes still run {missing or ['the warm start evaluation']}; then: --report_only", flush=True)
        return {}
    report = report_only(out, args.figures, recompute=False)
    report["summary"]["total_minutes"] = (time.perf_counter() - start) / 60
    print(f"total {report['summary']['total_minutes']:.1f} min; plots: {[str(p) for p in report['plots']]}")
    return report


def report_only(out: Path, figures: str | Path | None = None, recompute: bool = True) -> dict:
    """Table, paired statistics and plots from the runs in `out` (no training); `recompute` also re-reads each run's
    credit dumps for the credit-precision metrics. Plots and `outcome.json` (the summary) go to `figures`."""
    figures = Path(figures) if figures else out
    figures.mkdir(parents=True, exist_ok=True)
    results = []
    for path in sorted(out.glob("*-seed*/result.json")):
        result = json.loads(path.read_text())
        if recompute:
            result.update(_precision_metrics(path.parent / "sgcd_credit"))
            path.write_text(json.dumps(result, indent=1, default=str))
        results.append(result)
    warm = json.loads((out / "warm_start.json").read_text())
    table, summary = summarize(results, warm)
    args_path = out / "args.json"
    args = json.loads(args_path.read_text()) if args_path.exists() else {}
    summary["args"] = {k: v for k, v in args.items() if k not in ("out", "figures", "report_only")}  # no local paths
    summary["runs"] = [
        {
            "mode": r["mode"],
            "seed": r["seed"],
            "train_minutes": r["train_minutes"],
            "eval_minutes": r.get("eval_minutes"),
        }
        for r in results
    ]
    summary["warm_start"] = {k: warm[k] for k in ("metrics", "categories")}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (figures / "outcome.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "results_table.md").write_text(table + "\n")
    plots = plot(results, summary, figures)
    print(table)
    return {"summary": summary, "table": table, "plots": plots, "results": results}


if __name__ == "__main__":
    main()
