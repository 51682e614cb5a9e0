"""Quickstart: SGCD on the built-in offline airline environment, on a laptop CPU, with no API key and no download.

    python examples/quickstart.py              # the README's main job (`make quickstart`)
    python examples/quickstart.py --quick      # a smoke run with minimal budgets

1. Build a tiny Qwen3-shaped model and a tokenizer trained on the environment's own text (random weights).
2. Warm-start it with SFT on the scripted expert's tool-calling conversations (like the paper's τ³ SFT start).
3. Evaluate it on held-out tasks (greedy pass@1, per category, zero-tool audit).
4. Train it with `SGCDGRPOTrainer` and the LLM-free `ContrastCreditReference`.
5. Evaluate it again and print both tables.

Everything lands in `--output_dir` (default `outputs/quickstart`). A tiny model learns little in a few minutes; the
point is the whole pipeline, end to end, with the real trainer, environment, provider and evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/quickstart")
    parser.add_argument("--quick", action="store_true", help="minimal budgets (a smoke test, about a minute)")
    parser.add_argument("--sft_examples", type=int, default=512)
    parser.add_argument("--sft_epochs", type=float, default=8.0)
    parser.add_argument("--rl_steps", type=int, default=30)
    parser.add_argument("--eval_tasks", type=int, default=40)
    parser.add_argument("--credit_mode", default="sgcd", help="sgcd, off, uniform, sibling_context, direct_sd, sdpo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sft_examples, args.sft_epochs, args.rl_steps, args.eval_tasks = 32, 1.0, 2, 8
    return args


def evaluate_checkpoint(path: str, num_tasks: int, seed: int):
    from trl_sgcd.envs.offline_airline import OfflineAirlineEnv, make_dataset, offline_airline_reward
    from trl_sgcd.eval import TransformersPolicy, evaluate

    policy = TransformersPolicy.from_pretrained(path, max_new_tokens=160)
    dataset = make_dataset("test", n=num_tasks, seed=seed)
    return evaluate(policy, OfflineAirlineEnv, dataset, reward_funcs=offline_airline_reward, keep_messages=False)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from trl_sgcd import ContrastCreditReference, SGCDGRPOTrainer
    from trl_sgcd.envs.offline_airline import OfflineAirlineEnv, make_dataset, offline_airline_reward
    from trl_sgcd.eval import format_table
    from trl_sgcd.warm_start import offline_airline_base_model, offline_airline_rl_config, sft_warm_start

    out = Path(args.output_dir)
    start = time.perf_counter()

    print("[1/5] building a tiny model and tokenizer from the environment's text", flush=True)
    base = offline_airline_base_model(out / "base", seed=args.seed)

    print(f"[2/5] SFT warm start on {args.sft_examples} expert conversations x {args.sft_epochs} epochs", flush=True)
    sft = sft_warm_start(
        base,
        out / "sft",
        num_examples=args.sft_examples,
        num_epochs=args.sft_epochs,
        seed=args.seed,
        show_progress=True,
    )

    print(f"[3/5] evaluating the warm start on {args.eval_tasks} held-out tasks", flush=True)
    before = evaluate_checkpoint(sft, args.eval_tasks, args.seed)
    print(format_table(before), flush=True)

    print(f"[4/5] {args.rl_steps} steps of SGCDGRPOTrainer (credit_mode={args.credit_mode})", flush=True)
    config = offline_airline_rl_config(
        out / "sgcd", credit_mode=args.credit_mode, max_steps=args.rl_steps, seed=args.seed
    )
    trainer = SGCDGRPOTrainer(
        model=sft,
        reward_funcs=offline_airline_reward,
        args=config,
        train_dataset=make_dataset("train", n=512, seed=args.seed),
        environment_factory=OfflineAirlineEnv,
        credit_reference=ContrastCreditReference(),
    )
    trainer.train()
    trainer.save_model(config.output_dir)

    print(f"[5/5] evaluating the SGCD policy on the same {args.eval_tasks} held-out tasks", flush=True)
    after = evaluate_checkpoint(config.output_dir, args.eval_tasks, args.seed)
    print(format_table(after), flush=True)

    credit_logs = [h for h in trainer.state.log_history if "sgcd/weights/mean" in h]
    before.save(out / "eval_before.json")
    after.save(out / "eval_after.json")
    summary = {
        "pass@1_before": before.metrics["pass@1"],
        "pass@1_after": after.metrics["pass@1"],
        "category_success_before": {k: v["success"] for k, v in before.categories.items()},
        "category_success_after": {k: v["success"] for k, v in after.categories.items()},
        "mixed_groups": sum(h.get("sgcd/reference/groups_with_reference", 0) for h in credit_logs),
        "mean_weight": sum(h["sgcd/weights/mean"] for h in credit_logs) / max(1, len(credit_logs)),
        "minutes": (time.perf_counter() - start) / 60,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str))
    return summary


if __name__ == "__main__":
    main()
