"""The provider call path (`resolve_references` on the long-lived provider event loop), with plain callables."""

import asyncio
import inspect
import multiprocessing
import subprocess
import sys
import threading
import time

import pytest

from trl_sgcd.references import (
    ContrastCreditReference,
    Sanitizer,
    as_provider,
    ensure_sanitized,
    resolve_references,
)
from trl_sgcd.references.base import provider_loop, stage_deadline
from trl_sgcd.siblings import Sibling, SiblingGroup


def _group(i: int) -> SiblingGroup:
    return SiblingGroup(
        prompt=f"task {i}",
        siblings=[Sibling([{"role": "assistant", "content": "ok"}], 1.0, True), Sibling([], 0.0, False)],
    )


def test_a_hung_sync_provider_costs_its_timeout_not_the_step():
    release = threading.Event()

    def provider(group):
        if group.prompt == "task 0":
            release.wait(20)  # hangs far past the timeout
        return "Deviation points: the first call."

    start = time.perf_counter()
    outcome = resolve_references(as_provider(provider), [_group(i) for i in range(3)], timeout=0.3)
    elapsed = time.perf_counter() - start
    release.set()
    assert outcome.timeouts == 1 and outcome.references[0] is None
    assert all(r is not None for r in outcome.references[1:])
    assert elapsed < 5  # not the 20 s the hung call would take


def test_sync_callables_of_one_step_run_concurrently():
    def provider(group):
        time.sleep(0.5)
        return "ref"

    start = time.perf_counter()
    outcome = resolve_references(as_provider(provider), [_group(i) for i in range(8)], max_concurrency=8, timeout=10)
    assert outcome.failures == 0 and time.perf_counter() - start < 2.0  # 8 calls in series would take 4 s


def test_one_loop_for_the_run_and_a_new_one_after_fork():
    loop = provider_loop()
    assert provider_loop() is loop and loop.is_running()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_resolve_in_child, args=(queue,))
    child.start()
    child.join(60)
    assert child.exitcode == 0 and queue.get(timeout=5) == "ref"


def _resolve_in_child(queue) -> None:
    outcome = resolve_references(as_provider(lambda group: "ref"), [_group(0)], timeout=10)
    queue.put(outcome.references[0].text)


def test_a_provider_may_call_another_providers_build_from_its_coroutine():
    # A composite provider falling back to a sync `build` from inside its own coroutine, which runs on the provider
    # loop: `build` (`run_sync`) must not wait on that same loop.
    async def summarize(group):
        return "Deviation points: the first call."

    fallback = as_provider(summarize)

    async def composite(group):
        return fallback.build(group)

    box = {}
    worker = threading.Thread(
        target=lambda: box.update(outcome=resolve_references(as_provider(composite), [_group(0)], timeout=5)),
        daemon=True,
    )
    worker.start()
    worker.join(30)  # a deadlock would block the provider loop itself, so its own timeouts could not fire
    assert not worker.is_alive(), "run_sync deadlocked on the provider loop"
    outcome = box["outcome"]
    assert outcome.failures == 0 and outcome.references[0].text == "Deviation points: the first call."


# ---------------------------------------------------------------- one deadline per stage


