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
from types import TracebackType
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np

from skulens.catalog.errors import CatalogClosed, FingerprintMismatch
from skulens.catalog.models import (
    AddedReference,
    CatalogStats,
    ExportedReference,
    NewReference,
    Product,
    ProductDetail,
    SearchResult,
)
from skulens.catalog.settings import CatalogSettings


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
    ) -> tuple[Product, bool]:
        """Create a product, or update an existing one: every field, or only `update_fields` (of display_name,
        category, labels; the others keep their stored values); (product as stored, created)."""
        ...

    def get_product(self, product_id: str) -> ProductDetail:
        """A product with its references; NotFound when absent."""
        ...

    def list_products(
        self, page_size: int = 100, page_token: str = "", category: str = ""
    ) -> tuple[list[Product], str]:
        """One page ordered by product id, and the next page's token ("" at the end)."""
        ...

    def delete_product(self, product_id: str) -> int:
        """Delete a product and its references; how many references went."""
        ...

    def add_references(
        self, product_id: str, refs: Sequence[NewReference], *, store_images: bool | None = None
    ) -> list[AddedReference]:
        """Enrol references of an existing product in one transaction (all or nothing)."""
        ...

    def existing_hashes(self, product_id: str, content_sha256s: Sequence[str]) -> dict[str, int]:
        """{content_sha256: reference_id} of those hashes the product already has."""
        ...

    def delete_reference(self, reference_id: int) -> None:
        """Delete one reference; NotFound when absent."""
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
    ) -> list[SearchResult]:
        """Top-k products per unit-norm query row, best first, with a verdict each (`trusted`: the rows come
        from an `Encoder` of this catalog's model, so their norms are not checked again)."""
        ...

    def export_references(self, after: int = 0, limit: int = 256) -> list[ExportedReference]:
        """Up to `limit` live references with reference id > `after`, in id order: product, source, hash, stored
        image and embedding (to copy a catalog; resume from the last id)."""
        ...

    def stats(self) -> CatalogStats:
        """Counts, identity, version and index state."""
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
