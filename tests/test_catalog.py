"""skulens.catalog.catalog: the facade — CRUD, search, filters, verdicts, snapshots, concurrency, reembed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from catalog_helpers import fake_model, image_bytes, product_refs, unit

from skulens.catalog import (
    AlreadyExists,
    Catalog,
    CatalogClosed,
    CatalogError,
    CatalogSettings,
    FingerprintMismatch,
    InvalidArgument,
    NewReference,
    NotFound,
    Verdict,
)
from skulens.catalog.store import SCHEMA_VERSION, Store

DIM = 32
FP = "test-model/random/32:0123456789abcdef"


@pytest.fixture
def settings() -> CatalogSettings:
    return CatalogSettings(synchronous="NORMAL", unknown_threshold=0.5, ambiguity_margin=0.02)


@pytest.fixture
def cat(tmp_path: Path, settings: CatalogSettings) -> Iterator[Catalog]:
    c = Catalog.open(tmp_path / "cat", fingerprint=FP, dim=DIM, settings=settings)
    yield c
    c.close()


def enrol(c: Catalog, n_products: int = 12, refs_per: int = 3, *, seed: int = 0,
          images: bool = True) -> tuple[np.ndarray, np.ndarray, dict[str, list[int]]]:
    centres, refs = product_refs(n_products, refs_per, DIM, seed=seed)
    ids: dict[str, list[int]] = {}
    for i in range(n_products):
        pid = f"sku-{i:03d}"
        c.upsert_product(pid, f"Product {i}", "even" if i % 2 == 0 else "odd", {"brand": f"b{i % 3}"})
        added = c.add_references(pid, [NewReference(refs[i, j], source=f"s{j}",
                                                     image=image_bytes(pid, j) if images else None)
                                       for j in range(refs_per)])
        ids[pid] = [a.reference_id for a in added]
    return centres, refs, ids


def assert_index_agrees_with_store(c: Catalog) -> None:
    """Every stored reference is found by its own vector and nothing else is live in the index."""
    ids, _, vecs = c.sample_references()
    st = c.stats()
    assert st.references == len(ids) == st.index_size - st.index_tombstones
    if len(ids):
        scores, got, _ = c.nearest_references(vecs, 1)
        assert (got[:, 0] == ids).all()
        assert np.allclose(scores[:, 0], 1.0, atol=1e-4)


# ------------------------------------------------------------------ CRUD
def test_create_only_refuses_an_existing_product_and_changes_nothing(cat: Catalog) -> None:
    p, created = cat.upsert_product("sku-co", "Original", "drinks", {"brand": "a"}, create_only=True)
    assert created and p.display_name == "Original"
    with pytest.raises(AlreadyExists, match="sku-co") as info:
        cat.upsert_product("sku-co", "Overwritten", "snacks", {}, create_only=True)
    assert info.value.field == "product_id"
    product = cat.get_product("sku-co").product
    assert (product.display_name, product.category, product.labels) == ("Original", "drinks", {"brand": "a"})


def test_products_and_references_crud(cat: Catalog) -> None:
    p, created = cat.upsert_product("sku-1", "Cola 0.5l", "drinks", {"brand": "cola", "size": "0.5l"})
    assert created and p.product_id == "sku-1" and p.reference_count == 0
    p, created = cat.upsert_product("sku-1", "Cola 0.5 l", "drinks", {"brand": "cola"})
    assert not created and p.display_name == "Cola 0.5 l" and p.labels == {"brand": "cola"}
    v = unit(np.random.default_rng(0).standard_normal((3, DIM)))
    added = cat.add_references("sku-1", [NewReference(v[0], "shelf", b"jpeg-0"), NewReference(v[1]),
                                         NewReference(v[2], content_sha256="ab" * 32)])
    assert [a.duplicate for a in added] == [False, False, False]
    again = cat.add_references("sku-1", [NewReference(v[0], "shelf", b"jpeg-0"),
                                         NewReference(v[2], content_sha256="AB" * 32)])
    assert [(a.reference_id, a.duplicate) for a in again] == [(added[0].reference_id, True),
                                                              (added[2].reference_id, True)]
    detail = cat.get_product("sku-1")
    assert detail.product.reference_count == 3
    assert [(r.reference_id, r.has_image) for r in detail.references] == [
        (added[0].reference_id, True), (added[1].reference_id, False), (added[2].reference_id, False)]
    assert detail.references[0].source == "shelf" and len(detail.references[0].content_sha256 or "") == 64
    cat.delete_reference(added[1].reference_id)
    with pytest.raises(NotFound, match=str(added[1].reference_id)):
        cat.delete_reference(added[1].reference_id)
    assert cat.delete_product("sku-1") == 2
    for call in (lambda: cat.get_product("sku-1"), lambda: cat.delete_product("sku-1"),
                 lambda: cat.add_references("sku-1", [NewReference(v[0])])):
        with pytest.raises(NotFound) as err:
            call()
        assert err.value.field == "product_id"
    assert_index_agrees_with_store(cat)


def test_store_images_setting(tmp_path: Path) -> None:
    c = Catalog.open(tmp_path, fingerprint=FP, dim=DIM, settings=CatalogSettings(store_images=False))
    c.upsert_product("a")
    v = unit(np.ones(DIM))
    c.add_references("a", [NewReference(v, image=b"x")])
    c.add_references("a", [NewReference(v, image=b"y")], store_images=True)
    assert [r.has_image for r in c.get_product("a").references] == [False, True]
    assert c.stats().references_with_image == 1
    c.close()


# ------------------------------------------------------------------ validation
def test_validation_errors_name_field_and_limit(cat: Catalog) -> None:
    v = unit(np.ones(DIM))
    cases = [
        (lambda: cat.upsert_product("x" * 129), "product_id",
         "product_id must be 1-128 UTF-8 characters, got 129"),
        (lambda: cat.upsert_product(""), "product_id", "got 0"),
        (lambda: cat.upsert_product("a\nb"), "product_id", "control characters"),
        (lambda: cat.upsert_product("a\ud800"), "product_id", "UTF-8"),
        (lambda: cat.upsert_product("a", labels={"k": "v" * 300}), "labels.k", "0-256"),
        (lambda: cat.upsert_product("a", category="c" * 200), "category", "0-128"),
        (lambda: cat.add_references("a", []), "references", "1-1024 items, got 0"),
        (lambda: cat.search(v, top_k=0), "top_k", "1-100"),
        (lambda: cat.search(v, top_k=101), "top_k", "1-100, got 101"),
        (lambda: cat.search(v, min_score=2.0), "min_score", "[-1, 1]"),
        (lambda: cat.search(np.ones((2, DIM + 1), np.float32)), "queries", f"[N, {DIM}]"),
        (lambda: cat.search(np.ones((2, DIM), np.float32)), "queries", "norm 1 ± 0.01"),
        (lambda: cat.search(np.full((1, DIM), np.nan, np.float32)), "queries", "finite"),
        (lambda: cat.delete_reference(0), "reference_id", "1-"),
        (lambda: cat.list_products(page_size=-1), "page_size", "1-1000"),
        (lambda: cat.list_products(page_token="garbage!"), "page_token", "not a token"),
    ]
    for call, field, text in cases:
        with pytest.raises(InvalidArgument) as err:
            call()
        assert err.value.field == field, (field, err.value)
        assert text in str(err.value), (text, str(err.value))


def test_bad_reference_in_a_batch_writes_nothing(cat: Catalog) -> None:
    cat.upsert_product("a")
    good = unit(np.ones(DIM))
    gen = cat.stats().store_generation
    for bad, field, text in [
        (NewReference(np.ones(DIM, np.float32)), "references[1].embedding", "norm"),
        (NewReference(good[:-1]), "references[1].embedding", f"[{DIM}]"),
        (NewReference(good, content_sha256="zz"), "references[1].content_sha256", "64 hexadecimal"),
        (NewReference(good, image=b"abc", content_sha256="0" * 64), "references[1].content_sha256", "match"),
        (NewReference(good, source="s" * 2000), "references[1].source", "0-1024"),
    ]:
        with pytest.raises(InvalidArgument) as err:
            cat.add_references("a", [NewReference(good), bad])
        assert err.value.field == field and text in str(err.value)
    st = cat.stats()
    assert st.references == 0 and st.index_size == 0 and st.store_generation == gen


# ------------------------------------------------------------------ search
def test_search_aggregates_per_product_best_reference_wins(cat: Catalog) -> None:
    centres, refs, ids = enrol(cat, n_products=12, refs_per=5)
    q = unit(refs[3, 2] + 0.01 * np.random.default_rng(1).standard_normal(DIM))
    (res,) = cat.search(q, top_k=4)
    assert res.matches[0].product_id == "sku-003"
    assert res.matches[0].reference_id == ids["sku-003"][2]  # the best reference of the product
    assert len({m.product_id for m in res.matches}) == 4  # products, not references
    assert res.matches[0].display_name == "Product 3"
    assert [m.score for m in res.matches] == sorted([m.score for m in res.matches], reverse=True)
    # the product's score is its best reference's score
    assert abs(res.matches[0].score - float(refs[3, 2] @ q)) < 1e-5
    # batch of queries: one result each, in order
    out = cat.search(centres[[0, 5, 7]], top_k=1)
    assert [r.matches[0].product_id for r in out] == ["sku-000", "sku-005", "sku-007"]
    assert all(r.verdict is Verdict.KNOWN for r in out)
    assert cat.search(np.zeros((0, DIM), np.float32)) == []


def test_filters_still_return_k_products(cat: Catalog) -> None:
    centres, refs, _ = enrol(cat, n_products=60, refs_per=4)
    # the query sits on an "odd" product: its nearest neighbours are its own references and other products'
    q = centres[1]
    (res,) = cat.search(q, top_k=5, category="even", labels={"brand": "b0"})
    # even and brand b0 -> i % 6 == 0: 10 products
    assert len(res.matches) == 5
    assert all(int(m.product_id[4:]) % 6 == 0 for m in res.matches)
    exact = sorted(((float(np.max(refs[i] @ q)), f"sku-{i:03d}") for i in range(0, 60, 6)), reverse=True)
    assert [m.product_id for m in res.matches] == [p for _, p in exact[:5]]
    (res,) = cat.search(q, top_k=5, labels={"brand": "nope"})
    assert res.matches == [] and res.verdict is Verdict.UNKNOWN and res.best_score == -1.0
    (res,) = cat.search(q, top_k=100, category="odd")
    assert len(res.matches) == 30


def test_unknown_and_ambiguous_verdicts(cat: Catalog) -> None:
    centres, _, _ = enrol(cat, n_products=10, refs_per=3)
    rng = np.random.default_rng(5)
    (res,) = cat.search(unit(rng.standard_normal(DIM)), top_k=3)  # nothing like any product
    assert res.verdict is Verdict.UNKNOWN and res.best_score < 0.5 and res.confusable == []
    assert len(res.matches) == 3  # matches still come back, below the threshold
    (res,) = cat.search(unit(rng.standard_normal(DIM)), top_k=3, min_score=0.6)
    assert res.matches == [] and res.verdict is Verdict.UNKNOWN
    # two variants of one brand: nearly the same embedding
    variant = unit(centres[4] + 0.001 * rng.standard_normal(DIM))
    cat.upsert_product("sku-004-light", "Product 4 light", "even", {"brand": "b1"})
    cat.add_references("sku-004-light", [NewReference(variant)])
    cat.add_references("sku-004", [NewReference(centres[4])])
    (res,) = cat.search(centres[4], top_k=3)
    assert res.verdict is Verdict.AMBIGUOUS
    assert set(res.confusable) == {"sku-004", "sku-004-light"}
    assert res.confusable[0] == res.matches[0].product_id
    (res,) = cat.search(centres[4], top_k=1, ambiguity_margin=0.0)  # per-call override
    assert res.verdict is Verdict.KNOWN and len(res.matches) == 1
    (res,) = cat.search(unit(centres[4] + 0.1 * rng.standard_normal(DIM)), top_k=1, unknown_threshold=0.999)
    assert res.verdict is Verdict.UNKNOWN


def test_pagination_is_stable_and_bound_to_category(cat: Catalog) -> None:
    for i in range(25):
        cat.upsert_product(f"p{i:02d}", category="a" if i % 2 else "b")
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page, token = cat.list_products(page_size=10, page_token=token)
        seen += [p.product_id for p in page]
        pages += 1
        if not token:
            break
    assert pages == 3 and seen == sorted(f"p{i:02d}" for i in range(25))
    page, token = cat.list_products(page_size=5, category="a")
    assert [p.product_id for p in page] == ["p01", "p03", "p05", "p07", "p09"] and token
    with pytest.raises(InvalidArgument, match="category"):
        cat.list_products(page_size=5, page_token=token, category="b")
    page, token = cat.list_products(page_size=8, page_token=token, category="a")
    assert page[0].product_id == "p11" and token == ""  # 7 left: end
    assert cat.list_products(page_size=0)[0][0].product_id == "p00"  # 0 = default size
    empty, token = cat.list_products(category="zzz")
    assert empty == [] and token == ""


# ------------------------------------------------------------------ snapshots
def test_snapshot_round_trip_and_stale_snapshot(tmp_path: Path, settings: CatalogSettings) -> None:
    path = tmp_path / "cat"
    c = Catalog.open(path, fingerprint=FP, dim=DIM, settings=settings)
    centres, _, ids = enrol(c, n_products=8)
    c.delete_reference(ids["sku-002"][0])
    before = c.search(centres, top_k=3)
    c.close()
    assert (path / "index.snapshot").exists()

    c = Catalog.open(path, fingerprint=FP, dim=DIM, settings=settings)
    st = c.stats()
    assert st.snapshot.loaded and st.snapshot.detail == "loaded"
    assert st.snapshot.generation == st.store_generation
    assert c.search(centres, top_k=3) == before
    assert_index_agrees_with_store(c)
    c.close()  # nothing changed: the snapshot is not rewritten
    # another handle writes after the snapshot was taken: stamp mismatch -> rebuilt from the store
    store = Store(path / "catalog.db")
    store.delete_product("sku-005")
    store.close()
    c = Catalog.open(path, fingerprint=FP, dim=DIM, settings=settings)
    st = c.stats()
    assert not st.snapshot.loaded
    assert "stale snapshot" in st.snapshot.detail and "generation" in st.snapshot.detail
    assert st.products == 7 and all(m.product_id != "sku-005" for r in c.search(centres) for m in r.matches)
    assert_index_agrees_with_store(c)
    c.close()
    # changed index settings also invalidate it; a corrupt snapshot is rebuilt, never trusted
    c = Catalog.open(path, fingerprint=FP, dim=DIM, settings=CatalogSettings(approximate_threshold=10_000))
    assert "settings" in c.stats().snapshot.detail
    c.close()
    (path / "index.snapshot").write_bytes(b"garbage")
    c = Catalog.open(path, fingerprint=FP, dim=DIM, settings=CatalogSettings(approximate_threshold=10_000))
    assert c.stats().snapshot.detail == "unreadable snapshot"
    assert_index_agrees_with_store(c)
    c.close()
    c = Catalog.open(path, fingerprint=FP, dim=DIM, settings=CatalogSettings(snapshot=False))
    assert not c.stats().snapshot.loaded
    c.close()


def test_foreign_write_while_open_is_detected(cat: Catalog, tmp_path: Path) -> None:
    enrol(cat, n_products=4)
    other = Store(cat.path / "catalog.db")
    other.delete_product("sku-001")
    other.close()
    cat.upsert_product("new")  # generation jumped by 2: reload from the store
    st = cat.stats()
    assert st.index_generation == st.store_generation and st.products == 4
    assert_index_agrees_with_store(cat)
    assert cat.refresh() is False


# ------------------------------------------------------------------ concurrency
def test_concurrent_searches_during_writes(cat: Catalog) -> None:
    centres, refs, ids = enrol(cat, n_products=20, refs_per=3)
    stop = threading.Event()
    errors: list[BaseException] = []
    searched = [0]

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                q = centres[rng.integers(0, 20, 8)]
                for r in cat.search(q, top_k=3, category="even" if seed % 2 else ""):
                    assert r.matches and all(m.product_id.startswith("sku-") for m in r.matches)
                searched[0] += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    rng = np.random.default_rng(9)
    try:
        for round_ in range(40):
            pid = f"sku-{rng.integers(0, 20):03d}"
            near = refs[int(pid[4:]), 0]
            new = cat.add_references(pid, [NewReference(unit(near + 0.05 * rng.standard_normal(DIM)))
                                           for _ in range(2)])
            ids[pid] += [a.reference_id for a in new]
            if round_ % 3 == 0:
                cat.delete_reference(ids[pid].pop(0))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert searched[0] > 0
    assert_index_agrees_with_store(cat)


# ------------------------------------------------------------------ approximate index switch
def test_unreachable_recall_target_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = CatalogSettings(synchronous="NORMAL", approximate_threshold=1000, approximate_kind="ivf", ivf_nprobe=1,
                        ivf_max_nprobe=1, recall_target=1.0)
    c = Catalog.open(tmp_path, fingerprint=FP, dim=DIM, settings=s)
    try:
        _, refs = product_refs(400, 4, DIM, seed=5)
        with caplog.at_level("WARNING", logger="skulens.catalog.catalog"):
            for i in range(400):
                c.upsert_product(f"p{i}")
                c.add_references(f"p{i}", [NewReference(r) for r in refs[i]])
            assert c.wait_for_index(60)
        st = c.stats()
        assert st.index_kind == "ivf" and st.recall_at_10 is not None and st.recall_at_10 < 1.0
        assert st.index_search_width == 1
        assert any("stays below the target" in r.getMessage() for r in caplog.records)
    finally:
        c.close()


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_switches_to_approximate_in_background(tmp_path: Path, kind: str) -> None:
    s = CatalogSettings(synchronous="NORMAL", approximate_threshold=600, approximate_kind=kind,  # type: ignore[arg-type]
                        unknown_threshold=0.5)
    c = Catalog.open(tmp_path, fingerprint=FP, dim=DIM, settings=s)
    centres, refs = product_refs(200, 4, DIM, seed=3)
    for i in range(200):
        c.upsert_product(f"p{i}")
        c.add_references(f"p{i}", [NewReference(r) for r in refs[i]])
        if i == 160:
            assert c.stats().rebuild_in_progress or c.stats().index_kind == kind  # 644 refs: rebuild started
    assert c.wait_for_index(60)
    st = c.stats()
    assert st.index_kind == kind and st.recall_at_10 is not None and st.recall_at_10 > 0.9
    assert st.index_search_width >= (32 if kind == "ivf" else 96)
    assert_index_agrees_with_store(c)  # writes made while it was rebuilding were replayed
    res = c.search(centres[:50], top_k=1)
    assert np.mean([r.matches[0].product_id == f"p{i}" for i, r in enumerate(res)]) > 0.95
    for i in range(60):  # deletes: HNSW tombstones / IVF removes; still consistent
        c.delete_product(f"p{i}")
    assert c.wait_for_index(60)
    assert_index_agrees_with_store(c)
    c.close()
    c = Catalog.open(tmp_path, fingerprint=FP, dim=DIM, settings=s)  # snapshot of the approximate index
    st = c.stats()
    assert st.snapshot.loaded and st.index_kind == kind and st.recall_at_10 is not None
    assert_index_agrees_with_store(c)
    c.close()


def test_writes_during_a_background_rebuild_are_replayed(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from skulens.catalog import catalog as catalog_module

    release, started = threading.Event(), threading.Event()
    real_build = catalog_module.VectorIndex.build

    def slow_build(*args, **kwargs):  # type: ignore[no-untyped-def]  # the real build, held until released
        if kwargs.get("cancel") is not None:  # background rebuilds pass a cancel callback
            started.set()
            assert release.wait(30)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(catalog_module.VectorIndex, "build", staticmethod(slow_build))
    s = CatalogSettings(synchronous="NORMAL", approximate_threshold=100, approximate_kind="hnsw")
    c = Catalog.open(tmp_path, fingerprint=FP, dim=DIM, settings=s)
    _, refs = product_refs(40, 3, DIM, seed=4)
    for i in range(34):  # 102 references: crosses the threshold, the rebuild starts and blocks
        c.upsert_product(f"p{i}")
        c.add_references(f"p{i}", [NewReference(r) for r in refs[i]])
    assert started.wait(10) and c.stats().rebuild_in_progress and c.stats().index_kind == "flat"
    for i in range(34, 40):  # writes while the new index is being built: journaled
        c.upsert_product(f"p{i}")
        c.add_references(f"p{i}", [NewReference(r) for r in refs[i]])
    c.delete_product("p0")
    c.delete_reference(c.get_product("p1").references[0].reference_id)
    assert_index_agrees_with_store(c)  # the live (flat) index is current meanwhile
    release.set()
    assert c.wait_for_index(30)
    st = c.stats()
    assert st.index_kind == "hnsw" and st.references == 116 and not st.rebuild_in_progress
    assert_index_agrees_with_store(c)
    c.close()


def test_gpu_path_with_cpu_stand_in(tmp_path: Path) -> None:
    c = Catalog.open(tmp_path / "a", fingerprint=FP, dim=DIM)  # use_gpu="auto" without a GPU: CPU
    assert c.stats().index_device == "cpu"
    c.close()
    g = Catalog.open(tmp_path / "b", fingerprint=FP, dim=DIM, gpu_factory=faiss.clone_index)
    centres, _, _ = enrol(g, n_products=6)
    assert g.stats().index_device == "gpu"
    assert [r.matches[0].product_id for r in g.search(centres, top_k=1)] == [f"sku-{i:03d}" for i in range(6)]
    g.close()
    n = Catalog.open(tmp_path / "b", fingerprint=FP, dim=DIM, settings=CatalogSettings(use_gpu="never"),
                     gpu_factory=faiss.clone_index)
    assert n.stats().index_device == "cpu"
    n.close()


# ------------------------------------------------------------------ fingerprints and reembed
def test_fingerprint_mismatch_is_refused(tmp_path: Path, settings: CatalogSettings) -> None:
    c = Catalog.open(tmp_path, fingerprint=FP, dim=DIM, settings=settings)
    enrol(c, n_products=2)
    c.close()
    with pytest.raises(FingerprintMismatch) as err:
        Catalog.open(tmp_path, fingerprint="other-model/16:ffff", dim=16, settings=settings)
    msg = str(err.value)
    assert FP in msg and "other-model/16:ffff" in msg and "skulens reembed" in msg
    assert err.value.field == "fingerprint" and err.value.stored_dim == DIM
    with pytest.raises(FingerprintMismatch):  # same fingerprint string, other dimension
        Catalog.open(tmp_path, fingerprint=FP, dim=16, settings=settings)
    c = Catalog.open(tmp_path, fingerprint="other-model/16:ffff", dim=16, settings=settings,
                     allow_fingerprint_mismatch=True)
    assert c.stats().index_kind == "none" and c.stats().products == 2  # reads still work
    with pytest.raises(FingerprintMismatch):
        c.search(unit(np.ones(16)))
    with pytest.raises(FingerprintMismatch):
        c.add_references("sku-000", [NewReference(unit(np.ones(16)))])
    c.close()
    with pytest.raises(CatalogClosed):
        c.stats()


def test_reembed_switches_model_and_reports_dropped(tmp_path: Path, settings: CatalogSettings) -> None:
    c = Catalog.open(tmp_path, fingerprint=FP, dim=DIM, settings=settings)
    enrol(c, n_products=6, refs_per=3)
    c.upsert_product("no-image")
    (no_img,) = c.add_references("no-image", [NewReference(unit(np.ones(DIM)))])
    c.upsert_product("broken")
    (broken,) = c.add_references("broken", [NewReference(unit(-np.ones(DIM)), image=b"corrupt-jpeg")])
    c.close()

    new_fp, new_dim = "new-model/48:aaaa", 48
    c = Catalog.open(tmp_path, fingerprint=new_fp, dim=new_dim, settings=settings,
                     allow_fingerprint_mismatch=True)
    seen: list[tuple[int, int]] = []
    report = c.reembed(new_fp, new_dim, fake_model(new_dim), batch_size=4,
                       progress=lambda d, t: seen.append((d, t)))
    assert (report.old_fingerprint, report.new_fingerprint) == (FP, new_fp)
    assert (report.old_dim, report.new_dim) == (DIM, 48)
    assert report.reembedded == 18 and report.resumed == 0 and seen[-1] == (19, 19)
    dropped = {(d.reference_id, d.product_id): d.reason for d in report.dropped}
    assert dropped == {(no_img.reference_id, "no-image"): "no stored image",
                       (broken.reference_id, "broken"): "embedding failed: cannot decode image"}
    st = c.stats()
    assert (st.fingerprint, st.dim, st.references, st.index_kind) == (new_fp, 48, 18, "flat")
    assert st.products == 8  # products stay, their unusable references are gone
    embed = fake_model(new_dim)
    q = np.stack([embed([image_bytes(f"sku-{i:03d}", 9)])[0] for i in range(6)])  # type: ignore[arg-type]
    assert [r.matches[0].product_id for r in c.search(q, top_k=1)] == [f"sku-{i:03d}" for i in range(6)]
    assert_index_agrees_with_store(c)
    c.close()
    c = Catalog.open(tmp_path, fingerprint=new_fp, dim=new_dim, settings=settings)  # no mismatch any more
    assert c.stats().references == 18
    c.close()
    with pytest.raises(FingerprintMismatch):
        Catalog.open(tmp_path, fingerprint=FP, dim=DIM, settings=settings)


def test_reembed_interrupted_never_mixes_models_and_resumes(tmp_path: Path,
                                                           settings: CatalogSettings) -> None:
    c = Catalog.open(tmp_path, fingerprint=FP, dim=DIM, settings=settings)
    enrol(c, n_products=5, refs_per=4)
    c.close()
    new_fp = "new-model/32:bbbb"
    real = fake_model(DIM)
    calls = [0]

    def flaky(images: list[bytes]) -> list[np.ndarray | Exception]:
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("GPU fell off the bus")
        return real(images)

    c = Catalog.open(tmp_path, fingerprint=new_fp, dim=DIM, settings=settings,
                     allow_fingerprint_mismatch=True)
    with pytest.raises(RuntimeError, match="bus"):
        c.reembed(new_fp, DIM, flaky, batch_size=5)
    c.close()
    # still entirely the old model: opening with it works and every reference is the old one
    c = Catalog.open(tmp_path, fingerprint=FP, dim=DIM, settings=settings)
    assert c.stats().references == 20 and c.stats().fingerprint == FP
    db = Store(tmp_path / "catalog.db")
    fps = {r[0] for r in db.conn.execute("SELECT DISTINCT fingerprint FROM refs")}
    staged = db.conn.execute("SELECT COUNT(*) FROM reembed_staging WHERE fingerprint = ?",
                             (new_fp,)).fetchone()[0]
    db.close()
    assert fps == {FP} and staged == 10
    report = c.reembed(new_fp, DIM, real, batch_size=5)  # a rerun resumes from the staged batches
    assert report.resumed == 10 and report.reembedded == 20 and report.dropped == []
    assert c.fingerprint == new_fp
    with pytest.raises(FingerprintMismatch):  # this handle was opened for the old model
        c.search(unit(np.ones(DIM)))
    c.close()


def test_stats_and_closed(cat: Catalog) -> None:
    enrol(cat, n_products=3, refs_per=2)
    st = cat.stats()
    assert (st.products, st.references, st.references_with_image) == (3, 6, 6)
    assert (st.dim, st.fingerprint) == (DIM, FP)
    assert st.index_kind == "flat" and st.index_size == 6 and st.recall_at_10 is None
    assert st.storage_bytes > 0 and st.schema_version == SCHEMA_VERSION and st.index_bytes > 0
    assert not st.snapshot.loaded and st.snapshot.detail == "no snapshot"
    cat.close()
    cat.close()  # idempotent
    for call in (cat.stats, lambda: cat.search(unit(np.ones(DIM))), lambda: cat.upsert_product("x")):
        with pytest.raises(CatalogClosed):
            call()
    assert issubclass(CatalogClosed, CatalogError)


def test_open_rejects_bad_arguments(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidArgument, match="directory"):
        Catalog.open(tmp_path / "file", fingerprint=FP, dim=DIM)
    with pytest.raises(InvalidArgument, match="dim"):
        Catalog.open(tmp_path / "c", fingerprint=FP, dim=0)
    with pytest.raises(InvalidArgument, match="fingerprint"):
        Catalog.open(tmp_path / "c", fingerprint="", dim=DIM)
    with pytest.raises(InvalidArgument, match="synchronous"):
        CatalogSettings(synchronous="OFF")  # type: ignore[arg-type]


def test_migration_survives_reopen_and_blocks_an_offline_reembed(tmp_path: Path, settings: CatalogSettings) -> None:
    from skulens.catalog.errors import MigrationError
    from skulens.catalog.migration_state import ModelSpace

    cand_fp, cand_dim = "cand-model/16:bbbb", 16
    c = Catalog.open(tmp_path, fingerprint=FP, dim=DIM, settings=settings)
    enrol(c, n_products=3, refs_per=2)
    c.start_migration(ModelSpace(cand_fp, cand_dim, "/m/cand"), serving_model_dir="/m/old")
    pending = c.pending_references(cand_fp, limit=100)
    vecs = np.stack(fake_model(cand_dim)([p.image or b"" for p in pending]))  # type: ignore[arg-type]
    c.put_space_embeddings(cand_fp, [p.reference_id for p in pending[:4]], vecs[:4])
    with pytest.raises(MigrationError):
        c.reembed(cand_fp, cand_dim, fake_model(cand_dim))
    c.close()
    # opened again with the candidate's identity (a server restarted with the new --model): serves the stored one
    c = Catalog.open(tmp_path, fingerprint=cand_fp, dim=cand_dim, settings=settings)
    state = c.migration_state()
    assert (c.fingerprint, state.serving, state.candidate) == (FP, ModelSpace(FP, DIM, "/m/old"),
                                                             ModelSpace(cand_fp, cand_dim, "/m/cand"))
    assert c.space_progress(cand_fp).embedded == 4  # the space was rebuilt from the store
    hit = c.search(vecs[2][None], top_k=1, space=cand_fp)[0].matches[0]
    assert hit.reference_id == pending[2].reference_id and hit.score == pytest.approx(1.0, abs=1e-5)
    c.put_space_embeddings(cand_fp, [p.reference_id for p in pending[4:]], vecs[4:])
    c.switch_model(cand_fp)
    c.close()
    c = Catalog.open(tmp_path, fingerprint=cand_fp, dim=cand_dim, settings=settings)  # now it is the serving one
    assert (c.fingerprint, c.migration_state().previous) == (cand_fp, ModelSpace(FP, DIM, "/m/old"))
    assert c.search(vecs[5][None], top_k=1)[0].matches[0].reference_id == pending[5].reference_id
    assert_index_agrees_with_store(c)
    c.close()


def test_reembed_embeds_a_cropped_reference_by_its_region(tmp_path: Path, settings: CatalogSettings) -> None:
    c = Catalog.open(tmp_path, fingerprint=FP, dim=DIM, settings=settings)
    c.upsert_product("p")
    c.add_references("p", [NewReference(unit(np.ones(DIM)), image=b"img:p:0"),
                           NewReference(unit(-np.ones(DIM)), image=b"img:p:0", region=(1, 2, 3, 4))])
    c.close()
    calls: list[tuple[list[bytes], Any]] = []
    inner = fake_model(16)

    def embed(images: list[bytes], regions: Any = None) -> Any:
        calls.append((images, regions))
        return inner(images)

    c = Catalog.open(tmp_path, fingerprint="new/16:cc", dim=16, settings=settings, allow_fingerprint_mismatch=True)
    assert c.reembed("new/16:cc", 16, embed).reembedded == 2
    assert calls == [([b"img:p:0", b"img:p:0"], [None, (1, 2, 3, 4)])]
    assert [r.region for r in c.get_product("p").references] == [None, (1, 2, 3, 4)]
    c.close()
