"""The `trl-sgcd` command line: `trl-sgcd eval` (evaluate a checkpoint or an endpoint) and `trl-sgcd visualize`
(render a credit dump).

```
trl-sgcd eval --model path/to/checkpoint --env offline_airline --split test --trials 1 --out results.json
trl-sgcd eval --model served-name --base-url http://127.0.0.1:8000/v1 --env tau2_airline --user-model openai/x ...
trl-sgcd eval --model path/to/checkpoint --env my_env.py:MyEnv --dataset my_env.py:make_dataset --reward my_env.py:reward
trl-sgcd visualize outputs/run --step 40 --out outputs/run/credit_html
```

Setup problems (a missing extra, data or server, a bad argument) print one `error:` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence


def _add_eval_parser(subparsers: argparse._SubParsersAction) -> None:
    from trl_sgcd.eval.suites import SUITE_NAMES

    parser = subparsers.add_parser(
        "eval",
        help="evaluate a local checkpoint or an OpenAI-compatible endpoint on an environment",
        description="Runs the policy as a tool-calling agent and reports pass@1, pass^k, per-category success, the "
        "zero-tool audit and (AppWorld) TGC/SGC.",
    )
    model = parser.add_argument_group("policy")
    model.add_argument("--model", required=True, help="checkpoint path or Hub id; with --base-url, the served name")
    model.add_argument("--base-url", help="OpenAI-compatible API root (e.g. http://127.0.0.1:8000/v1)")
    model.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    model.add_argument("--temperature", type=float, default=0.0, help="0 decodes greedily (default)")
    model.add_argument("--max-new-tokens", type=int, default=1024, help="tokens per assistant turn")
    model.add_argument("--max-completion-length", type=int, help="token budget of a whole episode (local model)")
    model.add_argument("--device", help="device of the local model (default: cuda if available, else cpu)")
    model.add_argument("--dtype", default="auto", help="dtype of the local model (default: auto)")
    model.add_argument(
        "--chat-template-kwargs", type=json.loads, default=None, help="JSON, e.g. '{\"enable_thinking\": false}'"
    )
    model.add_argument("--concurrency", type=int, default=8, help="requests in flight (endpoint)")

    env = parser.add_argument_group("environment")
    env.add_argument(
        "--env",
        required=True,
        help=f"one of {', '.join(SUITE_NAMES)}, or any environment class or factory as package.module:Name or "
        "file.py:Name (then --dataset, and --reward unless the environment defines get_reward)",
    )
    env.add_argument(
        "--dataset",
        help="custom env: rows as module:name, file.py:name (a dataset, list or function), or a .json/.jsonl file",
    )
    env.add_argument(
        "--reward",
        action="append",
        default=[],
        help="custom env: a reward function, module:name or file.py:name (repeatable)",
    )
    env.add_argument(
        "--split",
        default="test",
        help="offline_airline: train|test; tau2_airline: train|test|base; "
        "appworld: dev|test_normal|test_challenge (default: test, test_normal for appworld)",
    )
    env.add_argument("--num-tasks", type=int, help="evaluate this many tasks (offline_airline default: 50)")
    env.add_argument("--seed", type=int, default=0, help="task generation (offline_airline) and sampling seed")
    env.add_argument("--user-model", help="tau2_airline: litellm model string of the user simulator")
    env.add_argument("--user-base-url", help="tau2_airline: OpenAI-compatible server of the user simulator")
    env.add_argument("--tau2-tasks-path", help="tau2_airline: a tasks.json (e.g. the τ³ task file)")
    env.add_argument("--appworld-urls", help="appworld: comma-separated running servers ($SGCD_APPWORLD_URLS)")
    env.add_argument("--appworld-bin", default="appworld", help="appworld: executable used to launch servers")
    env.add_argument("--appworld-root", help="appworld: root holding data/ ($APPWORLD_ROOT)")

    run = parser.add_argument_group("evaluation")
    run.add_argument("--trials", type=int, default=1, help="trials per task, for pass^k (default 1)")
    run.add_argument("--batch-size", type=int, default=8, help="episodes run together")
    run.add_argument("--max-tool-calls", type=int, help="rounds of tool calls per episode (default: per environment)")
    run.add_argument("--max-observation-chars", type=int, help="cut tool results to this many characters")
    run.add_argument("--success-threshold", type=float, default=1.0)
    run.add_argument("--out", help="write the full result (metrics and every episode) as JSON here")
    run.add_argument("--no-messages", action="store_true", help="leave the episodes' messages out of the JSON")
    run.add_argument("--quiet", action="store_true", help="no progress lines")


def _add_visualize_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "visualize",
        help="render a credit dump (SGCDConfig(credit_log_steps=N)) as HTML and PNG",
        description="Renders the credit weights of one training step: an HTML page of shaded tokens per sibling "
        "group and a PNG heat strip per rollout.",
    )
    parser.add_argument("path", help="training output_dir, its sgcd_credit/ folder, or a step_*.jsonl file")
    parser.add_argument("--step", type=int, help="step to render (default: the latest)")
    parser.add_argument("--out", help="output folder (default: the dump's folder)")
    parser.add_argument("--cap", type=float, help="weight drawn deepest, e.g. the run's credit_cap (default: max W)")
    parser.add_argument("--list", action="store_true", help="list the steps that have a dump, and exit")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trl-sgcd", description="Sibling-Guided Credit Distillation tools.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_eval_parser(subparsers)
    _add_visualize_parser(subparsers)
    return parser


def _suite_options(args: argparse.Namespace) -> dict:
    split = args.split
    if ":" in args.env:
        return {"dataset": args.dataset, "reward_funcs": args.reward, "split": split, "num_tasks": args.num_tasks}
    if args.dataset or args.reward:
        raise ValueError("--dataset and --reward are for a custom environment (--env module:Factory).")
    if args.env == "offline_airline":
        return {"split": split, "num_tasks": args.num_tasks or 50, "seed": args.seed}
    if args.env == "tau2_airline":
        return {
            "split": split,
            "user_model": args.user_model,
            "user_base_url": args.user_base_url,
            "tasks_path": args.tau2_tasks_path,
            "num_tasks": args.num_tasks,
            **({"max_observation_chars": args.max_observation_chars} if args.max_observation_chars else {}),
        }
    return {
        "split": "test_normal" if split == "test" else split,
        "urls": args.appworld_urls,
        "pool_size": args.batch_size,
        "appworld_bin": args.appworld_bin,
        "root": args.appworld_root,
        "num_tasks": args.num_tasks,
        **({"max_observation_chars": args.max_observation_chars} if args.max_observation_chars else {}),
    }


def _policy(args: argparse.Namespace):
    from trl_sgcd.eval import OpenAIChatPolicy, TransformersPolicy

    if args.base_url:
        extra = {"chat_template_kwargs": args.chat_template_kwargs} if args.chat_template_kwargs else None
        return OpenAIChatPolicy(
            args.base_url,
            args.model,
            api_key_env=args.api_key_env,
            temperature=args.temperature,
            max_tokens=args.max_new_tokens,
            concurrency=args.concurrency,
            extra_body=extra,
        )
    return TransformersPolicy.from_pretrained(
        args.model,
        device=args.device,
        dtype=args.dtype,
        max_new_tokens=args.max_new_tokens,
        max_completion_length=args.max_completion_length,
        temperature=args.temperature,
        chat_template_kwargs=args.chat_template_kwargs,
    )


def _run_eval(args: argparse.Namespace) -> int:
    from trl_sgcd.envs.appworld import AppWorldError
    from trl_sgcd.eval import evaluate, format_table
    from trl_sgcd.eval.suites import load_suite

    if args.trials < 1 or args.batch_size < 1:
        raise ValueError("--trials and --batch-size must be at least 1.")
    if not args.quiet:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        suite = load_suite(args.env, **_suite_options(args))
    except (ImportError, ValueError, FileNotFoundError, TypeError, AppWorldError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        if args.seed is not None:
            from transformers import set_seed

            set_seed(args.seed)
        policy = _policy(args)
        max_tool_calls = args.max_tool_calls if args.max_tool_calls is not None else suite.max_tool_calling_iterations
        result = evaluate(
            policy,
            suite.environment_factory,
            suite.dataset,
            reward_funcs=suite.reward_funcs,
            num_trials=args.trials,
            max_tool_calling_iterations=max_tool_calls,
            max_observation_chars=args.max_observation_chars if args.env not in ("tau2_airline", "appworld") else None,
            batch_size=args.batch_size,
            success_threshold=args.success_threshold,
            keep_messages=not args.no_messages,
            config={"environment": suite.name, "split": suite.split, "model": args.model},
            log_every=0 if args.quiet else 1,
        )
    except AppWorldError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if suite.close is not None:
            suite.close()
    print(format_table(result))
    if args.out:
        print(f"\nwrote {result.save(args.out)}")
    return 0


def _run_visualize(args: argparse.Namespace) -> int:
    from trl_sgcd.visualize import available_steps, visualize

    try:
        if args.list:
            print(" ".join(str(step) for step in available_steps(args.path)))
            return 0
        paths = visualize(args.path, step=args.step, out_dir=args.out, cap=args.cap)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {paths['html']}\nwrote {paths['png']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `trl-sgcd` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "eval":
        try:
            return _run_eval(args)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    return _run_visualize(args)


if __name__ == "__main__":
    sys.exit(main())
