"""Provider-stage latency of one training step: N mixed groups through `LiteLLMCreditReference` + `resolve_references`.

    python benchmarks/provider_latency.py --groups 32 --latency 1.0

A loopback OpenAI-compatible server (`tests/openai_server.py`) answers every request after `--latency` seconds, so
the numbers measure our concurrency and overhead (sanitizer, prompt, litellm, HTTP), not a real model. With enough
concurrency the stage should take about one call's latency (`ratio` close to 1), not N of them. The server runs in a
child process (`--server-thread` runs it in this process instead, where its request handling competes with the
provider for the interpreter lock, as a remote API never does). litellm's import and its first client setup are
excluded by a warm-up call, as they happen once per run, not once per step.

Besides the stage time, the script reports the provider's own CPU work per group on the main thread (sanitizing, the
prompt, litellm's request building and response parsing), measured with the server answering at once: that is what
stretches a stage beyond one call's latency, since it runs on one event loop.
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
    """Child process: a stub server whose latency the parent sets; answers `("latency", s)`, `"stats"`, `"stop"`."""
    server = OpenAIStubServer(plan=lambda body, attempt: Fault("ok", delay=server.latency))
    server.latency = 0.0
    with server:
        connection.send(server.base_url)
        while True:
            command = connection.recv()
            if command == "stop":
                break
            if command == "stats":
                connection.send(server.max_in_flight)
                continue
            server.reset()
            server.latency = command[1]
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
    """The same server as a thread of this process."""

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=32, help="mixed groups in the step")
    parser.add_argument("--latency", type=float, default=1.0, help="injected server latency per call (seconds)")
    parser.add_argument("--max-concurrency", type=int, default=32, help="provider and resolve concurrency bound")
    parser.add_argument("--repeats", type=int, default=3, help="steps to time; the median is reported")
    parser.add_argument("--server-thread", action="store_true", help="run the server in this process")
    args = parser.parse_args()
    if args.latency <= 0:
        parser.error("--latency must be > 0 (the ratio is stage time / latency)")

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
