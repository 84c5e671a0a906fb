"""skulens catalog: durable product store (SQLite WAL), FAISS index, product matching, unknown detection.

Knows vectors, a dimension and a model fingerprint; never imports `server` or `export`.
"""

from skulens.catalog.calibrate import CalibrationReport, calibrate
from skulens.catalog.catalog import Catalog
from skulens.catalog.errors import (
    AlreadyExists,
    CatalogClosed,
    CatalogError,
    FingerprintMismatch,
    InvalidArgument,
    NotFound,
)
from skulens.catalog.models import (
    AddedReference,
    CatalogStats,
    DroppedReference,
    Match,
    NewReference,
    Product,
    ProductDetail,
    ReembedReport,
    ReferenceInfo,
    SearchResult,
    SnapshotInfo,
    Verdict,
)
from skulens.catalog.settings import CatalogSettings

__all__ = [
    "AddedReference", "AlreadyExists", "CalibrationReport", "Catalog", "CatalogClosed", "CatalogError",
    "CatalogSettings", "CatalogStats", "DroppedReference", "FingerprintMismatch", "InvalidArgument", "Match",
    "NewReference", "NotFound", "Product", "ProductDetail", "ReembedReport", "ReferenceInfo", "SearchResult",
    "SnapshotInfo", "Verdict", "calibrate",
]
