"""`LiteLLMCreditReference` against a loopback OpenAI-compatible server (no paid API, no internet).

litellm talks to `tests/openai_server.py` through its ordinary HTTP path (`model="openai/test-model"`,
`api_base=http://127.0.0.1:<port>/v1`, a dummy key from the environment). litellm is imported once per session.
"""

import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from openai_server import (
    PLANTED_SECRETS,
    VALID_REFERENCE,
    Fault,
    OpenAIStubServer,
    airline_group,
    always,
    keyed_plan,
    request_key,
)

import trl_sgcd.references as references
from trl_sgcd.references import (
    ROLE,
    LiteLLMCreditReference,
    ReferenceCache,
    cache_key,
    resolve_references,
)
from trl_sgcd.references.litellm_provider import classify_error


litellm = pytest.importorskip("litellm")
pytestmark = pytest.mark.filterwarnings("ignore:Item 'summary' on TypedDict:UserWarning")  # litellm's pydantic types

KEY_ENV = "SGCD_TEST_LLM_KEY"
DUMMY_KEY = "dummy-loopback-key-7f3a9c"


@pytest.fixture(autouse=True)
def _dummy_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, DUMMY_KEY)


@pytest.fixture
def server():
    with OpenAIStubServer(hang_s=10.0) as srv:
        yield srv


def _provider(server: OpenAIStubServer, **kwargs) -> LiteLLMCreditReference:
    options = {"api_base": server.base_url, "api_key_env": KEY_ENV, "timeout": 5.0, "num_retries": 0, "backoff": 0.01}
    options.update(kwargs)
    return LiteLLMCreditReference("openai/test-model", **options)


def _groups(n: int, start: int = 0):
    kinds = [("success", "reckless", "transfer"), ("success", "success", "wrong_id"), ("reckless", "success")]
    return [airline_group(task_id=f"task-{i}", kinds=kinds[i % len(kinds)]) for i in range(start, start + n)]


def test_connections_are_kept_across_steps(server):
    # Every step's calls run on one long-lived event loop, so litellm's HTTP client (cached per loop) keeps its
    # connections: later steps open none (a fresh loop per step would reconnect, and re-handshake TLS, every step).
    provider = _provider(server)
    opened = []
    for step in range(3):
        server.reset()
        outcome = resolve_references(provider, _groups(4, start=4 * step), max_concurrency=4, timeout=30)
        assert outcome.failures == 0 and server.request_count == 4
        opened.append(server.connections)
    assert opened[0] >= 1 and opened[1:] == [0, 0]


def test_calls_from_a_running_event_loop_and_from_threads(server):
    provider = _provider(server)

    async def inside_a_notebook_loop():
        return provider.build(_groups(1)[0])

    assert asyncio.run(inside_a_notebook_loop()).text.startswith("## State checks")
    with ThreadPoolExecutor(2) as pool:  # the trainer prefetches a round's calls from a worker thread
        outcomes = list(pool.map(lambda g: resolve_references(provider, g, timeout=30), [_groups(2), _groups(2, 2)]))
    assert all(o.failures == 0 and len(o.references) == 2 for o in outcomes)


def test_happy_path(server):
    provider = _provider(server)
    outcome = resolve_references(provider, _groups(3), max_concurrency=4, timeout=30)
    assert outcome.failures == 0 and all(r is not None for r in outcome.references)
    reference = outcome.references[0]
    assert reference.text.startswith("## State checks\n- Look up the reservation")
    assert reference.text.count("\n## ") == 4
    # Answer literals and sanitized values are added; the reply's placeholder and its non-literal description are not.
    assert reference.masked_literals[0] == "ZFA04Y"
    assert "<MASKED:PAYMENT>" not in reference.masked_literals and "reservation id" not in reference.masked_literals
    assert reference.metadata["model"] == "openai/test-model" and reference.metadata["cache_hit"] is False
    body = server.requests[0]
    assert body["model"] == "test-model" and body["temperature"] == 0.0
    assert body["messages"][0] == {"role": "system", "content": ROLE}
    assert server.authorizations == [f"Bearer {DUMMY_KEY}"] * 3  # the key comes from the environment variable
    metrics = provider.pop_metrics()
    assert metrics["calls"] == 3 and metrics["http_calls"] == 3 and metrics["references"] == 3
    assert metrics["failures"] == 0 and metrics["retries"] == 0 and metrics["cache_hits"] == 0
    assert metrics["prompt_tokens"] > 0 and metrics["completion_tokens"] > 0
    assert metrics["sanitizer_hits"] > 0 and metrics["reference_chars"] == sum(len(r.text) for r in outcome.references)
    assert metrics["latency_s"] > 0
    assert provider.pop_metrics()["calls"] == 0  # reset on read


