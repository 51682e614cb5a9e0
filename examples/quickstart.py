"""Quickstart: SGCD on the built-in offline airline environment, on a laptop CPU, with no API key and no download.

    python examples/quickstart.py              # the README's main job (`make quickstart`)
    python examples/quickstart.py --quick      # a smoke run with minimal budgets

1. Build a tiny Qwen3-shaped model and a tokenizer trained on the environment's own text (random weights; digits
   kept out of the tokenizer's merges, so ids tokenize alike in requests, tool calls and tool results).
2. Warm-start it with SFT on the scripted expert's tool-calling conversations (like the paper's τ³ SFT start), the
   shared system prompt encoded once per batch. The result solves some action tasks, not all.
3. Evaluate it on held-out tasks (greedy pass@1, per category, zero-tool audit).
4. Train it with `SGCDGRPOTrainer` (dynamic sampling, the LLM-free `ContrastCreditReference`), dumping the credit
   weights of every few batches.
5. Evaluate it again on the same tasks; count the tasks that flipped each way.
6. Draw the credit of one batch (the visualizer's HTML page and PNG) and the before/after pass@1, and print where
   everything is.

Everything lands in `--output_dir` (default `outputs/quickstart`). Forty held-out tasks and a few dozen RL steps of a
2-layer model: a change of a few tasks is noise, and the script says so when it is.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CATEGORIES = ("action", "information")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/quickstart")
    parser.add_argument("--quick", action="store_true", help="minimal budgets (a smoke test, about a minute)")
    parser.add_argument("--sft_examples", type=int, default=9000)
    parser.add_argument("--sft_epochs", type=float, default=1.0)
    parser.add_argument("--sft_batch_size", type=int, default=4)
    parser.add_argument("--sft_learning_rate", type=float, default=3e-3)
    parser.add_argument("--sft_warmup_steps", type=int, default=20)
    parser.add_argument("--rl_steps", type=int, default=30)
    parser.add_argument("--credit_log_steps", type=int, default=5, help="dump the credit of every N-th batch")
    parser.add_argument("--eval_tasks", type=int, default=40)
    parser.add_argument("--credit_mode", default="sgcd", help="sgcd, off, uniform, sibling_context, direct_sd, sdpo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    args = parser.parse_args(argv)
    if args.quick:
        # 150 SFT steps learn the call and answer formats (not ids), enough for mixed groups on the easy tasks
        args.sft_examples, args.sft_epochs, args.rl_steps, args.eval_tasks, args.credit_log_steps = 1200, 1.0, 2, 8, 1
    return args


def evaluate_checkpoint(path: str, num_tasks: int, seed: int):
    from trl_sgcd.envs.offline_airline import OfflineAirlineEnv, make_dataset, offline_airline_reward
    from trl_sgcd.eval import TransformersPolicy, evaluate

    policy = TransformersPolicy.from_pretrained(path, max_new_tokens=160)
    dataset = make_dataset("test", n=num_tasks, seed=seed)
    return evaluate(policy, OfflineAirlineEnv, dataset, reward_funcs=offline_airline_reward, keep_messages=False)


def paired_comparison(before, after) -> dict:
    """Tasks solved after but not before (`gained`) and the reverse (`lost`), with an exact two-sided sign test.

    The same tasks are evaluated greedily both times, so only the tasks that flipped carry information: with `n`
    flips, `p` is the chance of a split at least this uneven if each flip were a fair coin.
    """
    solved_before = {e.task: e.success for e in before.episodes}
    solved_after = {e.task: e.success for e in after.episodes}
    gained = sum(solved_after[t] and not solved_before[t] for t in solved_before)
    lost = sum(solved_before[t] and not solved_after[t] for t in solved_before)
    flips = gained + lost
    tail = sum(math.comb(flips, i) for i in range(min(gained, lost) + 1)) / 2**flips
    p_value = min(1.0, 2 * tail) if flips else 1.0
    if not flips:
        verdict = "no task changed outcome: no difference"
    elif p_value < 0.05:
        verdict = f"{'better' if gained > lost else 'worse'} beyond noise (sign test p = {p_value:.3f})"
    else:
        verdict = f"within noise (sign test p = {p_value:.2f}): no improvement is claimed"
    return {"tasks": len(solved_before), "gained": gained, "lost": lost, "p_value": p_value, "verdict": verdict}


def _cells(result) -> dict[str, tuple[int, int]]:
    """`(solved, tasks)` overall and for the action and information categories."""
    cells = {"overall": (sum(e.success for e in result.episodes), len(result.episodes))}
    for category in CATEGORIES:
        episodes = [e for e in result.episodes if e.category == category]
        cells[category] = (sum(e.success for e in episodes), len(episodes))
    return cells


def plot_before_after(before, after, comparison: dict, path: Path) -> Path:
    """Bars of greedy pass@1 before and after RL, overall and per category, each labelled solved/tasks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells_before, cells_after = _cells(before), _cells(after)
    names = list(cells_before)
    figure, axis = plt.subplots(figsize=(7, 4), dpi=120)
    for offset, cells, label in ((-0.2, cells_before, "warm start (SFT)"), (0.2, cells_after, "after SGCD")):
        rates = [cells[n][0] / cells[n][1] if cells[n][1] else 0.0 for n in names]
        bars = axis.bar([i + offset for i in range(len(names))], rates, width=0.4, label=label)
        for bar, name in zip(bars, names, strict=True):
            solved, total = cells[name]
            axis.annotate(f"{solved}/{total}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                          va="bottom", fontsize=8)  # fmt: skip
    axis.set_xticks(range(len(names)), [f"{n}\n({cells_before[n][1]} tasks)" for n in names])
    axis.set_ylim(0, 1.1)
    axis.set_ylabel("greedy pass@1 (held-out tasks)")
    axis.set_title(
        f"tasks gained {comparison['gained']}, lost {comparison['lost']}: {comparison['verdict']}", fontsize=9
    )
    axis.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def most_credited_step(output_dir: Path) -> int | None:
    """The dumped step whose rollouts carry the most extra credit `Σ (W - 1)` (the latest of equals), or None when no
    step was dumped (the trainer dumps only batches with a mixed group)."""
    from trl_sgcd.credit_dump import available_steps, load_step

    def extra(step: int) -> float:
        return sum(w - 1.0 for record in load_step(output_dir, step) for w in record["weights"])

    try:
        steps = available_steps(output_dir)
    except FileNotFoundError:
        return None
    return max(reversed(steps), key=extra)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from transformers import PrinterCallback

    from trl_sgcd import ContrastCreditReference, SGCDGRPOTrainer
    from trl_sgcd.envs.offline_airline import OfflineAirlineEnv, make_dataset, offline_airline_reward
    from trl_sgcd.eval import format_table
    from trl_sgcd.visualize import visualize
    from trl_sgcd.warm_start import offline_airline_base_model, offline_airline_rl_config, sft_warm_start

    out = Path(args.output_dir)
    start = time.perf_counter()
    minutes = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        minutes[name] = round((now - since) / 60, 2)
        return now

    print("[1/6] building a tiny model and tokenizer from the environment's text", flush=True)
    base = offline_airline_base_model(out / "base", seed=args.seed, isolate_ids=True)

    print(f"[2/6] SFT warm start on {args.sft_examples} expert conversations x {args.sft_epochs} epochs", flush=True)
    sft = sft_warm_start(
        base,
        out / "sft",
        num_examples=args.sft_examples,
        num_epochs=args.sft_epochs,
        learning_rate=args.sft_learning_rate,
        batch_size=args.sft_batch_size,
        warmup_steps=args.sft_warmup_steps,
        seed=args.seed,
        show_progress=True,
        shared_prefix=True,
    )
    mark = lap("warm_start", start)

    print(f"[3/6] evaluating the warm start on {args.eval_tasks} held-out tasks", flush=True)
    before = evaluate_checkpoint(sft, args.eval_tasks, args.seed)
    print(format_table(before), flush=True)
    mark = lap("eval_before", mark)

    print(f"[4/6] {args.rl_steps} steps of SGCDGRPOTrainer (credit_mode={args.credit_mode})", flush=True)
    config = offline_airline_rl_config(
        out / "sgcd",
        credit_mode=args.credit_mode,
        max_steps=args.rl_steps,
        credit_log_steps=args.credit_log_steps,
        seed=args.seed,
    )
    trainer = SGCDGRPOTrainer(
        model=sft,
        reward_funcs=offline_airline_reward,
        args=config,
        train_dataset=make_dataset("train", n=512, seed=args.seed),
        environment_factory=OfflineAirlineEnv,
        credit_reference=ContrastCreditReference(),
    )
    trainer.remove_callback(PrinterCallback)  # the progress bar stays; every metric is in trainer.state.log_history
    trainer.train()
    trainer.save_model(config.output_dir)
    mark = lap("sgcd_training", mark)

    print(f"[5/6] evaluating the SGCD policy on the same {args.eval_tasks} held-out tasks", flush=True)
    after = evaluate_checkpoint(config.output_dir, args.eval_tasks, args.seed)
    print(format_table(after), flush=True)
    mark = lap("eval_after", mark)

    print("[6/6] drawing the credit of one batch and the before/after comparison", flush=True)
    step = most_credited_step(out / "sgcd")
    credit = {}
    if step is not None:
        credit = visualize(out / "sgcd", step=step, out_dir=out / "credit", cap=config.credit_cap)
    comparison = paired_comparison(before, after)
    plot = plot_before_after(before, after, comparison, out / "before_after.png")
    lap("pictures", mark)

    credit_logs = [h for h in trainer.state.log_history if "sgcd/weights/mean" in h]
    before.save(out / "eval_before.json")
    after.save(out / "eval_after.json")
    cells_before, cells_after = _cells(before), _cells(after)
    summary = {
        "pass@1_before": before.metrics["pass@1"],
        "pass@1_after": after.metrics["pass@1"],
        "solved_before": cells_before,
        "solved_after": cells_after,
        "category_success_before": {k: v["success"] for k, v in before.categories.items()},
        "category_success_after": {k: v["success"] for k, v in after.categories.items()},
        "paired": comparison,
        "mixed_groups": int(sum(h.get("sgcd/reference/groups_with_reference", 0) for h in credit_logs)),
        "mean_weight": sum(h["sgcd/weights/mean"] for h in credit_logs) / max(1, len(credit_logs)),
        "credit_step": step,
        "files": {"plot": str(plot)} | {f"credit_{kind}": str(path) for kind, path in credit.items()},
        "stage_minutes": minutes,
        "minutes": (time.perf_counter() - start) / 60,
    }
    metrics_path = out / "summary.json"
    summary["files"]["metrics"] = str(metrics_path)
    metrics_path.write_text(json.dumps(summary, indent=2, default=str))

    print("\n" + "=" * 100)
    for name in cells_before:
        (b, n), (a, _) = cells_before[name], cells_after[name]
        print(f"greedy pass@1 {name:12s} {b / max(1, n):.3f} ({b}/{n}) -> {a / max(1, n):.3f} ({a}/{n})")
    print(
        f"tasks that flipped: {comparison['gained']} solved only after SGCD, {comparison['lost']} only before "
        f"(of {comparison['tasks']}): {comparison['verdict']}"
    )
    print(f"{summary['mixed_groups']} mixed sibling groups got a credit reference; {summary['minutes']:.1f} minutes")
    print("where to look:")
    if credit:
        print(f"  credit of step {step}, one section per sibling group: {credit['html']}")
        print(f"  the same as heat strips:                      {credit['png']}")
    else:
        print("  no credit to draw: no dumped batch had a mixed group (more --rl_steps, or --credit_log_steps 1)")
    print(f"  pass@1 before/after SGCD:                     {plot}")
    print(f"  all numbers:                                  {metrics_path}")
    print(f"  every episode: {out / 'eval_before.json'}, {out / 'eval_after.json'}")
    return summary


if __name__ == "__main__":
    main()
