"""`CatalogSettings`: every tunable of the catalog, passed in explicitly (no module-level state)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from skulens.catalog.errors import InvalidArgument

Synchronous = Literal["FULL", "NORMAL"]
ApproximateKind = Literal["hnsw", "ivf"]
UseGpu = Literal["auto", "never"]


@dataclass(frozen=True)
class CatalogSettings:
    """Catalog tunables; defaults are safe for a production CPU deployment.

    synchronous: SQLite `PRAGMA synchronous` in WAL mode. "FULL" (default) fsyncs the WAL on every commit,
        so an acknowledged write survives power loss as well as SIGKILL; "NORMAL" survives SIGKILL / process
        crash but may lose the last commits on power loss (never corrupts), and makes commits cheaper.
    approximate_threshold: number of indexed references past which an approximate index replaces the exact one
        (rebuilt in the background; exact again below half of it).
    approximate_kind: "hnsw" (IndexHNSWFlat; removals are tombstones until the next rebuild) or "ivf"
        (IndexIVFFlat; removals are physical, centroids retrained when the size doubles).
    max_top_k: the largest `top_k` a search may ask for.
    unknown_threshold: best product score below which the verdict is UNKNOWN.
    ambiguity_margin: best-minus-second product score below which the verdict is AMBIGUOUS.
    use_gpu: "auto" uses faiss-gpu for the exact index when a GPU is present, "never" stays on CPU.
    snapshot: write the index to disk on close and load it at open when its stamp matches the store.
    store_images: keep the encoded reference image (enables `reembed`) unless the caller says otherwise.
    filter_exact_limit: HNSW searches whose filter lets through at most this many references compare the query
        with just those vectors (exact) instead of walking the graph.
    blas_threshold: faiss `distance_compute_blas_threshold`: query batches at least this large use BLAS
        (faiss default 128000 makes a 64-query flat search ~10x slower).
    search_threads: faiss OpenMP threads of one search call (0 = faiss default, all cores). 1 by default: a
        server runs many searches at once next to the model, and concurrent multi-threaded OpenMP teams spin
        and starve each other (4 concurrent clients: 31.7 → 104.0 images/s, docs/BENCHMARKS.md).
    build_threads: faiss OpenMP threads of an index build, recall measurement included (0 = all cores).
    index_build_memory_mb: the most `maintenance_work_mem` a PostgreSQL HNSW build asks for (MiB; it asks for
        what its rows need, `postgres_bulk.build_memory`, up to this). pgvector builds the graph in that memory
        and far slower once it no longer fits: 1,000,000 512-d vectors with `hnsw_m` 32 want about 3.8 GiB.
    recall_target: after building an approximate index, its search width (HNSW efSearch / IVF nprobe, starting
        at `hnsw_ef_search` / `ivf_nprobe`) is doubled until the measured recall@10 of the product search (top-10
        products against exact search, as the PostgreSQL catalog measures its HNSW width) reaches this target or
        the width reaches `hnsw_max_ef_search` / `ivf_max_nprobe`; 0 keeps the starting width.
    near_duplicate_threshold, unusable_min_side, unusable_min_luminance_std: when an enrolled reference is
        flagged as a near-duplicate of another product's reference (cosine), or unusable (shortest side in
        pixels, luminance standard deviation 0..255); `skulens.catalog.confusability`, measured in
        docs/BENCHMARKS.md ("Enrolment warnings and catalog doctor").
    """

    synchronous: Synchronous = "FULL"
    busy_timeout_ms: int = 10_000
    approximate_threshold: int = 200_000
    approximate_kind: ApproximateKind = "hnsw"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 96
    hnsw_max_tombstone_fraction: float = 0.2
    ivf_nlist: int = 0  # 0: about 2*sqrt(n) (see catalog.index.ivf_nlist)
    ivf_nprobe: int = 32
    recall_target: float = 0.95
    hnsw_max_ef_search: int = 1024
    ivf_max_nprobe: int = 512
    recall_queries: int = 500
    filter_exact_limit: int = 20_000
    max_top_k: int = 100
    unknown_threshold: float = 0.70
    ambiguity_margin: float = 0.02
    near_duplicate_threshold: float = 0.93
    unusable_min_side: int = 64
    unusable_min_luminance_std: float = 8.0
    use_gpu: UseGpu = "auto"
    snapshot: bool = True
    store_images: bool = True
    blas_threshold: int = 16
    search_threads: int = 1
    build_threads: int = 0
    norm_tolerance: float = 0.01
    max_references_per_call: int = 1024
    max_image_bytes: int = 32 * 1024 * 1024
    max_page_size: int = 1000
    build_chunk: int = 65_536
    index_build_memory_mb: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, limit: str) -> InvalidArgument:
            return InvalidArgument(f"{name} must be {limit}, got {getattr(self, name)!r}", field=name)

        if self.synchronous not in ("FULL", "NORMAL"):
            raise bad("synchronous", '"FULL" or "NORMAL"')
        if self.approximate_kind not in ("hnsw", "ivf"):
            raise bad("approximate_kind", '"hnsw" or "ivf"')
        if self.use_gpu not in ("auto", "never"):
            raise bad("use_gpu", '"auto" or "never"')
        for name in ("approximate_threshold", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search",
                     "ivf_nprobe", "recall_queries", "max_top_k", "max_references_per_call",
                     "max_image_bytes",
                     "max_page_size", "build_chunk", "blas_threshold", "hnsw_max_ef_search", "ivf_max_nprobe",
                     "index_build_memory_mb"):
            if int(getattr(self, name)) < 1:
                raise bad(name, ">= 1")
        if self.ivf_nlist < 0:
            raise bad("ivf_nlist", ">= 0")
        for name in ("filter_exact_limit", "search_threads", "build_threads"):
            if int(getattr(self, name)) < 0:
                raise bad(name, ">= 0")
        if not -1.0 <= self.unknown_threshold <= 1.0:
            raise bad("unknown_threshold", "in [-1, 1]")
        if not 0.0 <= self.ambiguity_margin <= 2.0:
            raise bad("ambiguity_margin", "in [0, 2]")
        if not -1.0 <= self.near_duplicate_threshold <= 1.0:
            raise bad("near_duplicate_threshold", "in [-1, 1]")
        if self.unusable_min_side < 0 or self.unusable_min_luminance_std < 0:
            raise bad("unusable_min_side" if self.unusable_min_side < 0 else "unusable_min_luminance_std", ">= 0")
        if not 0.0 < self.hnsw_max_tombstone_fraction <= 1.0:
            raise bad("hnsw_max_tombstone_fraction", "in (0, 1]")
        if not 0.0 <= self.recall_target <= 1.0:
            raise bad("recall_target", "in [0, 1]")
        if not 0.0 < self.norm_tolerance < 1.0:
            raise bad("norm_tolerance", "in (0, 1)")

    def index_config(self) -> dict[str, object]:
        """The settings an index snapshot depends on (a snapshot built with others is rebuilt)."""
        keep = ("approximate_threshold", "approximate_kind", "hnsw_m", "hnsw_ef_construction", "ivf_nlist",
                "hnsw_ef_search", "ivf_nprobe", "recall_target", "hnsw_max_ef_search", "ivf_max_nprobe")
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in keep}
