"""skulens.catalog.index: exact index as oracle for HNSW / IVF, incremental add/remove, selectors, snapshots, GPU."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import faiss
import numpy as np
import pytest
from catalog_helpers import branded_refs, clustered, exact_top_products, unit

from skulens.catalog.index import VectorIndex, choose_kind, gpu_available, ivf_nlist, omp_threads
from skulens.catalog.matching import RefMap, first_round_k, search_products
from skulens.catalog.settings import CatalogSettings

DIM = 64
N = 6000
# Measured on these seeded, overlapping clusters (spread 1.5): default settings HNSW 0.998, IVF 0.984;
# efSearch=16 / nprobe=4: HNSW 0.986, IVF 0.858.
RECALL_BOUND = 0.95


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vecs = clustered(N, DIM, clusters=60, spread=1.5, seed=1)
    ids = np.arange(1, N + 1, dtype=np.int64) * 3  # sparse ids, like a store after deletes
    rng = np.random.default_rng(2)
    queries = unit(vecs[rng.choice(N, 200, replace=False)] + 0.05 * rng.standard_normal((200, DIM)))
    return ids, vecs, queries


@pytest.fixture(scope="module")
def built(data) -> dict[str, VectorIndex]:  # type: ignore[no-untyped-def]
    ids, vecs, _ = data
    return {kind: VectorIndex.build(DIM, ids, vecs, CatalogSettings(approximate_kind=ap), kind)  # type: ignore[arg-type]
            for kind, ap in (("flat", "hnsw"), ("hnsw", "hnsw"), ("ivf", "ivf"))}


def _exact_topk(ids: np.ndarray, vecs: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return ids[np.argsort(-(q @ vecs.T), axis=1)[:, :k]]


def test_flat_is_exact(data, built) -> None:  # type: ignore[no-untyped-def]
    ids, vecs, q = data
    idx = built["flat"]
    scores, got, exhausted = idx.search(q, 10)
    assert idx.kind == "flat" and idx.recall_at_10 is None and not exhausted.any()
    np.testing.assert_array_equal(got, _exact_topk(ids, vecs, q, 10))
    np.testing.assert_allclose(scores[:, 0], np.max(q @ vecs.T, axis=1), rtol=1e-5)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
@pytest.mark.parametrize("cheap", [False, True])
def test_approximate_recall_against_exact(data, built, kind: str, cheap: bool) -> None:  # type: ignore[no-untyped-def]
    ids, vecs, q = data
    idx = built[kind]
    if cheap:  # same index, cheaper search parameters: the measured recall must follow
        settings = CatalogSettings(approximate_kind=kind, hnsw_ef_search=16, ivf_nprobe=4)  # type: ignore[arg-type]
        idx = VectorIndex(DIM, kind, idx.faiss_index, settings)
        idx.recall_at_10 = idx.measure_recall(ids, vecs)
    assert idx.kind == kind and idx.recall_at_10 is not None
    _, got, _ = idx.search(q, 10)
    exact = _exact_topk(ids, vecs, q, 10)
    recall = float(np.mean([len(np.intersect1d(a, e)) / 10 for a, e in zip(got, exact, strict=True)]))
    assert abs(idx.recall_at_10 - recall) < 0.05  # the build-time measure agrees with the oracle
    assert recall >= (0.8 if cheap else RECALL_BOUND), recall


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_build_widens_the_search_until_the_recall_target(data, kind: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ids, vecs, q = data
    narrow = {"hnsw_ef_search": 8, "ivf_nprobe": 1}
    untuned = VectorIndex.build(DIM, ids, vecs, CatalogSettings(recall_target=0, **narrow), kind)  # type: ignore[arg-type]
    assert untuned.search_width == (1 if kind == "ivf" else 8) and untuned.recall_at_10 is not None
    assert untuned.recall_at_10 < 0.995  # the narrow start is not good enough: tuning has work to do
    s = CatalogSettings(recall_target=0.995, **narrow)  # type: ignore[arg-type]
    idx = VectorIndex.build(DIM, ids, vecs, s, kind)
    assert idx.search_width > untuned.search_width and idx.recall_at_10 is not None and idx.recall_at_10 >= 0.995
    _, got, _ = idx.search(q, 10)  # the exact oracle on other queries agrees
    exact = _exact_topk(ids, vecs, q, 10)
    assert float(np.mean([len(np.intersect1d(a, e)) / 10 for a, e in zip(got, exact, strict=True)])) >= 0.95
    idx.save(tmp_path / "snap", {"generation": 1})
    assert VectorIndex.load(tmp_path / "snap", s).search_width == idx.search_width
    capped = CatalogSettings(recall_target=1.0, hnsw_max_ef_search=16, ivf_max_nprobe=2, **narrow)  # type: ignore[arg-type]
    assert VectorIndex.build(DIM, ids, vecs, capped, kind).search_width == (2 if kind == "ivf" else 16)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "hnsw-walk", "ivf"])
def test_selector_returns_only_allowed_ids(data, built, kind: str) -> None:  # type: ignore[no-untyped-def]
    ids, vecs, q = data
    idx = built[kind.split("-")[0]]
    if kind == "hnsw-walk":  # force the graph walk with a selector instead of the exact subset search
        idx = VectorIndex(DIM, "hnsw", idx.faiss_index, CatalogSettings(filter_exact_limit=0))
    allowed = np.zeros(int(ids.max()) + 1, dtype=bool)
    chosen = ids[::97]  # ~1% of the vectors
    allowed[chosen] = True
    depth, k = 0, 10
    while True:  # deeper rounds widen HNSW efSearch / IVF nprobe until enough allowed ids come back
        _, got, exhausted = idx.search(q[:20], k, allowed=allowed, depth=depth)
        if (got >= 0).all() or exhausted.all() or depth > 8:
            break
        depth += 1
    assert np.isin(got[got >= 0], chosen).all()
    exact = _exact_topk(chosen, vecs[::97], q[:20], k)
    if kind in ("flat", "hnsw"):  # exact under the filter
        np.testing.assert_array_equal(got, exact)
    assert (got >= 0).all()
    assert np.mean([len(np.intersect1d(a, e)) / k for a, e in zip(got, exact, strict=True)]) >= 0.9
    # a filter that lets everything through behaves like no filter
    everything = np.ones(int(ids.max()) + 1, dtype=bool)
    top1 = idx.search(q[:5], 3, allowed=everything)[1][:, 0]
    np.testing.assert_array_equal(top1, idx.search(q[:5], 3)[1][:, 0])


def test_omp_threads_is_per_call_and_restored() -> None:
    before = faiss.omp_get_max_threads()
    with omp_threads(1):
        assert faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == before
    with omp_threads(0):  # 0 leaves the count alone
        assert faiss.omp_get_max_threads() == before


@pytest.mark.parametrize("threads", [1, 0])
def test_search_thread_setting_gives_the_same_answers(data, built, threads: int) -> None:  # type: ignore[no-untyped-def]
    queries = data[2]
    before = faiss.omp_get_max_threads()
    for kind, idx in built.items():
        tuned = VectorIndex(DIM, kind, idx.faiss_index, CatalogSettings(search_threads=threads))
        _, got, _ = tuned.search(queries, 10)
        _, ref, _ = idx.search(queries, 10)
        assert np.array_equal(got, ref), kind
    assert faiss.omp_get_max_threads() == before  # the caller's thread count is untouched


def test_incremental_add_remove(data) -> None:  # type: ignore[no-untyped-def]
    ids, vecs, _ = data
    for kind in ("flat", "ivf", "hnsw"):
        idx = VectorIndex.build(DIM, ids[:1000], vecs[:1000], CatalogSettings(approximate_kind="ivf"), kind)
        idx.add(ids[1000:1500], vecs[1000:1500])
        assert idx.ntotal == 1500
        _, got, _ = idx.search(vecs[1000:1010], 1)
        assert (got[:, 0] == ids[1000:1010]).all()
        idx.remove(ids[1000:1010])
        if kind == "hnsw":
            assert idx.tombstones == 10 and idx.ntotal == 1500  # HNSW keeps the vectors as tombstones
        else:
            assert idx.ntotal == 1490 and idx.tombstones == 0
            _, got, _ = idx.search(vecs[1000:1010], 5)
            assert not np.isin(got, ids[1000:1010]).any()


def test_choose_kind_and_rebuild_reasons() -> None:
    s = CatalogSettings(approximate_threshold=1000, approximate_kind="hnsw", hnsw_max_tombstone_fraction=0.2)
    assert choose_kind(999, s) == "flat" and choose_kind(1000, s) == "hnsw"
    assert choose_kind(600, s, "hnsw") == "hnsw" and choose_kind(499, s, "hnsw") == "flat"  # hysteresis
    vecs = clustered(1200, 16, seed=3)
    idx = VectorIndex.build(16, np.arange(1200), vecs, s, "hnsw")
    assert idx.needs_rebuild(1200) is None
    idx.remove(np.arange(300))
    assert "tombstones" in str(idx.needs_rebuild(900))
    flat = VectorIndex.build(16, np.arange(1200), vecs, s, "flat")
    assert "hnsw" in str(flat.needs_rebuild(1200))
    ivf_s = CatalogSettings(approximate_threshold=100, approximate_kind="ivf")
    ivf = VectorIndex.build(16, np.arange(200), vecs[:200], ivf_s, "ivf")
    assert ivf_nlist(200, ivf_s) == 5 and ivf.needs_rebuild(200) is None
    ivf.add(np.arange(200, 400), vecs[200:400])
    assert "IVF trained" in str(ivf.needs_rebuild(400))


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_snapshot_round_trip(tmp_path: Path, data, kind: str) -> None:  # type: ignore[no-untyped-def]
    ids, vecs, q = data
    s = CatalogSettings(approximate_kind="ivf" if kind == "ivf" else "hnsw")
    idx = VectorIndex.build(DIM, ids[:1000], vecs[:1000], s, kind)
    idx.remove(ids[:5])
    stamp = {"generation": 7, "catalog_uuid": "u"}
    size = idx.save(tmp_path / "snap", stamp)
    header = VectorIndex.read_header(tmp_path / "snap")
    assert header is not None and header["stamp"] == stamp and header["kind"] == kind and size > 0
    back = VectorIndex.load(tmp_path / "snap", s)
    assert (back.kind, back.ntotal, back.tombstones, back.recall_at_10) == (
        idx.kind, idx.ntotal, idx.tombstones, idx.recall_at_10)
    a, b = idx.search(q, 10), back.search(q, 10)
    np.testing.assert_array_equal(a[1], b[1])
    (tmp_path / "junk").write_bytes(b"not a snapshot")
    assert VectorIndex.read_header(tmp_path / "junk") is None
    assert VectorIndex.read_header(tmp_path / "missing") is None


def test_gpu_path_falls_back_to_cpu_and_mirror_logic(data) -> None:  # type: ignore[no-untyped-def]
    ids, vecs, q = data
    assert gpu_available("never") is False
    if not hasattr(faiss, "StandardGpuResources"):
        assert gpu_available("auto") is False  # faiss-cpu build: CPU path
    made: list[int] = []

    def cpu_mirror(index):  # type: ignore[no-untyped-def]  # stands in for index_cpu_to_gpu
        made.append(index.ntotal)
        return faiss.clone_index(index)

    idx = VectorIndex.build(DIM, ids[:1000], vecs[:1000], CatalogSettings(), "flat", gpu_factory=cpu_mirror)
    assert idx.device == "gpu"
    plain = VectorIndex.build(DIM, ids[:1000], vecs[:1000], CatalogSettings(), "flat")
    np.testing.assert_array_equal(idx.search(q, 5)[1], plain.search(q, 5)[1])
    idx.search(q, 5)
    assert made == [1000]  # one mirror, reused
    idx.add(ids[1000:1010], vecs[1000:1010])  # a mutation invalidates the mirror
    _, got, _ = idx.search(vecs[1000:1010], 1)
    assert (got[:, 0] == ids[1000:1010]).all() and made == [1000, 1010]
    allowed = np.zeros(int(ids.max()) + 1, dtype=bool)
    allowed[ids[:10]] = True
    idx.search(q, 5, allowed=allowed)  # filtered searches stay on the CPU index
    assert made == [1000, 1010]


def test_blas_threshold_comes_from_settings() -> None:
    VectorIndex.empty(8, CatalogSettings(blas_threshold=16))
    assert faiss.cvar.distance_compute_blas_threshold == 16


def _product_recall(idx: VectorIndex, q: np.ndarray, ids: np.ndarray, vecs: np.ndarray, pks: np.ndarray) -> float:
    """Top-10 product recall of the catalog's product search over `idx` at its width, against brute force."""
    refs = RefMap()
    refs.set(ids, pks)
    got = search_products(lambda x, k, depth: idx.search(x, k, depth=depth), refs.lookup, q, top_k=10,
                          initial_k=first_round_k(10, len(ids) / len(np.unique(pks)), idx.ntotal), max_k=idx.ntotal,
                          min_score=None, ambiguity_margin=0.0)
    want = exact_top_products(q, vecs, pks, 10)
    return sum(len(w & {h.product_pk for h in hits[:10]}) for w, hits in zip(want, got, strict=True)) / (10 * len(q))


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_the_width_is_tuned_on_the_product_recall_searches_get(kind: str) -> None:
    # a sparse graph: the product search at the narrow start finds too few of the exact products
    ids, vecs, pks = branded_refs(1200, 32, seed=5)
    s = CatalogSettings(hnsw_m=4, hnsw_ef_construction=8, hnsw_ef_search=4, ivf_nlist=64, ivf_nprobe=1,
                        recall_target=0.9)
    idx = VectorIndex.build(32, ids, vecs, s, kind, products=pks)
    probes = idx._probe_queries(ids, vecs)  # the measurement's queries
    assert idx.recall_at_10 is not None and idx.recall_at_10 >= 0.9
    # what it reports is the product recall of its probes at the width it chose, and half that width was short
    assert idx.recall_at_10 == pytest.approx(_product_recall(idx, probes, ids, vecs, pks), abs=1e-9)
    if kind == "hnsw":  # (IVF's product search probes enough lists at any width here: 8 x the k it reads)
        chosen = idx.search_width
        assert chosen > 4
        idx.search_width = chosen // 2
        assert _product_recall(idx, probes, ids, vecs, pks) < 0.9
        idx.search_width = chosen
    # other queries like them get about that recall
    rng = np.random.default_rng(7)
    others = unit(vecs[rng.choice(len(vecs), 200, replace=False)] + 0.5 / np.sqrt(32) * rng.standard_normal((200, 32)))
    assert _product_recall(idx, others, ids, vecs, pks) >= idx.recall_at_10 - 0.08
    # references without a product (-1) take no part; without products the recall is the references'
    half = np.where(pks < 600, pks, -1)
    part = VectorIndex.build(32, ids, vecs, dataclasses.replace(s, recall_target=0.0), kind, products=half)
    sub = half >= 0
    assert part.recall_at_10 == pytest.approx(_product_recall(
        part, part._probe_queries(ids[sub], vecs[sub]), ids[sub], vecs[sub], pks[sub]), abs=1e-9)
    plain = VectorIndex.build(32, ids, vecs, dataclasses.replace(s, recall_target=0.0), kind)
    assert plain.recall_at_10 == pytest.approx(plain.measure_recall(ids, vecs), abs=1e-9)
