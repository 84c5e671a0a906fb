"""skulens.catalog.rebuild: a background rebuild overtaken by a reload (new epoch) is discarded."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from catalog_helpers import product_refs

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
