"""skulens.catalog.matching: aggregation per product, deepening search, verdicts, the reference → product map."""

from __future__ import annotations

import numpy as np

from skulens.catalog.matching import ProductHit, RefMap, aggregate, decide, first_round_k, search_products
from skulens.catalog.models import Verdict


def test_refmap_set_clear_lookup_mask() -> None:
    m = RefMap()
    m.set(np.array([1, 5, 5000]), np.array([10, 11, 10]))
    assert m.live == 3
    got = m.lookup(np.array([[1, 5, -1], [5000, 7, 99999]]))
    np.testing.assert_array_equal(got, [[10, 11, -1], [10, -1, -1]])
    m.clear(np.array([5, 123456]))
    assert m.live == 2 and m.lookup(np.array([5]))[0] == -1
    mask = m.allowed_mask(np.array([10]))
    assert set(np.flatnonzero(mask)) == {1, 5000}
    assert not m.allowed_mask(np.array([], dtype=np.int64)).any()
    np.testing.assert_array_equal(m.live_ids(), [1, 5000])
    m.set(np.array([1]), np.array([12]))  # re-pointing a live id does not double count
    assert m.live == 2


def test_aggregate_best_reference_wins() -> None:
    scores = np.array([0.9, 0.85, 0.8, 0.7, 0.6], dtype=np.float32)
    ids = np.array([11, 12, 13, -1, 15])
    pks = np.array([1, 1, 2, -1, 1])
    hits = aggregate(scores, ids, pks)
    assert [(h.product_pk, h.reference_id) for h in hits] == [(1, 11), (2, 13)]
    assert abs(hits[0].score - 0.9) < 1e-6


def test_decide_verdicts() -> None:
    def hits(*scores: float) -> list[ProductHit]:
        return [ProductHit(i, s, 100 + i) for i, s in enumerate(scores)]

    assert decide([], 0.5, 0.02) == (Verdict.UNKNOWN, [])
    assert decide(hits(0.49, 0.1), 0.5, 0.02)[0] is Verdict.UNKNOWN
    assert decide(hits(0.9, 0.7), 0.5, 0.02) == (Verdict.KNOWN, [])
    verdict, confusable = decide(hits(0.9, 0.89, 0.885, 0.7), 0.5, 0.02)
    assert verdict is Verdict.AMBIGUOUS and [h.product_pk for h in confusable] == [0, 1, 2]
    assert decide(hits(0.9, 0.875), 0.5, 0.02)[0] is Verdict.KNOWN  # a gap above the margin
    assert decide(hits(0.9), 0.5, 0.02)[0] is Verdict.KNOWN
    assert decide(hits(0.9, 0.9), 0.5, 0.0)[0] is Verdict.KNOWN  # margin 0 disables ambiguity


def _brute_searcher(ids: np.ndarray, vecs: np.ndarray, calls: list[int]):  # type: ignore[no-untyped-def]
    def search(q: np.ndarray, k: int, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        calls.append(k)
        s = q @ vecs.T
        order = np.argsort(-s, axis=1)[:, :k]
        return np.take_along_axis(s, order, 1), ids[order], np.full(len(q), k >= len(ids))
    return search


def test_search_products_deepens_until_k_products() -> None:
    rng = np.random.default_rng(0)
    dim, n_products, per = 16, 30, 40  # many references per product: 5 products need > 160 neighbours
    centres = rng.standard_normal((n_products, dim))
    vecs = centres.repeat(per, 0) + 0.05 * rng.standard_normal((n_products * per, dim))
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    ids = np.arange(1, len(vecs) + 1)
    m = RefMap()
    m.set(ids, np.repeat(np.arange(n_products), per))
    calls: list[int] = []
    q = vecs[[0, 400]]
    search = _brute_searcher(ids, vecs, calls)
    out = search_products(search, m.lookup, q, top_k=5, initial_k=16, max_k=len(ids), min_score=None,
                          ambiguity_margin=0.02)
    assert all(len(r) >= 5 for r in out) and len(calls) > 1  # deepened
    # exact answer: products ordered by their best reference's score
    for row, qv in zip(out, q, strict=True):
        best = [(float(np.max(vecs[p * per:(p + 1) * per] @ qv)), p) for p in range(n_products)]
        want = [p for _, p in sorted(best, reverse=True)[:5]]
        assert [h.product_pk for h in row[:5]] == want
        assert all(m.lookup(np.array([h.reference_id]))[0] == h.product_pk for h in row)
    # min_score stops the deepening early: the next hit is already below it
    calls.clear()
    out = search_products(search, m.lookup, q, top_k=5, initial_k=64, max_k=len(ids), min_score=0.9,
                          ambiguity_margin=0.02)
    assert len(calls) == 1 and all(r[0].score >= 0.9 > r[1].score for r in out)


def test_search_products_stops_when_exhausted() -> None:
    vecs = np.eye(4, dtype=np.float32)
    ids = np.arange(1, 5)
    m = RefMap()
    m.set(ids, np.array([0, 0, 0, 1]))
    calls: list[int] = []
    out = search_products(_brute_searcher(ids, vecs, calls), m.lookup, vecs[:1], top_k=5, initial_k=2,
                          max_k=4, min_score=None, ambiguity_margin=0.02)
    assert [h.product_pk for h in out[0]] == [0, 1] and calls == [2, 4]


def test_first_round_k_reads_twice_the_references_of_the_products_asked_for() -> None:
    assert first_round_k(10, 5.0, 10_000) == 100  # ten products of five references, twice
    assert first_round_k(1, 5.0, 10_000) == 20  # at least two products: the verdict's runner-up
    assert first_round_k(10, 5.0, 10_000, dead=1.5) == 150  # HNSW tombstones read too
    assert first_round_k(10, 2.5, 10_000) == 50 and first_round_k(10, 2.01, 10_000) == 41  # rounded up
    assert first_round_k(1, 1.0, 10_000) == 16  # at least 16
    assert first_round_k(10, 5.0, 60) == 60 and first_round_k(10, 5.0, 8) == 16  # at most `most`, never below 16
