"""A CPU-scale miniature of the paper's comparisons on the built-in offline airline environment.

    python benchmarks/reproduce.py                 # full run, 25 RL steps (about 45 minutes on one CPU core)
    python benchmarks/reproduce.py --steps 100 --modes off sgcd uniform sibling_context   # the longer follow-up
    python benchmarks/reproduce.py --quick         # the whole pipeline with minimal budgets (a CI smoke test)

1. Warm start: a tiny locally built model, SFT on the scripted expert's conversations (the paper's τ³ SFT start).
   Held-out greedy pass@1 and per-category success are reported for it.
2. From that checkpoint, every mode (`off` = matched GRPO with the same dynamic sampling, `sgcd`, `uniform`,
   `sibling_context`, `direct_sd`, `sdpo`) trains for the same number of steps and samples, for several seeds. The
   credit reference is the LLM-free `ContrastCreditReference` (no API key on this machine).
3. Reported per mode: held-out greedy pass@1 (mean over seeds and a 95% t-interval), success on action vs
   information-only tasks, the zero-tool audit over training, and *credit precision*: the share of the extra weight
   `W - 1` that lands on the tokens where a failed sibling first leaves the expert's path (known exactly in this
   environment, `first_deviation`), against the share those tokens have of all credit-eligible tokens; and where the
   rest lands (before or after the deviation, `weight_position`).

Results go to `--out`: a JSON file per run, `summary.json`, `results_table.md` and two PNG plots. `docs/results.md`
reports a full run and reads it.
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
ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/reproduce")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--modes", nargs="+", default=MODES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=25)
    # The warm start: digits kept out of the tokenizer's merges (ids then tokenize alike in requests, tool calls and
    # observations, which a tiny model needs to copy them), one pass over 9000 expert conversations at batch 4.
    parser.add_argument("--sft_examples", type=int, default=9000)
    parser.add_argument("--sft_epochs", type=float, default=1.0)
    parser.add_argument("--sft_learning_rate", type=float, default=3e-3)
    parser.add_argument("--sft_batch_size", type=int, default=4)
    parser.add_argument("--sft_warmup_steps", type=int, default=20)
    parser.add_argument("--isolate_digits", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--eval_tasks", type=int, default=40)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument(
        "--report_only", action="store_true", help="recompute metrics, table and plots from the runs already in --out"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.sft_examples, args.sft_epochs, args.eval_tasks = [0], 1, 32, 1.0, 6
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
    result = evaluate(
        policy, OfflineAirlineEnv, make_dataset("test", n=num_tasks, seed=0), reward_funcs=offline_airline_reward
    )
    return {"metrics": result.metrics, "categories": result.categories}


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
        "eval": evaluate_checkpoint(str(run_dir / "final"), args.eval_tasks),
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
    return "\n".join(rows), summary


def plot(results: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, title in zip(
        axes,
        ("reward", "sgcd/tools/zero_tool_success_frac", "sgcd/tools/tool_calls_per_success"),
        ("training reward (all sampled rollouts)", "zero-tool share of successes", "tool calls per success"),
        strict=True,
    ):
        for mode in MODES:
            runs = [r for r in results if r["mode"] == mode]
            if not runs:
                continue
            length = min(len(r["curve"][key]) for r in runs)
            mean = [
                statistics.mean(v for v in (r["curve"][key][i] for r in runs) if v is not None) for i in range(length)
            ]
            ax.plot(range(1, length + 1), mean, label=mode)
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[0].legend()
    fig.tight_layout()
    paths.append(out / "training_curves.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    modes = [
        m for m in MODES if any(r["mode"] == m and r["credit_precision"] == r["credit_precision"] for r in results)
    ]
    precision = [statistics.mean(r["credit_precision"] for r in results if r["mode"] == m) for m in modes]
    share = [statistics.mean(r["deviation_token_share"] for r in results if r["mode"] == m) for m in modes]
    x = range(len(modes))
    ax.bar([i - 0.2 for i in x], precision, width=0.4, label="share of extra weight W-1 on deviation tokens")
    ax.bar([i + 0.2 for i in x], share, width=0.4, label="share of credit tokens that are deviation tokens")
    ax.set_xticks(list(x), modes)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("credit precision (failed rollouts)")
    fig.tight_layout()
    paths.append(out / "credit_precision.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from trl_sgcd.warm_start import offline_airline_base_model, sft_warm_start

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        return report_only(out)
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
    warm = evaluate_checkpoint(str(sft), args.eval_tasks)
    print(f"warm start: pass@1 {warm['metrics']['pass@1']:.3f} ({sft_minutes:.1f} min)", flush=True)

    results = []
    for seed in args.seeds:
        for mode in args.modes:
            result = train_mode(str(sft), mode, seed, args, out)
            results.append(result)
            print(
                f"{mode:16s} seed {seed}: pass@1 {result['eval']['metrics']['pass@1']:.3f}, "
                f"credit precision {result['credit_precision']:.3f} (deviation share "
                f"{result['deviation_token_share']:.3f}), {result['train_minutes']:.1f} min",
                flush=True,
            )
    table, summary = summarize(results, warm)
    summary["total_minutes"] = (time.perf_counter() - start) / 60
    summary["args"] = vars(args)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "results_table.md").write_text(table + "\n")
    plots = plot(results, out)
    print(table)
    print(f"total {summary['total_minutes']:.1f} min; plots: {[str(p) for p in plots]}")
    return {"summary": summary, "table": table, "plots": plots, "results": results}


def report_only(out: Path) -> dict:
    """Recomputes credit precision from each run's credit dumps and rewrites the table and plots (no training)."""
    summary = json.loads((out / "summary.json").read_text())
    results = []
    for path in sorted(out.glob("*-seed*/result.json")):
        result = json.loads(path.read_text())
        result.update(_precision_metrics(path.parent / "sgcd_credit"))
        path.write_text(json.dumps(result, indent=1, default=str))
        results.append(result)
    table, modes = summarize(results, summary["warm_start"])
    summary["modes"] = modes["modes"]
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "results_table.md").write_text(table + "\n")
    plots = plot(results, out)
    print(table)
    return {"summary": summary, "table": table, "plots": plots, "results": results}


if __name__ == "__main__":
    main()
