"""Plain data objects the catalog takes and returns."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class Verdict(str, enum.Enum):
    """What a search answer means."""

    KNOWN = "KNOWN"  # the best product is above the unknown threshold and clear of the runner-up
    UNKNOWN = "UNKNOWN"  # best score below the threshold: not a catalog product, or not a usable photo
    AMBIGUOUS = "AMBIGUOUS"  # the best products are closer than the ambiguity margin (see `confusable`)


@dataclass(frozen=True)
class Product:
    """A catalog product (without its references)."""

    product_id: str
    display_name: str = ""
    category: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    reference_count: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class ReferenceInfo:
    """A stored reference image, without its embedding."""

    reference_id: int
    source: str
    content_sha256: str | None
    has_image: bool
    created_at: float


@dataclass(frozen=True)
class ProductDetail:
    """A product and its references, ordered by reference_id."""

    product: Product
    references: list[ReferenceInfo]


@dataclass(frozen=True)
class NewReference:
    """A reference to enrol: a unit-norm embedding and, optionally, the encoded image it came from.

    `content_sha256` (hex) makes enrolment idempotent: a second reference with the same product and hash
    returns the existing reference. It is computed from `image` when not given.
    """

    embedding: np.ndarray
    source: str = ""
    image: bytes | None = None
    content_sha256: str | None = None


@dataclass(frozen=True)
class AddedReference:
    """Result of enrolling one reference; `duplicate` when an identical one existed (nothing written)."""

    reference_id: int
    product_id: str
    duplicate: bool


@dataclass(frozen=True)
class Match:
    """One product in a search answer; `reference_id` is the product's best-scoring reference."""

    product_id: str
    display_name: str
    score: float
    reference_id: int


@dataclass(frozen=True)
class SearchResult:
    """Answer for one query: products best first, the verdict, and the products it could be confused with.

    `best_score` is the best product's score before `min_score` is applied (-1.0 when nothing matched the
    filters); `confusable` lists the products within the ambiguity margin of the best one (best first) when
    the verdict is AMBIGUOUS, else it is empty.
    """

    matches: list[Match]
    verdict: Verdict
    best_score: float
    confusable: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SnapshotInfo:
    """Where the index snapshot lives and what happened to it at open."""

    path: str
    enabled: bool
    loaded: bool  # True when the index came from the snapshot at open
    detail: str  # why it was (not) loaded
    generation: int | None  # store generation of the snapshot on disk
    bytes: int


@dataclass(frozen=True)
class CatalogStats:
    """Counts and index state for monitoring (`skulens stats`, the Stats RPC)."""

    products: int
    references: int
    references_with_image: int
    dim: int
    fingerprint: str
    index_kind: str  # "flat", "hnsw", "ivf", or "none" while the catalog awaits `reembed`
    index_device: str  # "cpu" or "gpu"
    index_size: int  # vectors in the index (HNSW: tombstones included)
    index_tombstones: int
    index_bytes: int
    recall_at_10: float | None  # measured against the exact index when an approximate index was built
    index_search_width: int  # HNSW efSearch / IVF nprobe chosen at build time (0 for the exact index)
    index_build_seconds: float
    index_generation: int
    store_generation: int
    rebuild_in_progress: bool
    snapshot: SnapshotInfo
    db_size_bytes: int
    schema_version: int


@dataclass(frozen=True)
class DroppedReference:
    """A reference `reembed` removed: it had no stored image, or the new model could not embed it."""

    reference_id: int
    product_id: str
    reason: str


@dataclass(frozen=True)
class ReembedReport:
    """Outcome of `Catalog.reembed`."""

    old_fingerprint: str
    new_fingerprint: str
    old_dim: int
    new_dim: int
    reembedded: int
    resumed: int  # embeddings reused from an interrupted earlier run with the same new fingerprint
    dropped: list[DroppedReference]
    seconds: float
