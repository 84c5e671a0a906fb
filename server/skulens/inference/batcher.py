"""Dynamic micro-batching on asyncio: items from many callers → batches of up to `max_batch`, run off-loop.

A batch is flushed when it holds `max_batch` items or `max_wait_ms` after its oldest item was submitted,
whichever comes first; while a batch runs, the next one collects in the queue, so under load batches are
full and nobody waits for the timer. The queue is bounded (`max_queue` items waiting): past that, `submit`
raises `Overloaded` at once. Items whose deadline passed or whose caller cancelled are dropped before
inference. A failing inference call fails only the items of that batch; the batcher keeps running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from skulens.inference.errors import Cancelled, DeadlineExceeded, Overloaded
from skulens.inference.options import BatcherOptions

log = logging.getLogger(__name__)

InferFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class _Item:
    value: np.ndarray
    future: asyncio.Future[np.ndarray]
    deadline: float | None
    enqueued: float


@dataclass(frozen=True)
class BatcherStats:
    """Counters for a metrics layer (monotonic since start, except `queue_depth` and `last_batch_sizes`)."""

    batches: int
    items: int
    dropped_deadline: int
    dropped_cancelled: int
    failed_batches: int
    failed_items: int
    queue_depth: int
    last_batch_sizes: tuple[int, ...]
    batch_size_histogram: dict[int, int]


class MicroBatcher:
    """Merges single items (equal-shape arrays) into batches for `infer([N, ...]) -> [N, D]`.

    `infer` runs on `executor` (a dedicated single-thread pool unless one is shared in). Deadlines are
    absolute `time.monotonic()` values. `on_batch(size, seconds)` is told how long each successful model run
    took (a cost model learns from it).
    """

    def __init__(
        self,
        infer: InferFn,
        options: BatcherOptions | None = None,
        *,
        name: str = "batcher",
        executor: Executor | None = None,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.options = options or BatcherOptions()
        self._on_batch = on_batch
        self.name = name
        self._infer = infer
        self._executor = executor
        self._owns_executor = executor is None
        self._queue: asyncio.Queue[_Item | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._closed = False
        self._pending = 0
        self._batches = 0
        self._items = 0
        self._dropped_deadline = 0
        self._dropped_cancelled = 0
        self._failed_batches = 0
        self._failed_items = 0
        self._last_sizes: deque[int] = deque(maxlen=64)
        self._histogram: Counter[int] = Counter()

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the collector task on the running loop (idempotent; `submit` starts it lazily too)."""
        self._ensure_started()

    def _ensure_started(self) -> asyncio.Queue[_Item | None]:
        if self._closing or self._closed:
            raise Cancelled(f"{self.name} batcher is shut down")
        if self._queue is None:
            self._loop = asyncio.get_running_loop()
            self._queue = asyncio.Queue()
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"skulens-{self.name}")
            self._task = self._loop.create_task(self._collect(), name=f"skulens-{self.name}-collector")
        return self._queue

    async def close(self, *, drain: bool = True) -> None:
        """Stop accepting work; with `drain` run what is queued, else fail it with `Cancelled`; then stop the
        collector and (if owned) the inference thread."""
        if self._closed or self._closing:
            return
        self._closing = True
        if self._queue is not None:
            if not drain:
                while not self._queue.empty():
                    item = self._queue.get_nowait()
                    if item is not None:
                        self._pending -= 1
                        if not item.future.done():
                            item.future.set_exception(
                                Cancelled(f"{self.name} batcher shut down before inference")
                            )
            self._queue.put_nowait(None)
            if self._task is not None:
                await self._task
        if self._owns_executor and self._executor is not None:
            self._executor.shutdown(wait=True)
        self._closed = True

    # -- submitting ------------------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Items submitted and not yet handed to inference (or dropped)."""
        return self._pending

    def submit_many(
        self, items: Sequence[np.ndarray], *, deadline: float | None = None
    ) -> list[asyncio.Future[np.ndarray]]:
        """Enqueue all `items` or none: raises `Overloaded` when they do not fit, `DeadlineExceeded` when the
        deadline already passed. Each future resolves to that item's [D] row."""
        queue = self._ensure_started()
        n = len(items)
        if self._pending + n > self.options.max_queue:
            raise Overloaded(
                f"{self.name} queue is full: {self._pending} items waiting + {n} new, max_queue is "
                f"{self.options.max_queue}"
            )
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise DeadlineExceeded(
                f"deadline passed {1000 * (now - deadline):.1f} ms before inference was queued"
            )
        assert self._loop is not None
        futures: list[asyncio.Future[np.ndarray]] = []
        for value in items:
            fut: asyncio.Future[np.ndarray] = self._loop.create_future()
            queue.put_nowait(_Item(value, fut, deadline, now))
            futures.append(fut)
        self._pending += n
        return futures

    async def submit(self, item: np.ndarray, *, deadline: float | None = None) -> np.ndarray:
        """Enqueue one item and wait for its row (cancelling the wait drops the item before inference)."""
        (fut,) = self.submit_many([item], deadline=deadline)
        return await fut

    def stats(self) -> BatcherStats:
        """A snapshot of the counters."""
        return BatcherStats(
            batches=self._batches,
            items=self._items,
            dropped_deadline=self._dropped_deadline,
            dropped_cancelled=self._dropped_cancelled,
            failed_batches=self._failed_batches,
            failed_items=self._failed_items,
            queue_depth=self._pending,
            last_batch_sizes=tuple(self._last_sizes),
            batch_size_histogram=dict(self._histogram),
        )

    # -- the collector ---------------------------------------------------------------------------------------

    async def _collect(self) -> None:
        assert self._queue is not None
        queue = self._queue
        max_batch = self.options.max_batch
        max_wait = self.options.max_wait_ms / 1000.0
        stop = False
        try:
            while not stop:
                first = await queue.get()
                if first is None:
                    break
                batch = [first]
                flush_at = first.enqueued + max_wait
                while len(batch) < max_batch:
                    try:
                        nxt = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        timeout = flush_at - time.monotonic()
                        if timeout <= 0:
                            break
                        try:
                            nxt = await asyncio.wait_for(queue.get(), timeout)
                        except TimeoutError:
                            break
                    if nxt is None:
                        stop = True
                        break
                    batch.append(nxt)
                await self._run_batch(batch)
        except BaseException as exc:  # a bug or a cancelled task: nobody may wait forever
            log.exception("%s batcher collector stopped", self.name)
            self._fail_queued(
                exc if isinstance(exc, Exception) else Cancelled(f"{self.name} batcher stopped")
            )
            raise

    def _fail_queued(self, exc: Exception) -> None:
        assert self._queue is not None
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None and not item.future.done():
                item.future.set_exception(exc)

    async def _run_batch(self, batch: list[_Item]) -> None:
        now = time.monotonic()
        live: list[_Item] = []
        for item in batch:
            if item.future.done():  # cancelled by its caller
                self._dropped_cancelled += 1
            elif item.deadline is not None and item.deadline <= now:
                self._dropped_deadline += 1
                item.future.set_exception(
                    DeadlineExceeded(
                        f"deadline passed {1000 * (now - item.deadline):.1f} ms before inference "
                        f"(queued {1000 * (now - item.enqueued):.1f} ms)"
                    )
                )
            else:
                live.append(item)
        self._pending -= len(batch)
        if not live:
            return
        assert self._loop is not None and self._executor is not None
        values = [item.value for item in live]
        try:
            out = await self._loop.run_in_executor(self._executor, self._stack_and_infer, values)
        except Exception as exc:
            log.exception("%s batch of %d failed", self.name, len(live))
            self._failed_batches += 1
            self._failed_items += len(live)
            for item in live:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        self._batches += 1
        self._items += len(live)
        self._last_sizes.append(len(live))
        self._histogram[len(live)] += 1
        for item, row in zip(live, out, strict=True):
            if not item.future.done():
                item.future.set_result(row)

    def _stack_and_infer(self, values: list[np.ndarray]) -> np.ndarray:
        t0 = time.perf_counter()
        out = self._infer(np.stack(values))
        if len(out) != len(values):
            raise RuntimeError(f"{self.name} inference returned {len(out)} rows for a batch of {len(values)}")
        if self._on_batch is not None:
            self._on_batch(len(values), time.perf_counter() - t0)
        return out
