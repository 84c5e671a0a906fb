"""`DriftMonitor` on a real embedded catalog (SQLite + FAISS in tmp) with seeded vectors: baseline, sliding windows
by count and by time, the reference fit and its refits, bounded sources, queue and memory, a model switch, and the
threads. The aggregator is driven by hand (`process`, a settable clock) except in the thread test."""

from __future__ import annotations

import math
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from catalog_helpers import product_refs, unit

from skulens.catalog import Catalog, CatalogSettings, NewReference
from skulens.service.drift_monitor import SMALL_FIT, DriftMonitor, check_source
from skulens.service.drift_options import DEFAULT_SOURCE, OVERFLOW_SOURCE, DriftOptions
from skulens.service.drift_stats import State
from skulens.service.errors_grpc import BadRequest
from skulens.v1 import recognition_pb2

DIM = 16
FP = "drift-test/random/16:00"
KNOWN, UNKNOWN = 1, 2


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    """12 products × 4 references scattered around their centres."""
    cat = Catalog.open(
        tmp_path / "cat", fingerprint=FP, dim=DIM, settings=CatalogSettings(synchronous="NORMAL", use_gpu="never")
    )
    _, refs = product_refs(12, 4, DIM, seed=1)
    for i in range(12):
        cat.upsert_product(f"p{i}")
        cat.add_references(f"p{i}", [NewReference(refs[i, j]) for j in range(4)])
    yield cat
    cat.close()


def answers(verdicts: list[int], scores: list[float]) -> list[recognition_pb2.Recognition]:
    return [recognition_pb2.Recognition(verdict=v, best_score=s) for v, s in zip(verdicts, scores, strict=True)]


def near_catalog(n: int, seed: int) -> np.ndarray:
    """Queries like the references (same centres, new noise)."""
    _, q = product_refs(12, math.ceil(n / 12), DIM, seed=1)
    rng = np.random.default_rng(seed)
    return unit(q.reshape(-1, DIM)[:n] + 0.05 * rng.standard_normal((n, DIM)))


def elsewhere(n: int, seed: int) -> np.ndarray:
    """Queries of products the catalog lacks (other centres)."""
    _, q = product_refs(12, math.ceil(n / 12), DIM, seed=1000 + seed)
    return q.reshape(-1, DIM)[:n]


def feed(
    m: DriftMonitor, source: str, vectors: np.ndarray, verdict: int = KNOWN, score: float = 0.95, batch: int = 8
) -> None:
    for i in range(0, len(vectors), batch):
        part = vectors[i : i + batch]
        m.observe(source, FP, part, answers([verdict] * len(part), [score] * len(part)))
    m.process()


OPT = DriftOptions(window_size=40, baseline_windows=2, clusters=4, window_seconds=3600.0, history=50)


def test_check_source() -> None:
    assert check_source("") == DEFAULT_SOURCE
    assert check_source("lane 3 / Zürich") == "lane 3 / Zürich"
    assert check_source("Cafe\u0301") == "Café"  # NFC
    assert check_source("é" * 64) == "é" * 64
    for bad, why in (
        ("x" * 65, "65 characters"),
        ("_other", "may not start"),
        ("a\tb", "control"),
        ("\u200b", "control"),
    ):
        with pytest.raises(BadRequest, match=why) as err:
            check_source(bad)
        assert err.value.field == "source"


