"""`MirroredCatalog`: the shared catalog with a local FAISS copy that answers searches (`--catalog-cache faiss`).

Writes, catalog reads and everything else go to the `PostgresCatalog` as they are (while PostgreSQL is down they
raise `CatalogUnavailable`: UNAVAILABLE with a retry hint); image searches of the serving model, the catalog
version and the stored verdict thresholds come from the `CatalogMirror`, so recognition keeps answering while the
database cannot be reached, from the version the copy holds (`cache_state` says which, and since when).
A write returns once the copy holds it (waiting at most `write_wait_seconds`), so a client that enrols and then
recognises through the same server finds what it enrolled, as with the other backends.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from skulens.catalog import thresholds
from skulens.catalog import validation as v
from skulens.catalog.backend import BackendState
from skulens.catalog.errors import CatalogError, CatalogUnavailable
from skulens.catalog.head import HeadStats
from skulens.catalog.migration_state import MigrationState, ModelSpace, PendingReference, SpaceProgress
from skulens.catalog.mirror import CatalogMirror
from skulens.catalog.models import (
    AddedReference,
    CacheState,
    CatalogStats,
    ExportedReference,
    NewReference,
    Product,
    ProductDetail,
    RequestedReference,
    SearchResult,
    TextMatch,
)
from skulens.catalog.postgres import PostgresCatalog, PostgresStats
from skulens.catalog.purge import DEFAULT_BATCH, DEFAULT_OLDER_THAN_SECONDS, PurgeReport
from skulens.catalog.settings import CatalogSettings
from skulens.catalog.thresholds import VerdictThresholds

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class MirroredStats(CatalogStats):
    """`CatalogStats` of a mirrored catalog: counts, version and index of the copy; the shared catalog's own stats
    (None while it cannot be reached) and how current the copy is."""

    cache: CacheState
    primary: PostgresStats | None


class MirroredCatalog(BackendState):
    """A `CatalogBackend`: `primary` for everything but image searches, the version and the thresholds, which
    `mirror` answers. Thread-safe. Closing it stops the mirror and closes the primary."""

    def __init__(self, primary: PostgresCatalog, mirror: CatalogMirror, *, write_wait_seconds: float = 2.0) -> None:
        self._primary = primary
        self._mirror = mirror
        self.write_wait_seconds = write_wait_seconds
        self._closed = False
        self._requested = (primary.fingerprint, primary.dim)

    @classmethod
    def open(cls, primary: PostgresCatalog, *, poll_seconds: float, write_wait_seconds: float = 2.0
             ) -> MirroredCatalog:
        """Copy `primary`'s catalog (CatalogUnavailable when it cannot be read now) and follow it; `primary`
        belongs to the result (closed with it, also when this fails)."""
        try:
            mirror = primary.mirror(poll_seconds)
            mirror.start()
        except BaseException:
            primary.close()
            raise
        return cls(primary, mirror, write_wait_seconds=write_wait_seconds)

    # ================================================================ identity, lifecycle
    @property
    def primary(self) -> PostgresCatalog:
        return self._primary

    @property
    def mirror(self) -> CatalogMirror:
        return self._mirror

    @property
    def fingerprint(self) -> str:
        """The model whose embeddings the copy holds (follows a switch once the copy has read it)."""
        return self._mirror.view().fingerprint

    @property
    def dim(self) -> int:
        return self._mirror.view().dim

    @property
    def backend(self) -> str:
        return self._primary.backend

    @property
    def settings(self) -> CatalogSettings:
        return self._primary.settings

    def _stored_identity(self) -> tuple[str, int]:
        view = self._mirror.view()
        return (view.fingerprint, view.dim)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._mirror.stop()
        self._primary.close()

    def cache_state(self) -> CacheState | None:
        return self._mirror.state()

    def _written(self, out: T) -> T:
        """`out` once the copy holds the primary's version after a write (or `write_wait_seconds` passed)."""
        try:
            version = self._primary.version()
        except CatalogError:
            return out
        if not self._mirror.wait_for(version, self.write_wait_seconds):
            log.warning("catalog mirror: still behind version %d %.1f s after a write", version,
                        self.write_wait_seconds)
        return out

    # ================================================================ served by the copy
    def version(self) -> int:
        self._check_open()
        return self._mirror.version

    def verdict_thresholds(self) -> list[VerdictThresholds]:
        self._check_open()
        return thresholds.decode(self._mirror.thresholds)

    def search(self, queries: np.ndarray, *, top_k: int = 5, min_score: float | None = None,
               category: str = "", labels: Mapping[str, str] | None = None,
               unknown_threshold: float | None = None, ambiguity_margin: float | None = None,
               trusted: bool = False, space: str = "") -> list[SearchResult]:
        """As `CatalogBackend.search`, from the copy (a migration's other model space: from the primary)."""
        self._check_open()
        view = self._mirror.view()
        if space and space != view.fingerprint:
            return self._primary.search(queries, top_k=top_k, min_score=min_score, category=category, labels=labels,
                                        unknown_threshold=unknown_threshold, ambiguity_margin=ambiguity_margin,
                                        trusted=trusted, space=space)
        s = self.settings
        r = v.search_request(
            queries, view.dim, tolerance=s.norm_tolerance, max_top_k=s.max_top_k,
            default_threshold=s.unknown_threshold, default_margin=s.ambiguity_margin, top_k=top_k,
            min_score=min_score, category_=category, labels_=labels, unknown_threshold=unknown_threshold,
            ambiguity_margin=ambiguity_margin, trusted=trusted)
        if not len(r.queries):
            return []
        with view.rw.read():
            return view.search(r.queries, r.top_k, r.min_score, r.category, r.labels, r.unknown_threshold,
                               r.ambiguity_margin)

    def stats(self) -> MirroredStats:
        """The copy's counts, version and index, with the primary's stats when it answers."""
        self._check_open()
        try:
            primary: PostgresStats | None = self._primary.stats()
        except CatalogUnavailable:
            primary = None
        view = self._mirror.view()
        with view.rw.read():
            idx = view.index
            assert idx is not None
            return MirroredStats(
                backend=self.backend, products=len(view.products), references=view.refs.live,
                references_with_image=primary.references_with_image if primary else 0, dim=view.dim,
                fingerprint=view.fingerprint, version=self._mirror.version, index_kind=idx.kind,
                index_device=idx.device, index_size=idx.ntotal, recall_at_10=idx.recall_at_10,
                index_search_width=idx.search_width if idx.kind != "flat" else 0, rebuild_in_progress=False,
                storage_bytes=primary.storage_bytes if primary else 0, cache=self._mirror.state(), primary=primary)

    # ================================================================ writes: the primary, then the copy follows
    def upsert_product(self, product_id: str, display_name: str = "", category: str = "",
                       labels: Mapping[str, str] | None = None, *, create_only: bool = False,
                       update_fields: Sequence[str] | frozenset[str] | None = None,
                       expected_etag: str | None = None, description: str = "") -> tuple[Product, bool]:
        return self._written(self._primary.upsert_product(
            product_id, display_name, category, labels, create_only=create_only, update_fields=update_fields,
            expected_etag=expected_etag, description=description))

    def add_references(self, product_id: str, refs: Sequence[NewReference], *,
                       store_images: bool | None = None) -> list[AddedReference]:
        return self._written(self._primary.add_references(product_id, refs, store_images=store_images))

    def delete_product(self, product_id: str, expected_etag: str | None = None) -> int:
        return self._written(self._primary.delete_product(product_id, expected_etag))

    def delete_reference(self, reference_id: int) -> None:
        self._primary.delete_reference(reference_id)
        self._written(None)

    def set_verdict_thresholds(self, entry: VerdictThresholds) -> list[VerdictThresholds]:
        return self._written(self._primary.set_verdict_thresholds(entry))

    def put_augmentations(self, reference_id: int, vectors: np.ndarray) -> int:
        return self._written(self._primary.put_augmentations(reference_id, vectors))

    def prune_augmentations(self, below: int) -> int:
        return self._written(self._primary.prune_augmentations(below))

    def start_migration(self, candidate: ModelSpace, shadow_share: float = 0.0,
                        serving_model_dir: str = "") -> MigrationState:
        return self._written(self._primary.start_migration(candidate, shadow_share, serving_model_dir))

    def put_space_embeddings(self, space: str, reference_ids: Sequence[int], vectors: np.ndarray) -> int:
        return self._written(self._primary.put_space_embeddings(space, reference_ids, vectors))

    def switch_model(self, fingerprint: str) -> MigrationState:
        return self._written(self._primary.switch_model(fingerprint))

    def finish_migration(self) -> MigrationState:
        return self._written(self._primary.finish_migration())

    def abort_migration(self) -> MigrationState:
        return self._written(self._primary.abort_migration())

    def purge_deleted(self, older_than_seconds: float = DEFAULT_OLDER_THAN_SECONDS, limit: int = DEFAULT_BATCH, *,
                      vacuum: bool = False, max_seconds: float | None = None) -> PurgeReport:
        return self._primary.purge_deleted(older_than_seconds, limit, vacuum=vacuum, max_seconds=max_seconds)

    # ================================================================ reads the copy does not hold: the primary
    def get_product(self, product_id: str) -> ProductDetail:
        return self._primary.get_product(product_id)

    def list_products(self, page_size: int = 100, page_token: str = "",
                      category: str = "") -> tuple[list[Product], str]:
        return self._primary.list_products(page_size, page_token, category)

    def existing_hashes(self, product_id: str, content_sha256s: Sequence[str]) -> dict[str, int]:
        return self._primary.existing_hashes(product_id, content_sha256s)

    def requested_references(self, request_ids: Sequence[str]) -> dict[str, RequestedReference]:
        return self._primary.requested_references(request_ids)

    def augmentation_pending(self, below: int, after: int = 0, limit: int = 16) -> list[PendingReference]:
        return self._primary.augmentation_pending(below, after, limit)

    def augmentation_counts(self, below: int) -> tuple[int, int]:
        return self._primary.augmentation_counts(below)

    def head_statistics(self) -> HeadStats:
        return self._primary.head_statistics()

    def search_text(self, query: str, *, top_k: int = 5, category: str = "",
                    labels: Mapping[str, str] | None = None) -> list[TextMatch]:
        return self._primary.search_text(query, top_k=top_k, category=category, labels=labels)

    def migration_state(self) -> MigrationState:
        return self._primary.migration_state()

    def pending_references(self, space: str, after: int = 0, limit: int = 64) -> list[PendingReference]:
        return self._primary.pending_references(space, after, limit)

    def space_progress(self, space: str) -> SpaceProgress:
        return self._primary.space_progress(space)

    def backfill_lease(self) -> AbstractContextManager[bool]:
        return self._primary.backfill_lease()

    def export_references(self, after: int = 0, limit: int = 256) -> list[ExportedReference]:
        return self._primary.export_references(after, limit)

    def sample_embeddings(self, limit: int = 4096) -> np.ndarray:
        return self._primary.sample_embeddings(limit)


__all__ = ["MirroredCatalog", "MirroredStats"]
