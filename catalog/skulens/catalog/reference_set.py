"""`ReferenceSet`: a catalog's live references (id, product, embedding) in memory, with exact nearest-reference
search — what leave-one-out calibration (`skulens.catalog.calibrate.calibrate`) needs from a catalog.

The embedded catalog answers those questions from its own in-process index (`Catalog.sample_references`,
`nearest_references`, `reference_counts`); a backend that keeps its vectors elsewhere (the shared PostgreSQL
catalog) has no per-reference search, so `for_calibration` reads every live reference once through the
`CatalogBackend` protocol (`export_references`, in pages) and searches them exactly with numpy. That costs
memory: references × dim × 4 bytes (100,000 references of 512-d: 205 MB), and one pass over the catalog (stored
images are read with each page and dropped).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from skulens.catalog.backend import CatalogBackend

PAGE = 1024  # references read per export_references call
_CHUNK = 1024  # queries scored against every reference at once


class ReferenceSet:
    """Live references in memory: ids, product keys (ints, one per product id), unit embeddings [n, dim]."""

    def __init__(self, settings: Any, ids: np.ndarray, keys: np.ndarray, vectors: np.ndarray) -> None:
        self.settings = settings
        self.ids = np.asarray(ids, dtype=np.int64)
        self.keys = np.asarray(keys, dtype=np.int64)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)

    @classmethod
    def load(cls, backend: CatalogBackend, page: int = PAGE) -> ReferenceSet:
        """Every live reference of `backend`, read in id order."""
        ids: list[int] = []
        products: list[str] = []
        vectors: list[np.ndarray] = []
        after = 0
        while True:
            rows = backend.export_references(after, page)
            for r in rows:
                ids.append(r.reference_id)
                products.append(r.product_id)
                vectors.append(np.asarray(r.embedding, dtype=np.float32))
            if len(rows) < page:
                break
            after = rows[-1].reference_id
        key_of: dict[str, int] = {}
        keys = [key_of.setdefault(p, len(key_of)) for p in products]
        stacked = np.stack(vectors) if vectors else np.zeros((0, backend.dim), dtype=np.float32)
        return cls(backend.settings, np.asarray(ids), np.asarray(keys), stacked)

    def sample_references(self, limit: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                                                   np.ndarray]:
        """(reference ids, product keys, embeddings) of up to `limit` references (seeded random sample)."""
        n = len(self.ids)
        if limit is None or limit >= n:
            rows = np.arange(n)
        else:
            rows = np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
        return self.ids[rows], self.keys[rows], self.vectors[rows]

    def nearest_references(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, reference ids, product keys) of the k nearest references per query, exact (-1 pads)."""
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        m, n = len(q), len(self.ids)
        got = min(k, n)
        scores = np.full((m, k), -np.inf, dtype=np.float32)
        ids = np.full((m, k), -1, dtype=np.int64)
        keys = np.full((m, k), -1, dtype=np.int64)
        for at in range(0, m, _CHUNK):
            if not got:
                break
            s = q[at:at + _CHUNK] @ self.vectors.T
            top = np.argpartition(-s, got - 1, axis=1)[:, :got] if got < n else np.tile(np.arange(n), (len(s), 1))
            part = np.take_along_axis(s, top, axis=1)
            order = np.argsort(-part, axis=1, kind="stable")
            top, part = np.take_along_axis(top, order, axis=1), np.take_along_axis(part, order, axis=1)
            scores[at:at + len(s), :got] = part
            ids[at:at + len(s), :got] = self.ids[top]
            keys[at:at + len(s), :got] = self.keys[top]
        return scores, ids, keys

    def reference_counts(self, keys: np.ndarray) -> np.ndarray:
        """Number of references of each product key."""
        keys = np.asarray(keys, dtype=np.int64)
        counts = np.bincount(self.keys, minlength=int(np.max(keys, initial=0)) + 1) if len(self.keys) else \
            np.zeros(max(1, int(np.max(keys, initial=0)) + 1), dtype=np.int64)
        out = np.zeros(len(keys), dtype=np.int64)
        ok = (keys >= 0) & (keys < len(counts))
        out[ok] = counts[keys[ok]]
        return out


def for_calibration(backend: CatalogBackend) -> Any:
    """What `calibrate` searches: the embedded catalog itself (its in-process index), else a `ReferenceSet` of
    every live reference (read once; see the module doc for its memory)."""
    if all(hasattr(backend, name) for name in ("sample_references", "nearest_references", "reference_counts")):
        return backend
    return ReferenceSet.load(backend)


__all__ = ["ReferenceSet", "for_calibration"]