def test_baseline_then_sliding_windows_then_drift(catalog: Catalog) -> None:
    clock = Clock()
    m = DriftMonitor(OPT, lambda: catalog, clock=clock)
    assert m.refit() is True and m.refit() is False  # nothing changed since
    ref = m.report().reference
    assert ref is not None and (ref.references, ref.clusters, ref.catalog_version) == (48, 4, catalog.version())
    feed(m, "lane", near_catalog(79, seed=1))
    (s,) = m.report().sources
    assert (s.state, s.baseline_ready, s.baseline_queries, s.queries) == (State.LEARNING, False, 79, 79)
    feed(m, "lane", near_catalog(1, seed=2))  # the 80th query completes the baseline
    assert m.report().sources[0].state is State.LEARNING and m.report().sources[0].baseline_ready
    # slices of 10 queries; a window is judged at each slice close once it holds 10 (a quarter of 40)
    feed(m, "lane", near_catalog(9, seed=3))
    assert m.report().sources[0].current is None
    feed(m, "lane", near_catalog(31, seed=4))
    s = m.report().sources[0]
    assert s.state is State.OK and len(s.history) == 4 and [w.queries for w in s.history] == [10, 20, 30, 40]
    assert s.current is not None and {g.name for g in s.current.signals} == {
        "known_share",
        "unknown_share",
        "ambiguous_share",
        "best_score",
        "mean_shift",
        "far_share",
    }
    # the lane now sees products the catalog lacks, and UNKNOWN: the window slides over, and DRIFT
    feed(m, "lane", elsewhere(40, seed=5), verdict=UNKNOWN, score=0.4)
    s = m.report().sources[0]
    assert [w.queries for w in s.history][-4:] == [40, 40, 40, 40] and s.state is State.DRIFT
    assert [w.state for w in s.history][:4] == [State.OK] * 4
    g = {x.name: x for x in s.current.signals}
    assert g["unknown_share"].value == 1.0 and g["unknown_share"].state is State.DRIFT
    assert g["far_share"].value > g["far_share"].baseline + 0.2 and g["far_share"].state >= State.WATCH
    assert g["mean_shift"].value > 0.0
    assert s.current.reference_distance > s.baseline.reference_distance
    assert m.report(history=2).sources[0].history == s.history[-2:]
    assert m.report(history=0).sources[0].history == ()


def test_time_closes_slices_and_old_slices_leave_the_window(catalog: Catalog) -> None:
    clock = Clock()
    m = DriftMonitor(OPT, lambda: catalog, clock=clock)
    m.refit()
    feed(m, "slow", near_catalog(80, seed=1))
    feed(m, "slow", near_catalog(10, seed=2))  # a full slice: judged
    clock.t += 100
    feed(m, "slow", near_catalog(6, seed=3))  # opens a slice at t+100
    m.process(now=clock.t + 899)
    assert len(m.report().sources[0].history) == 1  # 899 s < 3600 / 4: still open
    clock.t += 900
    m.process()
    h = m.report().sources[0].history
    assert [w.queries for w in h] == [10, 16]  # closed by time with 6 queries; the window holds both slices
    clock.t += 3600  # the first slice (closed at t0) and the second (t0 + 1000) are now older than 3600 s
    feed(m, "slow", near_catalog(3, seed=4))
    clock.t += 901
    m.process()
    h = m.report().sources[0].history
    assert len(h) == 2  # 3 queries alone are under the quarter-window minimum (10): not judged


def test_refits_follow_catalog_changes(catalog: Catalog) -> None:
    m = DriftMonitor(DriftOptions(clusters=4, refit_seconds=3600.0), lambda: catalog)
    assert m.refit()
    first = m.report().reference
    _, more = product_refs(2, 3, DIM, seed=77)
    catalog.upsert_product("new")
    catalog.add_references("new", [NewReference(v) for v in more.reshape(-1, DIM)])
    assert m.refit()  # a small catalog is refit at the next change, refit_seconds or not
    second = m.report().reference
    assert (second.references, second.fits, second.catalog_version) == (54, first.fits + 1, catalog.version())
    assert second.fit_seconds > 0.0 and not second.error
    # a large catalog waits refit_seconds between fits
    rng = np.random.default_rng(3)
    catalog.upsert_product("bulk")
    catalog.add_references("bulk", [NewReference(v) for v in unit(rng.standard_normal((SMALL_FIT, DIM)))])
    assert m.refit() and m.report().reference.references == 54 + SMALL_FIT
    catalog.delete_product("new")
    assert m.refit() is False and m.refit(force=True) is True


def test_baseline_far_share_is_rejudged_under_a_new_fit(catalog: Catalog) -> None:
    m = DriftMonitor(OPT, lambda: catalog)
    m.refit()
    feed(m, "lane", elsewhere(80, seed=9))  # a baseline far from the catalog
    feed(m, "lane", elsewhere(10, seed=10))
    before = m.report().sources[0].baseline.far_share
    assert before > 0.5
    # the catalog now holds those products: after the refit the same baseline sample is near its centres
    catalog.upsert_product("theirs")
    catalog.add_references("theirs", [NewReference(v) for v in elsewhere(120, seed=9)])
    assert m.refit()
    feed(m, "lane", elsewhere(10, seed=11))
    assert m.report().sources[0].baseline.far_share < before


