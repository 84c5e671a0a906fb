"""`Catalog`: the facade the server calls — store (truth) + FAISS index (derived) + matching.

It wires collaborators that are each handed what they need: the `Store`, the in-memory `CatalogView` (products,
references, index) with its readers-writer lock, the `SnapshotFile` of the index, the background
`RebuildWorker` and the `Reembedder`.

Concurrency: one writer at a time (`_write_lock`) commits to the store, then applies the change to the view
under the write side of the view's readers-writer lock; searches hold the read side, so they run concurrently
with each other and never see a half-applied change. Searches never touch SQLite. Lock order: `_write_lock`,
then the view's lock.

One process writes a catalog at a time. Each write checks that the store's generation advanced by exactly one
since the view was brought up to date; if another process wrote in between, the view is reloaded from the store.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import numpy as np

from skulens.catalog import store_head, thresholds
from skulens.catalog import validation as v
from skulens.catalog.backend import BackendState
from skulens.catalog.errors import FingerprintMismatch, InvalidArgument, MigrationError
from skulens.catalog.head import HeadStats
from skulens.catalog.index import GpuFactory, VectorIndex, choose_kind, default_gpu_factory, gpu_available
from skulens.catalog.integrity import DB_FILE, SNAPSHOT_FILE, refuse_lost_store
from skulens.catalog.migration_state import MigrationState, ModelSpace, PendingReference, SpaceProgress
from skulens.catalog.models import (
    AddedReference,
    CacheState,
    EmbeddedStats,
    ExportedReference,
    NewReference,
    Product,
    ProductDetail,
    ReembedReport,
    RequestedReference,
    SearchResult,
    TextMatch,
    Verdict,
)
from skulens.catalog.purge import DEFAULT_BATCH, DEFAULT_OLDER_THAN_SECONDS, PurgeReport
from skulens.catalog.purge import check_args as check_purge_args
from skulens.catalog.rebuild import RebuildWorker
from skulens.catalog.reembed import EmbedImages, Reembedder
from skulens.catalog.settings import CatalogSettings
from skulens.catalog.snapshot_file import SnapshotFile
from skulens.catalog.store import RefRow, Store, store_error
from skulens.catalog.store_spaces import SpaceStore
from skulens.catalog.text_search import text_query
from skulens.catalog.thresholds import VerdictThresholds
from skulens.catalog.view import CatalogView
from skulens.errors import field_path

log = logging.getLogger(__name__)
_THRESHOLDS_KEY = "verdict_thresholds"  # meta key of the stored verdict thresholds (JSON)


class Catalog(BackendState):
    """Products, their reference embeddings and the index that searches them. Thread-safe."""

    def __init__(self, path: Path, store: Store, settings: CatalogSettings, *, fingerprint: str, dim: int,
                 requested_fingerprint: str, requested_dim: int, gpu_factory: GpuFactory | None) -> None:
        """Use `Catalog.open`."""
        self.path = path
        self.settings = settings
        self._store = store
        self._requested = (requested_fingerprint, requested_dim)
        self._gpu_factory = gpu_factory
        self._write_lock = threading.RLock()
        self._closed = False
        self._closing = threading.Event()
        self._view = CatalogView(fingerprint, dim)
        self._snapshot = SnapshotFile(path / SNAPSHOT_FILE, store, settings, gpu_factory)
        self._rebuild = RebuildWorker(store, self._view, self._write_lock, settings, self._closing, gpu_factory)
        self._reembedder = Reembedder(store, settings.norm_tolerance, self._closing)
        self._spaces = SpaceStore(store)
        self._migration = self._spaces.state()
        self._backfill_lock = threading.Lock()

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
            other = SpaceStore(store).state().other
            if other is not None and (other.fingerprint, other.dim) == (fingerprint, dim):
                fingerprint, dim = stored_fp, stored_dim  # a migration's other model: serve the stored one
            if (stored_fp, stored_dim) != (fingerprint, dim) and not allow_fingerprint_mismatch:
                raise FingerprintMismatch.between(stored_fp, stored_dim, fingerprint, dim)
            cat = cls(path, store, settings, fingerprint=stored_fp, dim=stored_dim,
                      requested_fingerprint=fingerprint, requested_dim=dim, gpu_factory=gpu_factory)
            with cat._view.rw.write():
                cat._reload_locked(use_snapshot=settings.snapshot)
        except sqlite3.Error as exc:
            store.close()
            raise store_error(store.path, exc) from exc
        except BaseException:
            store.close()
            raise
        cat._rebuild.maybe_start()
        return cat

    @property
    def snapshot_path(self) -> Path:
        """Where the index snapshot is written at close."""
        return self._snapshot.path

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the model that made the stored embeddings."""
        return self._view.fingerprint

    @property
    def dim(self) -> int:
        """Values per stored embedding."""
        return self._view.dim

    def close(self) -> None:
        """Stop background work, write the index snapshot (if enabled and changed) and close the store."""
        if self._closed:
            return
        self._closing.set()
        self._rebuild.wait()
        with self._write_lock, self._view.rw.write():
            if self._closed:
                return
            try:
                self._save_snapshot_locked()
            except Exception:
                log.exception("could not write the index snapshot; it will be rebuilt at next open")
            finally:
                self._closed = True
                self._store.close()

    def _stored_identity(self) -> tuple[str, int]:
        return (self._view.fingerprint, self._view.dim)

    def save_snapshot(self) -> bool:
        """Write the index snapshot now if it changed since the last one; True when written."""
        self._check_open()
        with self._write_lock, self._view.rw.read():
            return self._save_snapshot_locked()

    def _save_snapshot_locked(self) -> bool:
        view = self._view
        return self._snapshot.save_if_changed(view.index, view.generation, view.fingerprint, view.dim,
                                              view.refs.live)

    # ================================================================ loading
    def _reload_locked(self, *, use_snapshot: bool) -> None:
        """Load products, the reference map and the index from the store (caller holds the view's write side)."""
        view = self._view
        with self._store.read_snapshot() as snap:
            ids = view.reload(snap)
            if self._mismatch() is not None:
                view.index = None  # vectors of the stored model; nothing may search them with another model
                return
            index = self._snapshot.load(snap, ids, view.fingerprint, view.dim) if use_snapshot else None
            if index is None:
                all_ids, vectors = snap.embeddings(view.dim, self.settings.build_chunk)
                kind = choose_kind(len(all_ids), self.settings)
                index = VectorIndex.build(view.dim, all_ids, vectors, self.settings, kind,
                                          gpu_factory=self._gpu_factory, products=view.refs.lookup(all_ids))
                log.info("built %s index over %d references in %.2fs", index.kind, index.ntotal,
                         index.build_seconds)
            view.install(index)
            self._migration = MigrationState.from_json(view.fingerprint, view.dim, snap.migration)
            other = self._migration.other
            if other is not None:
                ids, vectors = snap.space_embeddings(other.fingerprint, other.dim)
                view.spaces[other.fingerprint] = VectorIndex.build(other.dim, ids, vectors, self.settings, "flat")

    def wait_for_index(self, timeout: float | None = None) -> bool:
        """Wait for a background index rebuild to finish; True when none is running."""
        return self._rebuild.wait(timeout)

    def refresh(self) -> bool:
        """Reload from the store if another process wrote to it; True when something was reloaded."""
        self._check_open()
        with self._write_lock:
            if self._store.generation() == self._view.generation:
                return False
            with self._view.rw.write():
                self._reload_locked(use_snapshot=False)
            return True

    def _after_write(self, interleaved: bool) -> None:
        """After a write (caller holds `_write_lock`): reload if another process wrote, maybe start a rebuild."""
        if interleaved:
            log.warning("another process wrote to the catalog store; reloading from it")
            with self._view.rw.write():
                self._reload_locked(use_snapshot=False)
        self._rebuild.maybe_start()

    # ================================================================ writes
    def upsert_product(self, product_id: str, display_name: str = "", category: str = "",
                       labels: Mapping[str, str] | None = None, *, create_only: bool = False,
                       update_fields: Sequence[str] | frozenset[str] | None = None,
                       expected_etag: str | None = None, description: str = "") -> tuple[Product, bool]:
        """Create a product, or update an existing one's display name, category, labels and description (all of
        them, or only `update_fields`); returns (product as stored, created).

        `create_only`: an existing product is left as it is and `AlreadyExists` is raised. `expected_etag`: write
        only if the stored product's `etag` is this one (EtagMismatch / NotFound otherwise).
        """
        self._check_open()
        pid = v.product_id(product_id)
        name, cat, lab = v.display_name(display_name), v.category(category), v.labels(labels)
        text = v.description(description)
        fields = v.update_fields(update_fields)
        with self._write_lock:
            row, created, count, gen = self._store.upsert_product(pid, name, cat, lab, create_only, fields,
                                                                  expected_etag, text)
            with self._view.rw.write():
                ok = self._view.advance(gen)
                self._view.put_product(dataclasses.replace(row, description=""))  # the view holds no text
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
        keep_images = self.settings.store_images if store_images is None else bool(store_images)
        rows, vecs = _reference_rows(refs, self._view.dim, self.settings, keep_images)
        with self._write_lock:
            self._check_open(searchable=True)
            other = self._migration.other
            space_vecs = (v.space_vectors(refs, other.fingerprint, other.dim, self.settings.norm_tolerance)
                          if other is not None else None)
            if space_vecs is not None:
                rows = [RefRow(r.embedding, r.source, r.content_sha256, r.image,
                               None if sv is None else sv.astype("<f4").tobytes(), r.region, r.request_id)
                        for r, sv in zip(rows, space_vecs, strict=True)]
            pk, results, gen = self._store.add_references(pid, rows, self._view.fingerprint,
                                                          other.fingerprint if other is not None else None)
            new_pos = [i for i, (_, dup, replayed) in enumerate(results) if not dup and not replayed]
            with self._view.rw.write():
                ok = self._view.advance(gen)
                if new_pos:
                    ids = np.asarray([results[i][0] for i in new_pos], dtype=np.int64)
                    self._view.add_references(gen, pk, ids, vecs[new_pos])
                    if other is not None and space_vecs is not None:
                        have = [(results[i][0], sv) for i in new_pos if (sv := space_vecs[i]) is not None]
                        if have:
                            self._view.add_space_vectors(
                                other.fingerprint, np.asarray([rid for rid, _ in have], dtype=np.int64),
                                np.stack([sv for _, sv in have]))
            self._after_write(not ok)
        return [AddedReference(rid, pid, dup, replayed) for rid, dup, replayed in results]

    def requested_references(self, request_ids: Sequence[str]) -> dict[str, RequestedReference]:
        """The live references that enrolment request ids (AIP-155) added: {request_id: what it added}; ids
        that added nothing (or whose reference was deleted) are absent."""
        self._check_open()
        ids = v.request_ids(request_ids)
        return self._store.requested_references(ids) if ids else {}

    def existing_hashes(self, product_id: str, content_sha256s: Sequence[str]) -> dict[str, int]:
        """{content_sha256: reference_id} of the given image hashes the product already has a reference for.

        A cheap pre-check so callers can skip embedding images that `add_references` would report as
        duplicates (it stays the transactional check). NotFound if the product does not exist.
        """
        self._check_open()
        pid = v.product_id(product_id)
        shas = [v.sha256_hex(s, field_path("content_sha256s", i)) for i, s in enumerate(content_sha256s)]
        return self._store.existing_hashes(pid, shas)

    def delete_product(self, product_id: str, expected_etag: str | None = None) -> int:
        """Delete a product and all its references; returns how many references were removed (`expected_etag`:
        as `upsert_product`)."""
        self._check_open()
        pid = v.product_id(product_id)
        with self._write_lock:
            pk, ids, gen = self._store.delete_product(pid, expected_etag)
            with self._view.rw.write():
                ok = self._view.advance(gen)
                self._view.remove_references(gen, np.asarray(ids, dtype=np.int64))
                self._view.drop_product(pk)
            self._after_write(not ok)
        return len(ids)

    def delete_reference(self, reference_id: int) -> None:
        """Delete one reference (its product stays, possibly with no references)."""
        self._check_open()
        rid = v.reference_id(reference_id)
        with self._write_lock:
            _, gen = self._store.delete_reference(rid)
            with self._view.rw.write():
                ok = self._view.advance(gen)
                self._view.remove_references(gen, np.asarray([rid], dtype=np.int64))
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

    def search_text(self, query: str, *, top_k: int = 5, category: str = "",
                    labels: Mapping[str, str] | None = None) -> list[TextMatch]:
        """Keyword search: the `top_k` products whose text (name, category, label values, description) best
        matches the query's words (`skulens.catalog.text_search`), best first, filtered like `search`. Reads the
        store's FTS5 index (`store_text`), so it sees every committed write."""
        self._check_open()
        q = text_query(query, top_k, category, labels, self.settings.max_top_k)
        return self._store.search_text(q)

    @property
    def backend(self) -> str:
        """"sqlite+faiss": the embedded backend."""
        return "sqlite+faiss"

    def version(self) -> int:
        """The catalog version searches reflect now: the store generation of the in-memory view (bumped by every
        committed write of this process; another process's writes count once `refresh` has loaded them)."""
        self._check_open()
        return self._view.generation

    def verdict_thresholds(self) -> list[VerdictThresholds]:
        """The verdict thresholds stored for this catalog (per matching mode and model; `skulens calibrate`)."""
        self._check_open()
        return thresholds.decode(self._store.meta_value(_THRESHOLDS_KEY))

    def set_verdict_thresholds(self, entry: VerdictThresholds) -> list[VerdictThresholds]:
        """Store `entry` (replacing the one of the same matching mode and model); every entry now."""
        self._check_open()
        with self._write_lock:
            entries = thresholds.replace(thresholds.decode(self._store.meta_value(_THRESHOLDS_KEY)), entry)
            gen = self._store.set_meta_value(_THRESHOLDS_KEY, thresholds.encode(entries))
            with self._view.rw.write():
                ok = self._view.advance(gen)
            self._after_write(not ok)
        return entries

    # ---------------------------------------------------------------- augmented views (catalog-adapted matching)
    def augmentation_pending(self, below: int, after: int = 0, limit: int = 16) -> list[PendingReference]:
        """References with a stored image in products with fewer than `below` references and no augmented views
        yet (id > `after`, id order)."""
        self._check_open()
        below, limit = v.positive_int(below, "below", 1_000_000), v.positive_int(limit, "limit", 65536)
        with self._store._lock:
            return store_head.augmentation_pending(self._store.conn, self._view.fingerprint, below,
                                                   v.reference_id(after) if after else 0, limit)

    def augmentation_counts(self, below: int) -> tuple[int, int]:
        """(references waiting for augmented views, references that have them)."""
        self._check_open()
        with self._store._lock:
            return store_head.augmentation_counts(self._store.conn, self._view.fingerprint,
                                                  v.positive_int(below, "below", 1_000_000))

    def put_augmentations(self, reference_id: int, vectors: np.ndarray) -> int:
        """Store augmented views (unit rows of this model) of a reference; skipped when it is gone or has them
        already. How many were written."""
        self._check_open()
        _, vecs = v.space_rows([reference_id] * len(np.atleast_2d(vectors)), vectors, self._view.dim,
                               self.settings.norm_tolerance)
        blobs = [row.astype("<f4").tobytes() for row in vecs]
        return self._meta_write(lambda tx: store_head.put_augmentations(tx, self._view.fingerprint,
                                                                        int(reference_id), blobs))

    def prune_augmentations(self, below: int) -> int:
        """Drop augmented views of products that reached `below` references; how many went."""
        self._check_open()
        below = v.positive_int(below, "below", 1_000_000)
        return self._meta_write(lambda tx: store_head.prune_augmentations(tx, below))

    def _meta_write(self, write: Callable[[sqlite3.Connection], int]) -> int:
        """Run `write` in a store transaction that bumps the generation when it changed something (it answers
        how many rows); the view follows the generation."""
        with self._write_lock:
            with self._store.transaction() as tx:
                n = write(tx)
                if not n:
                    return 0
                gen = self._store._bump(tx)
            with self._view.rw.write():
                ok = self._view.advance(gen)
            self._after_write(not ok)
        return n

    def head_statistics(self) -> HeadStats:
        """The catalog-adapted matching statistics of the serving model (`skulens.catalog.head`), as committed."""
        self._check_open()
        return self._store.head_stats(self._view.fingerprint, self._view.dim)

    def export_references(self, after: int = 0, limit: int = 256) -> list[ExportedReference]:
        """Up to `limit` references with id > `after`, in id order (embedding, image, hash, source, product)."""
        self._check_open()
        return self._store.export_references(v.reference_id(after) if after else 0,
                                             v.positive_int(limit, "limit", 65536))

    def sample_embeddings(self, limit: int = 4096) -> np.ndarray:
        """Embeddings of up to `limit` references drawn at random, float32 [m, dim] (no images read)."""
        self._check_open()
        rows = self._store.sample_embeddings(v.positive_int(limit, "limit", 1 << 20))
        return np.stack(rows) if rows else np.zeros((0, self.dim), dtype=np.float32)

    def cache_state(self) -> CacheState | None:
        """None: the embedded catalog is local already."""
        return None

    def stats(self) -> EmbeddedStats:
        """Counts, model identity, version, index kind/size/recall, snapshot state and database size."""
        self._check_open()
        products, references, with_image = self._store.counts()
        store_gen = self._store.generation()
        view = self._view
        with view.rw.read():
            idx = view.index
            return EmbeddedStats(
                backend=self.backend, products=products, references=references,
                references_with_image=with_image, dim=view.dim, fingerprint=view.fingerprint,
                version=view.generation, index_kind=idx.kind if idx else "none",
                index_device=idx.device if idx else "cpu", index_size=idx.ntotal if idx else 0,
                recall_at_10=idx.recall_at_10 if idx else None,
                index_search_width=idx.search_width if idx and idx.kind != "flat" else 0,
                rebuild_in_progress=self._rebuild.running(), storage_bytes=self._store.size_bytes(),
                index_tombstones=idx.tombstones if idx else 0, index_bytes=idx.nbytes() if idx else 0,
                index_build_seconds=idx.build_seconds if idx else 0.0, index_generation=view.generation,
                store_generation=store_gen, snapshot=self._snapshot.info,
                schema_version=self._store.meta().schema_version)

    # ================================================================ search
    def search(self, queries: np.ndarray, *, top_k: int = 5, min_score: float | None = None,
               category: str = "", labels: Mapping[str, str] | None = None,
               unknown_threshold: float | None = None,
               ambiguity_margin: float | None = None, trusted: bool = False,
               space: str = "") -> list[SearchResult]:
        """Top-k products per query embedding (float32 [N, D], unit-norm), best first, with a verdict each.

        `space`: the fingerprint of the model that made the queries ("" or the serving one: the serving index;
        a migration's candidate or previous model: that space, searched exactly). A product scores its best
        reference (whose id is returned). `category` and `labels` (all pairs must
        match) restrict the candidates inside the index search, so k products come back even when the filter
        removes most nearest neighbours. `unknown_threshold` / `ambiguity_margin` override the settings for
        this call (e.g. for text queries, whose scores live on another scale). `trusted`: the rows come straight
        from an `Encoder` of this catalog's model (unit-norm by construction), so only their type and shape are
        checked, not each row's norm again.
        """
        other = bool(space) and space != self._view.fingerprint  # a migration's other model: its own space
        self._check_open(searchable=not other)
        held = self._migration.space(space) if other else None
        if other and held is None:
            raise MigrationError(f"the catalog holds no embeddings of model {space!r} (no migration to or from it)")
        r = v.search_request(
            queries, held.dim if held is not None else self._view.dim, tolerance=self.settings.norm_tolerance,
            max_top_k=self.settings.max_top_k, default_threshold=self.settings.unknown_threshold,
            default_margin=self.settings.ambiguity_margin, top_k=top_k, min_score=min_score, category_=category,
            labels_=labels, unknown_threshold=unknown_threshold, ambiguity_margin=ambiguity_margin, trusted=trusted)
        if not len(r.queries):
            return []
        with self._view.rw.read():
            index = self._view.spaces.get(space) if other else None
            if other and index is None:
                raise MigrationError(f"the catalog holds no embeddings of model {space!r}")
            return self._view.search(r.queries, r.top_k, r.min_score, r.category, r.labels, r.unknown_threshold,
                                     r.ambiguity_margin, index=index)

    # ================================================================ model migration
    def migration_state(self) -> MigrationState:
        """Which model spaces the catalog holds (serving, and a candidate or the previous model)."""
        self._check_open()
        return self._migration

    def start_migration(self, candidate: ModelSpace, shadow_share: float = 0.0,
                        serving_model_dir: str = "") -> MigrationState:
        """Add `candidate`'s space (empty; `put_space_embeddings` fills it) and start sending enrolments to both
        spaces; the same candidate again only updates the shadow share. `serving_model_dir` is recorded for the
        serving model when the catalog does not know it yet."""
        self._check_open(searchable=True)
        with self._write_lock:
            new = self._spaces.state().start(candidate, shadow_share, serving_model_dir)
            gen = self._spaces.save(new)
            with self._view.rw.write():
                ok = self._view.advance(gen)
                assert new.candidate is not None
                if new.candidate.fingerprint not in self._view.spaces:
                    self._view.spaces[new.candidate.fingerprint] = VectorIndex.empty(new.candidate.dim, self.settings)
                self._migration = new
            self._after_write(not ok)
        return new

    def pending_references(self, space: str, after: int = 0, limit: int = 64) -> list[PendingReference]:
        """Live references with id > `after` that lack an embedding in `space` (id order, with stored image)."""
        self._check_open()
        self._other_space(space)
        return self._spaces.pending(space, v.reference_id(after) if after else 0,
                                    v.positive_int(limit, "limit", 65536))

    def put_space_embeddings(self, space: str, reference_ids: Sequence[int], vectors: np.ndarray) -> int:
        """Store embeddings of `space` (candidate or previous model) for these references; references deleted
        meanwhile or already filled are skipped. How many were written."""
        self._check_open()
        held = self._other_space(space)
        ids, vecs = v.space_rows(reference_ids, vectors, held.dim, self.settings.norm_tolerance)
        with self._write_lock:
            self._other_space(space)
            written, gen = self._spaces.put(space, [(rid, row.astype("<f4").tobytes())
                                                    for rid, row in zip(ids, vecs, strict=True)])
            with self._view.rw.write():
                ok = self._view.advance(gen)
                pos = {rid: i for i, rid in enumerate(ids)}
                self._view.add_space_vectors(space, np.asarray(written, dtype=np.int64),
                                             vecs[[pos[r] for r in written]])
            self._after_write(not ok)
        return len(written)

    def space_progress(self, space: str) -> SpaceProgress:
        """How far `space` is filled (the serving space is complete)."""
        self._check_open()
        if space == self._view.fingerprint:
            return self._spaces.progress(space, serving=True)
        self._other_space(space)
        return self._spaces.progress(space)

    def switch_model(self, fingerprint: str) -> MigrationState:
        """Serve `fingerprint` (the candidate, or the previous model to undo a switch) from now on, atomically;
        the serving space is kept as the previous one. MigrationError while a live reference lacks an embedding
        in it. Repeating a done switch changes nothing."""
        self._check_open()
        self.wait_for_index()
        with self._write_lock:
            old = self._view.fingerprint
            new, gen = self._spaces.switch(fingerprint)
            if new.serving.fingerprint == old:
                return new
            with self._view.rw.read():
                ids, vectors = self._view.spaces[fingerprint].stored_vectors()
            index = VectorIndex.build(new.serving.dim, ids, vectors, self.settings,
                                      choose_kind(len(ids), self.settings), gpu_factory=self._gpu_factory,
                                      products=self._view.refs.lookup(ids))
            with self._view.rw.write():  # the version moves last: a reader that sees it sees the new model
                previous = self._view.index
                if previous is not None:
                    self._view.spaces[old] = previous
                self._view.fingerprint, self._view.dim = new.serving.fingerprint, new.serving.dim
                self._view.install(index)
                self._view.spaces.pop(fingerprint, None)
                self._requested = (new.serving.fingerprint, new.serving.dim)
                self._migration = new
                ok = self._view.advance(gen)
            self._after_write(not ok)
        log.info("catalog %s now serves model %s (previous %s kept until finish)", self.path, fingerprint, old)
        return new

    def finish_migration(self) -> MigrationState:
        """Drop the previous model's space after a switch (no undo from here); idempotent."""
        return self._end_migration(finish=True)

    def abort_migration(self) -> MigrationState:
        """Drop the candidate's space before a switch; idempotent."""
        return self._end_migration(finish=False)

    def _end_migration(self, *, finish: bool) -> MigrationState:
        self._check_open()
        with self._write_lock:
            state = self._spaces.state()
            new, drop = state.finish() if finish else state.abort()
            if drop is None and state.phase == "none":
                return state
            gen = self._spaces.save(new, drop)
            with self._view.rw.write():
                ok = self._view.advance(gen)
                if drop is not None:
                    self._view.spaces.pop(drop.fingerprint, None)
                self._migration = new
            self._after_write(not ok)
        return new

    def backfill_lease(self) -> AbstractContextManager[bool]:
        """True inside when this caller may back-fill now (one back-fill at a time per catalog)."""
        return _try_lock(self._backfill_lock)

    def purge_deleted(self, older_than_seconds: float = DEFAULT_OLDER_THAN_SECONDS, limit: int = DEFAULT_BATCH, *,
                      vacuum: bool = False, max_seconds: float | None = None) -> PurgeReport:
        """Nothing to purge: this backend deletes rows at once (HNSW tombstones go with index rebuilds); the
        arguments are checked as every backend does, and the report counts zeros."""
        self._check_open()
        grace, _ = check_purge_args(older_than_seconds, limit)
        return PurgeReport(cutoff=time.time() - grace)

    def _other_space(self, space: str) -> ModelSpace:
        other = self._migration.other
        if other is None or other.fingerprint != space:
            raise MigrationError(f"model {space!r} is not the candidate or previous model of this catalog",
                                 field="space")
        return other

    # ---------------------------------------------------------------- reference-level access (calibration)
    def sample_references(self, limit: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                                                   np.ndarray]:
        """(reference ids, product keys, embeddings) of up to `limit` live references (seeded random sample).

        Product keys are internal integers, stable while the catalog is open: compare them, do not store them.
        """
        self._check_open(searchable=True)
        with self._view.rw.read():
            ids, keys = self._view.sample(limit, seed)
        return ids, keys, self._store.reference_vectors(ids.tolist(), self._view.dim)

    def nearest_references(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, reference ids, product keys) of the k nearest live references per query (-1 pads)."""
        self._check_open(searchable=True)
        q = v.vectors(queries, self._view.dim, self.settings.norm_tolerance, "queries")
        with self._view.rw.read():
            return self._view.nearest(q, k)

    def reference_counts(self, keys: np.ndarray) -> np.ndarray:
        """Number of live references of each product key."""
        with self._view.rw.read():
            live = self._view.live_keys()
        top = int(np.max(keys, initial=0)) + 1
        counts = np.bincount(live, minlength=top) if len(live) else np.zeros(1, dtype=np.int64)
        keys = np.asarray(keys, dtype=np.int64)
        out = np.zeros(len(keys), dtype=np.int64)
        ok = (keys >= 0) & (keys < len(counts))
        out[ok] = counts[keys[ok]]
        return out

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
        if self._migration.phase != "none":
            raise MigrationError(f"a model migration is in progress ({self._migration.phase}): finish or abort it "
                                 "(`skulens migrate`) before an offline reembed")
        fp = v.fingerprint(new_fingerprint, "new_fingerprint")
        dim = v.dim(new_dim, "new_dim")
        batch = v.positive_int(batch_size, "batch_size", 65536)
        t0 = time.perf_counter()
        self.wait_for_index()  # not under _write_lock: the rebuild worker takes it when it starts
        with self._write_lock:
            old_fp, old_dim = self._view.fingerprint, self._view.dim
            done = self._reembedder.run(fp, dim, embed_images, batch, progress)
            with self._view.rw.write():
                self._view.fingerprint, self._view.dim = fp, dim
                self._reload_locked(use_snapshot=False)
        self._rebuild.maybe_start()
        return ReembedReport(old_fp, fp, old_dim, dim, done.reembedded, done.resumed, done.dropped,
                             time.perf_counter() - t0)


@contextmanager
def _try_lock(lock: threading.Lock) -> Iterator[bool]:
    got = lock.acquire(blocking=False)
    try:
        yield got
    finally:
        if got:
            lock.release()


def _reference_rows(refs: Sequence[NewReference], dim: int, settings: CatalogSettings,
                    keep_images: bool) -> tuple[list[RefRow], np.ndarray]:
    """Validate references to enrol: (store rows, float32 embeddings [n, dim]); InvalidArgument names the item."""
    checked = v.references(refs, dim, max_items=settings.max_references_per_call, tolerance=settings.norm_tolerance,
                           max_image_bytes=settings.max_image_bytes, keep_images=keep_images)
    vecs = np.stack([c.embedding for c in checked]).astype(np.float32, copy=False)
    rows = [RefRow(vec.astype("<f4").tobytes(), c.source, c.content_sha256, c.image, region=c.region,
                   request_id=c.request_id) for vec, c in zip(vecs, checked, strict=True)]
    return rows, vecs


__all__ = ["Catalog", "EmbedImages", "Verdict"]
