"""`Settings`: every server option, from CLI flags, `SKULENS_*` environment variables and defaults, in one
place.

Each field of `Settings` declares its environment variable, its flag and its help text; `add_serve_arguments`
builds the argparse flags from them and `Settings.from_sources(args, environ)` resolves each value as
flag > environment > default. The frozen object is built once at start and passed in; nothing reads the
environment later.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from skulens.catalog.errors import InvalidArgument
from skulens.catalog.head import HeadSettings
from skulens.catalog.location import CatalogLocation, parse_location
from skulens.catalog.settings import CatalogSettings
from skulens.errors import ConfigError
from skulens.imaging.limits import DecodeLimits
from skulens.inference.options import BatcherOptions, EncoderOptions, EngineOptions
from skulens.service.admission_options import AdmissionOptions
from skulens.service.drift_options import DriftOptions

SCOPE_RECOGNIZE = "recognize"
SCOPE_CATALOG_WRITE = "catalog:write"
SCOPES = frozenset({SCOPE_RECOGNIZE, SCOPE_CATALOG_WRITE})
MIB = 1024 * 1024

Tokens = tuple[tuple[str, frozenset[str]], ...]


class SettingsError(ConfigError):
    """An option has a value out of its limits; the message names the flag/variable and the value."""


def parse_bool(text: str) -> bool:
    """'1/true/yes/on' → True, '0/false/no/off/' → False; anything else raises ValueError."""
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected a boolean (1/0, true/false, yes/no, on/off), got {text!r}")


def _opt_int(text: str) -> int | None:
    return None if text.strip() in ("", "none", "off") else int(text)


def _opt_path(text: str) -> Path | None:
    return Path(text).expanduser() if text.strip() else None


def _str_tuple(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def parse_tokens(text: str, origin: str = "tokens") -> Tokens:
    """Parse bearer tokens: entries split by newlines or ';', each `TOKEN SCOPE[,SCOPE]` (or `TOKEN=SCOPES`).

    Blank lines and `#` comments are skipped. Scopes are `recognize` and `catalog:write`.
    """
    out: list[tuple[str, frozenset[str]]] = []
    for lineno, raw in enumerate(text.replace(";", "\n").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace("=", " ", 1).split(None, 1)
        if len(parts) != 2:
            raise SettingsError(f"{origin} entry {lineno}: expected 'TOKEN SCOPE[,SCOPE]'")
        token, scope_text = parts
        scopes = frozenset(s.strip() for s in scope_text.split(",") if s.strip())
        unknown = scopes - SCOPES
        if unknown or not scopes:
            raise SettingsError(
                f"{origin} entry {lineno}: scopes must be among {sorted(SCOPES)}, "
                f"got {sorted(unknown) or '[]'}"
            )
        if len(token) < 16:
            raise SettingsError(f"{origin} entry {lineno}: a token must have at least 16 characters")
        out.append((token, scopes))
    return tuple(out)


def _opt(
    default: Any,
    help: str,
    parse: Callable[[str], Any] = str,
    *,
    flag: str | None = None,
    group: str = "server",
    repr: bool = True,
    cli: bool = True,
) -> Any:
    """A Settings field: default, help, string parser; env var SKULENS_<NAME>, flag --<name-with-dashes>."""
    meta = {"help": help, "parse": parse, "flag": flag, "group": group, "cli": cli}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use immutable defaults")
    return field(default=default, metadata=meta, repr=repr)


@dataclass(frozen=True)
class Settings:
    """Server options: build with `Settings.from_sources` (or directly in tests); frozen, passed in."""

    # -- where
    model_dir: Path | None = _opt(  # noqa: RUF009
        None, "exported model directory (from `skulens export`)", _opt_path, flag="--model", group="paths"
    )
    data_dir: Path | None = _opt(  # noqa: RUF009
        None, "catalog directory (created if absent): the embedded catalog, same as --catalog sqlite:///DIR",
        _opt_path, flag="--data", group="paths",
    )
    catalog: str = _opt(
        "",
        "catalog location: sqlite:///DIR or a directory (embedded SQLite + FAISS, one writer process), or "
        "postgresql://USER[:PASSWORD]@HOST[:PORT]/DB (shared by replicas; needs the 'postgres' extra); "
        "default: --data",
        group="paths",
    )
    catalog_cache: str = _opt(
        "none",
        "shared catalog only: 'faiss' keeps a local FAISS copy that answers searches, also while PostgreSQL cannot "
        "be reached (writes then answer UNAVAILABLE); 'none': searches read PostgreSQL",
        group="paths",
    )
    catalog_cache_poll_ms: float = _opt(
        1000.0,
        "with --catalog-cache: the copy reads the catalog's change feed this often, and on every change notification",
        float,
        group="paths",
    )
    host: str = _opt("127.0.0.1", "address to bind; anything but loopback needs tokens or --insecure")
    port: int = _opt(50051, "gRPC port; 0 picks a free port (logged)", int)
    metrics_port: int | None = _opt(
        None, "Prometheus /metrics HTTP port; 0 picks a free port; unset = off", _opt_int
    )
    metrics_host: str = _opt("", "address of the metrics endpoint (default: same as --host)")
    # -- limits
    max_message_mb: int = _opt(64, "largest request message in MiB", int, group="limits")
    max_images_per_request: int = _opt(
        64, "images per Recognize/Embed request or stream message", int, group="limits"
    )
    max_regions_per_image: int = _opt(32, "regions (boxes) per image", int, group="limits")
    max_texts_per_request: int = _opt(64, "texts per SearchByText/Embed request", int, group="limits")
    max_text_chars: int = _opt(1000, "characters per text query", int, group="limits")
    max_image_mb: float = _opt(20.0, "encoded bytes per image in MiB", float, group="limits")
    catalog_wait_ms: float = _opt(
        5000.0,
        "longest wait for a request's min_catalog_version (read-your-writes across replicas), within its deadline",
        float,
        group="limits",
    )
    default_top_k: int = _opt(5, "top_k when a request leaves it 0", int, group="limits")
    max_top_k: int = _opt(100, "largest top_k a request may ask for", int, group="limits")
    max_evaluation_images: int = _opt(
        1_000_000, "labelled photos per Evaluate call (each is kept as its answer, a few hundred bytes)", int,
        group="limits",
    )
    stream_window: int = _opt(
        64, "images of one RecognizeStream/AddReferenceImages call in flight at once", int, group="limits"
    )
    enroll_chunk: int = _opt(
        32, "AddReferenceImages: images embedded and committed together", int, group="limits"
    )
    grace_seconds: float = _opt(
        10.0, "on SIGTERM: seconds to let calls in flight finish", float, group="limits"
    )
    drain_delay_seconds: float = _opt(
        0.0,
        "on SIGTERM: seconds to keep answering (health NOT_SERVING, new calls UNAVAILABLE) before closing the "
        "port, so load balancers notice",
        float,
        group="limits",
    )
    # -- connections: hostile or vanished clients must not hold the server's resources
    request_read_timeout_seconds: float = _opt(
        30.0,
        "unary methods: seconds to wait for the whole request message after the call starts (a half-sent "
        "request is then ended with DEADLINE_EXCEEDED, freeing its stream); 0 = no limit",
        float,
        group="connections",
    )
    stream_idle_seconds: float = _opt(
        300.0,
        "streaming-request methods (RecognizeStream, AddReferenceImages): longest wait for the next message; a "
        "stream idle longer is ended with DEADLINE_EXCEEDED, freeing its call slot; 0 = no limit",
        float,
        group="connections",
    )
    keepalive_time_seconds: float = _opt(
        60.0,
        "seconds without traffic on a connection after which the server pings the client (finds dead peers)",
        float,
        group="connections",
    )
    keepalive_timeout_seconds: float = _opt(
        20.0, "seconds to wait for a ping's answer before the connection is closed", float, group="connections"
    )
    max_connection_idle_seconds: float = _opt(
        300.0,
        "close a connection that has had no call for this many seconds (clients reconnect); 0 = never",
        float,
        group="connections",
    )
    # -- security
    tokens_file: Path | None = _opt(  # noqa: RUF009
        None,
        "bearer tokens file: lines 'TOKEN SCOPE[,SCOPE]' (scopes: recognize, "
        "catalog:write); unset = no authentication",
        _opt_path,
        group="security",
    )
    tokens: str = _opt(
        "",
        "bearer tokens inline, 'TOKEN=SCOPES;TOKEN=SCOPES' (environment only)",
        group="security",
        repr=False,
        cli=False,
    )
    tls_cert: Path | None = _opt(  # noqa: RUF009
        None, "PEM server certificate (chain); with --tls-key enables TLS", _opt_path, group="security"
    )
    tls_key: Path | None = _opt(  # noqa: RUF009
        None, "PEM private key of --tls-cert", _opt_path, group="security"
    )
    tls_client_ca: Path | None = _opt(  # noqa: RUF009
        None, "PEM CA bundle: require client certificates signed by it (mTLS)", _opt_path, group="security"
    )
    insecure: bool = _opt(
        False,
        "allow a non-loopback bind without bearer tokens (logs a warning)",
        parse_bool,
        group="security",
    )
    # -- logging
    log_format: str = _opt("json", "log lines: json or text (key=value)", group="logging")
    log_level: str = _opt("INFO", "DEBUG, INFO, WARNING, ERROR", group="logging")
    log_refusals_per_second: float = _opt(
        20.0,
        "call log lines a second for calls refused as RESOURCE_EXHAUSTED (overload); the others are counted in the "
        "metrics and in the next line's refusals_not_logged; 0 = a line for every call",
        float,
        group="logging",
    )
    # -- inference
    providers: tuple[str, ...] = _opt(
        (),
        "ONNX Runtime providers in order, comma-separated (default: best available)",
        _str_tuple,
        group="inference",
    )
    require_gpu: bool = _opt(
        False, "refuse to start when no GPU provider is active", parse_bool, group="inference"
    )
    intra_op_threads: int = _opt(0, "ONNX Runtime intra-op threads (0 = its choice)", int, group="inference")
    ort_spinning: bool = _opt(
        False,
        "let idle ONNX Runtime threads busy-wait (faster bare model, starves decode and gRPC on few cores)",
        parse_bool,
        group="inference",
    )
    max_batch: int = _opt(32, "micro-batch size", int, group="inference")
    max_wait_ms: float = _opt(5.0, "micro-batch wait after the first item", float, group="inference")
    max_queue: int = _opt(
        1024, "images queued for the model before RESOURCE_EXHAUSTED", int, group="inference"
    )
    decode_workers: int | None = _opt(
        None, "image decoders, threads or processes (default: CPU count)", _opt_int, group="inference"
    )
    decode_processes: bool = _opt(
        True, "decode in worker processes, not threads (the gRPC loop keeps its interpreter lock under overload)",
        parse_bool, group="inference",
    )
    work_nice: int = _opt(
        10, "nice steps below the gRPC loop for decode, inference and onnxruntime threads (0-19)", int,
        group="inference",
    )
    # -- admission (server/admission.py): refuse before decoding, keep goodput under overload
    max_concurrent_calls: int = _opt(
        64, "embedding calls (Recognize, Embed, SearchByText, streams, enrolment) in progress at once",
        int, group="admission",
    )
    max_inflight_mb: float = _opt(
        256.0, "MiB of encoded image bytes held by admitted calls (bounds memory under overload)", float,
        group="admission",
    )
    queue_budget_ms: float = _opt(
        1000.0, "longest expected queue wait (ms) a call is admitted into; past it RESOURCE_EXHAUSTED at once",
        float, group="admission",
    )
    max_request_megapixels: float = _opt(
        1000.0, "decoded megapixels per request (all its images together)", float, group="admission"
    )
    fast_decode: bool = _opt(
        True, "decode JPEGs at reduced scale when large enough", parse_bool, group="inference"
    )
    # -- catalog
    unknown_threshold: float = _opt(0.70, "score under which the verdict is UNKNOWN", float, group="catalog")
    index_approximate_threshold: int = _opt(
        200_000, "references past which an approximate index replaces the exact one", int, group="catalog"
    )
    index_kind: str = _opt("hnsw", "approximate index: hnsw or ivf", group="catalog")
    index_recall_target: float = _opt(
        0.95,
        "product recall@10 an approximate index is tuned to at build time (search width doubled until reached; "
        "0 = off)",
        float,
        group="catalog",
    )
    index_build_memory_mb: int = _opt(
        1024,
        "PostgreSQL catalogs: the most maintenance_work_mem (MiB) an HNSW index build asks for (1M 512-d "
        "references want about 3900)",
        int,
        group="catalog",
    )
    ambiguity_margin: float = _opt(
        0.02, "best-minus-second score under which the verdict is AMBIGUOUS", float, group="catalog"
    )
    matching: str = _opt(
        "adapted",
        "adapted: products re-scored by a linear head learned from the catalog's references (kept up to date by "
        "every write); nearest: plain nearest-neighbour scores (docs/BENCHMARKS.md compares them)",
        group="catalog",
    )
    head_ridge: float = _opt(
        0.5, "adapted matching: ridge strength, as a fraction of the mean embedding variance", float, group="catalog"
    )
    head_weight: float = _opt(
        0.5, "adapted matching: weight of the ridge score next to the product-centroid cosine", float, group="catalog"
    )
    head_min_references: int = _opt(
        3, "adapted matching: products with fewer references keep their nearest-neighbour score", int,
        group="catalog",
    )
    head_candidates: int = _opt(
        16, "adapted matching: products proposed per query by the nearest-neighbour search, then re-scored", int,
        group="catalog",
    )
    augment_references: bool = _opt(
        True,
        "adapted matching: embed 21 augmented views (mirror, corner and centre crops) of each reference of products "
        "with fewer than --head-min-references references, in the background from the stored image once the catalog "
        "is quiet; they join the product's centroid (never the nearest-neighbour index)",
        parse_bool,
        group="catalog",
    )
    query_mirror: bool = _opt(
        False,
        "test-time augmentation: recognise each photo (Recognize, streams, Evaluate) by the mean of its and its mirror "
        "image's embedding (two model inputs per photo: about half the throughput; measured gain in "
        "docs/BENCHMARKS.md)",
        parse_bool,
        group="catalog",
    )
    augment_quiet_seconds: float = _opt(
        2.0, "augmented views wait for this many seconds without catalog writes (enrolments go first)", float,
        group="catalog",
    )
    enrolment_warnings: bool = _opt(
        True,
        "flag enrolled references closer to another product than to their own, near-duplicates of another "
        "product's reference, and unusable images (AddedReference.warnings); off: no warnings, no extra search",
        parse_bool,
        group="catalog",
    )
    near_duplicate_threshold: float = _opt(
        0.93,
        "enrolment warnings: cosine to another product's reference from which a new reference is its near-duplicate "
        "(measured for EfficientNet-Lite0 in docs/BENCHMARKS.md; model-dependent)",
        float,
        group="catalog",
    )
    allow_model_mismatch: bool = _opt(
        False,
        "start even when the catalog was built by another model: catalog reads and deletes work, recognition "
        "and enrolment answer FAILED_PRECONDITION until `skulens reembed`",
        parse_bool,
        group="catalog",
    )
    text_unknown_threshold: float = _opt(
        0.20,
        "SearchByText: score under which the verdict is UNKNOWN (CLIP "
        "text-to-image scores are lower than image-to-image)",
        float,
        group="catalog",
    )
    store_images: bool = _opt(
        True, "keep enrolled images (needed by `skulens reembed`)", parse_bool, group="catalog"
    )
    sync_commits: bool = _opt(
        True, "fsync every catalog commit (FULL); off = NORMAL, faster", parse_bool, group="catalog"
    )
    migration_poll_seconds: float = _opt(
        1.0,
        "how often the model-migration state is read from the catalog (other replicas' starts and switches)",
        float,
        group="migration",
    )
    backfill_batch: int = _opt(
        32, "reference images embedded per back-fill step of a model migration", int, group="migration"
    )
    backfill_pause_seconds: float = _opt(
        0.0,
        "pause between back-fill steps (yields CPU/GPU to live traffic; 0 = back-fill at full speed)",
        float,
        group="migration",
    )
    purge_after_seconds: float = _opt(
        86_400.0,
        "shared catalog: deleted products and references (rows, vectors) are purged for good once deleted this "
        "long ago (the grace period; see `skulens catalog purge`)",
        float,
        group="catalog",
    )
    purge_interval_seconds: float = _opt(
        3600.0,
        "how often this server purges old deletions from the catalog (one replica at a time; 0 = never)",
        float,
        group="catalog",
    )
    # -- drift monitoring (service/drift_monitor.py, docs/MONITORING.md)
    drift_monitor: bool = _opt(
        True, "watch each request source's query stream for drift (GetDriftReport, skulens_drift_* metrics)",
        parse_bool, group="drift",
    )
    drift_max_sources: int = _opt(
        64, "request sources tracked (bounds the monitor's memory); later ones are counted as _other", int,
        group="drift",
    )
    drift_window_size: int = _opt(200, "queries per drift window (it slides by a quarter)", int, group="drift")
    drift_window_seconds: float = _opt(900.0, "longest time a drift window spans", float, group="drift")
    drift_baseline_windows: int = _opt(
        2, "windows of a source's first queries that make its baseline", int, group="drift"
    )
    drift_clusters: int = _opt(
        64, "k-means centres fitted on the catalog's references (the 'far from every cluster' signal)", int,
        group="drift",
    )
    drift_refit_seconds: float = _opt(
        300.0, "least time between two reference fits while the catalog keeps changing", float, group="drift"
    )
    drift_watch_effect: float = _opt(0.2, "effect size (Cohen's h / d) a signal needs for WATCH", float, group="drift")
    drift_watch_z: float = _opt(3.0, "z a signal needs for WATCH", float, group="drift")
    drift_alert_effect: float = _opt(0.5, "effect size a signal needs for DRIFT", float, group="drift")
    drift_alert_z: float = _opt(5.0, "z a signal needs for DRIFT", float, group="drift")
    drift_history: int = _opt(240, "judged windows kept per source (report, plot)", int, group="drift")

    def __post_init__(self) -> None:
        def bad(name: str, limit: str) -> SettingsError:
            return SettingsError(f"{_flag(name)} / {_env(name)} must be {limit}, got {getattr(self, name)!r}")

        if not 0 <= self.port <= 65535:
            raise bad("port", "in 0..65535")
        if not 0 <= self.work_nice <= 19:
            raise bad("work_nice", "in 0..19")
        if not 0.0 <= self.catalog_wait_ms <= 600_000.0:
            raise bad("catalog_wait_ms", "in 0..600000")
        if not 0.01 <= self.migration_poll_seconds <= 3600.0:
            raise bad("migration_poll_seconds", "in 0.01..3600")
        if not 0.0 <= self.purge_after_seconds <= 315_360_000.0:
            raise bad("purge_after_seconds", "in 0..315360000")
        if not (self.purge_interval_seconds == 0.0 or 1.0 <= self.purge_interval_seconds <= 604_800.0):
            raise bad("purge_interval_seconds", "0 (never) or in 1..604800")
        if not 1 <= self.backfill_batch <= 4096:
            raise bad("backfill_batch", "in 1..4096")
        if not 0.0 <= self.backfill_pause_seconds <= 3600.0:
            raise bad("backfill_pause_seconds", "in 0..3600")
        if self.catalog:
            if self.data_dir is not None:
                raise SettingsError("give either --catalog / SKULENS_CATALOG or --data / SKULENS_DATA_DIR, not both")
            try:
                parse_location(self.catalog, "--catalog")
            except InvalidArgument as exc:
                raise SettingsError(exc.message) from None
        if self.catalog_cache not in ("none", "faiss"):
            raise bad("catalog_cache", "none or faiss")
        if self.catalog_cache != "none" and self.catalog_location_kind() != "postgresql":
            raise SettingsError("--catalog-cache needs a shared catalog (--catalog postgresql://...): the embedded "
                                "catalog is local already")
        if not 10.0 <= self.catalog_cache_poll_ms <= 600_000.0:
            raise bad("catalog_cache_poll_ms", "in 10..600000")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise bad("metrics_port", "in 0..65535")
        for name in (
            "max_message_mb",
            "max_images_per_request",
            "max_regions_per_image",
            "max_texts_per_request",
            "max_text_chars",
            "default_top_k",
            "max_top_k",
            "stream_window",
            "max_evaluation_images",
            "enroll_chunk",
            "max_batch",
            "max_queue",
            "max_concurrent_calls",
            "index_approximate_threshold",
        ):
            if getattr(self, name) < 1:
                raise bad(name, ">= 1")
        if self.default_top_k > self.max_top_k:
            raise bad("default_top_k", f"<= max_top_k ({self.max_top_k})")
        if self.max_image_mb <= 0 or self.max_image_mb > self.max_message_mb:
            raise bad("max_image_mb", f"in (0, max_message_mb={self.max_message_mb}]")
        if self.drain_delay_seconds < 0:
            raise bad("drain_delay_seconds", ">= 0")
        for name in ("request_read_timeout_seconds", "max_connection_idle_seconds", "stream_idle_seconds"):
            if not 0 <= getattr(self, name) <= 86_400:
                raise bad(name, "in [0, 86400] (0 = off)")
        for name in ("keepalive_time_seconds", "keepalive_timeout_seconds"):
            if not 1 <= getattr(self, name) <= 86_400:
                raise bad(name, "in [1, 86400]")
        for name in ("max_inflight_mb", "queue_budget_ms", "max_request_megapixels"):
            if not getattr(self, name) > 0:
                raise bad(name, "> 0")
        if self.grace_seconds < 0 or self.max_wait_ms < 0 or self.intra_op_threads < 0:
            raise bad(
                "grace_seconds"
                if self.grace_seconds < 0
                else "max_wait_ms"
                if self.max_wait_ms < 0
                else "intra_op_threads",
                ">= 0",
            )
        if not 0.0 <= self.log_refusals_per_second <= 1e6:
            raise bad("log_refusals_per_second", "in 0..1000000")
        if self.log_format not in ("json", "text"):
            raise bad("log_format", "json or text")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise bad("log_level", "DEBUG, INFO, WARNING or ERROR")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise SettingsError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        if not -1.0 <= self.unknown_threshold <= 1.0:
            raise bad("unknown_threshold", "in [-1, 1]")
        if self.index_kind not in ("hnsw", "ivf"):
            raise bad("index_kind", "hnsw or ivf")
        if not 0.0 <= self.index_recall_target <= 1.0:
            raise bad("index_recall_target", "in [0, 1]")
        if self.index_build_memory_mb < 1:
            raise bad("index_build_memory_mb", ">= 1")
        if not 0.0 <= self.ambiguity_margin <= 2.0:
            raise bad("ambiguity_margin", "in [0, 2]")
        if not -1.0 <= self.near_duplicate_threshold <= 1.0:
            raise bad("near_duplicate_threshold", "in [-1, 1]")
        if not -1.0 <= self.text_unknown_threshold <= 1.0:
            raise bad("text_unknown_threshold", "in [-1, 1]")
        if self.matching not in ("adapted", "nearest"):
            raise bad("matching", "adapted or nearest")
        if not 0.0 < self.head_ridge <= 1000.0:
            raise bad("head_ridge", "in (0, 1000]")
        if not 0.0 <= self.head_weight <= 100.0:
            raise bad("head_weight", "in [0, 100]")
        if not 1 <= self.head_min_references <= 1_000_000:
            raise bad("head_min_references", "in 1..1000000")
        if not 0.0 <= self.augment_quiet_seconds <= 3600.0:
            raise bad("augment_quiet_seconds", "in [0, 3600]")
        if not 1 <= self.head_candidates <= 1000:
            raise bad("head_candidates", "in 1..1000 (searches take at most --max-top-k)")
        self._check_drift(bad)

    def _check_drift(self, bad: Callable[[str, str], SettingsError]) -> None:
        for name, lo, hi in (
            ("drift_max_sources", 1, 10_000), ("drift_window_size", 4, 1_000_000), ("drift_baseline_windows", 1, 100),
            ("drift_clusters", 1, 4096), ("drift_history", 1, 100_000),
        ):
            if not lo <= getattr(self, name) <= hi:
                raise bad(name, f"in {lo}..{hi}")
        for name in ("drift_window_seconds", "drift_refit_seconds", "drift_watch_effect", "drift_watch_z"):
            if not getattr(self, name) > 0:
                raise bad(name, "> 0")
        if self.drift_alert_effect < self.drift_watch_effect:
            raise bad("drift_alert_effect", f">= drift_watch_effect ({self.drift_watch_effect})")
        if self.drift_alert_z < self.drift_watch_z:
            raise bad("drift_alert_z", f">= drift_watch_z ({self.drift_watch_z})")

    # ---- sources
    @classmethod
    def from_sources(
        cls,
        args: argparse.Namespace | None = None,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Resolve every field: keyword override > CLI flag (not None) > `SKULENS_<NAME>` > default."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in overrides:
                values[f.name] = overrides[f.name]
                continue
            given = getattr(args, f.name, None) if args is not None else None
            if given is not None:
                values[f.name] = given
                continue
            raw = env.get(_env(f.name))
            if raw is not None:
                try:
                    values[f.name] = f.metadata["parse"](raw)
                except ValueError as exc:
                    raise SettingsError(f"{_env(f.name)}={raw!r}: {exc}") from None
        return cls(**values)

    # ---- derived
    @property
    def max_message_bytes(self) -> int:
        """Largest gRPC message the server accepts or sends."""
        return self.max_message_mb * MIB

    @property
    def bind_address(self) -> str:
        """`host:port` for grpc (IPv6 hosts bracketed)."""
        return f"{_host_for_url(self.host)}:{self.port}"

    @property
    def tls_enabled(self) -> bool:
        """True when a server certificate is configured."""
        return self.tls_cert is not None

    def load_tokens(self) -> Tokens:
        """Bearer tokens from `tokens_file` and `tokens` (environment); empty = authentication off."""
        out: list[tuple[str, frozenset[str]]] = []
        if self.tokens_file is not None:
            try:
                text = self.tokens_file.read_text()
            except OSError as exc:
                raise SettingsError(f"--tokens-file {self.tokens_file}: {exc.strerror}") from None
            out.extend(parse_tokens(text, f"--tokens-file {self.tokens_file}"))
        if self.tokens:
            out.extend(parse_tokens(self.tokens, _env("tokens")))
        return tuple(out)

    def exposure_warnings(self, tokens: Tokens) -> list[str]:
        """Check the bind address against authentication: raise `SettingsError` on a non-loopback bind without
        tokens unless `insecure`; return warnings to log loudly otherwise."""
        if is_loopback(self.host):
            return []
        warnings: list[str] = []
        if not tokens:
            if not self.insecure:
                raise SettingsError(
                    f"refusing to listen on non-loopback address {self.host!r} without bearer tokens: set "
                    f"--tokens-file / {_env('tokens_file')} (or {_env('tokens')}), or pass --insecure / "
                    f"{_env('insecure')}=1 to serve unauthenticated"
                )
            warnings.append(
                f"INSECURE: serving on {self.host!r} without authentication (--insecure): anyone who can "
                "reach this port can read and change the catalog"
            )
        if not self.tls_enabled:
            warnings.append(
                f"serving on non-loopback {self.host!r} without TLS: requests"
                + (" and bearer tokens" if tokens else "")
                + " travel in clear text (set --tls-cert/--tls-key)"
            )
        return warnings

    def engine_options(self) -> EngineOptions:
        """The inference engine's options from these settings."""
        return EngineOptions(
            decode=DecodeLimits(max_bytes=int(self.max_image_mb * MIB)),
            encoder=EncoderOptions(
                providers=self.providers or None,
                require_gpu=self.require_gpu,
                intra_op_threads=self.intra_op_threads,
                spinning=self.ort_spinning,
            ),
            batcher=BatcherOptions(
                max_batch=self.max_batch, max_wait_ms=self.max_wait_ms, max_queue=self.max_queue
            ),
            fast_decode=self.fast_decode,
            decode_workers=self.decode_workers,
            decode_processes=self.decode_processes,
            work_nice=self.work_nice,
        )

    def admission_options(self) -> AdmissionOptions:
        """Admission control limits from these settings."""
        return AdmissionOptions(
            max_calls=self.max_concurrent_calls,
            max_inflight_bytes=max(1, int(self.max_inflight_mb * MIB)),
            queue_budget_s=self.queue_budget_ms / 1000.0,
            max_request_pixels=max(1, int(self.max_request_megapixels * 1_000_000)),
        )

    def drift_options(self) -> DriftOptions:
        """The drift monitor's options from these settings."""
        return DriftOptions(
            max_sources=self.drift_max_sources, window_size=self.drift_window_size,
            window_seconds=self.drift_window_seconds, baseline_windows=self.drift_baseline_windows,
            clusters=self.drift_clusters, refit_seconds=self.drift_refit_seconds, watch_z=self.drift_watch_z,
            alert_z=self.drift_alert_z, watch_effect=self.drift_watch_effect, alert_effect=self.drift_alert_effect,
            history=self.drift_history,
        )

    def catalog_location(self) -> CatalogLocation | None:
        """Where the catalog lives (`--catalog`, else `--data`); None when neither is set."""
        if self.catalog:
            return parse_location(self.catalog, "--catalog")
        return CatalogLocation("sqlite", path=self.data_dir) if self.data_dir is not None else None

    def catalog_location_kind(self) -> str:
        """"postgresql" or "sqlite" ("" when no catalog is set or it does not parse)."""
        try:
            location = self.catalog_location()
        except InvalidArgument:
            return ""
        return location.kind if location is not None else ""

    def catalog_settings(self) -> CatalogSettings:
        """The catalog's settings from these settings."""
        return CatalogSettings(
            synchronous="FULL" if self.sync_commits else "NORMAL",
            max_top_k=self.max_top_k,
            unknown_threshold=self.unknown_threshold,
            ambiguity_margin=self.ambiguity_margin,
            near_duplicate_threshold=self.near_duplicate_threshold,
            store_images=self.store_images,
            approximate_threshold=self.index_approximate_threshold,
            approximate_kind="ivf" if self.index_kind == "ivf" else "hnsw",
            recall_target=self.index_recall_target,
            index_build_memory_mb=self.index_build_memory_mb,
        )

    def head_settings(self) -> HeadSettings:
        """How adapted matching is fitted and applied, from these settings."""
        return HeadSettings(enabled=self.matching == "adapted", ridge=self.head_ridge, weight=self.head_weight,
                            min_references=self.head_min_references, candidates=self.head_candidates)

    def describe(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict for the start-up log (secrets left out)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if not f.repr:
                out[f.name] = "<set>" if getattr(self, f.name) else ""
                continue
            v = getattr(self, f.name)
            if f.name == "catalog" and v:
                v = parse_location(v).redacted()  # a URL may carry a password
            out[f.name] = str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
        return out


def _env(name: str) -> str:
    return f"SKULENS_{name.upper()}"


def _flag(name: str) -> str:
    for f in fields(Settings):
        if f.name == name and f.metadata.get("flag"):
            return str(f.metadata["flag"])
    return "--" + name.replace("_", "-")


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def is_loopback(host: str) -> bool:
    """True for localhost / 127.0.0.0/8 / ::1 (a bind that other machines cannot reach)."""
    h = host.strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per Settings field (default None, so that unset flags fall back to the environment)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(Settings):
        if not f.metadata.get("cli", True):
            continue
        gname = f.metadata["group"]
        group = groups.get(gname) or groups.setdefault(gname, parser.add_argument_group(gname))
        default = None if f.default is MISSING else f.default
        shown = "unset" if default in (None, (), "") else default
        help_text = f"{f.metadata['help']} [env {_env(f.name)}; default {shown}]"
        flag = _flag(f.name)
        aliases = (
            [flag] if flag == "--" + f.name.replace("_", "-") else [flag, "--" + f.name.replace("_", "-")]
        )
        if f.metadata["parse"] is parse_bool:
            group.add_argument(
                *aliases, dest=f.name, default=None, action=argparse.BooleanOptionalAction, help=help_text
            )
        else:
            group.add_argument(
                *aliases,
                dest=f.name,
                default=None,
                type=f.metadata["parse"],
                help=help_text,
                metavar=f.name.upper().split("_")[-1] if f.name.endswith("dir") else None,
            )
