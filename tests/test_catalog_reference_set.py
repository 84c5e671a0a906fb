"""`skulens.catalog.reference_set`: live references in memory with exact nearest-reference search, so leave-one-out
calibration runs on any `CatalogBackend` — checked against brute force, against the embedded catalog's own index,
and on the session's real PostgreSQL (tests/pg_fixture.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from catalog_helpers import product_refs

from skulens.catalog import Catalog, CatalogSettings, NewReference
from skulens.catalog.backend import CatalogBackend
from skulens.catalog.calibrate import calibrate
from skulens.catalog.reference_set import ReferenceSet, for_calibration

DIM = 16
FP = "refset/random/16"


def fill(cat: CatalogBackend, refs: np.ndarray, *, gone: int | None = None) -> None:
    for p in range(refs.shape[0]):
        cat.upsert_product(f"p{p:02d}")
        cat.add_references(f"p{p:02d}", [NewReference(v) for v in refs[p]])
    if gone is not None:
        cat.delete_product(f"p{gone:02d}")


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Catalog]:
    _, refs = product_refs(12, 3, DIM, seed=4)
    with Catalog.open(tmp_path / "cat", fingerprint=FP, dim=DIM,
                      settings=CatalogSettings(synchronous="NORMAL", use_gpu="never")) as cat:
        fill(cat, refs, gone=5)
        yield cat


def test_loaded_references_and_exact_search(embedded: Catalog) -> None:
    rs = ReferenceSet.load(embedded, page=4)  # several pages
    assert len(rs.ids) == 33 and list(rs.ids) == sorted(rs.ids) and rs.vectors.shape == (33, DIM)
    assert set(np.unique(rs.keys)) == set(range(11)) and list(rs.reference_counts(np.asarray([0, 3, 99]))) == [3, 3, 0]
    q = rs.vectors[[0, 7]]
    scores, ids, keys = rs.nearest_references(q, 5)
    brute = q @ rs.vectors.T
    for j in range(2):
        order = np.argsort(-brute[j], kind="stable")[:5]
        assert list(ids[j]) == list(rs.ids[order]) and list(keys[j]) == list(rs.keys[order])
        np.testing.assert_allclose(scores[j], brute[j][order], atol=1e-6)
    scores, ids, _ = rs.nearest_references(q, 40)  # more than there are: -1 pads
    assert (ids[:, 33:] == -1).all() and (ids[:, :33] >= 0).all()
    sample_ids, sample_keys, sample_vecs = rs.sample_references(10, seed=1)
    assert len(set(sample_ids)) == 10 and set(sample_ids) <= set(rs.ids)
    rows = np.searchsorted(rs.ids, sample_ids)
    assert (rs.keys[rows] == sample_keys).all() and (rs.vectors[rows] == sample_vecs).all()
    assert rs.sample_references(10, seed=1)[0].tolist() == sample_ids.tolist()  # seeded


def test_calibration_is_the_same_as_with_the_embedded_index(embedded: Catalog) -> None:
    assert for_calibration(embedded) is embedded  # the embedded catalog searches its own index
    native, loaded = calibrate(embedded), calibrate(ReferenceSet.load(embedded))
    assert (loaded.queries, loaded.products) == (native.queries, native.products) == (33, 11)
    assert loaded.suggested_unknown_threshold == pytest.approx(native.suggested_unknown_threshold, abs=0.0011)
    assert loaded.suggested_ambiguity_margin == pytest.approx(native.suggested_ambiguity_margin, abs=0.0011)


def test_calibration_on_postgres(embedded: Catalog, postgres_server: Any) -> None:
    from skulens.catalog.postgres import PostgresCatalog

    _, refs = product_refs(12, 3, DIM, seed=4)
    schema = postgres_server.new_schema()
    try:
        with PostgresCatalog.open(postgres_server.url(), fingerprint=FP, dim=DIM, schema=schema) as pg:
            fill(pg, refs, gone=5)
            view = for_calibration(pg)
            assert isinstance(view, ReferenceSet) and len(view.ids) == 33
            native, shared = calibrate(embedded), calibrate(view)
            assert (shared.queries, shared.products) == (33, 11)
            assert shared.suggested_unknown_threshold == pytest.approx(native.suggested_unknown_threshold, abs=0.0011)
            assert shared.suggested_ambiguity_margin == pytest.approx(native.suggested_ambiguity_margin, abs=0.0011)
    finally:
        postgres_server.drop_schemas([schema])


def test_an_empty_catalog(tmp_path: Path) -> None:
    with Catalog.open(tmp_path / "empty", fingerprint=FP, dim=DIM) as cat:
        rs = ReferenceSet.load(cat)
        assert rs.vectors.shape == (0, DIM)
        scores, ids, keys = rs.nearest_references(np.ones((2, DIM), dtype=np.float32), 3)
        assert (ids == -1).all() and (keys == -1).all() and np.isneginf(scores).all()
        assert rs.reference_counts(np.asarray([0])).tolist() == [0]
