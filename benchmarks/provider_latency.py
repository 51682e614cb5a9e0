"""Provider-stage latency of one training step: N mixed groups through `LiteLLMCreditReference` + `resolve_references`.

    python benchmarks/provider_latency.py --groups 32 --latency 1.0
    python benchmarks/provider_latency.py --trainer --groups 4 --latency 1.0 --max-concurrency 2 --repeats 6

A loopback OpenAI-compatible server (`tests/openai_server.py`) answers every request after `--latency` seconds, so
the numbers measure our concurrency and overhead (sanitizer, prompt, litellm, HTTP), not a real model. With enough
concurrency the stage should take about one call's latency (`ratio` close to 1), not N of them. The server runs in a
child process (`--server-thread` runs it in this process instead, where its request handling competes with the
provider for the interpreter lock, as a remote API never does). litellm's import and its first client setup are
excluded by a warm-up call, as they happen once per run, not once per step.

Besides the stage time, the script reports the provider's own CPU work per group (sanitizing, the prompt, litellm's
request building and response parsing), measured with the server answering at once: that is what stretches a stage
beyond one call's latency, since it runs in one process (on worker threads that share the interpreter lock).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from openai_server import Fault, OpenAIStubServer, airline_group  # noqa: E402

from trl_sgcd.references import LiteLLMCreditReference, resolve_references  # noqa: E402
from trl_sgcd.references.litellm_provider import import_litellm  # noqa: E402


KINDS = (
    ("success", "reckless", "success", "transfer"),
    ("success", "wrong_id", "reckless", "transfer"),
    ("reckless", "success", "success", "success"),
    ("transfer", "transfer", "success", "wrong_id"),
)


def _serve(connection) -> None:
    """Child process: a `ServerThread` driven by the parent over a pipe (`("latency", s)`, `"stats"`, `"stop"`)."""
    with ServerThread() as server:
        connection.send(server.base_url)
        while True:
            command = connection.recv()
            if command == "stop":
                break
            if command == "stats":
                connection.send(server.max_in_flight)
                continue
            server.set_latency(command[1])
            connection.send("ok")


class ServerProcess:
    """The stub server in a child process (spawned, so it shares nothing with the provider's interpreter)."""

    def __init__(self):
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child,), daemon=True)

    def __enter__(self) -> ServerProcess:
        self.process.start()
        self.base_url = self.connection.recv()
        return self

    def set_latency(self, seconds: float) -> None:
        self.connection.send(("latency", seconds))
        self.connection.recv()

    @property
    def max_in_flight(self) -> int:
        self.connection.send("stats")
        return self.connection.recv()

    def __exit__(self, *exc) -> None:
        self.connection.send("stop")
        self.process.join(timeout=10)


class ServerThread:
    """The stub server as a thread of this process; every request waits the latency last set."""

    def __enter__(self) -> ServerThread:
        self.server = OpenAIStubServer(plan=lambda body, attempt: Fault("ok", delay=self.latency))
        self.latency = 0.0
        self.server.start()
        self.base_url = self.server.base_url
        return self

    def set_latency(self, seconds: float) -> None:
        self.server.reset()
        self.latency = seconds

    @property
    def max_in_flight(self) -> int:
        return self.server.max_in_flight

    def __exit__(self, *exc) -> None:
        self.server.stop()


def make_groups(tag: str, n: int):
    return [airline_group(f"task-{tag}-{i}", kinds=KINDS[i % len(KINDS)], pad=200 * (i % 5)) for i in range(n)]


def time_stage(provider, groups, args) -> float:
    start = time.perf_counter()
    outcome = resolve_references(provider, groups, max_concurrency=args.max_concurrency, timeout=args.latency + 60)
    elapsed = time.perf_counter() - start
    if outcome.failures:
        raise SystemExit(f"{outcome.failures} provider failures: {outcome.error_messages[:3]}")
    return elapsed


