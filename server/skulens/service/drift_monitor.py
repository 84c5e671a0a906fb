"""`DriftMonitor`: per-source drift and anomaly signals over sliding windows of the recognition query stream.

The request path only calls `observe` (a lock, a deque append: the embeddings array the search already made is
kept by reference, never copied); it never raises and never waits. Two daemon threads do the rest off the path:

- the aggregator (every `interval_seconds`) drains the queue into each source's baseline or current slice, judges
  a window whenever a slice closes (by count or by time) and keeps the judged windows (`drift_stats.judge`);
- the refitter reads the catalog version every `refit_check_seconds` and, when it changed (at most once per
  `refit_seconds`), draws a sample of the catalog's embeddings (`CatalogBackend.sample_embeddings`) and fits the
  reference: mean, spread, k-means centres (`skulens.catalog.clusters`, one OpenMP thread) and the far cut.

Sources: `check_source` validates a request's `source`; the first `max_sources` distinct sources are tracked for
the server's life, later ones fold into `_other` (counted). Memory is bounded by `memory_bound()` whatever the
number of sources a client invents.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import unicodedata
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from skulens.catalog.clusters import Clusters, fit_clusters
from skulens.service.drift_options import DEFAULT_SOURCE, MAX_SOURCE_CHARS, OVERFLOW_SOURCE, DriftOptions
from skulens.service.drift_stats import (
    Accum,
    Reference,
    State,
    Window,
    describe,
    far_of_sample,
    judge,
    merge,
)
from skulens.service.errors_grpc import BadRequest

if TYPE_CHECKING:
    from skulens.catalog.backend import CatalogBackend

log = logging.getLogger("skulens.drift")

#: Allowance per kept history window (a slotted Window without its signals, and its floats).
WINDOW_BYTES = 640
#: A fit that read fewer catalog embeddings than this is redone at the next catalog change (it costs milliseconds).
SMALL_FIT = 1024
#: From this many sampled embeddings on, the far cut comes from references the k-means did not see.
HOLD_OUT_FROM = 25
FOLDS = 5


def check_source(text: str, field: str = "source") -> str:
    """A request's source, NFC-normalised: at most MAX_SOURCE_CHARS characters, no control characters, not
    starting with '_' (reserved for _default and _other); BadRequest otherwise. "" → DEFAULT_SOURCE."""
    if not text:
        return DEFAULT_SOURCE
    s = unicodedata.normalize("NFC", text)
    if len(s) > MAX_SOURCE_CHARS:
        raise BadRequest(f"{field} has {len(s)} characters; the limit is {MAX_SOURCE_CHARS}", field=field)
    if s.startswith("_"):
        raise BadRequest(f"{field} may not start with '_' (reserved: {DEFAULT_SOURCE}, {OVERFLOW_SOURCE})", field=field)
    if any(unicodedata.category(c)[0] == "C" for c in s):
        raise BadRequest(f"{field} contains a control or unassigned character", field=field)
    return s


def centres_and_far_cosines(sample: np.ndarray, max_k: int, seed: int = 0) -> tuple[Clusters, np.ndarray]:
    """k-means centres of `sample` (min(max_k, n / 8)), and nearest-centre cosines of references the k-means did
    not see, for the far cut: under SMALL_FIT embeddings every reference once out of fold (FOLDS fits on the other
    folds, then the centres from all: cheap at that size); from SMALL_FIT on, one fold held out of the only fit."""
    n = len(sample)

    def k_of(m: int) -> int:
        return min(max_k, m // 8) if m >= 8 else min(1, m)

    if n < HOLD_OUT_FROM:
        c = fit_clusters(sample, k_of(n))
        return c, c.nearest
    folds = np.array_split(np.random.default_rng(seed).permutation(n), FOLDS)
    if n >= SMALL_FIT:
        train = np.concatenate(folds[1:])
        c = fit_clusters(sample[train], k_of(len(train)))
        return c, c.nearest_cosine(sample[folds[0]])
    out = np.empty(n, np.float32)
    for f in range(FOLDS):
        train = np.concatenate([folds[j] for j in range(FOLDS) if j != f])
        out[folds[f]] = fit_clusters(sample[train], k_of(len(train))).nearest_cosine(sample[folds[f]])
    return fit_clusters(sample, k_of(n)), out


@dataclass
class _Item:
    source: str
    fingerprint: str
    vectors: np.ndarray
    verdicts: list[int]
    scores: list[float]
    at: float


@dataclass
class _Track:
    """One source: its baseline (sums + a sample of its embeddings), the current slices, the judged windows."""

    name: str
    dim: int
    options: DriftOptions
    queries: int = 0
    last_seen: float = 0.0
    baseline: Accum = field(init=False)
    sample: np.ndarray = field(init=False)  # [baseline_sample, dim] float16 once the baseline starts
    sample_seen: int = 0
    open: Accum = field(init=False)
    slices: deque[Accum] = field(init=False)
    history: deque[Window] = field(init=False)
    window: Window | None = None  # the latest judged window, with its signals
    state: State = State.LEARNING
    base_far: tuple[int, tuple[float, int]] = (-2, (math.nan, 0))  # (fit id, (share, n)) cached
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.baseline = Accum(self.dim)
        self.sample = np.zeros((0, self.dim), np.float16)  # allocated at the first baseline query
        self.open = Accum(self.dim)
        self.slices = deque(maxlen=self.options.slices)
        self.history = deque(maxlen=self.options.history)
        self.rng = np.random.default_rng(zlib.crc32(self.name.encode()))

    @property
    def baseline_ready(self) -> bool:
        return self.baseline.n >= self.options.baseline_queries

    def keep_sample(self, rows: np.ndarray) -> None:
        """Reservoir sampling of the baseline's embeddings (float16, at most baseline_sample rows)."""
        cap = self.options.baseline_sample
        if not len(self.sample):
            self.sample = np.zeros((cap, self.dim), np.float16)
        for row in rows:
            j = self.sample_seen if self.sample_seen < cap else int(self.rng.integers(0, self.sample_seen + 1))
            if j < cap:
                self.sample[j] = row
            self.sample_seen += 1

    @property
    def baseline_sample(self) -> np.ndarray:
        """The kept baseline embeddings [min(seen, cap), dim]."""
        return self.sample[: min(self.sample_seen, len(self.sample))]

    def nbytes(self) -> int:
        return (
            self.baseline.nbytes()
            + self.open.nbytes()
            + sum(s.nbytes() for s in self.slices)
            + int(self.sample.nbytes)
            + len(self.history) * WINDOW_BYTES
            + 1024
        )


