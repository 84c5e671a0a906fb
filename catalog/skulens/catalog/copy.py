"""Copy a catalog into another (embedded ⇄ PostgreSQL, or any two `CatalogBackend`s): products with their
metadata, then every reference with its embedding, stored image, source and content hash.

Resumable and safe to run again: products are upserted, and references are skipped when the target product has
their content hash already (`existing_hashes`). A reference stored without any hash (enrolled from an embedding
alone) gets one made from its embedding, so a second run recognises it too. Both catalogs must hold one model's
embeddings (same fingerprint and dimension): anything else is refused before a write.

A target that loads in bulk (`BulkTarget`: the PostgreSQL catalog) gets each page of references in one
transaction (`add_references_many`, which skips what the target has by itself) inside `bulk_load`, which builds its
HNSW index once at the end when the copy at least doubles what the index holds (`skulens.catalog.postgres_bulk`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from skulens.catalog.backend import CatalogBackend
from skulens.catalog.errors import FingerprintMismatch
from skulens.catalog.models import AddedReference, ExportedReference, NewReference


@dataclass
class CopyReport:
    """What a copy did."""

    products: int = 0
    references: int = 0  # read from the source
    copied: int = 0  # written to the target
    skipped: int = 0  # the target had them already (an earlier, interrupted run)
    hashed_from_embedding: int = 0  # references without a content hash, given one made from the embedding
    seconds: float = 0.0


_MANY = 1024  # products a bulk transaction names at most


@runtime_checkable
class BulkTarget(Protocol):
    """A catalog that loads in bulk: several products' references a transaction, its index built after."""

    def bulk_load(self, expected: int = 0, *, defer_index: bool | None = None) -> AbstractContextManager[bool]:
        """Around a load of about `expected` references (see `PostgresCatalog.bulk_load`)."""
        ...

    def add_references_many(self, items: Sequence[tuple[str, Sequence[NewReference]]], *,
                            store_images: bool | None = None) -> list[list[AddedReference]]:
        """`add_references` for several products in one transaction."""
        ...


def embedding_hash(embedding: np.ndarray) -> str:
    """The content hash given to a reference stored without one: sha256 of its float32 embedding bytes."""
    return hashlib.sha256(b"skulens-embedding:" + np.asarray(embedding, dtype="<f4").tobytes()).hexdigest()


def copy_catalog(source: CatalogBackend, target: CatalogBackend, *, batch: int = 256,
                 progress: Callable[[int], object] | None = None) -> CopyReport:
    """Copy every product and reference of `source` into `target`; `progress(n)` after each n references."""
    if (source.fingerprint, source.dim) != (target.fingerprint, target.dim):
        raise FingerprintMismatch.between(source.fingerprint, source.dim, target.fingerprint, target.dim)
    t0 = time.perf_counter()
    report = CopyReport()
    token = ""
    while True:
        page, token = source.list_products(target.settings.max_page_size, token)
        for p in page:
            target.upsert_product(p.product_id, p.display_name, p.category, p.labels,
                                  description=p.description)
        report.products += len(page)
        if not token:
            break
    bulk = target if isinstance(target, BulkTarget) else None
    loading = bulk.bulk_load(source.stats().references) if bulk is not None else nullcontext(False)
    with loading:
        after = 0
        while rows := source.export_references(after, batch):
            by_product: dict[str, list[ExportedReference]] = {}
            for r in rows:
                by_product.setdefault(r.product_id, []).append(r)
            if bulk is not None:
                _copy_many(bulk, target.settings.max_references_per_call, by_product, report)
            else:
                for pid, refs in by_product.items():
                    _copy_references(target, pid, refs, report)
            report.references += len(rows)
            after = rows[-1].reference_id
            if progress is not None:
                progress(len(rows))
    report.seconds = time.perf_counter() - t0
    return report


def _new_reference(r: ExportedReference, report: CopyReport) -> NewReference:
    if r.content_sha256 is None:
        report.hashed_from_embedding += 1
    return NewReference(embedding=r.embedding, source=r.source, image=r.image,
                        content_sha256=r.content_sha256 or embedding_hash(r.embedding), region=r.region,
                        request_id=r.request_id)


def _copy_many(target: BulkTarget, limit: int, by_product: dict[str, list[ExportedReference]],
               report: CopyReport) -> None:
    """One page into a bulk target, in one transaction (more if a product has more than `limit` references in
    it); what the target has already comes back as duplicates (or replays of their request ids): skipped."""
    items = [(pid, [_new_reference(r, report) for r in refs]) for pid, refs in by_product.items()]
    while items:
        call = [(pid, refs[:limit]) for pid, refs in items]
        items = [(pid, refs[limit:]) for pid, refs in items if len(refs) > limit]
        for at in range(0, len(call), _MANY):
            for added in target.add_references_many(call[at:at + _MANY]):
                skipped = sum(a.duplicate or a.replayed for a in added)
                report.skipped += skipped
                report.copied += len(added) - skipped


def _copy_references(target: CatalogBackend, pid: str, refs: list[ExportedReference], report: CopyReport) -> None:
    new = [_new_reference(r, report) for r in refs]
    have = target.existing_hashes(pid, [n.content_sha256 or "" for n in new])
    todo = [n for n in new if n.region is not None or n.content_sha256 not in have]
    report.skipped += len(refs) - len(todo)
    limit = target.settings.max_references_per_call
    for at in range(0, len(todo), limit):
        added = target.add_references(pid, todo[at:at + limit])
        report.copied += sum(not a.duplicate for a in added)
        report.skipped += sum(a.duplicate for a in added)
