"""The provider call path (`resolve_references` on the long-lived provider event loop), with plain callables."""

import multiprocessing
import threading
import time

from trl_sgcd.references import as_provider, resolve_references
from trl_sgcd.references.base import provider_loop
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