def test_fault_injection_over_240_calls(server):
    cycle = [
        "ok",
        "ok",
        "ok",
        "429",
        "500",
        "503",
        "400",
        "hang",
        "empty_body",
        "bad_json",
        "bad_reference",
        "empty_content",
    ]
    n = 240
    server.reset(plan=keyed_plan({f"task-{i}": [cycle[i % len(cycle)]] for i in range(n)}))
    provider = _provider(server, timeout=3.0, max_concurrency=64)  # generous: 64 calls share two busy cores
    start = time.perf_counter()
    outcome = resolve_references(provider, _groups(n), max_concurrency=64, timeout=20)
    elapsed = time.perf_counter() - start

    faulty = [cycle[i % len(cycle)] != "ok" for i in range(n)]
    assert [r is None for r in outcome.references] == faulty
    per_kind = n // len(cycle)
    assert outcome.failures == 9 * per_kind
    assert outcome.timeouts == per_kind  # the hanging requests
    assert outcome.errors == 8 * per_kind
    assert server.request_count == n and server.kind_counts["hang"] == per_kind
    metrics = provider.pop_metrics()
    assert metrics["calls"] == n and metrics["http_calls"] == n and metrics["retries"] == 0
    assert metrics["references"] == 3 * per_kind and metrics["failures"] == 9 * per_kind
    assert metrics["failures_rate_limit"] == per_kind
    assert metrics["failures_server"] == 4 * per_kind  # 500, 503, and the two malformed bodies litellm reports as 500
    assert metrics["failures_client"] == per_kind
    assert metrics["failures_timeout"] == per_kind
    assert metrics["failures_parse"] == 2 * per_kind  # unparseable and empty replies
    assert elapsed < 40  # concurrent: sequential calls would take over a minute (20 hangs of 3 s alone)


def test_retries_only_for_transient_errors(server):
    scripts = {
        "task-0": ["429", "ok"],
        "task-1": ["500", "503", "ok"],
        "task-2": ["400", "ok"],
        "task-3": ["429"],
        "task-4": ["bad_reference", "ok"],
        "task-5": [Fault("hang"), "ok"],
        "task-6": ["bad_json", "ok"],
    }
    server.reset(plan=keyed_plan(scripts))
    provider = _provider(server, num_retries=2, timeout=0.5)
    outcome = resolve_references(provider, _groups(7), timeout=30)
    assert [r is not None for r in outcome.references] == [True, True, False, False, False, True, True]
    per_key = {}
    for body in server.requests:
        key = request_key(body)
        per_key[key] = per_key.get(key, 0) + 1
    assert per_key == {"task-0": 2, "task-1": 3, "task-2": 1, "task-3": 3, "task-4": 1, "task-5": 2, "task-6": 2}
    metrics = provider.pop_metrics()
    assert metrics["http_calls"] == 14 and metrics["retries"] == 7 and metrics["failures"] == 3
    assert metrics["failures_client"] == 1 and metrics["failures_rate_limit"] == 1 and metrics["failures_parse"] == 1


def test_mock_response_faults_and_cost_accounting():
    failing = LiteLLMCreditReference(
        "openai/gpt-4o-mini", num_retries=2, backoff=0.0, extra_kwargs={"mock_response": "litellm.RateLimitError"}
    )
    outcome = resolve_references(failing, _groups(4), timeout=30)
    assert outcome.references == [None] * 4 and outcome.errors == 4
    assert all("rate_limit" in m for m in outcome.error_messages)
    metrics = failing.pop_metrics()
    assert metrics["http_calls"] == 12 and metrics["retries"] == 8 and metrics["failures_rate_limit"] == 4

    crashing = LiteLLMCreditReference(
        "openai/gpt-4o-mini", num_retries=1, backoff=0.0, extra_kwargs={"mock_response": Exception("boom")}
    )
    assert resolve_references(crashing, _groups(2)).failures == 2
    assert crashing.pop_metrics()["retries"] == 2  # litellm reports mock exceptions as 500s

    working = LiteLLMCreditReference("openai/gpt-4o-mini", extra_kwargs={"mock_response": VALID_REFERENCE})
    outcome = resolve_references(working, _groups(3))
    assert outcome.failures == 0
    metrics = working.pop_metrics()
    assert metrics["cost_usd"] > 0 and metrics["completion_tokens"] > 0


