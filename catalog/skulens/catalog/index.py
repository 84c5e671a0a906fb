"""FAISS vector index keyed by reference_id: exact (flat), approximate (HNSW / IVF), GPU mirror, snapshots.

The index is derived data: it is built from the store and can always be rebuilt. `VectorIndex` is not
thread-safe by itself; `Catalog` guards it with a readers-writer lock (FAISS CPU searches may run concurrently
with each other, never with add/remove).

Kinds:
- "flat": IndexIDMap(IndexFlatIP), exact; add and remove are incremental (remove compacts, O(n)).
- "hnsw": IndexIDMap(IndexHNSWFlat, inner product). HNSW cannot remove vectors, so a removal leaves a
  tombstone (the vector stays in the graph; `Catalog` ignores ids that are no longer live) until the next
  rebuild, which `needs_rebuild` asks for once tombstones pass `hnsw_max_tombstone_fraction`.
- "ivf": IndexIVFFlat (spherical k-means centroids, inner product), ids native; add and remove are
  incremental; `needs_rebuild` asks for new centroids once the index has doubled since training.
Filtered searches pass an IDSelectorBitmap through SearchParameters: flat checks every id (exact); IVF filters
inside the probed lists, with nprobe scaled up by the share the filter removes and doubled on each deeper
round; HNSW walks the graph through non-matching nodes and keeps only matching ones, with efSearch scaled the
same way, except that a filter letting through at most `filter_exact_limit` references is searched exactly
over just those vectors (read from the HNSW storage), which is exact and much faster than a wide graph walk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from skulens.catalog.errors import CatalogCorrupt, CatalogError
from skulens.catalog.exact_top import BestReferences, exact_products, product_recall
from skulens.catalog.matching import RefMap, first_round_k, search_products
from skulens.catalog.settings import CatalogSettings

log = logging.getLogger(__name__)

# Snapshot file: magic | u64 header length | JSON header | faiss index | trailer tag | sha256 of all before the tag.
# Version 1 (magic ending \x01) had no trailer: it is read for its header but never believed.
SNAPSHOT_MAGIC = b"SKULENS-FAISS-SNAPSHOT\x00\x02"
_SNAPSHOT_MAGIC_V1 = b"SKULENS-FAISS-SNAPSHOT\x00\x01"
_TRAILER_TAG = b"SKULENS-SHA256\x00\x00"
_TRAILER_SIZE = len(_TRAILER_TAG) + 32
GPU_MAX_K = 2048  # faiss-gpu's k limit for flat search
# IVF training cost (k-means over nlist * points-per-list vectors, niter rounds) dominates IVF builds on few
# cores: 40 points per list (faiss warns below 39) and 10 rounds keep a 1M build in minutes on 2 cores.
_IVF_TRAIN_POINTS_PER_LIST = 40
_IVF_TRAIN_NITER = 10

GpuFactory = Callable[[Any], Any]


@contextmanager
def omp_threads(n: int) -> Iterator[None]:
    """Run the block with `n` faiss OpenMP threads in this thread (0: unchanged), then restore the old count.

    OpenMP's thread count is per calling thread, so searches on worker threads and a build on its own thread
    each get their own setting without touching the others.
    """
    if n <= 0:  # keep this thread's count (the process default: OMP_NUM_THREADS or all cores)
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
_faiss: Any = faiss  # faiss's type stubs lack SearchParametersHNSW/IVF keywords and PyCallbackIO*


def gpu_available(use_gpu: str) -> bool:
    """True when settings allow a GPU and this faiss build has GPU support and sees a GPU."""
    if use_gpu != "auto" or not hasattr(faiss, "StandardGpuResources"):
        return False
    try:
        return int(faiss.get_num_gpus()) > 0
    except Exception:  # a faiss-gpu build without a usable driver
        return False


def default_gpu_factory() -> GpuFactory:
    """Copies a CPU index to GPU 0 (faiss-gpu); kept behind a factory so tests can substitute a CPU copy."""
    res = faiss.StandardGpuResources()

    def to_gpu(cpu_index: Any) -> Any:
        return faiss.index_cpu_to_gpu(res, 0, cpu_index)

    return to_gpu


def choose_kind(n: int, settings: CatalogSettings, current: str | None = None) -> str:
    """Index kind for `n` vectors: approximate past the threshold, exact below half of it (hysteresis)."""
    if n >= settings.approximate_threshold:
        return settings.approximate_kind
    if current == settings.approximate_kind and n >= settings.approximate_threshold // 2:
        return current
    return "flat"


def ivf_nlist(n: int, settings: CatalogSettings) -> int:
    """Number of IVF lists: the setting, or about 2*sqrt(n); at most one list per 39 training points.

    2*sqrt(n) (2000 lists at 1M) rather than the usual 4-16*sqrt(n): training and assignment cost grow with
    nlist, and with nprobe=32 a query still scans only ~1.6% of the vectors at 1M.
    """
    want = settings.ivf_nlist or round(2 * math.sqrt(max(n, 1)))
    return max(1, min(want, 65536, max(1, n // 39)))


def _as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _as_ids(ids: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(ids, dtype=np.int64)


class VectorIndex:
    """One FAISS index plus what is known about it (kind, measured recall, tombstones, GPU mirror)."""

    def __init__(self, dim: int, kind: str, index: Any, settings: CatalogSettings, *,
                 recall_at_10: float | None = None, build_seconds: float = 0.0, trained_size: int = 0,
                 tombstones: int = 0, gpu_factory: GpuFactory | None = None,
                 search_width: int | None = None) -> None:
        self.dim = dim
        self.kind = kind
        self.settings = settings
        self.recall_at_10 = recall_at_10
        # HNSW efSearch / IVF nprobe of a plain search (tuned at build time to reach settings.recall_target)
        self.search_width = int(search_width or (settings.ivf_nprobe if kind == "ivf" else settings.hnsw_ef_search))
        self.build_seconds = build_seconds
        self.trained_size = trained_size
        self.tombstones = tombstones
        self._index = index
        # Process-wide faiss knob, set from settings: batches >= this use BLAS (faiss's 128000 is too high).
        faiss.cvar.distance_compute_blas_threshold = int(settings.blas_threshold)
        self._gpu_factory = gpu_factory if kind == "flat" else None
        self._gpu: Any = None  # mirror of the flat index, made again lazily after mutations
        self._gpu_lock = threading.Lock()
        self._ids_cache: np.ndarray | None = None  # HNSW: storage position -> reference id

    # ---------------------------------------------------------------- construction
    @classmethod
    def empty(cls, dim: int, settings: CatalogSettings, gpu_factory: GpuFactory | None = None) -> VectorIndex:
        return cls(dim, "flat", faiss.IndexIDMap(faiss.IndexFlatIP(dim)), settings, gpu_factory=gpu_factory)

    @classmethod
    def build(cls, dim: int, ids: np.ndarray, vectors: np.ndarray, settings: CatalogSettings, kind: str, *,
              cancel: Callable[[], bool] | None = None, gpu_factory: GpuFactory | None = None,
              products: np.ndarray | None = None) -> VectorIndex:
        """Build an index of `kind` over (ids, vectors); approximate kinds tune their search width on the measured
        recall@10 (`tune`: of the product search when `products`, each reference's product key, is given)."""
        with omp_threads(settings.build_threads):
            return cls._build(dim, ids, vectors, settings, kind, cancel=cancel, gpu_factory=gpu_factory,
                              products=products)

    @classmethod
    def _build(cls, dim: int, ids: np.ndarray, vectors: np.ndarray, settings: CatalogSettings, kind: str, *,
               cancel: Callable[[], bool] | None, gpu_factory: GpuFactory | None,
               products: np.ndarray | None) -> VectorIndex:
        t0 = time.perf_counter()
        ids, vectors = _as_ids(ids), _as_f32(vectors)
        n = len(ids)
        if n == 0 or kind == "flat":
            kind = "flat"
            index: Any = faiss.IndexIDMap(faiss.IndexFlatIP(dim))
        elif kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = settings.hnsw_ef_construction
            hnsw.hnsw.efSearch = settings.hnsw_ef_search
            index = faiss.IndexIDMap(hnsw)
        elif kind == "ivf":
            nlist = ivf_nlist(n, settings)
            ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            ivf.cp.spherical = True
            ivf.cp.niter = _IVF_TRAIN_NITER
            ivf.cp.max_points_per_centroid = _IVF_TRAIN_POINTS_PER_LIST
            ivf.cp.seed = settings.seed
            ivf.nprobe = settings.ivf_nprobe
            rng = np.random.default_rng(settings.seed)
            m = min(n, nlist * _IVF_TRAIN_POINTS_PER_LIST)
            sample = vectors if m == n else vectors[np.sort(rng.choice(n, m, replace=False))]
            ivf.train(sample)
            index = ivf
        else:
            raise CatalogError(f"unknown index kind {kind!r}")
        chunk = max(1, settings.build_chunk)
        for start in range(0, n, chunk):
            if cancel is not None and cancel():
                raise BuildCancelled()
            index.add_with_ids(vectors[start:start + chunk], ids[start:start + chunk])
        out = cls(dim, kind, index, settings, trained_size=n, gpu_factory=gpu_factory)
        if kind != "flat":
            out.tune(ids, vectors, cancel, products)
        out.build_seconds = time.perf_counter() - t0
        return out

    def tune(self, ids: np.ndarray, vectors: np.ndarray, cancel: Callable[[], bool] | None = None,
             products: np.ndarray | None = None) -> float:
        """Measure recall@10 and double the search width until it reaches `settings.recall_target` (or the
        width cap); sets and returns `recall_at_10`.

        With `products` (each reference's product key, aligned with `ids`; -1: none) the recall is the product
        search's, the one catalog searches get: top-10 *products* (`matching.search_products` over this index)
        against the exact ones. A top-10 product search reads about 100 references and needs them all, so it
        needs a wider search than reference recall@10 says (measured on 100,000 of bench_catalog's references, five
        a product: at width 96 reference recall@10 0.963, product recall@10 0.907; tuned on products, width 384
        and 0.951). Without, reference recall@10. A recall still below the target at the widest search allowed
        is logged (WARNING)."""
        s = self.settings
        cap = s.ivf_max_nprobe if self.kind == "ivf" else s.hnsw_max_ef_search
        if self.kind == "ivf":
            cap = min(cap, int(self._index.nlist))
        measure = self._reference_recall(ids, vectors) if products is None else \
            self._product_recall(ids, vectors, np.asarray(products, dtype=np.int64))
        recall = measure()
        while recall < s.recall_target and self.search_width < cap:
            if cancel is not None and cancel():
                raise BuildCancelled()
            self.search_width = min(cap, self.search_width * 2)
            recall = measure()
        self.recall_at_10 = recall
        if recall < s.recall_target:
            log.warning("approximate index recall@10 %.3f stays below the target %.3f at the widest allowed "
                        "search (%d): raise hnsw_max_ef_search / ivf_max_nprobe, or the approximate "
                        "threshold to keep exact search longer", recall, s.recall_target, self.search_width)
        return recall

    def _reference_recall(self, ids: np.ndarray, vectors: np.ndarray) -> Callable[[], float]:
        """Reference recall@10 at the current width, against exact search, on the seeded probes."""
        q, exact = self._recall_probe(ids, vectors)
        return lambda: self._recall(q, exact)

    def _product_recall(self, ids: np.ndarray, vectors: np.ndarray, products: np.ndarray) -> Callable[[], float]:
        """Product recall@10 at the current width: the product search over this index (first round as a catalog
        search sizes it) against the exact products (`exact_top.exact_products`, one pass over the vectors)."""
        live = products >= 0
        distinct = len(np.unique(products[live]))
        if distinct == 0:
            return lambda: 1.0
        q = self._probe_queries(ids[live], vectors[live])
        top = min(10, distinct)
        per_product = float(np.count_nonzero(live)) / distinct
        chunk = max(1, self.settings.build_chunk)

        def read(best: BestReferences) -> None:
            for start in range(0, len(ids), chunk):
                keep = live[start:start + chunk]
                best.add(vectors[start:start + chunk][keep], products[start:start + chunk][keep])

        wanted = exact_products(q, top, per_product, read)
        refs = RefMap()
        refs.set(ids[live], products[live])
        initial = first_round_k(top, per_product, self.ntotal)

        def measure() -> float:
            got = search_products(lambda x, k, depth: self.search(x, k, depth=depth), refs.lookup, q, top_k=top,
                                  initial_k=initial, max_k=self.ntotal, min_score=None, ambiguity_margin=0.0)
            return product_recall(wanted, [[h.product_pk for h in row[:top]] for row in got])

        return measure

    def measure_recall(self, ids: np.ndarray, vectors: np.ndarray, k: int = 10) -> float:
        """Mean recall@k of this index against exact search over (ids, vectors).

        Queries are stored vectors plus gaussian noise (cosine about 0.9 to the original, like another photo
        of the same product), seeded, so the measure is reproducible.
        """
        q, exact = self._recall_probe(ids, vectors, k)
        return self._recall(q, exact)

    def _probe_queries(self, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Seeded queries: up to `recall_queries` stored vectors plus gaussian noise (cosine about 0.9 to the
        original, like another photo of the same product)."""
        rng = np.random.default_rng(self.settings.seed + 1)
        rows = rng.choice(len(ids), min(self.settings.recall_queries, len(ids)), replace=False)
        noise = rng.standard_normal((len(rows), self.dim)).astype(np.float32) * (0.5 / math.sqrt(self.dim))
        q = vectors[rows] + noise
        return _as_f32(q / np.linalg.norm(q, axis=1, keepdims=True))

    def _recall_probe(self, ids: np.ndarray, vectors: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Seeded queries (`_probe_queries`) and their exact top-k ids."""
        k = max(1, min(k, len(ids)))
        q = self._probe_queries(ids, vectors)
        _, exact_pos = faiss.knn(q, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
        return q, ids[exact_pos]

    def _recall(self, q: np.ndarray, exact: np.ndarray) -> float:
        if len(q) == 0:
            return 1.0
        k = exact.shape[1]
        _, approx, _ = self.search(q, k)
        hits = sum(len(np.intersect1d(a[a >= 0], e)) for a, e in zip(approx, exact, strict=True))
        return float(hits) / float(k * len(q))

    # ---------------------------------------------------------------- properties
    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def device(self) -> str:
        return "gpu" if self._gpu_factory is not None else "cpu"

    @property
    def faiss_index(self) -> Any:
        return self._index

    def reference_ids(self) -> np.ndarray:
        """Every id the index holds (HNSW: tombstones included), int64, in storage order."""
        if self.kind == "ivf":
            return self._ivf_contents(False)[0]
        return faiss.vector_to_array(self._index.id_map).astype(np.int64, copy=False)

    def stored_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 [n], float32 vectors [n, dim]) exactly as the index holds them (HNSW: with tombstones)."""
        if self.kind == "ivf":
            return self._ivf_contents(True)
        inner = _faiss.downcast_index(self._index.index)
        vectors = inner.reconstruct_n(0, self.ntotal) if self.ntotal else np.empty((0, self.dim), np.float32)
        return self.reference_ids(), np.asarray(vectors, dtype=np.float32)

    def _ivf_contents(self, with_vectors: bool) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors or an empty array) of an IVF-Flat index, list by list (its codes are raw float32)."""
        inv, d = self._index.invlists, self.dim
        ids: list[np.ndarray] = [np.empty(0, dtype=np.int64)]
        vecs: list[np.ndarray] = [np.empty((0, d), dtype=np.float32)]
        for lst in range(int(self._index.nlist)):
            n = int(inv.list_size(lst))
            if n:
                ids.append(faiss.rev_swig_ptr(inv.get_ids(lst), n).astype(np.int64))
                if with_vectors:
                    codes = faiss.rev_swig_ptr(inv.get_codes(lst), n * d * 4).copy()
                    vecs.append(codes.view(np.float32).reshape(n, d))
        return np.concatenate(ids), np.concatenate(vecs)

    def nbytes(self) -> int:
        """Approximate memory held by the index (vectors, ids and graph links / centroids)."""
        n, d = self.ntotal, self.dim
        base = n * (d * 4 + 8)
        if self.kind == "hnsw":
            base += n * self.settings.hnsw_m * 2 * 4 + n * 16
        elif self.kind == "ivf":
            base += int(self._index.nlist) * d * 4
        return base

    def needs_rebuild(self, live: int) -> str | None:
        """Why the index should be rebuilt now for `live` vectors, or None."""
        want = choose_kind(live, self.settings, self.kind)
        if want != self.kind:
            return f"{live} references call for a {want} index (now {self.kind})"
        max_dead = self.settings.hnsw_max_tombstone_fraction * max(self.ntotal, 1)
        if self.kind == "hnsw" and self.tombstones > max_dead:
            return f"{self.tombstones} HNSW tombstones of {self.ntotal} vectors"
        if self.kind == "ivf" and self.ntotal >= 2 * max(self.trained_size, 1):
            return f"IVF trained on {self.trained_size} vectors now holds {self.ntotal}"
        return None

    # ---------------------------------------------------------------- mutation (caller holds the write lock)
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self._index.add_with_ids(_as_f32(vectors), _as_ids(ids))
            self._gpu = self._ids_cache = None

    def remove(self, ids: np.ndarray) -> None:
        """Remove ids (HNSW: count them as tombstones; the caller stops treating them as live)."""
        if not len(ids):
            return
        if self.kind == "hnsw":
            self.tombstones += len(ids)
        else:
            self._index.remove_ids(_as_ids(ids))
        self._gpu = None

    # ---------------------------------------------------------------- search (caller holds the read lock)
    def search(self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None,
               depth: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-k (scores, reference ids, exhausted-per-row) for float32 queries [N, D].

        `allowed`: optional bool mask indexed by reference id; only those ids are returned. HNSW efSearch and
        IVF nprobe grow with k, with the share the filter removes, and double with each deepening round
        `depth` (0, 1, ...). A row is exhausted when no deeper search could return more ids. Runs with
        `settings.search_threads` OpenMP threads.
        """
        with omp_threads(self.settings.search_threads):
            return self._search(queries, k, allowed=allowed, depth=depth)

    def _search(self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None,
                depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        q = _as_f32(queries)
        n = self.ntotal
        k = max(1, min(int(k), max(n, 1)))
        if allowed is not None and self.kind == "hnsw" \
                and np.count_nonzero(allowed) <= self.settings.filter_exact_limit:
            return self._subset_search(q, k, allowed)
        sel = bitmap = None  # locals: the bitmap the selector points into lives until the search returns
        if allowed is not None:
            bitmap = np.packbits(allowed.astype(bool, copy=False), bitorder="little")
            sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
        params: Any = None
        nlist = nprobe = ef = 0
        # share of the index a filter lets through: a restrictive filter needs a wider approximate search
        frac = max(float(np.count_nonzero(allowed)) / max(n, 1), 1e-6) if allowed is not None else 1.0
        if self.kind == "hnsw":
            ef = max(self.search_width, k, math.ceil(2 * k / frac)) << min(depth, 30)
            ef = min(ef, max(n, 1))
            params = _faiss.SearchParametersHNSW(efSearch=ef)
        elif self.kind == "ivf":
            nlist = int(self._index.nlist)
            # probe enough lists to hold about 8k allowed vectors (filtered neighbours sit farther away)
            base = max(self.search_width, math.ceil(8 * k * nlist / (frac * max(n, 1))))
            nprobe = min(nlist, base << min(depth, 30))
            params = _faiss.SearchParametersIVF(nprobe=nprobe)
        elif sel is not None:
            params = faiss.SearchParameters()
        if sel is not None:
            params.sel = sel
        if params is None and self._gpu_factory is not None and k <= GPU_MAX_K and n:
            scores, ids = self._gpu_search(q, k)
        elif params is None:
            scores, ids = self._index.search(q, k)
        else:
            scores, ids = self._index.search(q, k, params=params)
        del sel, bitmap
        ran_out = ids[:, -1] < 0
        if self.kind == "flat":
            exhausted = ran_out | (k >= n)
        elif self.kind == "ivf":
            exhausted = np.full(len(q), nprobe >= nlist) & (ran_out | (k >= n))
        else:
            exhausted = np.full(len(q), k >= n or ef >= n)
        return scores, ids, exhausted

    def _subset_search(self, q: np.ndarray, k: int,
                       allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact search over only the allowed vectors (HNSW with a selective filter: the graph walk would have
        to visit most of the graph to find them)."""
        ids_all = self._internal_ids()
        inside = ids_all < len(allowed)
        pos = np.flatnonzero(inside & allowed[np.where(inside, ids_all, 0)])
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        labels = np.full((len(q), k), -1, dtype=np.int64)
        m = min(k, len(pos))
        if m:
            hnsw = _faiss.downcast_index(self._index.index)
            storage = _faiss.downcast_index(hnsw.storage)
            xb = faiss.rev_swig_ptr(storage.get_xb(), self.ntotal * self.dim).reshape(self.ntotal, self.dim)
            s = q @ xb[pos].T
            if m < len(pos):
                top = np.argpartition(-s, m - 1, axis=1)[:, :m]
            else:
                top = np.tile(np.arange(m), (len(q), 1))
            top = np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, 1), axis=1), 1)
            scores[:, :m] = np.take_along_axis(s, top, 1)
            labels[:, :m] = ids_all[pos[top]]
        return scores, labels, np.ones(len(q), dtype=bool)

    def _internal_ids(self) -> np.ndarray:
        """External id of each stored vector, in storage order (cached until the next add)."""
        ids = self._ids_cache
        if ids is None:
            ids = self._ids_cache = faiss.vector_to_array(self._index.id_map).astype(np.int64, copy=False)
        return ids

    def _gpu_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        mirror = self._gpu
        if mirror is None:
            with self._gpu_lock:  # concurrent readers: one makes the mirror, the others wait for it
                mirror = self._gpu
                if mirror is None:
                    assert self._gpu_factory is not None
                    mirror = self._gpu = self._gpu_factory(self._index)
        scores, ids = mirror.search(q, k)
        return scores, ids

    # ---------------------------------------------------------------- snapshots
    def save(self, path: Path, stamp: dict[str, Any]) -> int:
        """Write the index, its stamp and a sha256 trailer atomically (tmp file, fsync, rename); returns bytes
        written. `load` believes the file only when the checksum matches."""
        header = json.dumps({
            "stamp": stamp, "kind": self.kind, "dim": self.dim, "recall_at_10": self.recall_at_10,
            "build_seconds": self.build_seconds, "trained_size": self.trained_size,
            "tombstones": self.tombstones, "search_width": self.search_width,
        }, sort_keys=True).encode()
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        digest = hashlib.sha256()
        with open(tmp, "wb") as f:

            def write(data: bytes) -> int:
                digest.update(data)
                return f.write(data)

            write(SNAPSHOT_MAGIC)
            write(struct.pack("<Q", len(header)))
            write(header)
            writer = _faiss.PyCallbackIOWriter(write)
            faiss.write_index(self._index, writer)
            del writer
            f.write(_TRAILER_TAG + digest.digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return path.stat().st_size

    @staticmethod
    def read_header(path: Path) -> dict[str, Any] | None:
        """The snapshot's header (with its stamp), or None when there is no readable snapshot."""
        try:
            with open(path, "rb") as f:
                return _read_header(f)
        except (OSError, ValueError):
            return None

    @staticmethod
    def verify_snapshot(path: Path) -> str | None:
        """Why the snapshot at `path` must not be believed (no, garbled or mismatching checksum), or None when
        its sha256 trailer matches its content. Reads the whole file once."""
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                magic = f.read(len(SNAPSHOT_MAGIC))
                if magic == _SNAPSHOT_MAGIC_V1:
                    return "has no checksum (written by an older skulens)"
                if magic != SNAPSHOT_MAGIC:
                    return "is not a skulens index snapshot"
                if size < len(SNAPSHOT_MAGIC) + 8 + _TRAILER_SIZE:
                    return f"is truncated ({size} bytes)"
                digest = hashlib.sha256(magic)
                left = size - _TRAILER_SIZE - len(magic)
                while left > 0:
                    chunk = f.read(min(left, 1 << 22))
                    if not chunk:
                        return "is truncated (it shrank while being read)"
                    digest.update(chunk)
                    left -= len(chunk)
                trailer = f.read(_TRAILER_SIZE)
        except OSError as exc:
            return f"cannot be read ({exc.strerror or exc})"
        if trailer[:len(_TRAILER_TAG)] != _TRAILER_TAG:
            return "has no checksum trailer (truncated or garbled)"
        if trailer[len(_TRAILER_TAG):] != digest.digest():
            return (f"fails its checksum (content sha256 {digest.hexdigest()[:16]}..., recorded "
                    f"{trailer[len(_TRAILER_TAG):].hex()[:16]}...): it was changed or damaged after it was written")
        return None

    @classmethod
    def load(cls, path: Path, settings: CatalogSettings,
             gpu_factory: GpuFactory | None = None) -> VectorIndex:
        """Read a snapshot written by `save` (the caller has checked the stamp).

        The sha256 trailer is verified before any of the index is parsed: `CatalogCorrupt` (naming the file and
        why) when it is missing or does not match.
        """
        problem = cls.verify_snapshot(path)
        if problem is not None:
            raise CatalogCorrupt(f"index snapshot {path} {problem}")
        with open(path, "rb") as f:
            header = _read_header(f)
            reader = _faiss.PyCallbackIOReader(f.read)
            index = faiss.read_index(reader)
            del reader
        if int(index.d) != int(header["dim"]):
            raise CatalogError(f"index snapshot {path} has dimension {index.d}, header says {header['dim']}")
        return cls(int(header["dim"]), str(header["kind"]), index, settings,
                   recall_at_10=header.get("recall_at_10"),
                   build_seconds=float(header.get("build_seconds", 0.0)),
                   trained_size=int(header.get("trained_size", 0)),
                   tombstones=int(header.get("tombstones", 0)),
                   gpu_factory=gpu_factory,
                   search_width=header.get("search_width"))


class BuildCancelled(Exception):
    """An index build was cancelled (catalog closing or superseded)."""


def _read_header(f: Any) -> dict[str, Any]:
    if f.read(len(SNAPSHOT_MAGIC)) not in (SNAPSHOT_MAGIC, _SNAPSHOT_MAGIC_V1):
        raise ValueError("not a skulens index snapshot")
    (size,) = struct.unpack("<Q", f.read(8))
    if size > 1 << 24:
        raise ValueError("snapshot header too large")
    header = json.loads(f.read(size))
    if not isinstance(header, dict):
        raise ValueError("snapshot header is not an object")
    return header


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
