"""The credit-reference provider interface and the concurrent, fault-tolerant call path the trainer uses.

A provider turns one mixed `SiblingGroup` into a `CreditReference`. Providers are async so a step's calls run
concurrently; a plain sync or async callable is wrapped by `as_provider`. Every failure mode (any exception, a
timeout, empty or malformed output) becomes `None` for that group, which the trainer trains with `W = 1` (plain GRPO),
and is counted in `ProviderOutcome`. `KeyboardInterrupt` is the one exception that stops training.

`resolve_references` gives the whole stage one deadline, kept by the calling thread: it returns on time even when a
provider blocks the event loop, and a loop that stays blocked (or whose thread died) is replaced before the next stage.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import inspect
import os
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..siblings import CreditReference, SiblingGroup
from .keys import known_keys, scrub_keys


T = TypeVar("T")
ProviderReturn = CreditReference | str | None
PROBE_S = 1.0  # the longest a stage waits for the provider loop to answer before it replaces the loop
_GRACE_S = 0.1  # how long cancelled calls get to unwind; the caller waits twice that past the deadline for the report
_DRAIN_S = 1.0  # how long a retired loop lets its cancelled tasks unwind before it closes
_PENDING = object()


class CreditReferenceError(RuntimeError):
    """Raised by a provider when its output cannot be used (counted as a failure, never propagated to training)."""


class CreditReferenceProvider:
    """Base class of credit-reference providers.

    Subclasses implement `abuild(group)`. `abuild_many` issues one call per group concurrently; override it for a
    provider with a native batch API. `pop_metrics` returns per-step accounting (tokens, cost, cache hits, ...) that the
    trainer logs under `sgcd/provider/`, and resets it.
    """

    name: str = "provider"

    async def abuild(self, group: SiblingGroup) -> ProviderReturn:
        raise NotImplementedError

    async def abuild_many(self, groups: Sequence[SiblingGroup]) -> list[ProviderReturn | BaseException]:
        return await asyncio.gather(*(_capture(functools.partial(self.abuild, g)) for g in groups))

    @property
    def batches_natively(self) -> bool:
        """Whether `abuild_many` is overridden (a native batch API); the trainer then bounds the batch as a whole."""
        return type(self).abuild_many is not CreditReferenceProvider.abuild_many

    def build(self, group: SiblingGroup) -> ProviderReturn:
        """Synchronous convenience wrapper around `abuild` (safe inside a running event loop, e.g. a notebook)."""
        return run_sync(self.abuild(group))

    def pop_metrics(self) -> dict[str, float]:
        return {}


class CallableCreditReference(CreditReferenceProvider):
    """Adapts a plain `(SiblingGroup) -> CreditReference | str | None` callable, sync or async."""

    def __init__(self, fn: Callable[[SiblingGroup], ProviderReturn | Awaitable[ProviderReturn]]):
        self.fn = fn
        self.name = getattr(fn, "__name__", type(fn).__name__)
        self._is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)

    async def abuild(self, group: SiblingGroup) -> ProviderReturn:
        if self._is_async:
            return await self.fn(group)
        # Sync callables may block (HTTP, disk): run them off the event loop so groups still overlap.
        result = await run_blocking(self.fn, group)
        if inspect.isawaitable(result):
            result = await result
        return result


def as_provider(obj: Any) -> CreditReferenceProvider:
    """Returns `obj` if it is a provider, wraps it if it is a callable, and raises a clear `TypeError` otherwise."""
    if isinstance(obj, CreditReferenceProvider):
        return obj
    if callable(obj):
        return CallableCreditReference(obj)
    raise TypeError(
        "`credit_reference` must be a CreditReferenceProvider or a callable (SiblingGroup) -> CreditReference | str | "
        f"None, got {type(obj).__name__}."
    )


async def run_blocking(fn: Callable[..., T], /, *args: Any) -> T:
    """Runs `fn(*args)` on a new daemon thread and awaits it without blocking the event loop.

    Unlike `asyncio.to_thread` (a pool of threads the interpreter joins at exit), a call that never returns holds
    neither a pool slot nor the interpreter's exit. A call whose awaiter gave up (a timeout) finishes in the background
    and its result is dropped. Whatever it raises, `SystemExit` included, is raised here, in the awaiting coroutine.
    """
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    context = contextvars.copy_context()

    def target() -> None:
        try:
            outcome = (True, context.run(fn, *args))
        except BaseException as exc:  # noqa: BLE001 - delivered to the awaiting coroutine
            outcome = (False, exc)
        with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile (retired): nobody is waiting
            loop.call_soon_threadsafe(_deliver, future, *outcome)

    threading.Thread(target=target, name="sgcd-provider-sync", daemon=True).start()
    return await future


def _deliver(future: asyncio.Future, ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:  # a future cannot hold StopIteration
        future.set_exception(RuntimeError(repr(value)) if isinstance(value, StopIteration) else value)


class Tally:
    """Per-step counters that worker threads may update: `add` and `pop` (read and reset) hold a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, key: str, value: float = 1.0) -> None:
        with self._lock:
            self._counts[key] += value

    def pop(self) -> dict[str, float]:
        with self._lock:
            counts = {k: float(v) for k, v in self._counts.items()}
            self._counts.clear()
        return counts