def trainer_stage(args) -> None:
    """The provider stage inside training with dynamic sampling, with and without prefetching (`--trainer`).

    A tiny local model, `--groups` prompts per step of 8 siblings, a reward that only half of the prompts can be
    mixed under (so steps resample), and an async provider that answers after `--latency` seconds with at most
    `--max-concurrency` calls in flight. Reports the median of `sgcd/timing/provider_s`, the time the step waits for
    references after its last generation round, per arm.
    """
    import asyncio
    import tempfile

    import torch
    from datasets import Dataset
    from transformers import PrinterCallback

    from trl_sgcd import SGCDConfig, SGCDGRPOTrainer
    from trl_sgcd.tiny_model import make_tiny_model

    torch.set_num_threads(1)
    model = make_tiny_model(os.path.join(tempfile.mkdtemp(prefix="sgcd-provider-"), "model"))
    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"check flight F{i} for user u{i}"}]} for i in range(64)]
    )

    def half_mixable(prompts, completions, **kwargs):  # prompts with an odd flight number never succeed
        flight = [int(p[-1]["content"].split("F")[1].split()[0]) for p in prompts]
        return [float(f % 2 == 0 and len(c[0]["content"]) % 2 == 0) for f, c in zip(flight, completions, strict=True)]

    async def slow_provider(group):
        await asyncio.sleep(args.latency)
        return "State checks: read the flight status first. Failed branches: answering without a lookup."

    results = {}
    for prefetch in (True, False):
        config = SGCDConfig(
            tempfile.mkdtemp(prefix="sgcd-provider-run-"),
            per_device_train_batch_size=8 * args.groups,
            num_generations=8,
            max_completion_length=32,
            max_steps=args.repeats,
            max_resample_rounds=3,
            prefetch_references=prefetch,
            provider_max_concurrency=args.max_concurrency,
            learning_rate=1e-6,
            logging_steps=1,
            report_to="none",
            use_cpu=True,
            save_strategy="no",
            disable_tqdm=True,
            seed=0,
        )
        trainer = SGCDGRPOTrainer(
            model=model, reward_funcs=half_mixable, args=config, train_dataset=dataset, credit_reference=slow_provider
        )
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        logs = [h for h in trainer.state.log_history if "sgcd/timing/provider_s" in h]
        results[prefetch] = {
            "stage": statistics.median(h["sgcd/timing/provider_s"] for h in logs),
            "rounds": statistics.mean(h["sgcd/sampling/rounds"] for h in logs),
            "calls": statistics.mean(h["sgcd/provider/calls"] for h in logs),
            "generation": statistics.median(h["sgcd/timing/generation_s"] for h in logs),
        }
    for prefetch, r in results.items():
        print(
            f"# prefetch={prefetch}: provider stage {r['stage']:.3f}s (median of {args.repeats} steps), "
            f"{r['rounds']:.2f} generation rounds and {r['calls']:.1f} provider calls per step, "
            f"generation {r['generation']:.3f}s per step"
        )
    print(
        f"prefetch_stage_ratio={results[True]['stage'] / args.latency:.2f} "
        f"no_prefetch_stage_ratio={results[False]['stage'] / args.latency:.2f} single_call_latency_s={args.latency:g} "
        f"groups={args.groups} max_concurrency={args.max_concurrency}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=32, help="mixed groups in the step")
    parser.add_argument("--latency", type=float, default=1.0, help="injected server latency per call (seconds)")
    parser.add_argument("--max-concurrency", type=int, default=32, help="provider and resolve concurrency bound")
    parser.add_argument("--repeats", type=int, default=3, help="steps to time; the median is reported")
    parser.add_argument("--server-thread", action="store_true", help="run the server in this process")
    parser.add_argument(
        "--trainer", action="store_true", help="measure the stage inside training, with and without prefetching"
    )
    args = parser.parse_args()
    if args.latency <= 0:
        parser.error("--latency must be > 0 (the ratio is stage time / latency)")
    if args.trainer:
        trainer_stage(args)
        return

    import_litellm()
    os.environ.setdefault("SGCD_BENCH_KEY", "loopback-dummy-key")
    with ServerThread() if args.server_thread else ServerProcess() as server:
        provider = LiteLLMCreditReference(
            "openai/test-model",
            api_base=server.base_url,
            api_key_env="SGCD_BENCH_KEY",
            max_concurrency=args.max_concurrency,
            timeout=args.latency + 30,
            num_retries=0,
        )
        resolve_references(provider, make_groups("warmup", 2), timeout=60)
        # The provider's own work per group: the same stage with an instant server.
        server.set_latency(0.0)
        cpu = [time_stage(provider, make_groups(f"cpu{r}", args.groups), args) for r in range(args.repeats)]
        server.set_latency(args.latency)
        provider.pop_metrics()
        timings = [time_stage(provider, make_groups(str(r), args.groups), args) for r in range(args.repeats)]
        metrics = provider.pop_metrics()
        in_flight = server.max_in_flight
    stage = statistics.median(timings)
    per_group_ms = statistics.median(cpu) / args.groups * 1000
    print(
        f"# repeats={args.repeats} stage_s={[round(t, 3) for t in timings]} max_in_flight={in_flight} "
        f"http_calls={metrics['http_calls']:.0f} prompt_tokens={metrics['prompt_tokens']:.0f} "
        f"instant_server_stage_s={[round(t, 3) for t in cpu]} provider_work_per_group_ms={per_group_ms:.1f} "
        f"server={'thread' if args.server_thread else 'process'}"
    )
    print(
        f"provider_stage_s={stage:.3f} single_call_latency_s={args.latency:g} ratio={stage / args.latency:.2f} "
        f"groups={args.groups}"
    )


if __name__ == "__main__":
    main()
