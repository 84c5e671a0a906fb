"""skulens.catalog.view: the in-memory maps, generation tracking and the rebuild journal."""

from __future__ import annotations

import numpy as np
from catalog_helpers import unit

from skulens.catalog.index import VectorIndex
from skulens.catalog.settings import CatalogSettings
from skulens.catalog.store import ProductRow
from skulens.catalog.view import CatalogView

DIM = 8


def row(pk: int, category: str, **labels: str) -> ProductRow:
    return ProductRow(pk, f"p{pk}", "", category, dict(labels), 0.0, 0.0)


def test_products_are_indexed_by_category_and_label_and_filters_intersect() -> None:
    view = CatalogView("fp", DIM)
    view.put_product(row(1, "drinks", brand="a"))
    view.put_product(row(2, "drinks", brand="b"))
    view.put_product(row(3, "snacks", brand="a"))
    assert sorted(view.filter_pks("drinks", {}).tolist()) == [1, 2]
    assert sorted(view.filter_pks("", {"brand": "a"}).tolist()) == [1, 3]
    assert view.filter_pks("drinks", {"brand": "a"}).tolist() == [1]
    view.put_product(row(1, "snacks", brand="b"))  # replaced: leaves its old category and label
    assert view.filter_pks("drinks", {}).tolist() == [2]
    assert sorted(view.filter_pks("snacks", {"brand": "b"}).tolist()) == [1]
    view.drop_product(3)
    view.drop_product(99)  # unknown: nothing happens
    assert view.filter_pks("", {"brand": "a"}).tolist() == []
    assert sorted(view.products) == [1, 2]


def test_advance_reports_an_interleaved_writer() -> None:
    view = CatalogView("fp", DIM)
    assert view.advance(1) and view.advance(1) and view.advance(2)
    assert not view.advance(4)  # generation 3 was someone else's
    assert view.generation == 4


def test_reference_changes_reach_the_index_and_the_journal_only_while_it_is_kept() -> None:
    view = CatalogView("fp", DIM)
    view.install(VectorIndex.empty(DIM, CatalogSettings()))
    vecs = unit(np.random.default_rng(0).standard_normal((3, DIM)))
    view.add_references(1, 7, np.array([1, 2, 3]), vecs)
    assert view.journal is None and view.refs.live == 3
    view.journal = []
    view.remove_references(2, np.array([2]))
    view.add_references(3, 7, np.array([4]), vecs[:1])
    assert [(g, op, ids.tolist()) for g, op, ids, _ in view.journal] == [(2, "remove", [2]), (3, "add", [4])]
    assert view.refs.live == 3 and view.live_keys().tolist() == [7, 7, 7]
    assert view.index is not None and view.index.ntotal == 3
    scores, ids, keys = view.nearest(vecs[:1], 1)
    assert ids.tolist() == [[1]] and keys.tolist() == [[7]] and np.isclose(scores[0, 0], 1.0, atol=1e-5)
