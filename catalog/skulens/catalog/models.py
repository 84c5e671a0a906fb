"""Plain data objects the catalog takes and returns."""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: A crop of a reference image: (x, y, width, height) in pixels.
Region = tuple[int, int, int, int]


def region_of(row: Sequence[Any]) -> Region | None:
    """(x, y, width, height) from four stored columns; None when they are NULL (the whole image)."""
    if row[0] is None:
        return None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


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
    description: str = ""  # free text for keyword search (up to 4,096 characters); may be empty

    @property
    def etag(self) -> str:
        """A tag of the product's own fields as stored (id, name, category, labels, last update; AIP-154): it
        changes with every write of the product, not with its references. Same on every backend and replica."""
        return product_etag(self.product_id, self.display_name, self.category, self.labels, self.updated_at)


def product_etag(product_id: str, display_name: str, category: str, labels: dict[str, str],
                 updated_at: float) -> str:
    """The etag of a product's stored fields (see `Product.etag`)."""
    text = json.dumps([product_id, display_name, category, sorted(labels.items()), repr(float(updated_at))])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class ReferenceInfo:
    """A stored reference image, without its embedding."""

    reference_id: int
    source: str
    content_sha256: str | None
    has_image: bool
    created_at: float
    region: Region | None = None  # the crop of the image it shows (x, y, width, height); None: all of it


@dataclass(frozen=True)
class ProductDetail:
    """A product and its references, ordered by reference_id."""

    product: Product
    references: list[ReferenceInfo]


class HashedImage:
    """Encoded image bytes with their sha256, computed here, once (the catalog trusts it without hashing again).

    Immutable: the hash is made by the constructor from the bytes it keeps, so it always matches them.
    """

    __slots__ = ("_data", "_sha256")
    _data: bytes
    _sha256: str

    def __init__(self, data: bytes) -> None:
        kept = bytes(data)
        object.__setattr__(self, "_data", kept)
        object.__setattr__(self, "_sha256", hashlib.sha256(kept).hexdigest())

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("HashedImage is immutable")

    @property
    def data(self) -> bytes:
        """The encoded image."""
        return self._data

    @property
    def sha256(self) -> str:
        """Lower-case hex sha256 of `data`."""
        return self._sha256

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"HashedImage({len(self._data)} bytes, sha256={self._sha256[:12]}…)"


@dataclass(frozen=True)
class NewReference:
    """A reference to enrol: a unit-norm embedding and, optionally, the encoded image it came from.

    `content_sha256` (hex) makes enrolment idempotent: a second reference with the same product and hash
    returns the existing reference. With `image` as plain bytes it is computed (or checked against them); with a
    `HashedImage` the hash it carries is used as is (it was made from those bytes).
    """

    embedding: np.ndarray
    source: str = ""
    image: bytes | HashedImage | None = None
    content_sha256: str | None = None
    #: The part of the image the embedding is of (x, y, width, height in pixels); None: the whole image. Part of
    #: the duplicate identity (two crops of one photo are two references) and used when the image is embedded again.
    region: Region | None = None
    #: The same image embedded by the other model of a migration (candidate, or previous after a switch):
    #: {fingerprint: unit-norm vector}; spaces the catalog does not hold are ignored (back-fill covers the rest).
    space_embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    #: The client's request id (AIP-155, a UUID) for a safe retry: stored with the reference while it exists; an
    #: enrolment naming it again answers that reference (`AddedReference.replayed`) when product, content hash and
    #: region are the same, and fails with RequestIdReused when they are not.
    request_id: str | None = None


@dataclass(frozen=True)
class ExportedReference:
    """A stored reference as `export_references` reads it back, to copy it into another catalog."""

    reference_id: int
    product_id: str
    source: str
    content_sha256: str | None
    image: bytes | None
    embedding: np.ndarray
    region: Region | None = None
    request_id: str | None = None  # the enrolment request id (AIP-155) the reference was added with, if any


@dataclass(frozen=True)
class AddedReference:
    """Result of enrolling one reference; `duplicate` when an identical one existed (nothing written);
    `replayed` when its request id had added this reference before (the original outcome: duplicate False,
    nothing written)."""

    reference_id: int
    product_id: str
    duplicate: bool
    replayed: bool = False


@dataclass(frozen=True)
class RequestedReference:
    """The live reference an enrolment request id (AIP-155) added, and what it was added as."""

    request_id: str
    reference_id: int
    product_id: str
    content_sha256: str
    region: Region | None = None


@dataclass(frozen=True)
class Match:
    """One product in a search answer; `reference_id` is the product's best-scoring reference."""

    product_id: str
    display_name: str
    score: float
    reference_id: int


@dataclass(frozen=True)
class TextMatch:
    """One product a keyword (full-text) search found: `relevance` is the backend's rank of the product's text
    for the query (SQLite FTS5: -bm25(); PostgreSQL: ts_rank_cd), higher is better, only comparable within one
    answer of one backend."""

    product_id: str
    display_name: str
    relevance: float


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
    """What any catalog backend reports (`skulens catalog stats`, the GetCatalogStats RPC, metrics)."""

    backend: str  # e.g. "sqlite+faiss"
    products: int
    references: int
    references_with_image: int
    dim: int
    fingerprint: str
    version: int  # catalog version: bumped by every committed write
    index_kind: str  # "flat" (exact), "hnsw", "ivf", or "none" while the catalog awaits `reembed`
    index_device: str  # where searches run: "cpu" or "gpu"
    index_size: int  # vectors in the index
    recall_at_10: float | None  # approximate indexes: recall@10 against exact search, measured at build
    index_search_width: int  # HNSW efSearch / IVF nprobe chosen at build time (0 for the exact index)
    rebuild_in_progress: bool
    storage_bytes: int  # bytes the backend's durable store takes


@dataclass(frozen=True)
class CacheState:
    """How current a local copy of a shared catalog is (`--catalog-cache`; `skulens.catalog.mirror`)."""

    kind: str  # "faiss"
    reachable: bool  # the copy's connection to the shared catalog is up and its last read succeeded
    version: int  # the catalog version the copy holds (what searches answer from)
    primary_version: int  # the highest version of the shared catalog the copy has seen (>= version)
    seconds_since_sync: float  # since the copy last read the shared catalog successfully
    syncs: int  # reads that changed the copy
    full_syncs: int  # of which reads of everything
    last_error: str  # why the last read or connection failed ("" when the last one succeeded)


@dataclass(frozen=True)
class EmbeddedStats(CatalogStats):
    """`CatalogStats` of the embedded backend (SQLite + FAISS), with its index and snapshot details."""

    index_tombstones: int  # HNSW: removed vectors still in the graph (counted in index_size)
    index_bytes: int
    index_build_seconds: float
    index_generation: int  # store generation the in-memory index reflects
    store_generation: int
    snapshot: SnapshotInfo
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
