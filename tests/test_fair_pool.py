"""skulens.inference.fair_pool: a thread pool shared round-robin between callers."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from skulens.inference.fair_pool import FairPool


def _sleeper(log: list[str], name: str, seconds: float) -> str:
    time.sleep(seconds)
    log.append(name)
    return name


async def test_newcomer_waits_for_one_running_job_not_the_whole_queue() -> None:
    with ThreadPoolExecutor(max_workers=1) as ex:
        pool = FairPool(ex, 1)
        log: list[str] = []
        big = [asyncio.ensure_future(pool.run("big", lambda i=i: _sleeper(log, f"big{i}", 0.03))) for i in range(20)]
        await asyncio.sleep(0.01)  # big0 is running
        t0 = time.perf_counter()
        assert await pool.run("small", lambda: _sleeper(log, "small", 0.0)) == "small"
        waited = time.perf_counter() - t0
        await asyncio.gather(*big)
    assert log.index("small") <= 2, log  # after the running job (and at most one more), not after 20
    assert waited < 0.3, waited  # FIFO would take 20 × 30 ms


async def test_round_robin_between_callers_and_slots_respected() -> None:
    running, peak = 0, 0
    lock = threading.Lock()
    order: list[str] = []

    def job(name: str) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.01)
        with lock:
            running -= 1
            order.append(name)

    with ThreadPoolExecutor(max_workers=4) as ex:
        pool = FairPool(ex, 2)
        jobs = [pool.run(c, lambda c=c, i=i: job(f"{c}{i}")) for c in "ab" for i in range(4)]
        await asyncio.gather(*jobs)
    assert peak <= 2
    # a0 and a1 took both slots before b's jobs arrived; from then on turns alternate, so b is not left
    # until a's queue is empty
    assert [name[0] for name in order[:6]].count("b") >= 2, order
    assert pool.waiting == 0


async def test_cancelled_waiter_drops_its_queued_job_and_errors_propagate() -> None:
    ran: list[int] = []
    with ThreadPoolExecutor(max_workers=1) as ex:
        pool = FairPool(ex, 1)
        first = asyncio.ensure_future(pool.run("a", lambda: (time.sleep(0.05), ran.append(1))))
        second = asyncio.ensure_future(pool.run("a", lambda: ran.append(2)))
        await asyncio.sleep(0.01)
        second.cancel()
        await first
        await asyncio.sleep(0.02)
        assert ran == [1]

        def boom() -> None:
            raise ValueError("bad")

        with pytest.raises(ValueError, match="bad"):
            await pool.run("b", boom)
        assert await pool.run("b", lambda: 7) == 7  # the slot came back


def test_slots_must_be_positive() -> None:
    with ThreadPoolExecutor(max_workers=1) as ex, pytest.raises(ValueError):
        FairPool(ex, 0)


async def test_one_callers_heavy_jobs_leave_a_thread_free() -> None:
    running: dict[str, int] = {"a": 0}
    peak = 0
    lock = threading.Lock()

    def heavy() -> None:
        nonlocal peak
        with lock:
            running["a"] += 1
            peak = max(peak, running["a"])
        time.sleep(0.05)
        with lock:
            running["a"] -= 1

    with ThreadPoolExecutor(max_workers=3) as ex:
        pool = FairPool(ex, 3)
        big = [asyncio.ensure_future(pool.run("a", heavy, heavy=True)) for _ in range(8)]
        await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        await pool.run("b", lambda: None, heavy=True)  # a thread is free: no wait for a heavy job to end
        assert time.perf_counter() - t0 < 0.04
        await asyncio.gather(*big)
        assert peak == 2  # slots - 1
        light = [pool.run("a", lambda: time.sleep(0.02)) for _ in range(6)]
        t0 = time.perf_counter()
        await asyncio.gather(*light)
        assert time.perf_counter() - t0 < 0.1  # light jobs use every thread: 2 rounds of 20 ms
