"""skulens.catalog.rebuild: a background rebuild overtaken by a reload (new epoch) is discarded."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from catalog_helpers import branded_refs, product_refs, recalls_of

from skulens.catalog import Catalog, CatalogSettings, NewReference
from skulens.catalog.index import VectorIndex
from skulens.catalog.store import Store

DIM = 16
FP = "test-model/rebuild/16:0123456789abcdef"


def test_a_rebuild_overtaken_by_a_reload_is_discarded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release, started = threading.Event(), threading.Event()
    real_build = VectorIndex.build

    def held_build(*args, **kwargs):  # type: ignore[no-untyped-def]  # the real build, held until released
        if kwargs.get("cancel") is not None:  # only background rebuilds pass a cancel callback
            started.set()
            assert release.wait(30)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(VectorIndex, "build", staticmethod(held_build))
    s = CatalogSettings(synchronous="NORMAL", approximate_threshold=62, approximate_kind="hnsw")
    c = Catalog.open(tmp_path, fingerprint=FP, dim=DIM, settings=s)
    try:
        _, refs = product_refs(21, 3, DIM, seed=1)
        for i in range(21):  # 63 references: the rebuild starts and blocks
            c.upsert_product(f"p{i}")
            c.add_references(f"p{i}", [NewReference(r) for r in refs[i]])
        assert started.wait(10) and c.stats().rebuild_in_progress
        other = Store(c.path / "catalog.db")  # another process deletes 3: refresh reloads (flat), a new epoch
        other.delete_product("p0")
        other.close()
        assert c.refresh() is True
        release.set()
        assert c.wait_for_index(30)
        st = c.stats()
        assert st.index_kind == "flat" and not st.rebuild_in_progress  # the stale rebuild was dropped
        assert st.references == 60 == st.index_size and st.index_generation == st.store_generation
    finally:
        release.set()
        c.close()


def test_the_rebuilt_index_reports_the_product_recall_searches_get(tmp_path: Path) -> None:
    # at width 4 the graph finds fewer of the ten nearest references than the product search (which reads 100
    # references, so walks 100 wide) finds of the ten nearest products: the two recalls differ
    _, vecs, pks = branded_refs(240, DIM, seed=5)
    s = CatalogSettings(synchronous="NORMAL", approximate_threshold=1000, approximate_kind="hnsw", hnsw_m=4,
                        hnsw_ef_construction=8, hnsw_ef_search=4, recall_target=0.0, snapshot=False)

    def check(c: Catalog) -> None:
        st = c.stats()
        assert st.index_kind == "hnsw" and st.recall_at_10 is not None
        product_recall, reference_recall = recalls_of(c._view, lambda q: c.search(q, top_k=10))
        assert st.recall_at_10 == pytest.approx(product_recall, abs=0.02)
        assert abs(reference_recall - product_recall) > 0.05  # the other recall would not pass

    c = Catalog.open(tmp_path, fingerprint=FP, dim=DIM, settings=s)
    try:
        for p in range(240):  # 1,200 references: past the threshold, rebuilt in the background as HNSW
            c.upsert_product(f"p{p}")
            c.add_references(f"p{p}", [NewReference(v) for v in vecs[pks == p]])
        assert c.wait_for_index(60)
        check(c)
    finally:
        c.close()
    c = Catalog.open(tmp_path, fingerprint=FP, dim=DIM, settings=s)  # no snapshot: built at open from the store
    try:
        check(c)
    finally:
        c.close()