def test_calls_overlap_and_respect_max_concurrency(server):
    latency, n = 0.4, 12
    server.reset(plan=always(Fault("ok", delay=latency)))
    provider = _provider(server, max_concurrency=n)
    start = time.perf_counter()
    outcome = resolve_references(provider, _groups(n), max_concurrency=n, timeout=30)
    elapsed = time.perf_counter() - start
    assert outcome.failures == 0
    assert elapsed < 0.5 * n * latency, elapsed
    assert server.max_in_flight > n // 2

    server.reset()
    bounded = _provider(server, max_concurrency=3)
    start = time.perf_counter()
    assert resolve_references(bounded, _groups(6), max_concurrency=16, timeout=30).failures == 0
    assert server.max_in_flight <= 3
    assert time.perf_counter() - start >= 2 * latency  # two waves of three


def test_cache_skips_http_and_ignores_corrupt_entries(server, tmp_path):
    groups = _groups(4)
    first = _provider(server, cache_dir=tmp_path)
    refs = resolve_references(first, groups).references
    assert server.request_count == 4 and first.pop_metrics()["cache_hits"] == 0
    files = sorted(tmp_path.glob("*/*.json"))
    assert len(files) == 4

    second = _provider(server, cache_dir=tmp_path)  # a fresh process would see the same
    again = resolve_references(second, groups).references
    metrics = second.pop_metrics()
    assert server.request_count == 4 and metrics["http_calls"] == 0 and metrics["cache_hits"] == 4
    assert [r.text for r in again] == [r.text for r in refs]
    assert [r.masked_literals for r in again] == [r.masked_literals for r in refs]
    assert all(r.metadata["cache_hit"] for r in again)

    # A partial write and a record of another key are ignored, then replaced by the next successful call.
    files[0].write_text(files[0].read_text()[:40])
    record = json.loads(files[1].read_text())
    files[1].write_text(json.dumps({**record, "key": "0" * 64}))
    third = _provider(server, cache_dir=tmp_path)
    assert resolve_references(third, groups).failures == 0
    metrics = third.pop_metrics()
    assert metrics["http_calls"] == 2 and metrics["cache_hits"] == 2 and metrics["cache_errors"] == 2
    assert server.request_count == 6
    assert json.loads(files[0].read_text())["reference"] == refs[0].text

    # Different evidence is a different key.
    other = _provider(server, cache_dir=tmp_path)
    resolve_references(other, _groups(1, start=10))
    assert other.pop_metrics()["http_calls"] == 1
    # Cache files hold neither the key nor raw evidence.
    for path in tmp_path.glob("*/*.json"):
        text = path.read_text()
        assert DUMMY_KEY not in text and "ZFA04Y" not in text
        assert all(secret not in text for secret in PLANTED_SECRETS)


def test_unparseable_replies_are_not_cached(server, tmp_path):
    server.reset(plan=always("bad_reference"))
    provider = _provider(server, cache_dir=tmp_path)
    assert resolve_references(provider, _groups(2)).failures == 2
    assert list(tmp_path.glob("*/*.json")) == []


def _hammer(directory: str, key: str, worker: int) -> None:
    cache = ReferenceCache(directory)
    for i in range(40):
        cache.put(key, f"reply {worker}-{i} " + "x" * 20_000, model="m")


def test_cache_writes_are_atomic_across_processes(tmp_path, monkeypatch):
    cache = ReferenceCache(tmp_path)
    key = cache_key([{"role": "user", "content": "x"}], "m", "v")
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_hammer, args=(str(tmp_path), key, w)) for w in range(3)]
    for w in workers:
        w.start()
    seen = 0
    while any(w.is_alive() for w in workers):
        record = cache.get(key)
        if record is not None:
            assert record["reference"].startswith("reply ") and len(record["reference"]) > 20_000
            seen += 1
    for w in workers:
        w.join(timeout=30)
        assert w.exitcode == 0
    assert cache.errors == 0 and seen > 0
    assert cache.get(key) is not None
    assert list(tmp_path.glob("*/*.tmp")) == []

    # A crash between writing and publishing leaves the previous record and no partial file behind.
    def crash(src, dst):
        raise OSError("simulated crash")

    before = cache.get(key)
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        cache.put(key, "new reply")
    monkeypatch.undo()
    assert cache.get(key) == before and list(tmp_path.glob("*/*.tmp")) == []
    # A leftover temporary file of a killed writer is ignored.
    (cache.path(key).parent / f".{key[:16]}.crashed.tmp").write_text('{"key": "')
    assert cache.get(key) == before