def _within(seconds: float, fn):
    """Runs `fn` on a thread and returns what it returned or raised; fails instead of hanging past `seconds`."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s"
    return box


def test_stage_deadline_is_the_timeout_times_the_waves_of_calls():
    assert stage_deadline(1, 16, 10.0) == 10.0
    assert stage_deadline(16, 16, 10.0) == 10.0 and stage_deadline(17, 16, 10.0) == 20.0
    assert stage_deadline(0, 4, 2.0) == 2.0 and stage_deadline(5, 4, None) is None

    def provider(group):  # two waves of 0.35 s: each call is under its 0.5 s, the stage under its 1.0 s
        time.sleep(0.35)
        return "ref"

    outcome = resolve_references(as_provider(provider), [_group(i) for i in range(4)], max_concurrency=2, timeout=0.5)
    assert outcome.failures == 0


def test_the_stage_returns_on_time_when_a_provider_blocks_the_event_loop():
    release = threading.Event()

    async def provider(group):
        if group.prompt == "task 0":
            await asyncio.sleep(0.05)  # the other groups finish first
            release.wait(30)  # a blocking call inside `async def`: the event loop itself stops
        return "Deviation points: the first call."

    try:
        box = _within(10, lambda: _timed(resolve_references, as_provider(provider), [_group(i) for i in range(4)]))
        outcome, elapsed = box["value"]
        assert elapsed < 1.0 + 0.5  # the deadline (1 wave x 1 s), not the 30 s the provider blocks
        assert outcome.timeouts == 1 and outcome.references[0] is None
        assert all(r is not None for r in outcome.references[1:])
        assert any("deadline" in m for m in outcome.error_messages)
        # The next stage finds the loop still blocked, replaces it (counted) and its calls work.
        blocked = provider_loop()
        outcome, elapsed = _timed(resolve_references, as_provider(lambda g: "ref"), [_group(i) for i in range(3)])
        assert outcome.failures == 0 and outcome.loop_restarts == 1 and elapsed < 1.0 + 0.5
        assert provider_loop() is not blocked
        outcome, _ = _timed(resolve_references, as_provider(lambda g: "ref"), [_group(0)])
        assert outcome.failures == 0 and outcome.loop_restarts == 0
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while not blocked.is_closed() and time.monotonic() < deadline:  # once free, the retired loop shuts down
        time.sleep(0.05)
    assert blocked.is_closed()


def _timed(fn, provider, groups, timeout=1.0, max_concurrency=16):
    start = time.perf_counter()
    outcome = fn(provider, groups, max_concurrency=max_concurrency, timeout=timeout)
    return outcome, time.perf_counter() - start


@pytest.mark.parametrize("kind", ["callable", "contrast"])
def test_a_slow_sanitize_does_not_stall_the_other_groups(monkeypatch, kind):
    original = Sanitizer.sanitize

    def slow(self, group):
        if "task 0" in str(group.prompt):
            time.sleep(3)  # CPU-bound work, as far as the event loop can tell
        return original(self, group)

    monkeypatch.setattr(Sanitizer, "sanitize", slow)
    provider = ensure_sanitized(lambda g: "Deviation points: the first call.")
    if kind == "contrast":
        provider = ContrastCreditReference()
    groups = [_mixed_group(i) for i in range(4)]
    outcome, elapsed = _timed(resolve_references, provider, groups, timeout=0.5)
    assert elapsed < 0.5 + 0.5
    assert outcome.timeouts == 1 and outcome.references[0] is None
    assert all(r is not None for r in outcome.references[1:])


def _mixed_group(i: int) -> SiblingGroup:
    def sibling(name, success):
        call = {"type": "function", "function": {"name": name, "arguments": {"id": f"R{i}"}}}
        messages = [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "name": name, "content": "done"},
            {"role": "assistant", "content": "finished"},
        ]
        return Sibling(messages, float(success), success)

    return SiblingGroup(prompt=f"task {i}", siblings=[sibling("get_booking", True), sibling("cancel_booking", False)])


# ---------------------------------------------------------------- BaseException from a provider


class ProviderAbort(BaseException):
    """A custom BaseException subclass, as some libraries raise."""


def _exit_sync(group):
    sys.exit(3)


async def _exit_async(group):
    raise SystemExit(3)


def _custom_sync(group):
    raise ProviderAbort("stop")


async def _custom_async(group):
    raise ProviderAbort("stop")


async def _generator_exit(group):
    raise GeneratorExit


@pytest.mark.parametrize("raiser", [_exit_sync, _exit_async, _custom_sync, _custom_async, _generator_exit])
def test_a_base_exception_fails_one_group_and_the_loop_lives_on(raiser):
    def provider(group):
        return raiser(group) if group.prompt == "task 0" else "ref"

    async def async_provider(group):
        return await raiser(group) if group.prompt == "task 0" else "ref"

    chosen = async_provider if inspect.iscoroutinefunction(raiser) else provider
    for stage in range(2):  # the second stage runs on the same, living loop
        box = _within(10, lambda: resolve_references(as_provider(chosen), [_group(i) for i in range(3)], timeout=5))
        outcome = box["value"]
        assert outcome.errors == 1 and outcome.failures == 1 and outcome.references[0] is None
        assert all(r is not None for r in outcome.references[1:])
        assert stage == 0 or outcome.loop_restarts == 0


def test_build_raises_a_providers_base_exception_in_the_caller_and_the_loop_lives_on():
    def provider(group):
        sys.exit(2)

    box = _within(10, lambda: as_provider(provider).build(_group(0)))
    assert isinstance(box.get("error"), SystemExit) and box["error"].code == 2
    loop = provider_loop()
    outcome = resolve_references(as_provider(lambda g: "ref"), [_group(0)], timeout=5)
    assert outcome.failures == 0 and outcome.loop_restarts == 0 and provider_loop() is loop


_INTERRUPT_SCRIPT = """
import asyncio, sys, time
from trl_sgcd.references import as_provider, resolve_references
from trl_sgcd.siblings import Sibling, SiblingGroup

