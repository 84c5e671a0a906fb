"""CPU priority of the engine's work threads: below the gRPC event loop, so that under overload the loop still
gets the cores it needs to take calls in and refuse them at once.

On Linux the nice value belongs to each thread (and a thread inherits its creator's), so a pool whose threads
lower their own priority when they start, and an onnxruntime session created from such a thread (its intra-op
threads are created with it), run below the threads of the serving process that were left alone: the asyncio
loop and gRPC's own threads. Idle cores are still used in full; only contention is decided differently.
Lowering a priority needs no privilege; raising it back does, so it is done only in threads made for the work.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)


def lower_priority(steps: int) -> None:
    """Lower the calling thread's CPU priority by `steps` nice steps (0: nothing; capped at nice 19)."""
    if steps <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + steps))
    except OSError as exc:  # a sandbox that forbids it: run at the same priority rather than not at all
        log.warning("cannot lower the priority of thread %d by %d: %s", tid, steps, exc)


def thread_nice(tid: int | None = None) -> int:
    """The nice value of a thread of this process (default: the calling thread)."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id() if tid is None else tid)


def work_threads(workers: int, name: str, steps: int) -> ThreadPoolExecutor:
    """A thread pool whose threads run `steps` nice steps below the thread that made it."""
    return ThreadPoolExecutor(
        max_workers=workers, thread_name_prefix=name, initializer=lower_priority, initargs=(steps,)
    )
