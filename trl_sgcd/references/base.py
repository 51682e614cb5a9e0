"""The credit-reference provider interface and the concurrent, fault-tolerant call path the trainer uses.

A provider turns one mixed `SiblingGroup` into a `CreditReference`. Providers are async so a step's calls run
concurrently; a plain sync or async callable is wrapped by `as_provider`. Every failure mode (exception, timeout,
empty or malformed output) becomes `None` for that group, which the trainer trains with `W = 1` (plain GRPO), and is
counted in `ProviderOutcome`.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..siblings import CreditReference, SiblingGroup


T = TypeVar("T")
ProviderReturn = CreditReference | str | None


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
        return await asyncio.gather(*(self.abuild(g) for g in groups), return_exceptions=True)

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
        result = await asyncio.to_thread(self.fn, group)
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


@dataclass
class ProviderOutcome:
    """References for a list of groups plus the counters the trainer logs."""

    references: list[CreditReference | None]
    calls: int = 0
    failures: int = 0
    timeouts: int = 0
    errors: int = 0
    empty: int = 0
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
            latency_s=max((o.latency_s for o in outcomes), default=0.0),
            error_messages=[m for o in outcomes for m in o.error_messages],
        )


async def _bounded(coro: Awaitable[T], sem: asyncio.Semaphore, timeout: float | None) -> T:
    async with sem:
        return await asyncio.wait_for(coro, timeout=timeout)


async def aresolve_references(
    provider: CreditReferenceProvider,
    groups: Sequence[SiblingGroup],
    max_concurrency: int = 16,
    timeout: float | None = 120.0,
) -> ProviderOutcome:
    """Calls `provider` once per group, at most `max_concurrency` at a time, each bounded by `timeout` seconds."""
    outcome = ProviderOutcome(references=[None] * len(groups), calls=len(groups))
    if not groups:
        return outcome
    sem = asyncio.Semaphore(max(1, max_concurrency))
    start = time.perf_counter()
    if provider.batches_natively:
        # The provider batches natively; bound the whole batch instead of each call.
        total_timeout = None if timeout is None else timeout * max(1, -(-len(groups) // max(1, max_concurrency)))
        try:
            results = await asyncio.wait_for(provider.abuild_many(groups), timeout=total_timeout)
        except BaseException as exc:  # noqa: BLE001 - every provider failure degrades to W = 1
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            results = [exc] * len(groups)
    else:
        results = await asyncio.gather(
            *(_bounded(provider.abuild(g), sem, timeout) for g in groups), return_exceptions=True
        )
    outcome.latency_s = time.perf_counter() - start
    for i, result in enumerate(results):
        if isinstance(result, (KeyboardInterrupt, SystemExit)):
            raise result
        if isinstance(result, BaseException):
            outcome.failures += 1
            if isinstance(result, (asyncio.TimeoutError, TimeoutError)):
                outcome.timeouts += 1
            else:
                outcome.errors += 1
            outcome.error_messages.append(f"{type(result).__name__}: {result}"[:300])
            continue
        try:
            ref = CreditReference.coerce(result)
        except TypeError as exc:
            outcome.failures += 1
            outcome.errors += 1
            outcome.error_messages.append(str(exc)[:300])
            continue
        if ref is None:
            outcome.failures += 1
            outcome.empty += 1
            continue
        outcome.references[i] = ref
    return outcome


def resolve_references(
    provider: CreditReferenceProvider,
    groups: Sequence[SiblingGroup],
    max_concurrency: int = 16,
    timeout: float | None = 120.0,
) -> ProviderOutcome:
    """Synchronous entry point of `aresolve_references`, usable from the training loop and from notebooks."""
    return run_sync(aresolve_references(provider, groups, max_concurrency=max_concurrency, timeout=timeout))


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine to completion from synchronous code, on the provider event loop (`provider_loop`).

    Safe from any thread and inside a running loop (a notebook), since the coroutine never runs on the caller's loop.
    If the caller is interrupted, the coroutine is cancelled. Called from a coroutine already on the provider loop
    (a provider whose `abuild` calls another provider's `build`), it runs the coroutine on a helper thread's own loop
    instead, since waiting on the provider loop from inside it would never return.
    """
    loop = provider_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        return _run_on_helper_thread(coro)
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


def _run_on_helper_thread(coro: Coroutine[Any, Any, T]) -> T:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="sgcd-provider-nested", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


_SYNC_WORKERS = 64  # threads for sync callables (`asyncio.to_thread`); the per-step concurrency bound still applies
_loop_lock = threading.Lock()
_loop: tuple[int, asyncio.AbstractEventLoop] | None = None


def provider_loop() -> asyncio.AbstractEventLoop:
    """The event loop every provider call runs on: one per process, on a daemon thread, for the whole run.

    One loop instead of a fresh `asyncio.run` per step lets HTTP clients keep their connections across steps (litellm
    caches its clients per event loop, so a new loop each step would mean new connections, and TLS handshakes, each
    step), keeps loop-bound objects such as semaphores valid, and lets a sync provider that hangs past its timeout
    hold one worker thread instead of the step (`asyncio.run` would wait for it at shutdown). A process forked after
    the loop started gets a new one.
    """
    global _loop
    with _loop_lock:
        if _loop is None or _loop[0] != os.getpid() or _loop[1].is_closed():
            loop = asyncio.new_event_loop()
            loop.set_default_executor(ThreadPoolExecutor(_SYNC_WORKERS, thread_name_prefix="sgcd-provider-sync"))
            threading.Thread(target=loop.run_forever, name="sgcd-provider-loop", daemon=True).start()
            _loop = (os.getpid(), loop)
        return _loop[1]
