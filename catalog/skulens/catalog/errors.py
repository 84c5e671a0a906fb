"""Catalog domain errors.

Every error carries `field` (the request field it concerns, or None) and a message that names the limit
and the value; the gRPC layer maps the class to a status code (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from skulens.errors import SkulensError

if TYPE_CHECKING:
    from skulens.catalog.models import RequestedReference


class CatalogError(SkulensError):
    """Base of every catalog error; `field` names the request field concerned, if any."""


class InvalidArgument(CatalogError):
    """A request value is out of its documented limits (nothing was written)."""


class NotFound(CatalogError):
    """The product or reference named by the request does not exist."""


class AlreadyExists(CatalogError):
    """The object the request would create exists already."""


class RequestIdReused(AlreadyExists):
    """An enrolment's request id (AIP-155) was used before for another product, content or region: that reference
    stays as it is and nothing was written."""

    @classmethod
    def naming(cls, before: RequestedReference, field: str) -> RequestIdReused:
        """The error for a request id that added `before`, sent again for something else (`field`: its path)."""
        region = "" if before.region is None else f", region {before.region}"
        return cls(f"request id {before.request_id} added reference {before.reference_id} (product "
                   f"{before.product_id!r}, content sha256 {before.content_sha256[:12]}…{region}); a retry must "
                   "send the same product, content and region, and new work a new request id", field=field)


class FingerprintMismatch(CatalogError):
    """The catalog's embeddings were made by another model than the one in use.

    Build it with `FingerprintMismatch.between(...)`, which writes the standard message (both fingerprints and
    the fix); the stored/requested values are kept as attributes.
    """

    stored_fingerprint: str = ""
    stored_dim: int = 0
    requested_fingerprint: str = ""
    requested_dim: int = 0

    @classmethod
    def between(cls, stored: str, stored_dim: int, requested: str, requested_dim: int) -> FingerprintMismatch:
        """The error for a catalog made by model `stored` opened or used with model `requested`."""
        err = cls(
            f"catalog embeddings were made by model {stored!r} (dim {stored_dim}) but the model in use is "
            f"{requested!r} (dim {requested_dim}); vectors of different models cannot be compared. "
            f"Run `skulens reembed` to re-embed the stored reference images with the new model.",
            field="fingerprint",
        )
        err.stored_fingerprint, err.stored_dim = stored, stored_dim
        err.requested_fingerprint, err.requested_dim = requested, requested_dim
        return err


class EtagMismatch(CatalogError):
    """A write named the product's etag as read earlier, and the product has changed since (AIP-154): nothing was
    written; read it again and retry."""

    @classmethod
    def between(cls, product_id: str, expected: str, stored: str) -> EtagMismatch:
        """The error for a write of `product_id` naming etag `expected` while the product has `stored`."""
        return cls(f"product {product_id!r} changed since it was read (etag {expected!r}, now {stored!r}): nothing "
                   "was written; read it again and retry", field="etag")


class MigrationError(CatalogError):
    """A model-migration step does not fit the migration's state (none running, another model's migration, the
    candidate space not filled yet, no previous model to switch back to); nothing was changed."""


class CatalogClosed(CatalogError):
    """The catalog was closed; open it again."""

    def __init__(self, message: str = "catalog is closed", field: str | None = None) -> None:
        super().__init__(message, field)


class CatalogUnavailable(CatalogError):
    """The shared catalog cannot be reached (server down, connection lost, no free connection, lock not granted in
    time); retry. Nothing was written, except where the message says that the outcome of a write is unknown."""

    retry_after_s = 1.0  # the gRPC layer's retry hint (RetryInfo, grpc-retry-pushback-ms)


class CatalogCorrupt(CatalogError):
    """A catalog file is damaged, or lost next to evidence that the catalog held data; nothing was changed.

    The message names the file, what is wrong with it and what to do (restore from a backup, move the
    directory aside to start empty, or run `skulens catalog check`).
    """
