"""Round-robin sharing of a thread pool between callers, so one costly request cannot starve small ones.

A plain `ThreadPoolExecutor` is first-come first-served: a request that submits 64 forty-megapixel PNGs puts
64 decodes in front of a 1-photo request that arrives a moment later. `FairPool` keeps one queue per caller
and hands the pool's `slots` threads out in turn: each time a thread frees up, the next caller in the
rotation runs its next job. A newcomer therefore waits for at most one job already running per thread,
whatever the others have queued. Jobs marked `heavy` (a 40-megapixel PNG takes most of a second) are also
capped per caller at `slots - 1` running at once, so one caller's heavy jobs never hold every thread: a
newcomer finds a thread free at once instead of waiting for a heavy job to end.

Use from one asyncio event loop. Cancelling the awaiting task drops a job that has not started yet.
"""

from __future__ import annotations

import asyncio
import functools
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class _Job:
    caller: object
    fn: Callable[[], Any]
    future: asyncio.Future[Any]
    heavy: bool


class FairPool:
    """Runs callables on `executor`, at most `slots` at a time, alternating between callers."""

    def __init__(self, executor: Executor, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self._executor = executor
        self._slots = slots
        self._running = 0
        self._heavy_cap = max(1, slots - 1)
        self._heavy: dict[object, int] = {}  # caller -> heavy jobs running
        self._queues: OrderedDict[object, deque[_Job]] = OrderedDict()

    @property
    def waiting(self) -> int:
        """Jobs queued and not yet started."""
        return sum(len(q) for q in self._queues.values())

    async def run(self, caller: object, fn: Callable[[], T], *, heavy: bool = False) -> T:
        """Run `fn()` on the pool in `caller`'s turn; returns its result (or raises its exception)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queues.setdefault(caller, deque()).append(_Job(caller, fn, fut, heavy))
        self._dispatch(loop)
        return await fut

    def _next(self) -> _Job | None:
        """The first caller in the rotation whose next job may start; that caller goes to the back."""
        for caller in list(self._queues):
            queue = self._queues[caller]
            while queue and queue[0].future.done():  # the caller stopped waiting
                queue.popleft()
            if not queue:
                del self._queues[caller]
                continue
            if queue[0].heavy and self._heavy.get(caller, 0) >= self._heavy_cap:
                continue
            job = queue.popleft()
            del self._queues[caller]
            if queue:
                self._queues[caller] = queue  # back of the rotation
            return job
        return None

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._running < self._slots:
            job = self._next()
            if job is None:
                return
            self._running += 1
            if job.heavy:
                self._heavy[job.caller] = self._heavy.get(job.caller, 0) + 1
            inner = loop.run_in_executor(self._executor, job.fn)
            inner.add_done_callback(functools.partial(self._finished, loop, job))

    def _finished(self, loop: asyncio.AbstractEventLoop, job: _Job, inner: asyncio.Future[Any]) -> None:
        self._running -= 1
        out = job.future
        if job.heavy:
            left = self._heavy[job.caller] - 1
            if left:
                self._heavy[job.caller] = left
            else:
                del self._heavy[job.caller]
        if not out.done():
            if inner.cancelled():
                out.cancel()
            elif inner.exception() is not None:
                out.set_exception(inner.exception())  # type: ignore[arg-type]
            else:
                out.set_result(inner.result())
        self._dispatch(loop)
