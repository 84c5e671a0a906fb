"""Where decoding runs: threads of the serving process, or worker processes.

Threads are cheap to start and share memory, but every decode also runs Python code (Pillow's glue, the
normalisation) under the serving process's interpreter lock, which the gRPC event loop needs to take calls in and
refuse them: under overload the loop starves and a refusal the server decides in milliseconds reaches the
client seconds later (docs/BENCHMARKS.md, overload section). `WorkerProcesses` runs decodes in processes of
their own (spawned, never forked: the serving process has gRPC threads), started and warmed up at start,
at the work threads' lower CPU priority (`skulens.inference.priority`). A worker that dies (a
decoder crash, the OOM killer) fails only the decodes then in the pool, with `DecodeWorkerLost`, and a new
pool is started for the next ones (by the submit that finds the pool broken, which waits for the new workers to
be ready: 80-170 ms for two workers started from a small script on this project's 2-core machine, more when the
serving process's main module is heavier to import; a rare stall, not a lost server). Workers leave by themselves
when the serving process dies.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import ParamSpec, TypeVar

from skulens.inference.priority import lower_priority, work_threads

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


def _start_worker(nice: int, parent: int) -> None:
    """Runs first in each worker process: lower its priority, and leave when the serving process is gone (a
    worker blocked on its job queue would otherwise outlive a server killed with SIGKILL: the queue's pipe stays
    open in the other workers)."""
    lower_priority(nice)
    threading.Thread(target=_exit_with_parent, args=(parent,), name="skulens-parent-watch", daemon=True).start()


def _exit_with_parent(parent: int, poll_s: float = 0.5) -> None:
    while os.getppid() == parent:
        time.sleep(poll_s)
    os._exit(0)


def _ready() -> int:
    """A no-op job: returns the worker's PID once its imports are done."""
    return os.getpid()


class WorkerProcesses(Executor):
    """A process pool that replaces itself when one of its workers dies; submit from one thread."""

    def __init__(self, workers: int, *, nice: int = 0) -> None:
        if workers < 1 or nice < 0:
            raise ValueError("workers must be >= 1 and nice >= 0")
        self.workers = workers
        self.nice = nice
        self.restarts = 0
        self._lock = threading.Lock()
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(self.nice, os.getpid()),
        )
        jobs = [pool.submit(_ready) for _ in range(self.workers)]  # spawn them all now, not on first use
        wait(jobs)
        for job in jobs:
            job.result()
        return pool

    def pids(self) -> list[int]:
        """PIDs of the live worker processes (the pool's own table: which worker ran the warm-up jobs is not
        fixed)."""
        procs = getattr(self._pool, "_processes", None) or {}
        return sorted(int(pid) for pid in procs)

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run `fn(*args, **kwargs)` in a worker (arguments and result are pickled)."""
        with self._lock:
            try:
                return self._pool.submit(fn, *args, **kwargs)
            except BrokenProcessPool:
                self.restarts += 1
                log.error("a decode worker process died; starting %d new ones (restart %d)",
                          self.workers, self.restarts)
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._start()
                return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the workers (after their current jobs when `wait`)."""
        with self._lock:
            self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def decode_executor(workers: int, processes: bool, nice: int = 0) -> Executor:
    """`workers` decode threads, or (`processes`) worker processes, `nice` steps below the caller's priority."""
    if processes:
        return WorkerProcesses(workers, nice=nice)
    return work_threads(workers, "skulens-decode", nice)


def is_lost_worker(exc: BaseException) -> bool:
    """True when a job failed because its worker process died (not because of its input)."""
    return isinstance(exc, BrokenProcessPool)


__all__ = ["WorkerProcesses", "decode_executor", "is_lost_worker"]
