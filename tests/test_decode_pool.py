"""skulens.inference.decode_pool: decode worker processes (spawned, lowered in priority, replaced when one dies)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from inference_helpers import decode_workers_cpu, encode, photo
from serve_process import ServeProcess

from skulens.client.client import image_input
from skulens.inference.decode_pool import WorkerProcesses, decode_executor, is_lost_worker
from skulens.inference.priority import thread_nice


@pytest.fixture
def workers() -> Iterator[WorkerProcesses]:
    pool = WorkerProcesses(2, nice=4)
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def test_jobs_run_in_spawned_workers_at_lower_priority(workers: WorkerProcesses) -> None:
    pids = workers.pids()
    assert len(pids) == 2 and os.getpid() not in pids and all(_alive(p) for p in pids)  # started at once
    assert workers.submit(os.getpid).result() in pids
    assert workers.submit(os.getpriority, os.PRIO_PROCESS, 0).result() == min(19, thread_nice() + 4)
    assert thread_nice() == os.getpriority(os.PRIO_PROCESS, 0)  # the serving process itself is unchanged


def test_a_dead_worker_fails_its_jobs_and_the_pool_replaces_itself(workers: WorkerProcesses) -> None:
    old = workers.pids()
    running = workers.submit(time.sleep, 30)
    time.sleep(0.3)
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    exc = running.exception(timeout=30)
    assert exc is not None and is_lost_worker(exc)
    assert not is_lost_worker(ValueError("an image's own error"))
    pid = workers.submit(os.getpid).result(timeout=60)  # a new pool took over
    assert workers.restarts == 1 and pid not in old and pid in workers.pids()


def test_decode_executor_is_threads_or_processes() -> None:
    threads = decode_executor(2, processes=False, nice=0)
    try:
        assert isinstance(threads, ThreadPoolExecutor) and threads.submit(os.getpid).result() == os.getpid()
    finally:
        threads.shutdown()
    with pytest.raises(ValueError):
        WorkerProcesses(0)


def test_workers_leave_when_the_serving_process_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "serve_like.py"
    script.write_text(
        "import os, sys, time\n"
        "from skulens.inference.decode_pool import WorkerProcesses\n"
        "if __name__ == '__main__':\n"
        "    pool = WorkerProcesses(2)\n"
        "    print(' '.join(map(str, pool.pids())), flush=True)\n"
        "    time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def test_a_real_server_keeps_serving_when_its_decode_worker_dies(effnet_model_dir: Path, tmp_path: Path) -> None:
    """`skulens serve` with its defaults: one decode worker process (here), 10 nice steps below the server; killed
    in the middle of a call, the images it held come back UNAVAILABLE, the others OK, and the server goes on."""
    server = ServeProcess(effnet_model_dir, f"sqlite://{tmp_path / 'data'}", tmp_path / "serve.log",
                          "--decode-workers", "1")
    try:
        workers = decode_workers_cpu(server.proc.pid)
        assert len(workers) == 1
        (worker,) = workers
        assert os.getpriority(os.PRIO_PROCESS, worker) == min(19, os.getpriority(os.PRIO_PROCESS, server.proc.pid) + 10)
        big = image_input(encode(photo(1600, 1600, seed=5), "PNG", compress_level=1))
        with server.client(timeout=120) as client, ThreadPoolExecutor(1) as caller:
            assert all(r.status.code == 0 for r in client.embed([big]).images)
            busy_from = decode_workers_cpu(server.proc.pid)[worker]
            call = caller.submit(client.embed, [big] * 24)
            while not call.done() and decode_workers_cpu(server.proc.pid).get(worker, busy_from) <= busy_from + 1:
                time.sleep(0.005)
            os.kill(worker, signal.SIGKILL)
            codes = [r.status.code for r in call.result().images]
            lost = [i for i, c in enumerate(codes) if c == grpc.StatusCode.UNAVAILABLE.value[0]]
            assert lost and set(codes) <= {0, grpc.StatusCode.UNAVAILABLE.value[0]}, codes
            again = client.embed([big, big])
            assert [r.status.code for r in again.images] == [0, 0]
        assert set(decode_workers_cpu(server.proc.pid)).isdisjoint({worker})
        assert server.proc.poll() is None
    finally:
        server.stop()
    assert "a decode worker process died" in (tmp_path / "serve.log").read_text()
