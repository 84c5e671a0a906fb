"""`BestReferences`: each query's best references over vectors that arrive in chunks, and its best products.

A product scores its best reference, so the products in order of score are the references' products in order of
first appearance: the `top` best products of a query are the first `top` distinct products among its best
references, provided those references hold `top` distinct products. `BestReferences` keeps, per query, the `keep`
best (score, product) pairs seen so far; `products(top)` answers for the queries whose kept references hold
enough products (or hold every reference there is), and says which queries need a wider pass; `exact_products`
runs those passes. Used to measure exactly what an approximate search should find, one read of the vectors for
all queries (`postgres_search.HnswTuning`, `index.VectorIndex.tune`), where a search per query would read them once
each.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


class BestReferences:
    """Each of `queries` (float32 [q, dim], unit rows) keeps its `keep` best references over `add`ed chunks."""

    def __init__(self, queries: np.ndarray, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.keep = keep
        n = len(self.queries)
        self.scores = np.full((n, 0), -np.inf, dtype=np.float32)
        self.products = np.full((n, 0), -1, dtype=np.int64)
        self.seen = 0  # references added

    def add(self, vectors: np.ndarray, products: np.ndarray) -> None:
        """One chunk of references: float32 [m, dim] vectors and their product keys [m]."""
        if len(vectors) == 0:
            return
        self.seen += len(vectors)
        chunk = self.queries @ vectors.T
        if chunk.shape[1] > self.keep:  # the chunk's best first, then merged with those kept
            best = np.argpartition(-chunk, self.keep - 1, axis=1)[:, :self.keep]
            chunk, chunk_pks = np.take_along_axis(chunk, best, axis=1), products[best]
        else:
            chunk_pks = np.broadcast_to(products, chunk.shape)
        scores = np.concatenate([self.scores, chunk], axis=1)
        pks = np.concatenate([self.products, chunk_pks], axis=1)
        if scores.shape[1] > self.keep:
            best = np.argpartition(-scores, self.keep - 1, axis=1)[:, :self.keep]
            scores = np.take_along_axis(scores, best, axis=1)
            pks = np.take_along_axis(pks, best, axis=1)
        self.scores, self.products = scores, pks

    def top_products(self, top: int) -> tuple[list[list[int]], np.ndarray]:
        """(each query's best `top` product keys, best first; the rows whose kept references hold fewer than `top`
        products while more references were seen than kept: their answer may be short, a wider `keep` finds it)."""
        order = np.argsort(-self.scores, axis=1, kind="stable")
        out: list[list[int]] = []
        short: list[int] = []
        for j, row in enumerate(np.take_along_axis(self.products, order, axis=1)):
            found = list(dict.fromkeys(row.tolist()))[:top]
            out.append(found)
            if len(found) < top and self.seen > self.keep:
                short.append(j)
        return out, np.asarray(short, dtype=np.int64)


def exact_products(queries: np.ndarray, top: int, per_product: float,
                   read: Callable[[BestReferences], None]) -> list[set[int]]:
    """Each query's `top` best products (keys), exactly, from `read` (which `add`s every reference to the
    `BestReferences` it is given, in chunks): each query keeps four times the references `top` products hold on
    average (`per_product` a product, at least 64); the rare queries whose kept references hold fewer products are
    read again, keeping eight times as many."""
    keep = max(64, 4 * top * math.ceil(per_product))
    wanted: list[set[int]] = [set() for _ in range(len(queries))]
    rows = np.arange(len(queries))
    while len(rows):
        best = BestReferences(queries[rows], keep)
        read(best)
        found, short = best.top_products(top)
        for j, products in zip(rows.tolist(), found, strict=True):
            wanted[j] = set(products)
        rows, keep = rows[short], keep * 8
    return wanted


def product_recall(wanted: list[set[int]], found: list[list[int]]) -> float:
    """Share of the exact products (`exact_products`) that the product keys `found` per query (best first, cut to
    the same top) hold: product recall@top."""
    hits = sum(len(w & set(f)) for w, f in zip(wanted, found, strict=True))
    return hits / max(1, sum(len(w) for w in wanted))


__all__ = ["BestReferences", "exact_products", "product_recall"]
