"""`CatalogBackend`: what the service needs from a catalog, whatever holds it.

The embedded backend (`skulens.catalog.catalog.Catalog`: SQLite WAL as the source of truth + an in-process
FAISS index derived from it) is one implementation; a shared one (PostgreSQL + pgvector) is another. The
service, the runtime and the CLI depend on this Protocol only, and tests/test_catalog_backend_contract.py holds
the behaviour every implementation must have, written once and run against each.

Semantics every backend keeps: product ids are NFC-normalised and validated the same way
(`skulens.catalog.validation`); writes are transactional and bump `version()`; `add_references` answers a
repeat of a (product, content sha256) with the existing reference and duplicate=True; `search` returns the
top-k *products* per query (a product scores its best reference), filters by category / labels inside the
search so k products come back even when the filter removes most neighbours, and decides each verdict with
the pure `skulens.catalog.matching.decide`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np

from skulens.catalog.errors import CatalogClosed, FingerprintMismatch
from skulens.catalog.head import HeadStats
from skulens.catalog.migration_state import MigrationState, ModelSpace, PendingReference, SpaceProgress
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
from skulens.catalog.purge import DEFAULT_BATCH, DEFAULT_OLDER_THAN_SECONDS, PurgeReport
from skulens.catalog.settings import CatalogSettings
from skulens.catalog.thresholds import VerdictThresholds


@runtime_checkable
class CatalogBackend(Protocol):
    """Products, their reference embeddings (one model's space) and nearest-product search."""

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the model whose embeddings the catalog holds."""
        ...

    @property
    def dim(self) -> int:
        """Values per stored embedding."""
        ...

    @property
    def backend(self) -> str:
        """Which backend this is, as reported to clients: "sqlite+faiss", "postgresql+pgvector"."""
        ...

    @property
    def settings(self) -> CatalogSettings:
        """Limits and matching defaults (image size, references per call, thresholds)."""
        ...

    def version(self) -> int:
        """The catalog version: increases with every committed write (any replica's)."""
        ...

    def upsert_product(
        self,
        product_id: str,
        display_name: str = "",
        category: str = "",
        labels: Mapping[str, str] | None = None,
        *,
        create_only: bool = False,
        update_fields: Sequence[str] | frozenset[str] | None = None,
        expected_etag: str | None = None,
        description: str = "",
    ) -> tuple[Product, bool]:
        """Create a product, or update an existing one: every field, or only `update_fields` (of display_name,
        category, labels, description; the others keep their stored values); (product as stored, created).
        `expected_etag`: update only if the stored product still has this `Product.etag` (EtagMismatch otherwise;
        NotFound when the product does not exist), checked in the write's transaction."""
        ...

    def get_product(self, product_id: str) -> ProductDetail:
        """A product with its references; NotFound when absent."""
        ...

    def list_products(
        self, page_size: int = 100, page_token: str = "", category: str = ""
    ) -> tuple[list[Product], str]:
        """One page ordered by product id, and the next page's token ("" at the end)."""
        ...

    def delete_product(self, product_id: str, expected_etag: str | None = None) -> int:
        """Delete a product and its references; how many references went (`expected_etag`: as `upsert_product`)."""
        ...

    def add_references(
        self, product_id: str, refs: Sequence[NewReference], *, store_images: bool | None = None
    ) -> list[AddedReference]:
        """Enrol references of an existing product in one transaction (all or nothing). A reference whose
        `request_id` added a live reference before answers that one (`replayed`, nothing written) when product,
        content and region are the same, and raises RequestIdReused (``references[k].request_id``) when not."""
        ...

    def existing_hashes(self, product_id: str, content_sha256s: Sequence[str]) -> dict[str, int]:
        """{content_sha256: reference_id} of those hashes the product already has."""
        ...

    def requested_references(self, request_ids: Sequence[str]) -> dict[str, RequestedReference]:
        """The live references that enrolment request ids (AIP-155) added: {request_id: what it added}; a request
        id is remembered as long as the reference it added exists."""
        ...

    def delete_reference(self, reference_id: int) -> None:
        """Delete one reference; NotFound when absent."""
        ...

    def verdict_thresholds(self) -> list[VerdictThresholds]:
        """The verdict thresholds stored for this catalog, one entry per (matching mode, model fingerprint)."""
        ...

    def set_verdict_thresholds(self, entry: VerdictThresholds) -> list[VerdictThresholds]:
        """Store `entry` in place of the entry of the same matching mode and model (a write: bumps the version);
        every entry now."""
        ...

    def augmentation_pending(self, below: int, after: int = 0, limit: int = 16) -> list[PendingReference]:
        """Live references of the serving model with a stored image, in products with fewer than `below`
        references, that have no augmented views yet (id > `after`, id order, at most `limit`)."""
        ...

    def augmentation_counts(self, below: int) -> tuple[int, int]:
        """(references waiting for augmented views as `augmentation_pending` says, references that have them)."""
        ...

    def put_augmentations(self, reference_id: int, vectors: np.ndarray) -> int:
        """Store a reference's augmented views (unit rows of the serving model; they count in the head statistics
        of its product, never in the nearest-neighbour index, and go with the reference); skipped (0) when the
        reference is gone or has views already. A write when it wrote."""
        ...

    def prune_augmentations(self, below: int) -> int:
        """Drop the augmented views of products that have `below` references or more now; how many went."""
        ...

    def head_statistics(self) -> HeadStats:
        """The catalog-adapted matching statistics of the serving model (normal equations kept by every write,
        `skulens.catalog.head`), with the catalog version they belong to."""
        ...

    def search(
        self,
        queries: np.ndarray,
        *,
        top_k: int = 5,
        min_score: float | None = None,
        category: str = "",
        labels: Mapping[str, str] | None = None,
        unknown_threshold: float | None = None,
        ambiguity_margin: float | None = None,
        trusted: bool = False,
        space: str = "",
    ) -> list[SearchResult]:
        """Top-k products per unit-norm query row, best first, with a verdict each (`trusted`: the rows come
        from an `Encoder` of this catalog's model, so their norms are not checked again; `space`: the fingerprint
        of the model that made them, "" for the serving one — a migration's candidate or previous model searches
        its own space)."""
        ...

    def search_text(
        self,
        query: str,
        *,
        top_k: int = 5,
        category: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> list[TextMatch]:
        """Keyword search (`skulens.catalog.text_search`): the `top_k` products whose text — display name,
        category, label values, description — best matches any of the query's words, best first (ties by product
        id), with the same category / label filters as `search`; products without references are found too. []
        when nothing matches or the query has no words; InvalidArgument for a blank query or a bad top_k."""
        ...

    # ---------------------------------------------------------------- model migration (see migration_state)
    def migration_state(self) -> MigrationState:
        """Which model spaces the catalog holds: serving, and a candidate or the previous model (all replicas)."""
        ...

    def start_migration(
        self, candidate: ModelSpace, shadow_share: float = 0.0, serving_model_dir: str = ""
    ) -> MigrationState:
        """Add the candidate's (empty) space; from now on enrolments may carry its vectors
        (`NewReference.space_embeddings`). The same candidate again updates the shadow share."""
        ...

    def pending_references(self, space: str, after: int = 0, limit: int = 64) -> list[PendingReference]:
        """Live references (id > `after`, id order) without an embedding in `space`, with their stored image."""
        ...

    def put_space_embeddings(self, space: str, reference_ids: Sequence[int], vectors: np.ndarray) -> int:
        """Store `space` vectors of these references (skipping deleted or filled ones); how many were written."""
        ...

    def space_progress(self, space: str) -> SpaceProgress:
        """How far `space` is filled."""
        ...

    def switch_model(self, fingerprint: str) -> MigrationState:
        """Serve the candidate (or the previous model: undo) atomically; the serving space becomes previous.
        MigrationError while a live reference lacks an embedding in it; a repeated switch changes nothing."""
        ...

    def finish_migration(self) -> MigrationState:
        """Drop the previous model's space (after a switch); idempotent."""
        ...

    def abort_migration(self) -> MigrationState:
        """Drop the candidate's space (before a switch); idempotent."""
        ...

    def backfill_lease(self) -> AbstractContextManager[bool]:
        """True inside when this caller may back-fill now (one at a time per catalog, across replicas)."""
        ...

    def purge_deleted(self, older_than_seconds: float = DEFAULT_OLDER_THAN_SECONDS, limit: int = DEFAULT_BATCH, *,
                      vacuum: bool = False, max_seconds: float | None = None) -> PurgeReport:
        """Remove for good what was deleted more than `older_than_seconds` ago, `limit` rows per transaction,
        without changing the version or the head statistics (a backend that deletes at once reports zeros).
        `skipped` in the report: another process is purging this catalog now. See `skulens.catalog.purge`."""
        ...

    def export_references(self, after: int = 0, limit: int = 256) -> list[ExportedReference]:
        """Up to `limit` live references with reference id > `after`, in id order: product, source, hash, stored
        image and embedding (to copy a catalog; resume from the last id)."""
        ...

    def sample_embeddings(self, limit: int = 4096) -> np.ndarray:
        """Stored embeddings of up to `limit` live references drawn at random (all of them when the catalog holds
        fewer), float32 [m, dim], no images read: the catalog's reference distribution (drift monitoring)."""
        ...

    def stats(self) -> CatalogStats:
        """Counts, identity, version and index state."""
        ...

    def cache_state(self) -> CacheState | None:
        """How current the local copy that answers searches is (`--catalog-cache`); None when searches read the
        catalog itself."""
        ...

    def close(self) -> None:
        """Release what the backend holds (files, threads, connections); idempotent."""
        ...


_B = TypeVar("_B", bound="BackendState")


class BackendState:
    """What every backend does alike about its own state: closed or open, and whether its stored embeddings belong
    to the model it was opened for (a catalog opened with `allow_fingerprint_mismatch` serves reads and deletes
    only). A backend sets `_closed`, `_requested` (fingerprint, dim) and implements `_stored_identity`."""

    _closed: bool
    _requested: tuple[str, int]

    def _stored_identity(self) -> tuple[str, int]:
        """(fingerprint, dim) of the embeddings the catalog holds."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _B) -> _B:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _check_open(self, *, searchable: bool = False) -> None:
        """CatalogClosed once closed; with `searchable`, FingerprintMismatch when another model made the vectors."""
        if self._closed:
            raise CatalogClosed()
        mismatch = self._mismatch() if searchable else None
        if mismatch is not None:
            raise mismatch

    def _mismatch(self) -> FingerprintMismatch | None:
        have = self._stored_identity()
        if have == self._requested:
            return None
        return FingerprintMismatch.between(*have, *self._requested)
