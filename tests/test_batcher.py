"""skulens.inference.batcher: flush by size/time, ordering, back-pressure, deadlines, cancellation, failures, close."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from skulens.inference.batcher import MicroBatcher
from skulens.inference.errors import Cancelled, DeadlineExceeded, Overloaded
from skulens.inference.options import BatcherOptions


class FakeModel:
    """infer([N, 2]) → [N, 2] (x * 2); records batch sizes; can block or fail on demand."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.fail_next = False
        self.threads: set[str] = set()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        self.started.set()
        assert self.gate.wait(5)
        self.sizes.append(len(batch))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("onnxruntime exploded")
        return batch * 2


def item(v: float) -> np.ndarray:
    return np.array([v, -v], dtype=np.float32)


def batcher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("skulens-")]


async def test_flush_by_size_and_results_in_order() -> None:
    model = FakeModel()
    b = MicroBatcher(model, BatcherOptions(max_batch=4, max_wait_ms=10_000), name="t-size")
    t0 = time.monotonic()
    out = await asyncio.gather(*(b.submit(item(i)) for i in range(8)))
    assert time.monotonic() - t0 < 2  # did not wait for the 10 s timer
    assert model.sizes == [4, 4]
    for i, row in enumerate(out):
        np.testing.assert_array_equal(row, item(2 * i))
    assert model.threads == {n for n in model.threads if n.startswith("skulens-t-size")}
    await b.close()


async def test_flush_by_time() -> None:
    model = FakeModel()
    b = MicroBatcher(model, BatcherOptions(max_batch=32, max_wait_ms=80), name="t-time")
    t0 = time.monotonic()
    out = await asyncio.gather(*(b.submit(item(i)) for i in range(3)))
    elapsed = time.monotonic() - t0
    assert model.sizes == [3]
    assert 0.07 <= elapsed < 1.0
    assert [float(r[0]) for r in out] == [0.0, 2.0, 4.0]
    await b.close()


async def test_many_concurrent_callers_get_their_own_rows() -> None:
    model = FakeModel()
    b = MicroBatcher(model, BatcherOptions(max_batch=8, max_wait_ms=2), name="t-many")

    async def caller(k: int) -> None:
        for j in range(5):
            await asyncio.sleep(0.001 * (k % 3))
            row = await b.submit(item(100 * k + j))
            assert float(row[0]) == 2 * (100 * k + j)

    await asyncio.gather(*(caller(k) for k in range(20)))
    assert sum(model.sizes) == 100 and max(model.sizes) <= 8
    stats = b.stats()
    assert stats.items == 100 and stats.batches == len(model.sizes)
    assert sum(k * v for k, v in stats.batch_size_histogram.items()) == 100
    await b.close()


async def test_back_pressure_overloaded_at_once() -> None:
    model = FakeModel()
    model.gate.clear()
    b = MicroBatcher(model, BatcherOptions(max_batch=1, max_wait_ms=0, max_queue=2), name="t-bp")
    first = asyncio.ensure_future(b.submit(item(1)))
    await asyncio.to_thread(model.started.wait, 5)  # item 1 is inside the model, blocked
    waiting = [asyncio.ensure_future(b.submit(item(v))) for v in (2, 3)]
    await asyncio.sleep(0)
    assert b.queue_depth == 2
    t0 = time.monotonic()
    with pytest.raises(Overloaded, match=r"2 items waiting \+ 1 new, max_queue is 2"):
        await b.submit(item(4))
    assert time.monotonic() - t0 < 0.1
    model.gate.set()
    assert [float(r[0]) for r in await asyncio.gather(first, *waiting)] == [2.0, 4.0, 6.0]
    await b.close()


async def test_expired_deadline_dropped_before_inference() -> None:
    model = FakeModel()
    model.gate.clear()
    b = MicroBatcher(model, BatcherOptions(max_batch=1, max_wait_ms=0), name="t-deadline")
    blocker = asyncio.ensure_future(b.submit(item(1)))
    await asyncio.to_thread(model.started.wait, 5)
    late = asyncio.ensure_future(b.submit(item(2), deadline=time.monotonic() + 0.05))
    fine = asyncio.ensure_future(b.submit(item(3), deadline=time.monotonic() + 30))
    await asyncio.sleep(0.1)
    model.gate.set()
    with pytest.raises(DeadlineExceeded, match="deadline passed"):
        await late
    assert float((await fine)[0]) == 6.0
    await blocker
    assert model.sizes == [1, 1]  # the late item never reached the model
    assert b.stats().dropped_deadline == 1
    with pytest.raises(DeadlineExceeded):
        await b.submit(item(4), deadline=time.monotonic() - 1)
    await b.close()


async def test_cancelled_item_dropped_before_inference() -> None:
    model = FakeModel()
    model.gate.clear()
    b = MicroBatcher(model, BatcherOptions(max_batch=4, max_wait_ms=0), name="t-cancel")
    blocker = asyncio.ensure_future(b.submit(item(1)))
    await asyncio.to_thread(model.started.wait, 5)
    gone = asyncio.ensure_future(b.submit(item(2)))
    kept = asyncio.ensure_future(b.submit(item(3)))
    await asyncio.sleep(0)
    gone.cancel()
    model.gate.set()
    assert float((await kept)[0]) == 6.0
    await blocker
    assert gone.cancelled()
    assert model.sizes == [1, 1]
    assert b.stats().dropped_cancelled == 1
    await b.close()


async def test_failed_batch_fails_its_items_and_batcher_lives_on() -> None:
    model = FakeModel()
    model.fail_next = True
    b = MicroBatcher(model, BatcherOptions(max_batch=4, max_wait_ms=20), name="t-fail")
    results = await asyncio.gather(*(b.submit(item(i)) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert float((await b.submit(item(5)))[0]) == 10.0
    stats = b.stats()
    assert stats.failed_batches == 1 and stats.failed_items == 3 and stats.batches == 1
    await b.close()


async def test_close_drains_then_stops_threads() -> None:
    model = FakeModel()
    b = MicroBatcher(model, BatcherOptions(max_batch=2, max_wait_ms=50), name="t-close")
    futures = b.submit_many([item(i) for i in range(5)])
    await b.close(drain=True)
    assert [float(f.result()[0]) for f in futures] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert not [t for t in batcher_threads() if t.name.startswith("skulens-t-close")]
    with pytest.raises(Cancelled):
        await b.submit(item(1))


async def test_close_without_drain_cancels_pending() -> None:
    model = FakeModel()
    model.gate.clear()
    b = MicroBatcher(model, BatcherOptions(max_batch=1, max_wait_ms=0), name="t-nodrain")
    running = asyncio.ensure_future(b.submit(item(1)))
    await asyncio.to_thread(model.started.wait, 5)
    queued = b.submit_many([item(2), item(3)])
    closing = asyncio.ensure_future(b.close(drain=False))
    await asyncio.sleep(0.01)
    model.gate.set()
    await closing
    assert float((await running)[0]) == 2.0  # in flight: completes
    for f in queued:
        with pytest.raises(Cancelled):
            f.result()
    assert not [t for t in batcher_threads() if t.name.startswith("skulens-t-nodrain")]
