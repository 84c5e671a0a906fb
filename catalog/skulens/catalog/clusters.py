"""Reference clusters: spherical k-means centres of a set of catalog embeddings (FAISS), for drift monitoring.

`fit_clusters(vectors, k)` answers unit-norm centres and, for every fitted vector, its cosine to the nearest
centre (how tightly the catalog's own references sit around the centres). Runs with one OpenMP thread by
default: it is background work and must not take the cores from the serving path. FAISS is imported when a fit
runs, so that the service imports this module (for `Clusters`) without the runtime extra.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: faiss samples at most this many training points per centre (its own default), so a fit costs
#: O(k² · 256 · dim · iterations) whatever the catalog's size.
POINTS_PER_CENTRE = 256


@dataclass(frozen=True)
class Clusters:
    """Centres float32 [k, dim] (unit norm) and `nearest` float32 [n]: each fitted vector's cosine to its
    nearest centre."""

    centres: np.ndarray
    nearest: np.ndarray

    def nearest_cosine(self, vectors: np.ndarray) -> np.ndarray:
        """Cosine of each unit-norm row of `vectors` to its nearest centre, float32 [m]."""
        if not len(self.centres):
            return np.full(len(vectors), np.nan, dtype=np.float32)
        return np.asarray(vectors @ self.centres.T, dtype=np.float32).max(axis=1)


def fit_clusters(vectors: np.ndarray, k: int, *, iterations: int = 20, seed: int = 1234, threads: int = 1) -> Clusters:
    """Spherical k-means of unit-norm float32 rows [n, dim] into min(k, n) centres (none when n == 0)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    k = min(int(k), len(x))
    if k < 1:
        return Clusters(np.zeros((0, x.shape[1] if x.ndim == 2 else 0), np.float32), np.zeros(0, np.float32))
    import faiss  # the runtime extra (cpu / gpu)

    from skulens.catalog.index import omp_threads

    if k == 1:
        c = x.mean(axis=0, keepdims=True)
    else:
        km = faiss.Kmeans(
            x.shape[1],
            k,
            niter=iterations,
            seed=seed,
            spherical=True,
            verbose=False,
            min_points_per_centroid=1,
            max_points_per_centroid=POINTS_PER_CENTRE,
        )
        with omp_threads(threads):
            km.train(x)
        c = np.asarray(km.centroids, dtype=np.float32)
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    centres = c.astype(np.float32)
    return Clusters(centres, np.asarray(x @ centres.T, dtype=np.float32).max(axis=1))
