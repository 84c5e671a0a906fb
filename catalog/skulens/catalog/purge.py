"""Purging deleted products and references for good: what a purge reports, and its arguments.

The shared catalog (`skulens.catalog.postgres`) deletes by tombstone: rows stay, with `deleted_at` set, invisible to
every read. `CatalogBackend.purge_deleted` removes the tombstones older than a grace period, in short batches
(`skulens.catalog.postgres_purge`); the embedded catalog deletes rows at once, so there it has nothing to do and
reports zeros. `skulens catalog purge` and the servers' periodic purge (`--purge-interval-seconds`) call it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from skulens.catalog.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from skulens.catalog.location import CatalogLocation

DEFAULT_OLDER_THAN_SECONDS = 86_400.0  # one day of grace before a tombstone may go
DEFAULT_BATCH = 500  # references (and products) deleted per transaction
MAX_BATCH = 100_000


@dataclass(frozen=True)
class PurgeReport:
    """What one purge removed (rows), in how many transactions and how long it took.

    `skipped`: another process held the catalog's purge lease (one purger at a time), so nothing was done.
    `vacuumed`: VACUUM ran on the purged tables afterwards (their HNSW graphs were cleaned then).
    """

    products: int = 0
    references: int = 0
    embeddings: int = 0  # vector rows of every model space (the HNSW graphs' tombstones)
    augmented: int = 0  # augmented views (catalog-adapted matching)
    batches: int = 0
    seconds: float = 0.0
    cutoff: float = 0.0  # tombstones older than this (Unix time) were eligible
    skipped: bool = False
    vacuumed: bool = False

    @property
    def rows(self) -> int:
        """Rows removed, all tables together."""
        return self.products + self.references + self.embeddings + self.augmented

    def format(self) -> str:
        """One line for people."""
        if self.skipped:
            return "purge skipped: another process is purging this catalog now"
        return (f"purged {self.products} products, {self.references} references, {self.embeddings} vectors and "
                f"{self.augmented} augmented views in {self.batches} batches ({self.seconds:.2f} s)"
                + ("; tables vacuumed" if self.vacuumed else ""))


def check_args(older_than_seconds: float, limit: int) -> tuple[float, int]:
    """(grace period, batch size) validated; InvalidArgument otherwise."""
    if isinstance(older_than_seconds, bool) or not isinstance(older_than_seconds, (int, float)) \
            or not 0.0 <= float(older_than_seconds) < float("inf"):
        raise InvalidArgument(f"older_than_seconds must be a finite number >= 0, got {older_than_seconds!r}",
                              field="older_than_seconds")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_BATCH:
        raise InvalidArgument(f"limit must be an integer in 1..{MAX_BATCH}, got {limit!r}", field="limit")
    return float(older_than_seconds), limit


def purge_location(location: CatalogLocation, *, older_than_seconds: float = DEFAULT_OLDER_THAN_SECONDS,
                   limit: int = DEFAULT_BATCH, vacuum: bool = False,
                   identity: tuple[str, int] | None = None) -> PurgeReport:
    """`skulens catalog purge`: purge the catalog at `location` (it must exist; NotFound otherwise) and close it.
    `identity`: (fingerprint, dim) of the model to open it for; default the one the catalog holds. An embedded
    catalog deletes rows at once: it has nothing to purge (zeros)."""
    grace, n = check_args(older_than_seconds, limit)
    if location.kind == "sqlite":
        from skulens.catalog.integrity import DB_FILE

        assert location.path is not None
        if not (location.path / DB_FILE).is_file():
            raise NotFound(f"no catalog in {location.redacted()}", field="catalog")
        return PurgeReport(cutoff=time.time() - grace)
    from skulens.catalog.postgres import PostgresCatalog
    from skulens.catalog.postgres_purge import stored_identity

    fp, dim = identity or stored_identity(location.url)
    with PostgresCatalog.open(location.url, fingerprint=fp, dim=dim, allow_fingerprint_mismatch=True) as catalog:
        return catalog.purge_deleted(grace, n, vacuum=vacuum)


__all__ = ["DEFAULT_BATCH", "DEFAULT_OLDER_THAN_SECONDS", "PurgeReport", "check_args", "purge_location"]
