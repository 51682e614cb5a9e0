"""Provider-stage latency of one training step: N mixed groups through `LiteLLMCreditReference` + `resolve_references`.

    python benchmarks/provider_latency.py --groups 32 --latency 1.0

A loopback OpenAI-compatible server (`tests/openai_server.py`) answers every request after `--latency` seconds, so
the numbers measure our concurrency and overhead (sanitizer, prompt, litellm, HTTP), not a real model. With enough
concurrency the stage should take about one call's latency (`ratio` close to 1), not N of them. litellm's import and
its first client setup are excluded by a warm-up call, as they happen once per run, not once per step.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from openai_server import Fault, OpenAIStubServer, airline_group, always  # noqa: E402

from trl_sgcd.references import LiteLLMCreditReference, resolve_references  # noqa: E402
from trl_sgcd.references.litellm_provider import import_litellm  # noqa: E402


KINDS = (
    ("success", "reckless", "success", "transfer"),
    ("success", "wrong_id", "reckless", "transfer"),
    ("reckless", "success", "success", "success"),
    ("transfer", "transfer", "success", "wrong_id"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=32, help="mixed groups in the step")
    parser.add_argument("--latency", type=float, default=1.0, help="injected server latency per call (seconds)")
    parser.add_argument("--max-concurrency", type=int, default=32, help="provider and resolve concurrency bound")
    parser.add_argument("--repeats", type=int, default=3, help="steps to time; the median is reported")
    args = parser.parse_args()

    import_litellm()
    os.environ.setdefault("SGCD_BENCH_KEY", "loopback-dummy-key")
    with OpenAIStubServer(plan=always(Fault("ok", delay=args.latency))) as server:
        provider = LiteLLMCreditReference(
            "openai/test-model",
            api_base=server.base_url,
            api_key_env="SGCD_BENCH_KEY",
            max_concurrency=args.max_concurrency,
            timeout=args.latency + 30,
            num_retries=0,
        )
        resolve_references(provider, [airline_group("task-warmup")], timeout=args.latency + 60)
        provider.pop_metrics()
        timings = []
        for repeat in range(args.repeats):
            groups = [
                airline_group(f"task-{repeat}-{i}", kinds=KINDS[i % len(KINDS)], pad=200 * (i % 5))
                for i in range(args.groups)
            ]
            server.reset()
            start = time.perf_counter()
            outcome = resolve_references(
                provider, groups, max_concurrency=args.max_concurrency, timeout=args.latency + 60
            )
            timings.append(time.perf_counter() - start)
            if outcome.failures:
                raise SystemExit(f"{outcome.failures} provider failures: {outcome.error_messages[:3]}")
        metrics = provider.pop_metrics()
    stage = sorted(timings)[len(timings) // 2]
    print(
        f"provider_stage_s={stage:.3f} single_call_latency_s={args.latency:g} ratio={stage / args.latency:.2f} groups={args.groups}"
    )
    print(
        f"# repeats={args.repeats} stage_s={[round(t, 3) for t in timings]} max_in_flight={server.max_in_flight} "
        f"http_calls={metrics['http_calls']:.0f} prompt_tokens={metrics['prompt_tokens']:.0f}"
    )


if __name__ == "__main__":
    main()
