"""`Catalog`: the facade the server calls — store (truth) + FAISS index (derived) + matching.

Concurrency: one writer at a time (`_write_lock`) commits to the store, then applies the change to the index
and the in-memory maps under the write side of a readers-writer lock; searches hold the read side, so they run
concurrently with each other and never see a half-applied change. Searches never touch SQLite.

One process writes a catalog at a time. Each write checks that the store's generation advanced by exactly one
since the index was brought up to date; if another process wrote in between, the in-memory state is reloaded
from the store.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from skulens.catalog import validation as v
from skulens.catalog.errors import (
    CatalogClosed,
    CatalogCorrupt,
    CatalogError,
    FingerprintMismatch,
    InvalidArgument,
    NotFound,
)
from skulens.catalog.index import (
    BuildCancelled,
    GpuFactory,
    VectorIndex,
    choose_kind,
    default_gpu_factory,
    gpu_available,
)
from skulens.catalog.integrity import DB_FILE, SNAPSHOT_FILE, refuse_lost_store
from skulens.catalog.matching import ProductHit, RefMap, decide, search_products
from skulens.catalog.models import (
    AddedReference,
    CatalogStats,
    DroppedReference,
    Match,
    NewReference,
    Product,
    ProductDetail,
    ReembedReport,
    SearchResult,
    SnapshotInfo,
    Verdict,
)
from skulens.catalog.rwlock import RWLock
from skulens.catalog.settings import CatalogSettings
from skulens.catalog.store import ProductRow, RefRow, Store, StoreSnapshot, store_error

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1

EmbedImages = Callable[[list[bytes]], Sequence[np.ndarray | Exception]]


class Catalog:
    """Products, their reference embeddings and the index that searches them. Thread-safe."""

    def __init__(self, path: Path, store: Store, settings: CatalogSettings, *, fingerprint: str, dim: int,
                 requested_fingerprint: str, requested_dim: int, gpu_factory: GpuFactory | None) -> None:
        """Use `Catalog.open`."""
        self.path = path
        self.settings = settings
        self._store = store
        self._fingerprint = fingerprint
        self._dim = dim
        self._requested = (requested_fingerprint, requested_dim)
        self._gpu_factory = gpu_factory
        self._write_lock = threading.RLock()
        self._rw = RWLock()
        self._closed = False
        self._closing = threading.Event()
        # guarded by _rw
        self._index: VectorIndex | None = None
        self._refs = RefMap()
        self._products: dict[int, ProductRow] = {}
        self._by_id: dict[str, int] = {}
        self._by_category: dict[str, set[int]] = {}
        self._by_label: dict[tuple[str, str], set[int]] = {}
        self._generation = 0  # store generation that the in-memory state reflects
        self._journal: list[tuple[int, str, np.ndarray, np.ndarray | None]] | None = None
        self._epoch = 0  # bumped by full reloads; a background rebuild from an older epoch is discarded
        self._rebuild_thread: threading.Thread | None = None
        self._rebuild_reason = ""
        self._snapshot_generation: int | None = None
        self._snapshot_info = SnapshotInfo(str(self.snapshot_path), settings.snapshot, False, "not loaded",
                                           None, 0)

    # ================================================================ lifecycle
    @classmethod
    def open(cls, path: Path, *, fingerprint: str, dim: int, settings: CatalogSettings | None = None,
             allow_fingerprint_mismatch: bool = False, gpu_factory: GpuFactory | None = None) -> Catalog:
        """Open (creating if new) the catalog in directory `path` for the model `fingerprint` / `dim`.

        Loads the index snapshot when its stamp matches the store and its checksum its content, else rebuilds
        the index from the store. A damaged store, or a missing / empty / schema-less one next to evidence that
        the catalog held data (snapshot, WAL), raises `CatalogCorrupt` naming the file and what to do; other
        SQLite errors (read-only, unreadable) raise `CatalogError` naming the file.
        A catalog made by another model raises `FingerprintMismatch`, unless `allow_fingerprint_mismatch`, in
        which case only `reembed`, reads and deletes are allowed until the catalog is re-embedded.
        `gpu_factory` (CPU index -> searchable copy) overrides the faiss-gpu mirror; tests pass a CPU copy.
        """
        settings = settings or CatalogSettings()
        fingerprint = v.fingerprint(fingerprint)
        dim = v.dim(dim)
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise InvalidArgument(f"catalog path {str(path)!r} must be a directory", field="path")
        path.mkdir(parents=True, exist_ok=True)
        if settings.use_gpu == "never":
            gpu_factory = None
        elif gpu_factory is None and gpu_available(settings.use_gpu):
            gpu_factory = default_gpu_factory()
        evidence = refuse_lost_store(path)
        store = Store(path / DB_FILE, settings.synchronous, settings.busy_timeout_ms, evidence=evidence)
        try:
            meta = store.claim_identity(fingerprint, dim)
            stored_fp, stored_dim = str(meta.fingerprint), int(meta.dim or 0)
            if (stored_fp, stored_dim) != (fingerprint, dim) and not allow_fingerprint_mismatch:
                raise FingerprintMismatch.between(stored_fp, stored_dim, fingerprint, dim)
            cat = cls(path, store, settings, fingerprint=stored_fp, dim=stored_dim,
                      requested_fingerprint=fingerprint, requested_dim=dim, gpu_factory=gpu_factory)
            with cat._rw.write():
                cat._reload_locked(use_snapshot=settings.snapshot)
        except sqlite3.Error as exc:
            store.close()
            raise store_error(store.path, exc) from exc
        except BaseException:
            store.close()
            raise
        cat._maybe_schedule_rebuild()
        return cat

    @property
    def snapshot_path(self) -> Path:
        return self.path / SNAPSHOT_FILE

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the model that made the stored embeddings."""
        return self._fingerprint

    @property
    def dim(self) -> int:
        return self._dim

    def close(self) -> None:
        """Stop background work, write the index snapshot (if enabled and changed) and close the store."""
        if self._closed:
            return
        self._closing.set()
        thread = self._rebuild_thread
        if thread is not None:
            thread.join()
        with self._write_lock, self._rw.write():
            if self._closed:
                return
            try:
                self._save_snapshot_locked()
            except Exception:
                log.exception("could not write the index snapshot; it will be rebuilt at next open")
            finally:
                self._closed = True
                self._store.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _check_open(self, *, searchable: bool = False) -> None:
        if self._closed:
            raise CatalogClosed()
        mismatch = self._mismatch() if searchable else None
        if mismatch is not None:
            raise mismatch

    def _mismatch(self) -> FingerprintMismatch | None:
        want_fp, want_dim = self._requested
        if (self._fingerprint, self._dim) == (want_fp, want_dim):
            return None
        return FingerprintMismatch.between(self._fingerprint, self._dim, want_fp, want_dim)

    def save_snapshot(self) -> bool:
        """Write the index snapshot now if it changed since the last one; True when written."""
        self._check_open()
        with self._write_lock, self._rw.read():
            return self._save_snapshot_locked()

    def _save_snapshot_locked(self) -> bool:
        idx = self._index
        if not self.settings.snapshot or idx is None or self._snapshot_generation == self._generation:
            return False
        if self._store.generation() != self._generation:
            return False  # another process wrote: a snapshot of our state would be stale anyway
        size = idx.save(self.snapshot_path, self._stamp(self._refs.live))
        self._snapshot_generation = self._generation
        old = self._snapshot_info
        self._snapshot_info = SnapshotInfo(old.path, True, old.loaded, old.detail, self._generation, size)
        return True

    def _stamp(self, live: int) -> dict[str, Any]:
        meta = self._store.meta()
        return {"format": SNAPSHOT_FORMAT, "catalog_uuid": meta.catalog_uuid, "generation": self._generation,
                "fingerprint": self._fingerprint, "dim": self._dim, "references": live,
                "config": self.settings.index_config()}

    # ================================================================ loading / rebuilding
    def _reload_locked(self, *, use_snapshot: bool) -> None:
        """Load products, the reference map and the index from the store (caller holds the write side)."""
        self._epoch += 1
        self._journal = None
        with self._store.read_snapshot() as snap:
            products = snap.products()
            ids, pks = snap.reference_map()
            self._products, self._by_id, self._by_category, self._by_label = {}, {}, {}, {}
            for row in products.values():
                self._put_product(row)
            self._refs = RefMap()
            self._refs.set(ids, pks)
            self._generation = snap.generation
            if self._mismatch() is not None:
                self._index = None  # vectors of the stored model; nothing may search them with another model
                return
            index = self._load_snapshot(snap, ids) if use_snapshot else None
            if index is None:
                all_ids, vectors = self._read_vectors(snap, self._dim)
                kind = choose_kind(len(all_ids), self.settings)
                index = VectorIndex.build(self._dim, all_ids, vectors, self.settings, kind,
                                          gpu_factory=self._gpu_factory)
                log.info("built %s index over %d references in %.2fs", index.kind, index.ntotal,
                         index.build_seconds)
            if index.kind == "hnsw":
                index.tombstones = index.ntotal - self._refs.live
            self._index = index

    def _read_vectors(self, snap: StoreSnapshot, dim: int) -> tuple[np.ndarray, np.ndarray]:
        n = snap.count()
        ids = np.empty(n, dtype=np.int64)
        vectors = np.empty((n, dim), dtype=np.float32)
        at = 0
        for chunk_ids, chunk in snap.iter_embeddings(dim, self.settings.build_chunk):
            ids[at:at + len(chunk_ids)] = chunk_ids
            vectors[at:at + len(chunk_ids)] = chunk
            at += len(chunk_ids)
        return ids[:at], vectors[:at]

    def _load_snapshot(self, snap: StoreSnapshot, ids: np.ndarray) -> VectorIndex | None:
        """The snapshot's index when it is current (stamp), intact (checksum) and holds exactly the store's
        reference ids `ids`; else None (rebuild), with a WARNING naming the file when it was damaged."""
        path = self.snapshot_path
        live = len(ids)
        header = VectorIndex.read_header(path)
        size = path.stat().st_size if path.exists() else 0

        def info(loaded: bool, detail: str) -> None:
            gen = None if header is None else header.get("stamp", {}).get("generation")
            self._snapshot_info = SnapshotInfo(str(path), True, loaded, detail, gen, size)

        def discard(detail: str, why: str) -> None:
            log.warning("index snapshot %s discarded (%s); rebuilding the index from the store", path, why)
            info(False, detail)

        if header is None:
            if path.exists():
                discard("unreadable snapshot", "not a skulens index snapshot or its header is garbled")
            else:
                info(False, "no snapshot")
            return None
        stamp = header.get("stamp", {})
        expected = {"format": SNAPSHOT_FORMAT, "catalog_uuid": snap.catalog_uuid,
                    "generation": snap.generation, "fingerprint": self._fingerprint, "dim": self._dim,
                    "references": live, "config": self.settings.index_config()}
        diff = [k for k in expected if stamp.get(k) != expected[k]]
        if diff:
            detail = ", ".join(f"{k} {stamp.get(k)!r} != store {expected[k]!r}"
                               for k in diff if k != "config")
            info(False, "stale snapshot: " + (detail or "index settings changed"))
            return None
        if choose_kind(live, self.settings, str(header.get("kind"))) != header.get("kind"):
            info(False, "snapshot index kind no longer fits the catalog size")
            return None
        try:
            index = VectorIndex.load(path, self.settings, gpu_factory=self._gpu_factory)
        except CatalogCorrupt as exc:
            why = str(exc).removeprefix(f"index snapshot {path} ")
            discard(f"corrupt snapshot: {why}", why)
            return None
        except Exception as exc:
            discard(f"unreadable snapshot: {exc}", f"faiss cannot read it ({exc})")
            return None
        physical = index.ntotal - (index.tombstones if index.kind == "hnsw" else 0)
        held = index.reference_ids()
        if physical != live or not np.isin(ids, held).all():
            discard(f"snapshot holds {physical} live vectors, store has {live}",
                    f"it holds {physical} live vectors with ids that differ from the store's {live} references")
            return None
        info(True, "loaded")
        self._snapshot_generation = snap.generation
        return index

    def _maybe_schedule_rebuild(self) -> None:
        """Start a background rebuild when the index kind no longer fits (size, tombstones, IVF growth)."""
        if self._closing.is_set() or self._index is None:
            return
        if self._rebuild_thread is not None and self._rebuild_thread.is_alive():
            return
        reason = self._index.needs_rebuild(self._refs.live)
        if reason is None:
            return
        self._rebuild_reason = reason
        log.info("rebuilding the index in the background: %s", reason)
        self._rebuild_thread = threading.Thread(target=self._rebuild_worker, name="skulens-index-rebuild",
                                                daemon=True)
        self._rebuild_thread.start()

    def _rebuild_worker(self) -> None:
        try:
            with self._write_lock:  # no write is between commit and index update while the view opens
                epoch, dim = self._epoch, self._dim
                current = self._index.kind if self._index is not None else None
                snap = self._store.read_snapshot()
                with self._rw.write():
                    self._journal = []
            try:
                gen = snap.generation
                ids, vectors = self._read_vectors(snap, dim)
            finally:
                snap.close()
            kind = choose_kind(len(ids), self.settings, current)
            new = VectorIndex.build(dim, ids, vectors, self.settings, kind, cancel=self._closing.is_set,
                                    gpu_factory=self._gpu_factory)
            del vectors
            with self._rw.write():
                journal, self._journal = self._journal, None
                if epoch != self._epoch or journal is None or self._closing.is_set():
                    return
                for g, op, jids, jvecs in journal:
                    if g <= gen:
                        continue
                    if op == "add" and jvecs is not None:
                        new.add(jids, jvecs)
                    else:
                        new.remove(jids)
                if new.kind == "hnsw":
                    new.tombstones = new.ntotal - self._refs.live
                self._index = new
            log.info("index rebuilt as %s over %d references in %.2fs (recall@10 %s, search width %d)", new.kind,
                     new.ntotal, new.build_seconds, new.recall_at_10, new.search_width)
            if new.recall_at_10 is not None and new.recall_at_10 < self.settings.recall_target:
                log.warning("approximate index recall@10 %.3f stays below the target %.3f at the widest allowed "
                            "search (%d): raise hnsw_max_ef_search / ivf_max_nprobe, or the approximate "
                            "threshold to keep exact search longer", new.recall_at_10,
                            self.settings.recall_target, new.search_width)
        except BuildCancelled:
            pass
        except Exception:
            log.exception("background index rebuild failed; the current index stays in use")
        finally:
            with self._rw.write():
                self._journal = None

    def wait_for_index(self, timeout: float | None = None) -> bool:
        """Wait for a background index rebuild to finish; True when none is running."""
        thread = self._rebuild_thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def rebuild_index(self) -> None:
        """Rebuild the index from the store now (synchronously), e.g. after changing index settings."""
        self._check_open(searchable=True)
        self.wait_for_index()
        with self._write_lock, self._rw.write():
            self._reload_locked(use_snapshot=False)

    def refresh(self) -> bool:
        """Reload from the store if another process wrote to it; True when something was reloaded."""
        self._check_open()
        with self._write_lock:
            if self._store.generation() == self._generation:
                return False
            with self._rw.write():
                self._reload_locked(use_snapshot=False)
            return True

    # ============================================== in-memory state (caller holds _rw.write)
    def _put_product(self, row: ProductRow) -> None:
        self._drop_product(row.pk)
        self._products[row.pk] = row
        self._by_id[row.product_id] = row.pk
        self._by_category.setdefault(row.category, set()).add(row.pk)
        for kv in row.labels.items():
            self._by_label.setdefault(kv, set()).add(row.pk)

    def _drop_product(self, pk: int) -> None:
        old = self._products.pop(pk, None)
        if old is None:
            return
        self._by_id.pop(old.product_id, None)
        self._by_category.get(old.category, set()).discard(pk)
        for kv in old.labels.items():
            self._by_label.get(kv, set()).discard(pk)

    def _advance(self, gen: int) -> bool:
        """Note that memory reflects store generation `gen`; False if another writer interleaved."""
        ok = gen in (self._generation, self._generation + 1)
        self._generation = gen
        return ok

    def _apply(self, gen: int, op: str, ids: np.ndarray, vectors: np.ndarray | None = None) -> None:
        idx = self._index
        if idx is not None:
            if op == "add" and vectors is not None:
                idx.add(ids, vectors)
            else:
                idx.remove(ids)
        if self._journal is not None:
            self._journal.append((gen, op, ids, vectors))

    def _after_write(self, interleaved: bool) -> None:
        if interleaved:
            log.warning("another process wrote to the catalog store; reloading from it")
            with self._rw.write():
                self._reload_locked(use_snapshot=False)
        self._maybe_schedule_rebuild()

    # ================================================================ writes
    def upsert_product(self, product_id: str, display_name: str = "", category: str = "",
                       labels: Mapping[str, str] | None = None, *,
                       create_only: bool = False) -> tuple[Product, bool]:
        """Create a product, or replace its display name, category and labels; returns (product, created).

        `create_only`: an existing product is left as it is and `AlreadyExists` is raised.
        """
        self._check_open()
        pid = v.product_id(product_id)
        name, cat, lab = v.display_name(display_name), v.category(category), v.labels(labels)
        with self._write_lock:
            row, created, count, gen = self._store.upsert_product(pid, name, cat, lab, create_only)
            with self._rw.write():
                ok = self._advance(gen)
                self._put_product(row)
            self._after_write(not ok)
        return row.to_product(count), created

    def add_references(self, product_id: str, refs: Sequence[NewReference], *,
                       store_images: bool | None = None) -> list[AddedReference]:
        """Enrol references of an existing product in one transaction (all or nothing).

        A reference with the same content_sha256 as one the product already has is not written again: its
        existing id comes back with duplicate=True. `store_images` overrides `settings.store_images`.
        """
        self._check_open(searchable=True)
        pid = v.product_id(product_id)
        limit = self.settings.max_references_per_call
        if not isinstance(refs, Sequence) or not 1 <= len(refs) <= limit:
            got = len(refs) if isinstance(refs, Sequence) else type(refs).__name__
            raise InvalidArgument(f"references must hold 1-{limit} items, got {got}", field="references")
        keep_images = self.settings.store_images if store_images is None else bool(store_images)
        rows: list[RefRow] = []
        vecs = np.empty((len(refs), self._dim), dtype=np.float32)
        for i, ref in enumerate(refs):
            f = f"references[{i}]"
            if not isinstance(ref, NewReference):
                raise InvalidArgument(f"{f} must be a NewReference, got {type(ref).__name__}", field=f)
            vecs[i] = v.vectors(ref.embedding, self._dim, self.settings.norm_tolerance, f"{f}.embedding",
                                single=True)[0]
            image, sha = v.image_and_sha(ref.image, ref.content_sha256, f, self.settings.max_image_bytes)
            rows.append(RefRow(vecs[i].astype("<f4").tobytes(), v.source(ref.source, f"{f}.source"), sha,
                               image if keep_images else None))
        with self._write_lock:
            self._check_open(searchable=True)
            pk, results, gen = self._store.add_references(pid, rows, self._fingerprint)
            new_pos = [i for i, (_, dup) in enumerate(results) if not dup]
            with self._rw.write():
                ok = self._advance(gen)
                if new_pos:
                    ids = np.asarray([results[i][0] for i in new_pos], dtype=np.int64)
                    self._refs.set(ids, np.full(len(ids), pk, dtype=np.int64))
                    self._apply(gen, "add", ids, vecs[new_pos])
            self._after_write(not ok)
        return [AddedReference(rid, pid, dup) for rid, dup in results]

    def existing_hashes(self, product_id: str, content_sha256s: Sequence[str]) -> dict[str, int]:
        """{content_sha256: reference_id} of the given image hashes the product already has a reference for.

        A cheap pre-check so callers can skip embedding images that `add_references` would report as
        duplicates (it stays the transactional check). NotFound if the product does not exist.
        """
        self._check_open()
        pid = v.product_id(product_id)
        shas = [v.sha256_hex(s, f"content_sha256s[{i}]") for i, s in enumerate(content_sha256s)]
        return self._store.existing_hashes(pid, shas) if shas else {}

    def delete_product(self, product_id: str) -> int:
        """Delete a product and all its references; returns how many references were removed."""
        self._check_open()
        pid = v.product_id(product_id)
        with self._write_lock:
            pk, ids, gen = self._store.delete_product(pid)
            with self._rw.write():
                ok = self._advance(gen)
                arr = np.asarray(ids, dtype=np.int64)
                self._refs.clear(arr)
                self._apply(gen, "remove", arr)
                self._drop_product(pk)
            self._after_write(not ok)
        return len(ids)

    def delete_reference(self, reference_id: int) -> None:
        """Delete one reference (its product stays, possibly with no references)."""
        self._check_open()
        rid = v.reference_id(reference_id)
        with self._write_lock:
            _, gen = self._store.delete_reference(rid)
            with self._rw.write():
                ok = self._advance(gen)
                arr = np.asarray([rid], dtype=np.int64)
                self._refs.clear(arr)
                self._apply(gen, "remove", arr)
            self._after_write(not ok)

    # ================================================================ reads
    def get_product(self, product_id: str) -> ProductDetail:
        """A product with its references (id, source, content_sha256, has_image, created_at)."""
        self._check_open()
        row, refs = self._store.get_product(v.product_id(product_id))
        return ProductDetail(row.to_product(len(refs)), refs)

    def list_products(self, page_size: int = 100, page_token: str = "",
                      category: str = "") -> tuple[list[Product], str]:
        """One page of products ordered by product_id; returns (products, next_page_token or "" at the end).

        page_size 0 means 100. The token is opaque and bound to the category it was issued for.
        """
        self._check_open()
        size = 100 if page_size == 0 else v.positive_int(page_size, "page_size", self.settings.max_page_size)
        cat = v.category(category)
        after = v.decode_page_token(page_token, cat)
        rows = self._store.list_products(after, size + 1, cat)
        more = len(rows) > size
        rows = rows[:size]
        token = v.encode_page_token(rows[-1][0].product_id, cat) if more and rows else ""
        return [r.to_product(n) for r, n in rows], token

    def stats(self) -> CatalogStats:
        """Counts, model identity, index kind/size/recall, snapshot state and database size."""
        self._check_open()
        products, references, with_image = self._store.counts()
        store_gen = self._store.generation()
        with self._rw.read():
            idx = self._index
            running = self._rebuild_thread is not None and self._rebuild_thread.is_alive()
            return CatalogStats(
                products=products, references=references, references_with_image=with_image,
                dim=self._dim, fingerprint=self._fingerprint,
                index_kind=idx.kind if idx else "none", index_device=idx.device if idx else "cpu",
                index_size=idx.ntotal if idx else 0, index_tombstones=idx.tombstones if idx else 0,
                index_bytes=idx.nbytes() if idx else 0, recall_at_10=idx.recall_at_10 if idx else None,
                index_search_width=idx.search_width if idx and idx.kind != "flat" else 0,
                index_build_seconds=idx.build_seconds if idx else 0.0, index_generation=self._generation,
                store_generation=store_gen, rebuild_in_progress=running, snapshot=self._snapshot_info,
                db_size_bytes=self._store.size_bytes(), schema_version=self._store.meta().schema_version)

    # ================================================================ search
    def search(self, queries: np.ndarray, *, top_k: int = 5, min_score: float | None = None,
               category: str = "", labels: Mapping[str, str] | None = None,
               unknown_threshold: float | None = None,
               ambiguity_margin: float | None = None) -> list[SearchResult]:
        """Top-k products per query embedding (float32 [N, D], unit-norm), best first, with a verdict each.

        A product scores its best reference (whose id is returned). `category` and `labels` (all pairs must
        match) restrict the candidates inside the index search, so k products come back even when the filter
        removes most nearest neighbours. `unknown_threshold` / `ambiguity_margin` override the settings for
        this call (e.g. for text queries, whose scores live on another scale).
        """
        self._check_open(searchable=True)
        q = v.vectors(queries, self._dim, self.settings.norm_tolerance, "queries")
        k = v.positive_int(top_k, "top_k", self.settings.max_top_k)
        floor = v.score(min_score, "min_score")
        cat = v.category(category)
        lab = v.labels(labels)
        threshold = v.score(unknown_threshold, "unknown_threshold")
        threshold = self.settings.unknown_threshold if threshold is None else threshold
        margin = self.settings.ambiguity_margin if ambiguity_margin is None else float(ambiguity_margin)
        if not 0.0 <= margin <= 2.0:
            raise InvalidArgument(f"ambiguity_margin must be in [0, 2], got {ambiguity_margin!r}",
                                  field="ambiguity_margin")
        if not len(q):
            return []
        with self._rw.read():
            hits = self._search_locked(q, k, floor, cat, lab, margin)
            out = []
            for row in hits:
                verdict, confusable = decide(row, threshold, margin)
                matches = [self._match(h) for h in row[:k] if floor is None or h.score >= floor]
                best = row[0].score if row else -1.0
                out.append(SearchResult(matches, verdict, best,
                                        [self._products[h.product_pk].product_id for h in confusable]))
        return out

    def _match(self, h: ProductHit) -> Match:
        p = self._products[h.product_pk]
        return Match(p.product_id, p.display_name, h.score, h.reference_id)

    def _filter_pks(self, category: str, labels: dict[str, str]) -> np.ndarray:
        sets: list[set[int]] = []
        if category:
            sets.append(self._by_category.get(category, set()))
        sets.extend(self._by_label.get(kv, set()) for kv in labels.items())
        sets.sort(key=len)
        chosen = set(sets[0]).intersection(*sets[1:])
        return np.fromiter(chosen, dtype=np.int64, count=len(chosen))

    def _search_locked(self, q: np.ndarray, top_k: int, floor: float | None, category: str,
                       labels: dict[str, str], margin: float) -> list[list[ProductHit]]:
        idx = self._index
        assert idx is not None
        allowed: np.ndarray | None = None
        candidates, products = self._refs.live, max(1, len(self._products))
        if category or labels:
            pks = self._filter_pks(category, labels)
            allowed = self._refs.allowed_mask(pks)
            candidates, products = int(np.count_nonzero(allowed)), max(1, len(pks))
        if candidates == 0 or idx.ntotal == 0:
            return [[] for _ in range(len(q))]
        per_product = max(1.0, candidates / products)
        dead = idx.ntotal / max(1, self._refs.live) if idx.kind == "hnsw" else 1.0
        initial = math.ceil(max(top_k, 2) * per_product * 2 * dead)
        initial = max(16, min(initial, idx.ntotal))

        def searcher(queries: np.ndarray, k: int, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            return idx.search(queries, k, allowed=allowed, depth=depth)

        return search_products(searcher, self._refs.lookup, q, top_k=top_k, initial_k=initial,
                               max_k=idx.ntotal, min_score=floor, ambiguity_margin=margin)

    # ---------------------------------------------------------------- reference-level access (calibration)
    def sample_references(self, limit: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                                                   np.ndarray]:
        """(reference ids, product keys, embeddings) of up to `limit` live references (seeded random sample).

        Product keys are internal integers, stable while the catalog is open: compare them, do not store them.
        """
        self._check_open(searchable=True)
        with self._rw.read():
            ids = self._refs.live_ids()
            if limit is not None and len(ids) > limit:
                ids = np.sort(np.random.default_rng(seed).choice(ids, limit, replace=False))
            keys = self._refs.lookup(ids)
        return ids, keys, self._store.reference_vectors(ids.tolist(), self._dim)

    def nearest_references(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, reference ids, product keys) of the k nearest live references per query (-1 pads)."""
        self._check_open(searchable=True)
        q = v.vectors(queries, self._dim, self.settings.norm_tolerance, "queries")
        with self._rw.read():
            idx = self._index
            assert idx is not None
            if idx.ntotal == 0:
                empty = np.full((len(q), 0), -1, dtype=np.int64)
                return empty.astype(np.float32), empty, empty
            scores, ids, _ = idx.search(q, min(k, idx.ntotal), depth=2)
            keys = self._refs.lookup(ids)
        return scores, np.where(keys >= 0, ids, -1), keys

    def reference_counts(self, keys: np.ndarray) -> np.ndarray:
        """Number of live references of each product key."""
        with self._rw.read():
            live = self._refs.lookup(self._refs.live_ids())
        top = int(np.max(keys, initial=0)) + 1
        counts = np.bincount(live, minlength=top) if len(live) else np.zeros(1, dtype=np.int64)
        keys = np.asarray(keys, dtype=np.int64)
        out = np.zeros(len(keys), dtype=np.int64)
        ok = (keys >= 0) & (keys < len(counts))
        out[ok] = counts[keys[ok]]
        return out

    def product_id_of(self, key: int) -> str:
        """The product_id for a product key from `sample_references` / `nearest_references`."""
        with self._rw.read():
            row = self._products.get(int(key))
        if row is None:
            raise NotFound(f"product key {key} does not exist", field="product_key")
        return row.product_id

    # ================================================================ reembed
    def reembed(self, new_fingerprint: str, new_dim: int, embed_images: EmbedImages, *, batch_size: int = 64,
                progress: Callable[[int, int], None] | None = None) -> ReembedReport:
        """Re-embed every stored reference image with a new model and switch the catalog to it atomically.

        New embeddings are staged in their own table (an interrupted run resumes from there); then one
        transaction swaps them in together with the new fingerprint and dimension, so the catalog never mixes
        models. References that cannot be re-embedded (no stored image, the embed function returned an
        exception or an invalid vector) are deleted in that same transaction and listed in the report: their
        old vectors live in the other model's space. `embed_images(list_of_image_bytes)` returns one unit-norm
        vector or Exception per image; an exception raised by it aborts the run (staged batches are kept for a
        rerun).
        """
        self._check_open()
        fp = v.fingerprint(new_fingerprint, "new_fingerprint")
        dim = v.dim(new_dim, "new_dim")
        batch = v.positive_int(batch_size, "batch_size", 65536)
        t0 = time.perf_counter()
        self.wait_for_index()  # not under _write_lock: the rebuild worker takes it when it starts
        with self._write_lock:
            old_fp, old_dim = self._fingerprint, self._dim
            resumed = self._store.staging_prepare(fp)
            total = self._store.counts()[2]
            done = resumed
            while True:
                if self._closing.is_set():
                    raise CatalogClosed("catalog closed during reembed; run it again to resume")
                todo = self._store.images_to_reembed(fp, batch)
                if not todo:
                    break
                outs = list(embed_images([img for _, img in todo]))
                if len(outs) != len(todo):
                    raise CatalogError(f"embed_images returned {len(outs)} results for {len(todo)} images")
                staged: list[tuple[int, bytes | None, str | None]] = []
                for (rid, _), out in zip(todo, outs, strict=True):
                    if isinstance(out, Exception):
                        staged.append((rid, None, f"embedding failed: {out}"))
                        continue
                    try:
                        vec = v.vectors(out, dim, self.settings.norm_tolerance, "embedding", single=True)[0]
                    except InvalidArgument as exc:
                        staged.append((rid, None, f"invalid embedding: {exc}"))
                        continue
                    staged.append((rid, vec.astype("<f4").tobytes(), None))
                self._store.staging_put(fp, staged)
                done += len(todo)
                if progress is not None:
                    progress(done, total)
            dropped, count, _ = self._store.reembed_swap(fp, dim)
            with self._rw.write():
                self._fingerprint, self._dim = fp, dim
                self._reload_locked(use_snapshot=False)
        self._maybe_schedule_rebuild()
        return ReembedReport(old_fp, fp, old_dim, dim, count, resumed,
                             [DroppedReference(r, p, why) for r, p, why in dropped], time.perf_counter() - t0)


__all__ = ["Catalog", "EmbedImages", "Verdict"]
