"""skulens.inference.priority: work threads run below the thread that made them; the maker keeps its priority."""

from __future__ import annotations

import threading

from skulens.inference.priority import lower_priority, thread_nice, work_threads


def test_lower_priority_changes_only_the_calling_thread() -> None:
    base = thread_nice()
    seen: list[int] = []

    def body() -> None:
        lower_priority(3)
        seen.append(thread_nice())
        lower_priority(0)  # nothing
        seen.append(thread_nice())

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [min(19, base + 3)] * 2
    assert thread_nice() == base


def test_work_threads_start_lowered_and_the_maker_is_unchanged() -> None:
    base = thread_nice()
    pool = work_threads(2, "skulens-test", 5)
    try:
        nices = {pool.submit(thread_nice).result() for _ in range(4)}
        assert nices == {min(19, base + 5)}
    finally:
        pool.shutdown()
    assert thread_nice() == base
    plain = work_threads(1, "skulens-test", 0)
    try:
        assert plain.submit(thread_nice).result() == base
    finally:
        plain.shutdown()
