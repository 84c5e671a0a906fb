"""Where a catalog lives (`--catalog URL`) and opening the backend that serves it.

`sqlite:///DIR` or a bare directory: the embedded backend (SQLite WAL + in-process FAISS) — one process writes
it. `postgresql://USER[:PASSWORD]@HOST[:PORT]/DB` (also `postgres://`): the shared backend (PostgreSQL +
pgvector), for several replicas on one catalog. Backends are imported only when opened, so the embedded one
needs no PostgreSQL driver and the shared one no FAISS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from skulens.catalog.backend import CatalogBackend
from skulens.catalog.errors import InvalidArgument
from skulens.catalog.settings import CatalogSettings

POSTGRES_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True)
class CatalogLocation:
    """A parsed `--catalog` value: the embedded catalog's directory, or a PostgreSQL URL."""

    kind: Literal["sqlite", "postgresql"]
    path: Path | None = None
    url: str = ""

    def redacted(self) -> str:
        """For logs and errors: the location with any password replaced by ***."""
        if self.kind == "sqlite":
            return f"sqlite://{self.path}" if str(self.path).startswith("/") else str(self.path)
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))


def parse_location(text: str | Path, field: str = "catalog") -> CatalogLocation:
    """`sqlite:///DIR`, a directory path, or `postgresql://…`; InvalidArgument naming `field` otherwise."""
    raw = str(text).strip()
    if not raw:
        raise InvalidArgument(f"{field} is empty: give sqlite:///DIR, a directory, or postgresql://...", field)
    scheme = raw.split("://", 1)[0].lower() if "://" in raw else ""
    if scheme in POSTGRES_SCHEMES:
        parts = urlsplit(raw)
        if not parts.hostname and "host=" not in parts.query:
            raise InvalidArgument(f"{field} {CatalogLocation('postgresql', url=raw).redacted()!r} names no host",
                                  field)
        return CatalogLocation("postgresql", url=raw)
    if scheme == "sqlite":
        path = raw[len("sqlite://"):]
        if not path.startswith("/"):
            raise InvalidArgument(f"{field} {raw!r}: write sqlite:///ABSOLUTE/DIR (three slashes)", field)
        return CatalogLocation("sqlite", path=Path(path))
    if scheme:
        raise InvalidArgument(f"{field} {raw!r}: unknown scheme {scheme!r} (sqlite://, postgresql://)", field)
    return CatalogLocation("sqlite", path=Path(raw).expanduser())


CACHE_KINDS = ("none", "faiss")


def open_catalog(location: CatalogLocation, *, fingerprint: str, dim: int, settings: CatalogSettings | None = None,
                 allow_fingerprint_mismatch: bool = False, cache: str = "none",
                 cache_poll_seconds: float = 1.0) -> CatalogBackend:
    """Open (creating if new) the catalog at `location` for the model `fingerprint` / `dim`.

    `cache`: "faiss" keeps a local FAISS copy of a shared catalog that answers searches, also while the database
    cannot be reached (`skulens.catalog.mirrored`), read again every `cache_poll_seconds` and on every change
    notification; "none" (default): searches read the catalog itself. The embedded catalog is local already."""
    if cache not in CACHE_KINDS:
        raise InvalidArgument(f"catalog cache {cache!r}: use one of {', '.join(CACHE_KINDS)}", "catalog_cache")
    if cache != "none" and location.kind != "postgresql":
        raise InvalidArgument("a catalog cache needs a shared catalog (postgresql://...): the embedded catalog "
                              "is local already", "catalog_cache")
    if location.kind == "postgresql":
        from skulens.catalog.postgres import PostgresCatalog

        primary = PostgresCatalog.open(location.url, fingerprint=fingerprint, dim=dim, settings=settings,
                                       allow_fingerprint_mismatch=allow_fingerprint_mismatch)
        if cache == "none":
            return primary
        if primary.fingerprint != fingerprint:
            primary.close()
            raise InvalidArgument("a catalog cache copies the serving model's embeddings: it cannot be used while "
                                  "the catalog holds another model's (start without --catalog-cache)",
                                  "catalog_cache")
        from skulens.catalog.mirrored import MirroredCatalog

        return MirroredCatalog.open(primary, poll_seconds=cache_poll_seconds)
    from skulens.catalog.catalog import Catalog

    assert location.path is not None
    return Catalog.open(location.path, fingerprint=fingerprint, dim=dim, settings=settings,
                        allow_fingerprint_mismatch=allow_fingerprint_mismatch)
