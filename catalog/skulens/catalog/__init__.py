"""Catalog: products and their reference embeddings behind the `CatalogBackend` Protocol (`backend`), in two
backends — embedded (`catalog`: SQLite WAL, the source of truth, + the FAISS index derived from it) and shared
(`postgres`: PostgreSQL + pgvector, for replicas) — opened by `location.open_catalog`; pure product matching and
unknown detection (`matching`) for both.

Knows vectors, a dimension and a model fingerprint; imports only `skulens.errors` outside itself (never the
service, inference, imaging, client or export rooms). The names below are imported on first use (PEP 562), so
`skulens.catalog.errors` / `.settings` / `.validation` need neither FAISS nor a model runtime.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "calibrate": ["CalibrationReport", "calibrate"],
    "catalog": ["Catalog"],
    "copy": ["CopyReport", "copy_catalog"],
    "location": ["CatalogLocation", "open_catalog", "parse_location"],
    "backend": ["CatalogBackend"],
    "errors": [
        "AlreadyExists", "CatalogClosed", "CatalogError", "CatalogUnavailable", "FingerprintMismatch",
        "InvalidArgument", "NotFound",
    ],
    "models": [
        "AddedReference", "CatalogStats", "DroppedReference", "EmbeddedStats", "ExportedReference", "HashedImage",
        "Match", "NewReference", "Product", "ProductDetail", "ReembedReport", "ReferenceInfo", "SearchResult",
        "SnapshotInfo", "Verdict",
    ],
    "settings": ["CatalogSettings"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