@dataclass(frozen=True)
class SourceReport:
    """One source as the report shows it."""

    source: str
    state: State
    queries: int
    baseline_ready: bool
    baseline_queries: int
    baseline: Window | None
    current: Window | None
    history: tuple[Window, ...]
    last_seen: float


@dataclass(frozen=True)
class ReferenceReport:
    """The reference fit in force."""

    catalog_version: int
    references: int
    clusters: int
    far_cut: float
    fitted_at: float
    fit_seconds: float
    fits: int
    error: str


@dataclass(frozen=True)
class DriftReport:
    """A consistent copy of the monitor's state."""

    sources: tuple[SourceReport, ...]
    reference: ReferenceReport | None
    options: DriftOptions
    folded_queries: int
    dropped_queries: int
    memory_bytes: int
    memory_bound_bytes: int


class DriftMonitor:
    """Per-source drift signals; see the module docstring. `start()` runs the two threads; without it (tests)
    `process()` and `refit()` do their work when called."""

    def __init__(
        self,
        options: DriftOptions,
        catalog_of: Callable[[], CatalogBackend | None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.options = options
        self._catalog_of = catalog_of
        self._clock = clock
        self._qlock = threading.Lock()
        self._pending: deque[_Item] = deque()
        self._pending_n = 0
        self._dropped = 0
        self._lock = threading.Lock()  # sources and reference
        self._tracks: dict[str, _Track] = {}
        self._folded = 0
        self._space = ""  # fingerprint of the embeddings tracked
        self._dim = 0
        self._reference: Reference | None = None
        self._reference_space = ""
        self._fits = 0
        self._fit_error = ""
        self._last_fit = -math.inf
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._observe_failed = False

    # ------------------------------------------------------------------ request path
    def observe(self, source: str, fingerprint: str, vectors: np.ndarray, recognitions: Sequence[Any]) -> None:
        """Queue m searched queries of `source` (unit-norm rows [m, dim] and their Recognition answers, same
        order) for the aggregator. O(m) list building plus one append; never raises; drops (and counts) when
        `queue_max` queries already wait."""
        try:
            m = len(recognitions)
            if not m:
                return
            item = _Item(
                source,
                fingerprint,
                vectors,
                [r.verdict for r in recognitions],
                [r.best_score for r in recognitions],
                self._clock(),
            )
            with self._qlock:
                if self._pending_n + m > self.options.queue_max:
                    self._dropped += m
                    return
                self._pending.append(item)
                self._pending_n += m
        except Exception:  # monitoring never fails a recognition call
            if not self._observe_failed:
                self._observe_failed = True
                log.warning("drift monitor: observe failed (logged once)", exc_info=True)

    # ------------------------------------------------------------------ aggregation (off the path)
    def process(self, now: float | None = None) -> int:
        """Drain the queue into the sources and close the slices that are due; returns the items drained."""
        with self._qlock:
            items = list(self._pending)
            self._pending.clear()
            self._pending_n = 0
        with self._lock:
            for item in items:
                self._add(item)
            self._close_due(self._clock() if now is None else now)
        return len(items)

    def _add(self, item: _Item) -> None:
        vectors = np.asarray(item.vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(item.verdicts):
            return
        if item.fingerprint != self._space or vectors.shape[1] != self._dim:
            # another embedding space (a model switch): every baseline is void
            self._tracks.clear()
            self._space, self._dim = item.fingerprint, int(vectors.shape[1])
        track = self._track(item.source or DEFAULT_SOURCE, len(vectors))
        track.queries += len(vectors)
        track.last_seen = item.at
        verdicts = np.asarray(item.verdicts, dtype=np.int64)
        scores = np.asarray(item.scores, dtype=np.float64)
        ref = self._current_reference()
        far = ref.far(vectors) if ref is not None else None
        fit_id = ref.fit_id if ref is not None else -1
        start = 0
        need = self.options.baseline_queries - track.baseline.n
        if need > 0:
            end = min(need, len(vectors))
            if track.baseline.n == 0:
                track.baseline.opened = item.at
            track.baseline.add(vectors[:end], verdicts[:end], scores[:end], None if far is None else far[:end], fit_id)
            track.baseline.closed = item.at
            track.keep_sample(vectors[:end])
            start = end
        size = self.options.slice_size
        while start < len(vectors):
            acc = track.open
            if acc.n == 0:
                acc.opened = item.at
            end = min(len(vectors), start + size - acc.n)
            acc.add(
                vectors[start:end],
                verdicts[start:end],
                scores[start:end],
                None if far is None else far[start:end],
                fit_id,
            )
            start = end
            if acc.n >= size:
                self._close_slice(track, item.at)

    def _track(self, source: str, m: int) -> _Track:
        track = self._tracks.get(source)
        if track is not None:
            return track
        named = len(self._tracks) - (DEFAULT_SOURCE in self._tracks) - (OVERFLOW_SOURCE in self._tracks)
        if source not in (DEFAULT_SOURCE, OVERFLOW_SOURCE) and named >= self.options.max_sources:
            self._folded += m
            source = OVERFLOW_SOURCE
            track = self._tracks.get(source)
            if track is not None:
                return track
        track = _Track(source, self._dim, self.options)
        self._tracks[source] = track
        return track

    def _current_reference(self) -> Reference | None:
        ref = self._reference
        if ref is None or self._reference_space != self._space or len(ref.mean) != self._dim:
            return None
        return ref

    def _close_slice(self, track: _Track, now: float) -> None:
        track.open.closed = now
        track.slices.append(track.open)
        track.open = Accum(track.dim)
        self._judge(track, now)

    def _close_due(self, now: float) -> None:
        span = self.options.window_seconds / self.options.slices
        for track in self._tracks.values():
            if track.open.n and now - track.open.opened >= span:
                self._close_slice(track, now)

    def _judge(self, track: _Track, now: float) -> None:
        ref = self._current_reference()
        fit_id = ref.fit_id if ref is not None else -1
        recent = [s for s in track.slices if s.closed >= now - self.options.window_seconds]
        window = merge(recent, track.dim, fit_id)
        if window.n < self.options.min_window_queries:
            return
        if track.base_far[0] != fit_id:
            track.base_far = (fit_id, far_of_sample(track.baseline_sample, ref))
        judged = judge(window, track.baseline, track.base_far[1], ref, self.options)
        track.window = judged
        track.state = judged.state
        track.history.append(_without_signals(judged))

    # ------------------------------------------------------------------ reference (off the path)
    def refit(self, *, force: bool = False) -> bool:
        """Fit the reference when the catalog changed (and refit_seconds passed since the last fit), or when
        `force`; True when a new fit is in force."""
        catalog = self._catalog_of()
        if catalog is None:
            return False
        version = catalog.version()
        ref = self._reference
        current = ref is not None and self._reference_space == catalog.fingerprint
        # a small fit (a new or small catalog) is cheap: redone at the next change, not refit_seconds later
        recent = time.monotonic() - self._last_fit < self.options.refit_seconds and (
            ref is not None and ref.references >= SMALL_FIT
        )
        if not force and current and ref is not None and (ref.catalog_version == version or recent):
            return False
        t0 = time.perf_counter()
        sample = catalog.sample_embeddings(self.options.sample_size())
        clusters, far_cosines = centres_and_far_cosines(sample, self.options.clusters, seed=version)
        fitted = Reference.fit(
            self._fits + 1,
            sample,
            clusters,
            self.options,
            version,
            self._clock(),
            time.perf_counter() - t0,
            far_cosines,
        )
        with self._lock:
            self._reference, self._reference_space = fitted, catalog.fingerprint
            self._fits += 1
            self._fit_error = ""
        self._last_fit = time.monotonic()
        log.info(
            "drift reference fitted: %d embeddings, %d centres, %.3f s",
            len(sample),
            fitted.k,
            fitted.fit_seconds,
            extra={"fields": {"catalog_version": version}},
        )
        return True

    # ------------------------------------------------------------------ threads
    def start(self) -> None:
        """Start the aggregator and the refitter (daemon threads)."""
        loops = (("skulens-drift-aggregate", self._aggregate_loop), ("skulens-drift-refit", self._refit_loop))
        for name, body in loops:
            t = threading.Thread(target=body, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the threads (before the catalog closes); idempotent."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()

    def _aggregate_loop(self) -> None:
        while not self._stop.wait(self.options.interval_seconds):
            try:
                self.process()
            except Exception:
                log.exception("drift monitor: aggregation failed")

    def _refit_loop(self) -> None:
        while True:
            try:
                self.refit()
            except Exception as exc:
                with self._lock:
                    self._fit_error = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("drift monitor: reference fit failed: %s", exc)
            if self._stop.wait(self.options.refit_check_seconds):
                return

    # ------------------------------------------------------------------ reading
    def memory_bound(self, dim: int | None = None) -> int:
        """Most bytes the monitor holds at `dim` (default: the current one), whatever the number of sources."""
        d = dim if dim is not None else max(self._dim, 1)
        o = self.options
        accum = Accum(d).nbytes()
        track = (o.slices + 2) * accum + o.baseline_sample * d * 2 + o.history * WINDOW_BYTES + 1024
        return (o.max_sources + 2) * track + o.queue_max * d * 4

    def report(self, source: str | None = None, history: int | None = None) -> DriftReport:
        """A consistent copy: every source (or only `source`), each with its last `history` windows (all kept
        when None)."""
        with self._lock:
            tracks = [t for name, t in sorted(self._tracks.items()) if source is None or name == source]
            cur, ref = self._current_reference(), self._reference  # the fit of the tracked space; the last fit
            sources = []
            for t in tracks:
                kept = tuple(t.history) if history is None else tuple(t.history)[-history:] if history > 0 else ()
                base = None
                if t.baseline.n:
                    far = (
                        t.base_far[1]
                        if cur is not None and t.base_far[0] == cur.fit_id
                        else far_of_sample(t.baseline_sample, cur)
                    )
                    base = describe(t.baseline, cur, far, self.options)
                sources.append(
                    SourceReport(
                        t.name,
                        t.state if t.baseline_ready else State.LEARNING,
                        t.queries,
                        t.baseline_ready,
                        t.baseline.n,
                        base,
                        t.window,
                        kept,
                        t.last_seen,
                    )
                )
            reference = None
            if ref is not None or self._fit_error:
                reference = ReferenceReport(
                    ref.catalog_version if ref else 0,
                    ref.references if ref else 0,
                    ref.k if ref else 0,
                    ref.far_cut if ref else math.nan,
                    ref.fitted_at if ref else 0.0,
                    ref.fit_seconds if ref else 0.0,
                    self._fits,
                    self._fit_error,
                )
            memory = sum(t.nbytes() for t in self._tracks.values())
            folded = self._folded
        with self._qlock:
            dropped = self._dropped
            memory += sum(int(i.vectors.nbytes) for i in self._pending)
        return DriftReport(tuple(sources), reference, self.options, folded, dropped, memory, self.memory_bound())


def _without_signals(w: Window) -> Window:
    """The window as history keeps it (its per-signal detail only in the latest)."""
    return Window(
        w.end,
        w.queries,
        w.shares,
        w.score_mean,
        w.score_p10,
        w.score_p50,
        w.score_p90,
        w.reference_distance,
        w.mean_shift,
        w.far_share,
        w.state,
    )