def sync_provider(group):
    if group.prompt == "task 0":
        time.sleep(0.2)
        raise KeyboardInterrupt
    time.sleep(600)  # a call that never returns: its thread must not hold the exit

async def async_provider(group):
    if group.prompt == "task 0":
        await asyncio.sleep(0.2)
        raise KeyboardInterrupt
    await asyncio.sleep(600)

groups = [SiblingGroup(prompt=f"task {i}", siblings=[Sibling([], 1.0, True), Sibling([], 0.0, False)]) for i in range(3)]
provider = sync_provider if sys.argv[1] == "sync" else async_provider
start = time.perf_counter()
try:
    resolve_references(as_provider(provider), groups, timeout=300)
finally:
    print(f"returned after {time.perf_counter() - start:.2f} s", flush=True)
"""


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_keyboard_interrupt_from_a_provider_stops_the_process_promptly(kind):
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", _INTERRUPT_SCRIPT, kind], capture_output=True, text=True, timeout=120
    )
    total = time.perf_counter() - start
    assert result.returncode != 0 and "KeyboardInterrupt" in result.stderr, result.stderr[-2000:]
    waited = float(result.stdout.split("returned after ")[1].split()[0])
    assert waited < 3.0, result.stdout
    assert total < 60  # the interpreter exits although two provider calls still hang


def test_keyboard_interrupt_ends_the_stages_waiting_on_other_threads():
    # With prefetching, rounds' stages run on other threads: one interrupted stage must not leave another holding the
    # interpreter's exit until its deadline.
    release = threading.Event()

    def provider(group):
        if group.prompt == "task 0":
            time.sleep(0.5)
            raise KeyboardInterrupt
        release.wait(60)
        return "ref"

    box = {}

    def wait_on_a_hung_call():
        box["result"] = _timed(resolve_references, as_provider(provider), [_group(1)], timeout=300)

    waiting = threading.Thread(target=wait_on_a_hung_call, daemon=True)
    try:
        waiting.start()
        interrupted = _within(20, lambda: resolve_references(as_provider(provider), [_group(0)], timeout=300))
        assert isinstance(interrupted.get("error"), KeyboardInterrupt)
        waiting.join(5)
        assert not waiting.is_alive(), "the other stage still waits for its 300 s deadline"
        outcome, elapsed = box["result"]
        assert outcome.timeouts == 1 and elapsed < 5
    finally:
        release.set()


# ---------------------------------------------------------------- through the trainer


def _trainer(model_path, tmp_path, provider):
    from datasets import Dataset

    from trl_sgcd import SGCDConfig, SGCDGRPOTrainer

    args = SGCDConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=16,
        max_steps=2,
        report_to="none",
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        seed=7,
        dynamic_sampling=False,
        provider_timeout=5.0,
    )
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": f"book flight F{i}"}]} for i in range(16)])

    def parity_reward(completions, **kwargs):  # about half the groups are mixed
        return [float(len(c[0]["content"]) % 2 == 0) for c in completions]

    return SGCDGRPOTrainer(
        model=model_path, reward_funcs=parity_reward, args=args, train_dataset=dataset, credit_reference=provider
    )


def test_a_provider_calling_sys_exit_does_not_stop_training(tiny_model_path, tmp_path):
    exited = threading.Event()

    def provider(group):
        if not exited.is_set():
            exited.set()
            sys.exit(1)  # on a worker thread: used to end the provider loop, and training waited forever
        return "State checks: verify the user first."

    trainer = _trainer(tiny_model_path, tmp_path, provider)
    box = _within(120, trainer.train)
    assert "error" not in box, box.get("error")
    logs = [h for h in trainer.state.log_history if "sgcd/provider/errors_total" in h]
    assert len(logs) == 2 and logs[-1]["sgcd/provider/errors_total"] == 1
    assert logs[-1]["sgcd/provider/calls"] > 0 and logs[-1]["sgcd/reference/groups_with_reference"] > 0


def test_keyboard_interrupt_from_a_provider_stops_training(tiny_model_path, tmp_path):
    def provider(group):
        raise KeyboardInterrupt

    trainer = _trainer(tiny_model_path, tmp_path, provider)
    start = time.perf_counter()
    box = _within(120, trainer.train)
    assert isinstance(box.get("error"), KeyboardInterrupt)
    assert time.perf_counter() - start < 60 and trainer.state.global_step == 0
    assert resolve_references(as_provider(lambda g: "ref"), [_group(0)], timeout=5).failures == 0