def test_sanitizer_runs_before_the_prompt_and_on_the_reply(server):
    server.reset(reply=VALID_REFERENCE + "- mia.li3818@example.com\n- ZFA04Y\n")
    provider = _provider(server)
    outcome = resolve_references(provider, _groups(3))
    assert outcome.failures == 0
    received = "\n".join(server.bodies)
    for secret in (*PLANTED_SECRETS, "ZFA04Y"):
        assert secret not in received, secret
    assert "<MASKED:EMAIL>" in received and "<MASKED:CREDENTIAL>" in received and "<MASKED:ORACLE>" in received
    for reference in outcome.references:
        assert "mia.li3818@example.com" not in reference.text and "ZFA04Y" not in reference.text
    assert provider.pop_metrics()["output_masks"] == 6


def test_api_keys_stay_out_of_errors_metrics_and_repr(server, monkeypatch):
    server.reset(plan=always("401"))
    provider = _provider(server)
    outcome = resolve_references(provider, _groups(2))
    assert outcome.failures == 2
    assert all("client" in m and DUMMY_KEY not in m for m in outcome.error_messages)
    assert DUMMY_KEY not in repr(provider) and DUMMY_KEY not in json.dumps(provider.pop_metrics())

    with pytest.raises(ValueError, match="api_key"):
        LiteLLMCreditReference("openai/test-model", extra_kwargs={"api_key": DUMMY_KEY})
    monkeypatch.delenv(KEY_ENV)
    server.reset()
    missing = _provider(server)
    outcome = resolve_references(missing, _groups(1))
    assert outcome.failures == 1 and server.request_count == 0
    assert missing.pop_metrics()["failures_config"] == 1


def test_outer_timeout_cancels_slow_calls(server):
    server.reset(plan=always(Fault("ok", delay=3.0)))
    provider = _provider(server)
    outcome = resolve_references(provider, _groups(3), timeout=0.5)
    assert outcome.timeouts == 3 and outcome.references == [None] * 3
    assert provider.pop_metrics()["failures_cancelled"] == 3


def test_references_survive_fallback_and_length_cap(server):
    server.reset(reply=VALID_REFERENCE + "\n".join(f"- extra literal line {i}" for i in range(400)))
    provider = _provider(server, max_prompt_chars=6_000, max_reference_chars=800)
    group = airline_group(task_id="task-1", kinds=("success",) * 5 + ("reckless", "transfer"), pad=4_000)
    reference = resolve_references(provider, [group]).references[0]
    assert reference is not None and len(reference.text) <= 800
    assert len(server.bodies[0]) < 6_000 + 1_000  # the prompt budget plus the request envelope
    assert reference.metadata["fallback"] is True and reference.metadata["siblings_shown"] == 4
    assert provider.pop_metrics()["fallback_groups"] == 1


def test_error_classification():
    assert classify_error(litellm.RateLimitError("x", llm_provider="openai", model="m")) == "rate_limit"
    assert classify_error(litellm.BadRequestError("x", llm_provider="openai", model="m")) == "client"
    assert classify_error(litellm.InternalServerError("x", llm_provider="openai", model="m")) == "server"
    assert classify_error(litellm.Timeout("x", llm_provider="openai", model="m")) == "timeout"
    assert classify_error(TimeoutError()) == "timeout"
    assert classify_error(litellm.APIConnectionError("x", llm_provider="openai", model="m")) == "connection"


def test_importing_the_module_does_not_import_litellm():
    package_dir = Path(references.__file__).resolve().parent.parent
    code = (
        "import sys, types\n"
        f"pkg = types.ModuleType('trl_sgcd'); pkg.__path__ = [{str(package_dir)!r}]; sys.modules['trl_sgcd'] = pkg\n"
        "import trl_sgcd.references.litellm_provider as m\n"
        "m.LiteLLMCreditReference('openai/x')\n"
        "print('litellm' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"