def test_sources_fold_into_other_and_memory_stays_bounded(catalog: Catalog) -> None:
    opt = DriftOptions(max_sources=3, window_size=8, baseline_windows=1, history=5)
    m = DriftMonitor(opt, lambda: catalog)
    v = near_catalog(1, seed=1)
    bound = m.memory_bound(DIM)
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    for k in range(10_000):
        m.observe(f"client-{k}", FP, v, answers([KNOWN], [0.9]))
        if k % 500 == 0:
            m.process()
    m.observe("", FP, v, answers([KNOWN], [0.9]))
    m.process()
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(base, "filename"))
    tracemalloc.stop()
    rep = m.report()
    assert [s.source for s in rep.sources] == sorted(
        [DEFAULT_SOURCE, OVERFLOW_SOURCE, "client-0", "client-1", "client-2"]
    )
    assert rep.folded_queries == 9_997
    assert {s.source: s.queries for s in rep.sources}[OVERFLOW_SOURCE] == 9_997
    assert 0 < rep.memory_bytes <= rep.memory_bound_bytes == bound
    assert grown <= bound, (grown, bound)  # what 10,000 invented sources left allocated


def test_the_queue_is_bounded_and_drops_are_counted(catalog: Catalog) -> None:
    m = DriftMonitor(DriftOptions(queue_max=10), lambda: catalog)
    v = near_catalog(4, seed=1)
    for _ in range(3):
        m.observe("lane", FP, v, answers([KNOWN] * 4, [0.9] * 4))
    assert m.report().dropped_queries == 4
    assert m.process() == 2 and m.report().sources[0].queries == 8


def test_observe_never_raises_and_bad_items_are_skipped(catalog: Catalog) -> None:
    m = DriftMonitor(OPT, lambda: catalog)
    m.observe("lane", FP, near_catalog(2, seed=1), [object(), object()])  # not Recognition messages
    m.observe("lane", FP, near_catalog(3, seed=1), answers([KNOWN] * 2, [0.9] * 2))  # 3 vectors, 2 answers
    m.observe("lane", FP, np.zeros(DIM, np.float32), answers([KNOWN], [0.9]))  # not a matrix
    assert m.process() == 2 and m.report().sources == ()


def test_a_model_switch_voids_every_baseline(catalog: Catalog) -> None:
    m = DriftMonitor(OPT, lambda: catalog)
    m.refit()
    feed(m, "lane", near_catalog(90, seed=1))
    assert m.report().sources[0].baseline_ready
    other = unit(np.random.default_rng(0).standard_normal((4, 8)))
    m.observe("lane", "another-model/8:11", other, answers([KNOWN] * 4, [0.9] * 4))
    m.process()
    (s,) = m.report().sources
    assert (s.queries, s.baseline_queries, s.state) == (4, 4, State.LEARNING)
    assert s.baseline.reference_distance != s.baseline.reference_distance  # nan: the fit is of the old space


def test_threads_aggregate_and_refit_in_the_background(catalog: Catalog) -> None:
    m = DriftMonitor(
        DriftOptions(window_size=8, baseline_windows=1, interval_seconds=0.02, refit_check_seconds=0.05),
        lambda: catalog,
    )
    m.start()
    try:
        end = time.monotonic() + 10
        while m.report().reference is None and time.monotonic() < end:
            time.sleep(0.01)
        assert m.report().reference is not None
        m.observe("lane", FP, near_catalog(16, seed=1), answers([KNOWN] * 16, [0.9] * 16))
        while not m.report().sources and time.monotonic() < end:
            time.sleep(0.01)
        assert m.report().sources[0].queries == 16
        names = {t.name for t in threading.enumerate()}
        assert {"skulens-drift-aggregate", "skulens-drift-refit"} <= names
    finally:
        m.close()
    assert not {"skulens-drift-aggregate", "skulens-drift-refit"} & {t.name for t in threading.enumerate()}


def test_a_failed_fit_is_reported_and_the_previous_one_stays(tmp_path: Path, catalog: Catalog) -> None:
    m = DriftMonitor(DriftOptions(refit_check_seconds=0.05), lambda: catalog)
    m.refit()
    catalog.close()  # every later read raises CatalogClosed
    m.start()
    try:
        end = time.monotonic() + 10
        while not (m.report().reference and m.report().reference.error) and time.monotonic() < end:
            time.sleep(0.01)
    finally:
        m.close()
    ref = m.report().reference
    assert ref is not None and "CatalogClosed" in ref.error and ref.references == 48
