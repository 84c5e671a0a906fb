"""Reference hits → product matches (best reference wins) + verdict (KNOWN / UNKNOWN / AMBIGUOUS).

Pure functions over numpy arrays and a search callable, so they are tested without a store.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from skulens.catalog.models import Verdict

# search(queries, k, depth) -> (scores [n, k], reference ids [n, k], exhausted [n]); see VectorIndex.search.
Searcher = Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]]

_MAX_ROUNDS = 40


class RefMap:
    """reference_id → product pk for the live references, as a growable int64 array (-1: not live)."""

    def __init__(self) -> None:
        self._pk = np.full(1024, -1, dtype=np.int64)
        self.live = 0

    def set(self, ids: np.ndarray, pks: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return
        top = int(ids.max())
        if top >= len(self._pk):
            grown = np.full(max(top + 1, 2 * len(self._pk)), -1, dtype=np.int64)
            grown[: len(self._pk)] = self._pk
            self._pk = grown
        self.live += int(np.count_nonzero(self._pk[ids] < 0))
        self._pk[ids] = np.asarray(pks, dtype=np.int64)

    def clear(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        ids = ids[(ids >= 0) & (ids < len(self._pk))]
        self.live -= int(np.count_nonzero(self._pk[ids] >= 0))
        self._pk[ids] = -1

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Product pk per id (same shape); -1 for FAISS padding (-1), unknown or deleted ids."""
        ids = np.asarray(ids, dtype=np.int64)
        ok = (ids >= 0) & (ids < len(self._pk))
        out = np.full(ids.shape, -1, dtype=np.int64)
        out[ok] = self._pk[ids[ok]]
        return out

    def allowed_mask(self, pks: np.ndarray) -> np.ndarray:
        """Bool mask over reference ids: live references of the given products."""
        pks = np.asarray(pks, dtype=np.int64)
        if not len(pks):
            return np.zeros(len(self._pk), dtype=bool)
        wanted = np.zeros(int(max(pks.max(), self._pk.max())) + 1, dtype=bool)
        wanted[pks] = True
        live = self._pk >= 0
        mask = np.zeros(len(self._pk), dtype=bool)
        mask[live] = wanted[self._pk[live]]
        return mask

    def live_ids(self) -> np.ndarray:
        return np.flatnonzero(self._pk >= 0)


@dataclass(frozen=True)
class ProductHit:
    """A product's best reference for one query."""

    product_pk: int
    score: float
    reference_id: int


def aggregate(scores: np.ndarray, ref_ids: np.ndarray, pks: np.ndarray) -> list[ProductHit]:
    """One query's reference hits (best first) → products best first, each with its best reference.

    Entries whose pk is -1 (padding, deleted or filtered references) are skipped.
    """
    pks = np.asarray(pks)
    keep = pks >= 0
    if not keep.all():
        scores, ref_ids, pks = np.asarray(scores)[keep], np.asarray(ref_ids)[keep], pks[keep]
    _, first = np.unique(pks, return_index=True)  # each product's first (= best) hit
    first.sort()  # back in best-first order
    return [ProductHit(pk, s, rid) for pk, s, rid in zip(pks[first].tolist(), np.asarray(scores)[first].tolist(),
                                                         np.asarray(ref_ids)[first].tolist(), strict=True)]


def first_round_k(top_k: int, per_product: float, most: int, dead: float = 1.0) -> int:
    """References the first round of a top-`top_k` product search reads: twice the references `top_k` products
    (at least 2, for the verdict's runner-up) hold, `per_product` references a product, scaled by `dead` (index
    entries a live reference, HNSW tombstones included); at most `most` (the index size), but never below 16
    (`search_products` caps k at its `max_k`)."""
    return max(16, min(math.ceil(max(top_k, 2) * per_product * 2 * dead), most))


def search_products(search: Searcher, lookup: Callable[[np.ndarray], np.ndarray], queries: np.ndarray, *,
                    top_k: int, initial_k: int, max_k: int, min_score: float | None,
                    ambiguity_margin: float) -> list[list[ProductHit]]:
    """Products per query, searching deeper (k x4, then deeper HNSW/IVF parameters) until each row has enough.

    A row is done when it has `top_k` products (or its next hit is below `min_score`), and also a runner-up
    for the verdict (or its next hit is more than `ambiguity_margin` below the best), or the index has
    nothing more.
    Exact search returns references best first, so the first `top_k` distinct products are the exact answer.
    """
    n = len(queries)
    results: list[list[ProductHit]] = [[] for _ in range(n)]
    if n == 0 or max_k <= 0:
        return results
    pending = np.arange(n)
    k = max(1, min(initial_k, max_k))
    for depth in range(_MAX_ROUNDS):
        scores, ids, exhausted = search(queries[pending], k, depth)
        pks = lookup(ids)
        still: list[int] = []
        for j, row in enumerate(pending.tolist()):
            hits = aggregate(scores[j], ids[j], pks[j])
            valid = ids[j] >= 0
            last = float(scores[j][valid][-1]) if valid.any() else -np.inf
            enough_matches = len(hits) >= top_k or (min_score is not None and last < min_score)
            enough_verdict = len(hits) >= 2 or (bool(hits) and last < hits[0].score - ambiguity_margin)
            results[row] = hits
            if not (exhausted[j] or (enough_matches and enough_verdict)):
                still.append(row)
        if not still:
            break
        pending = np.asarray(still, dtype=np.int64)
        k = min(k * 4, max_k)
    return results


def decide(hits: list[ProductHit], unknown_threshold: float,
           ambiguity_margin: float) -> tuple[Verdict, list[ProductHit]]:
    """Verdict for one query's products (best first) and, when AMBIGUOUS, the confusable products.

    UNKNOWN: no product, or the best score is below `unknown_threshold`. AMBIGUOUS: another product scores
    within `ambiguity_margin` of the best (strictly closer); confusable = those and the best, best first.
    KNOWN otherwise.
    """
    if not hits or hits[0].score < unknown_threshold:
        return Verdict.UNKNOWN, []
    best = hits[0].score
    close = [h for h in hits[1:] if best - h.score < ambiguity_margin]
    if close:
        return Verdict.AMBIGUOUS, [hits[0], *close]
    return Verdict.KNOWN, []