@dataclass
class ProviderOutcome:
    """References for a list of groups plus the counters the trainer logs.

    `loop_restarts` counts provider event loops this stage replaced because they no longer answered (a provider
    blocked the loop past a deadline, or a `BaseException` ended its thread).
    """

    references: list[CreditReference | None]
    calls: int = 0
    failures: int = 0
    timeouts: int = 0
    errors: int = 0
    empty: int = 0
    loop_restarts: int = 0
    latency_s: float = 0.0
    error_messages: list[str] = field(default_factory=list)

    @classmethod
    def merge(cls, outcomes: Sequence[ProviderOutcome]) -> ProviderOutcome:
        """Counters summed over several batches of calls; `latency_s` is the longest batch's."""
        return cls(
            references=[r for o in outcomes for r in o.references],
            calls=sum(o.calls for o in outcomes),
            failures=sum(o.failures for o in outcomes),
            timeouts=sum(o.timeouts for o in outcomes),
            errors=sum(o.errors for o in outcomes),
            empty=sum(o.empty for o in outcomes),
            loop_restarts=sum(o.loop_restarts for o in outcomes),
            latency_s=max((o.latency_s for o in outcomes), default=0.0),
            error_messages=[m for o in outcomes for m in o.error_messages],
        )


def stage_deadline(groups: int, max_concurrency: int, timeout: float | None) -> float | None:
    """Seconds the provider stage may take: `timeout × ceil(groups / max_concurrency)` (`None` for no deadline)."""
    if timeout is None:
        return None
    return timeout * max(1, -(-groups // max(1, max_concurrency)))


def error_message(exc: BaseException, limit: int = 300) -> str:
    """`Type: message` of a provider failure, safe to log: API-key values and what the sanitizer masks are removed."""
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: BLE001 - a broken __str__ must not break the accounting
        text = type(exc).__name__
    text, _ = scrub_keys(text, known_keys())
    text, _ = _error_sanitizer().sanitize_text(text[:2_000])
    return text[:limit]


@functools.lru_cache(maxsize=1)
def _error_sanitizer() -> Any:
    from .sanitizer import Sanitizer  # the sanitizer's providers module imports this one

    return Sanitizer()


class _Stage:
    """One stage's per-group results: filled on the provider loop, read once by whoever ends the stage."""

    def __init__(self, groups: int):
        self.results: list[Any] = [_PENDING] * groups
        self.stopping = False  # set when the stage cancels its calls (its own cancellations are not provider errors)
        self._lock = threading.Lock()
        self._closed = False

    def put(self, index: int, value: Any) -> None:
        with self._lock:
            if not self._closed:
                self.results[index] = value

    def close(self) -> list[Any]:
        """The results as they are now; later ones are ignored."""
        with self._lock:
            self._closed = True
            return list(self.results)


async def _capture(make: Callable[[], Any]) -> Any:
    """What `await make()` returns, or whatever `BaseException` it raises (returned, so it never reaches the loop)."""
    try:
        return await make()
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - SystemExit, GeneratorExit, ... are one group's failure
        return exc


async def _settle(make: Callable[[], Any], timeout: float | None, stage: _Stage) -> Any:
    """`_capture` bounded by `timeout`; a timeout or a provider's own `CancelledError` is returned too."""
    try:
        return await asyncio.wait_for(_capture(make), timeout=timeout)
    except asyncio.TimeoutError as exc:
        return exc
    except asyncio.CancelledError as exc:
        if stage.stopping:
            raise
        return exc


async def _run_stage(
    provider: CreditReferenceProvider,
    groups: Sequence[SiblingGroup],
    max_concurrency: int,
    timeout: float | None,
    deadline: float | None,
    stage: _Stage,
) -> None:
    """Fills `stage` with one result per group; returns at `deadline`, or as soon as a group raises KeyboardInterrupt."""
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    left = len(groups)

    def settle(index: int, value: Any) -> None:
        nonlocal left
        stage.put(index, value)
        left -= 1
        if (left == 0 or isinstance(value, KeyboardInterrupt)) and not finished.done():
            finished.set_result(None)

    async def batch() -> None:
        values = await _settle(lambda: provider.abuild_many(groups), None, stage)
        if isinstance(values, BaseException):
            values = [values] * len(groups)
        elif not isinstance(values, (list, tuple)) or len(values) != len(groups):
            error = CreditReferenceError(f"abuild_many returned {type(values).__name__}, not {len(groups)} results")
            values = [error] * len(groups)
        for index, value in enumerate(values):
            settle(index, value)

    semaphore = asyncio.Semaphore(max(1, max_concurrency))

    async def one(index: int) -> None:
        async with semaphore:
            value = await _settle(functools.partial(provider.abuild, groups[index]), timeout, stage)
        settle(index, value)

    if provider.batches_natively:  # bound the batch as a whole, by the stage deadline
        tasks = [loop.create_task(batch())]
    else:
        tasks = [loop.create_task(one(i)) for i in range(len(groups))]
    try:
        await asyncio.wait([finished], timeout=deadline)
    finally:
        stage.stopping = True
        for task in tasks:
            task.cancel()
    await asyncio.wait(tasks, timeout=_GRACE_S)  # cancelled calls unwind (providers count them) before the report


def _finish(stage: _Stage, start: float, deadline: float | None, loop_restarts: int) -> ProviderOutcome:
    """The outcome of a stage: groups still running count as timeouts; a KeyboardInterrupt is re-raised."""
    results = stage.close()
    for result in results:
        if isinstance(result, KeyboardInterrupt):
            raise result
    outcome = ProviderOutcome(
        references=[None] * len(results),
        calls=len(results),
        loop_restarts=loop_restarts,
        latency_s=time.perf_counter() - start,
    )
    late = 0
    for i, result in enumerate(results):
        if result is _PENDING:
            late += 1
            outcome.failures += 1
            outcome.timeouts += 1
            continue
        if isinstance(result, BaseException):
            outcome.failures += 1
            if isinstance(result, (asyncio.TimeoutError, TimeoutError)):
                outcome.timeouts += 1
            else:
                outcome.errors += 1
            outcome.error_messages.append(error_message(result))
            continue
        try:
            ref = CreditReference.coerce(result)
        except TypeError as exc:
            outcome.failures += 1
            outcome.errors += 1
            outcome.error_messages.append(error_message(exc))
            continue
        if ref is None:
            outcome.failures += 1
            outcome.empty += 1
            continue
        outcome.references[i] = ref
    if late:
        outcome.error_messages.append(f"TimeoutError: {late} group(s) not done by the stage deadline ({deadline:g} s)")
    return outcome


async def aresolve_references(
    provider: CreditReferenceProvider,
    groups: Sequence[SiblingGroup],
    max_concurrency: int = 16,
    timeout: float | None = 120.0,
) -> ProviderOutcome:
    """`resolve_references` on the caller's own event loop: same calls, deadline and counters, but the deadline holds
    only while that loop is responsive (a provider that blocks it blocks the caller too)."""
    start = time.perf_counter()
    deadline = stage_deadline(len(groups), max_concurrency, timeout)
    stage = _Stage(len(groups))
    if groups:
        await _run_stage(provider, groups, max_concurrency, timeout, deadline, stage)
    return _finish(stage, start, deadline, 0)


def resolve_references(
    provider: CreditReferenceProvider,
    groups: Sequence[SiblingGroup],
    max_concurrency: int = 16,
    timeout: float | None = 120.0,
) -> ProviderOutcome:
    """Calls `provider` once per group on the provider loop and returns by the stage's deadline, whatever it does.

    At most `max_concurrency` calls run at once, each bounded by `timeout` seconds from when it gets a slot, and the
    stage as a whole by `stage_deadline(len(groups), max_concurrency, timeout)` seconds, kept by this (the calling)
    thread: groups not done by then count as timeouts, even if a provider blocks the event loop. That includes up to
    `PROBE_S` seconds to check that the provider loop answers; a loop that does not is replaced (`loop_restarts`).
    Any exception a provider raises is one group's failure, except `KeyboardInterrupt`, raised here as soon as it
    happens. Usable from the training loop, from threads and from notebooks.
    """
    start = time.perf_counter()
    deadline = stage_deadline(len(groups), max_concurrency, timeout)
    stage = _Stage(len(groups))
    restarts = 0
    if groups:
        remaining = deadline

        def make() -> Coroutine[Any, Any, None]:  # after the probe: the loop side keeps the same deadline
            nonlocal remaining
            if deadline is not None:
                remaining = max(0.0, deadline - (time.perf_counter() - start))
            return _run_stage(provider, groups, max_concurrency, timeout, remaining, stage)

        future, restarts = _start(make, PROBE_S if deadline is None else min(PROBE_S, deadline / 4))
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        with _waiting_lock:
            _waiting.add(done)
        try:  # a provider may block the loop or ignore cancellation: the stage ends at the deadline regardless
            done.wait(None if remaining is None else remaining + 2 * _GRACE_S)
        finally:
            with _waiting_lock:
                _waiting.discard(done)
            future.cancel()
        if future.done() and not future.cancelled() and future.exception() is not None:
            raise future.exception()  # a fault of the stage itself, not of a provider
    try:
        return _finish(stage, start, deadline, restarts)
    except KeyboardInterrupt:
        _release_waiting()
        raise


_waiting_lock = threading.Lock()
_waiting: set[threading.Event] = set()  # stages now waiting on the provider loop (from any thread)


def _release_waiting() -> None:
    """Ends every stage now waiting (its unfinished groups count as timeouts): training is being interrupted, and
    a stage running on another thread (a prefetched round) must not hold the interpreter's exit until its deadline."""
    with _waiting_lock:
        for event in _waiting:
            event.set()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine to completion from synchronous code, on the provider event loop (`provider_loop`).

    Safe from any thread and inside a running loop (a notebook), since the coroutine never runs on the caller's loop.
    If the caller is interrupted, the coroutine is cancelled. Called from a coroutine already on the provider loop
    (a provider whose `abuild` calls another provider's `build`), it runs the coroutine on a helper thread's own loop
    instead, since waiting on the provider loop from inside it would never return.
    """
    future, _ = _start(lambda: _outcome(coro), PROBE_S)
    try:
        ok, value = future.result()
    except BaseException:
        future.cancel()
        raise
    if ok:
        return value
    raise value


async def _outcome(coro: Coroutine[Any, Any, T]) -> tuple[bool, Any]:
    """`(True, result)` or `(False, exception)`: whatever `coro` raises is re-raised by the waiting thread, never on
    the provider loop (where `SystemExit` or `KeyboardInterrupt` would end the loop's thread)."""
    try:
        return True, await coro
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - re-raised in the waiting thread
        return False, exc


def _start(make: Callable[[], Coroutine[Any, Any, T]], probe_s: float) -> tuple[concurrent.futures.Future, int]:
    """Starts `make()` on the provider loop, replacing the loop first if it does not answer within `probe_s`; called
    from a coroutine on the provider loop itself, starts it on a helper thread's own loop instead. Returns the future
    and 1 if this call replaced the loop."""
    if _on_provider_loop():
        future: concurrent.futures.Future = concurrent.futures.Future()
        threading.Thread(target=_run_into, args=(make(), future), name="sgcd-provider-nested", daemon=True).start()
        return future, 0
    loop, restarts = _healthy_loop(probe_s)
    return asyncio.run_coroutine_threadsafe(make(), loop), restarts


def _run_into(coro: Coroutine[Any, Any, Any], future: concurrent.futures.Future) -> None:
    if not future.set_running_or_notify_cancel():
        coro.close()
        return
    try:
        future.set_result(asyncio.run(coro))
    except BaseException as exc:  # noqa: BLE001 - re-raised in the waiting thread
        future.set_exception(exc)


_loop_lock = threading.Lock()
_loop: tuple[int, asyncio.AbstractEventLoop, threading.Thread] | None = None


def provider_loop() -> asyncio.AbstractEventLoop:
    """The event loop every provider call runs on: one per process, on a daemon thread, for the whole run.

    One loop instead of a fresh `asyncio.run` per step lets HTTP clients keep their connections across steps (litellm
    caches its clients per event loop, so a new loop each step would mean new connections, and TLS handshakes, each
    step), and keeps loop-bound objects such as semaphores valid. A process forked after the loop started gets a new
    one, and so does a process whose loop stopped answering (`resolve_references` replaces it).
    """
    global _loop
    with _loop_lock:
        if _loop is None or _loop[0] != os.getpid() or _loop[1].is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=_serve, args=(loop,), name="sgcd-provider-loop", daemon=True)
            thread.start()
            _loop = (os.getpid(), loop, thread)
        return _loop[1]


def _on_provider_loop() -> bool:
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return False
    with _loop_lock:
        return _loop is not None and _loop[1] is running


def _healthy_loop(probe_s: float) -> tuple[asyncio.AbstractEventLoop, int]:
    """The provider loop, after checking that it answers within `probe_s`; one that does not (a provider blocks it,
    or a BaseException ended its thread) is retired (it stops and closes once it is free) and replaced."""
    global _loop
    loop = provider_loop()
    with _loop_lock:
        thread = _loop[2] if _loop is not None and _loop[1] is loop else None
    answered = threading.Event()
    with contextlib.suppress(RuntimeError):  # closed meanwhile
        loop.call_soon_threadsafe(answered.set)
    if thread is not None and thread.is_alive() and answered.wait(probe_s):
        return loop, 0
    with _loop_lock:
        retired = _loop is not None and _loop[1] is loop
        if retired:
            _loop = None
    if retired:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
    return provider_loop(), int(retired)


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """The provider loop's thread: runs the loop until it is retired, then cancels what is left on it and closes it.
    A BaseException escaping a callback ends the thread instead, and the next stage's probe replaces the loop."""
    asyncio.set_event_loop(loop)
    loop.run_forever()
    with contextlib.suppress(Exception):
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.wait(tasks, timeout=_DRAIN_S))
        loop.close()
