"""`skulens.catalog.exact_top.BestReferences`: best products over chunked vectors, against a brute-force answer."""

from __future__ import annotations

import numpy as np
import pytest
from catalog_helpers import unit

from skulens.catalog.exact_top import BestReferences, exact_products, product_recall


def _brute(queries: np.ndarray, vecs: np.ndarray, products: np.ndarray, top: int) -> list[list[int]]:
    scores = queries @ vecs.T
    out = []
    for row in scores:
        best: dict[int, float] = {}
        for s, p in zip(row.tolist(), products.tolist(), strict=True):
            best[p] = max(best.get(p, -np.inf), s)
        out.append(sorted(best, key=lambda p: -best[p])[:top])
    return out


@pytest.mark.parametrize("chunk", [1, 7, 100, 5000])
def test_the_best_products_of_chunked_vectors_are_exact(chunk: int) -> None:
    rng = np.random.default_rng(chunk)
    vecs = unit(rng.standard_normal((600, 16)))
    products = rng.integers(0, 120, 600)  # about five references a product, unevenly
    queries = unit(vecs[rng.choice(600, 30)] + 0.3 * rng.standard_normal((30, 16)))
    best = BestReferences(queries, keep=80)
    for at in range(0, 600, chunk):
        best.add(vecs[at:at + chunk], products[at:at + chunk])
    found, short = best.top_products(10)
    assert best.seen == 600 and len(short) == 0
    assert found == _brute(queries, vecs, products, 10)


def test_too_few_kept_references_say_which_queries_need_a_wider_pass() -> None:
    rng = np.random.default_rng(3)
    vecs = unit(rng.standard_normal((200, 8)))
    products = np.arange(200) // 50  # four products of 50 references each
    queries = unit(rng.standard_normal((5, 8)))
    narrow = BestReferences(queries, keep=3)  # three references cannot hold four products
    narrow.add(vecs, products)
    found, short = narrow.top_products(4)
    assert short.tolist() == [0, 1, 2, 3, 4] and all(len(f) < 4 for f in found)
    wide = BestReferences(queries[short], keep=200)  # every reference kept: the answer is complete
    wide.add(vecs[:150], products[:150])
    wide.add(vecs[150:], products[150:])
    found, short = wide.top_products(4)
    assert len(short) == 0 and found == _brute(queries, vecs, products, 4)
    # fewer products in the catalog than asked for, every reference kept: complete, not short
    alone = BestReferences(queries, keep=500)
    alone.add(vecs, products)
    assert alone.top_products(10)[1].tolist() == [] and all(len(f) == 4 for f in alone.top_products(10)[0])
    with pytest.raises(ValueError, match="keep must be >= 1"):
        BestReferences(queries, keep=0)


def test_exact_products_reads_again_for_the_queries_that_came_up_short() -> None:
    rng = np.random.default_rng(4)
    centres = unit(rng.standard_normal((10, 16)))
    big = unit(np.repeat(centres, 60, axis=0) + 0.1 * rng.standard_normal((600, 16)))  # 10 products of 60, tight
    vecs = np.concatenate([big, unit(rng.standard_normal((300, 16)))]).astype(np.float32)
    products = np.concatenate([np.arange(600) // 60, 10 + np.arange(300)])  # and 300 of one reference
    queries = unit(np.concatenate([centres[rng.integers(0, 10, 15)] + 0.1 * rng.standard_normal((15, 16)),
                                   rng.standard_normal((10, 16))])).astype(np.float32)
    passes: list[int] = []

    def read(best: BestReferences) -> None:  # in chunks of 128, as a cursor would hand them over
        passes.append(len(best.queries))
        for at in range(0, 900, 128):
            best.add(vecs[at:at + 128], products[at:at + 128])

    # per_product 1 keeps 64 references a query: near the big products that is too few for 10 products
    got = exact_products(queries, 10, 1.0, read)
    assert [sorted(g) for g in got] == [sorted(b) for b in _brute(queries, vecs, products, 10)]
    assert passes[0] == 25 and len(passes) >= 2 and all(p < 25 for p in passes[1:])
    passes.clear()
    assert exact_products(queries, 10, 30.0, read) == got and passes == [25]  # 1,200 kept: one pass


def test_product_recall_counts_the_exact_products_found() -> None:
    assert product_recall([{1, 2, 3, 4}, {5, 6}], [[1, 2, 9, 8], [6, 5]]) == pytest.approx(4 / 6)
    assert product_recall([set()], [[]]) == 0.0  # nothing to find: no division by zero
    with pytest.raises(ValueError):
        product_recall([{1}], [])  # a query without an answer is an error, not a miss
