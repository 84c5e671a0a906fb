"""The drift detector's arithmetic: sums over a set of queries (`Accum`), the catalog's reference distribution
(`Reference`), and the judgement of a window against a source's baseline (`judge`). Pure and single-threaded:
`skulens.service.drift_monitor` owns the threads and the sources.

Every signal is compared with the source's baseline on one scale, a standardised effect size `e` (Cohen's h for
shares, Cohen's d for the best score, the mean embedding's shift in units of the baseline's spread), and a
z = e / sqrt(1/n_window + 1/n_baseline). A signal is at DRIFT when e >= alert_effect and z >= alert_z, at WATCH
when e >= watch_effect and z >= watch_z; the window's state is its worst signal's (docs/MONITORING.md).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from skulens.catalog.clusters import Clusters
from skulens.service.drift_options import DriftOptions

#: common_pb2.Verdict codes counted: KNOWN, UNKNOWN, AMBIGUOUS (UNSPECIFIED never reaches the monitor).
VERDICT_CODES = (1, 2, 3)
VERDICT_NAMES = ("known", "unknown", "ambiguous")
#: Best-score histogram: SCORE_BINS bins of 0.01 over [-1, 1] (for the quantiles).
SCORE_BINS = 200
#: Signal names, in report order.
SIGNALS = ("known_share", "unknown_share", "ambiguous_share", "best_score", "mean_shift", "far_share")


class State(enum.IntEnum):
    """A source's alert state (the metric's value is `level`)."""

    LEARNING = 0
    OK = 1
    WATCH = 2
    DRIFT = 3

    @property
    def level(self) -> int:
        """0 learning or OK, 1 WATCH, 2 DRIFT (skulens_drift_state)."""
        return max(0, int(self) - 1)


@dataclass
class Accum:
    """Sums over a set of queries: enough for shares, best-score mean / spread / quantiles and the mean embedding.

    `far` / `far_n` count queries judged against the reference fit `fit_id` (queries seen before any fit, or
    under an older one, are not in them)."""

    dim: int
    opened: float = 0.0
    closed: float = 0.0
    n: int = 0
    verdicts: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))
    score_sum: float = 0.0
    score_sq: float = 0.0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(SCORE_BINS, np.int64))
    emb_sum: np.ndarray = field(default_factory=lambda: np.zeros(0))
    far: int = 0
    far_n: int = 0
    fit_id: int = -1

    def __post_init__(self) -> None:
        if not len(self.emb_sum):
            self.emb_sum = np.zeros(self.dim, np.float64)

    def add(
        self, vectors: np.ndarray, verdicts: np.ndarray, scores: np.ndarray, far: np.ndarray | None, fit_id: int
    ) -> None:
        """Add m queries: unit-norm rows [m, dim], verdict codes [m], best scores [m], far flags [m] (None: no fit)."""
        m = len(vectors)
        if not m:
            return
        self.n += m
        for i, code in enumerate(VERDICT_CODES):
            self.verdicts[i] += int(np.count_nonzero(verdicts == code))
        s = scores.astype(np.float64)
        self.score_sum += float(s.sum())
        self.score_sq += float(np.dot(s, s))
        self.hist += np.bincount(score_bins(s), minlength=SCORE_BINS)
        self.emb_sum += vectors.sum(axis=0, dtype=np.float64)
        if far is not None:
            if fit_id != self.fit_id:  # a new fit: counts under the old one are not comparable
                self.far, self.far_n, self.fit_id = 0, 0, fit_id
            self.far += int(np.count_nonzero(far))
            self.far_n += m

    def nbytes(self) -> int:
        """Bytes held by the arrays (plus a fixed allowance for the object)."""
        return int(self.verdicts.nbytes + self.hist.nbytes + self.emb_sum.nbytes) + 200

    # ---- derived
    @property
    def mean(self) -> np.ndarray:
        """The mean embedding (not re-normalised)."""
        return self.emb_sum / max(self.n, 1)

    def share(self, i: int) -> float:
        """Share of verdict VERDICT_CODES[i]."""
        return float(self.verdicts[i]) / self.n if self.n else math.nan

    @property
    def score_mean(self) -> float:
        return self.score_sum / self.n if self.n else math.nan

    @property
    def score_sd(self) -> float:
        if self.n < 2:
            return 0.0
        var = (self.score_sq - self.score_sum**2 / self.n) / (self.n - 1)
        return math.sqrt(max(var, 0.0))

    def score_quantile(self, q: float) -> float:
        """The q-quantile of the best scores, to the histogram's 0.01 (the centre of its bin)."""
        if not self.n:
            return math.nan
        i = int(np.searchsorted(np.cumsum(self.hist), q * self.n, side="left"))
        return -1.0 + (min(i, SCORE_BINS - 1) + 0.5) * (2.0 / SCORE_BINS)

    @property
    def spread(self) -> float:
        """RMS distance of the (unit-norm) embeddings from their mean: sqrt(1 - |mean|²)."""
        m = self.mean
        return math.sqrt(max(0.0, 1.0 - float(m @ m)))

    def far_share(self, fit_id: int) -> tuple[float, int]:
        """(share of queries far from every centre, queries judged) under fit `fit_id`."""
        if self.fit_id != fit_id or not self.far_n:
            return math.nan, 0
        return self.far / self.far_n, self.far_n


def score_bins(scores: np.ndarray) -> np.ndarray:
    """Histogram bin of each score (clipped to [-1, 1])."""
    b = np.floor((np.clip(scores, -1.0, 1.0) + 1.0) * (SCORE_BINS / 2.0)).astype(np.int64)
    return np.minimum(b, SCORE_BINS - 1)


def merge(parts: Iterable[Accum], dim: int, fit_id: int) -> Accum:
    """One Accum over `parts` (far counts only from parts judged under `fit_id`)."""
    out = Accum(dim)
    first = True
    for p in parts:
        out.opened = p.opened if first else min(out.opened, p.opened)
        out.closed = max(out.closed, p.closed)
        first = False
        out.n += p.n
        out.verdicts += p.verdicts
        out.score_sum += p.score_sum
        out.score_sq += p.score_sq
        out.hist += p.hist
        out.emb_sum += p.emb_sum
        if p.fit_id == fit_id:
            out.far += p.far
            out.far_n += p.far_n
    out.fit_id = fit_id
    return out


@dataclass(frozen=True)
class Reference:
    """The catalog's reference distribution at one fit: mean embedding, spread, k-means centres, the far cut."""

    fit_id: int
    mean: np.ndarray  # [dim], the references' mean embedding
    clusters: Clusters
    far_cut: float  # cosine to the nearest centre under which a query counts as far from every centre
    catalog_version: int
    references: int  # embeddings the fit read
    fitted_at: float  # unix time
    fit_seconds: float

    @classmethod
    def fit(
        cls,
        fit_id: int,
        sample: np.ndarray,
        clusters: Clusters,
        options: DriftOptions,
        catalog_version: int,
        fitted_at: float,
        fit_seconds: float,
        far_cosines: np.ndarray | None = None,
    ) -> Reference:
        """The reference of a sample (`clusters` fitted on it, or on part of it). `far_cut`: the far_quantile of
        `far_cosines`, the nearest-centre cosines of references the k-means did not see (like new queries, they sit
        a little farther from the centres than the fitted ones), else of the fitted ones."""
        near = far_cosines if far_cosines is not None and len(far_cosines) else clusters.nearest
        cut = float(np.quantile(near, options.far_quantile)) if len(near) and len(clusters.centres) else math.nan
        mean = sample.mean(axis=0).astype(np.float64) if len(sample) else np.zeros(sample.shape[1])
        return cls(fit_id, mean, clusters, cut, catalog_version, len(sample), fitted_at, fit_seconds)

    @property
    def spread(self) -> float:
        """RMS distance of the references from their mean."""
        return math.sqrt(max(0.0, 1.0 - float(self.mean @ self.mean)))

    @property
    def k(self) -> int:
        return len(self.clusters.centres)

    def far(self, vectors: np.ndarray) -> np.ndarray | None:
        """Far flags of unit-norm rows (None when the catalog had no references to fit)."""
        if not self.k:
            return None
        return self.clusters.nearest_cosine(vectors) < self.far_cut

    def distance(self, mean: np.ndarray, floor: float) -> float:
        """Distance of a mean embedding from the references' mean, in units of the references' spread."""
        if not self.references:
            return math.nan
        return float(np.linalg.norm(mean - self.mean)) / max(self.spread, floor)


@dataclass(frozen=True, slots=True)
class Signal:
    """One signal of a judged window next to the baseline's value."""

    name: str
    value: float
    baseline: float
    effect: float  # standardised, positive in the bad direction (nan when not computable)
    z: float
    state: State


@dataclass(frozen=True, slots=True)
class Window:
    """A judged window of one source (a point of its history)."""

    end: float  # unix time of the last slice's close
    queries: int
    shares: tuple[float, float, float]  # known, unknown, ambiguous
    score_mean: float
    score_p10: float
    score_p50: float
    score_p90: float
    reference_distance: float
    mean_shift: float
    far_share: float
    state: State
    signals: tuple[Signal, ...] = ()


def describe(acc: Accum, reference: Reference | None, far: tuple[float, int], options: DriftOptions) -> Window:
    """A Window of `acc` without judgement (the baseline's own figures; `far` = (share, n))."""
    return Window(
        end=acc.closed,
        queries=acc.n,
        shares=(acc.share(0), acc.share(1), acc.share(2)),
        score_mean=acc.score_mean,
        score_p10=acc.score_quantile(0.1),
        score_p50=acc.score_quantile(0.5),
        score_p90=acc.score_quantile(0.9),
        reference_distance=reference.distance(acc.mean, options.spread_floor) if reference else math.nan,
        mean_shift=0.0,
        far_share=far[0],
        state=State.OK,
    )


def cohen_h(p: float) -> float:
    """2·asin(sqrt(p)): shares on this scale differ by Cohen's h."""
    return 2.0 * math.asin(math.sqrt(min(max(p, 0.0), 1.0)))


def level(effect: float, z: float, options: DriftOptions) -> State:
    """DRIFT / WATCH / OK of one signal by its effect and z (nan: OK)."""
    if not (math.isfinite(effect) and math.isfinite(z)):
        return State.OK
    if effect >= options.alert_effect and z >= options.alert_z:
        return State.DRIFT
    if effect >= options.watch_effect and z >= options.watch_z:
        return State.WATCH
    return State.OK


def judge(
    window: Accum,
    baseline: Accum,
    baseline_far: tuple[float, int],
    reference: Reference | None,
    options: DriftOptions,
) -> Window:
    """Judge `window` against `baseline`: each signal's effect, z and state, and the window's state (the worst)."""
    fit_id = reference.fit_id if reference else -1
    n_w, n_b = window.n, baseline.n
    signals: list[Signal] = []

    def add(name: str, value: float, base: float, effect: float, nw: int, nb: int) -> None:
        z = effect / math.sqrt(1.0 / nw + 1.0 / nb) if nw and nb and math.isfinite(effect) else math.nan
        signals.append(Signal(name, value, base, effect, z, level(effect, z, options)))

    for i, name in enumerate(("known_share", "unknown_share", "ambiguous_share")):
        w, b = window.share(i), baseline.share(i)
        sign = -1.0 if name == "known_share" else 1.0  # fewer KNOWN is bad; more UNKNOWN / AMBIGUOUS is bad
        add(name, w, b, sign * (cohen_h(w) - cohen_h(b)), n_w, n_b)
    sd = max(baseline.score_sd, options.score_sd_floor)
    add("best_score", window.score_mean, baseline.score_mean, (baseline.score_mean - window.score_mean) / sd, n_w, n_b)
    shift = float(np.linalg.norm(window.mean - baseline.mean)) / max(baseline.spread, options.spread_floor)
    add("mean_shift", shift, 0.0, shift, n_w, n_b)
    far_w, far_nw = window.far_share(fit_id)
    far_b, far_nb = baseline_far
    far_effect = cohen_h(far_w) - cohen_h(far_b) if far_nw and far_nb else math.nan
    add("far_share", far_w, far_b, far_effect, far_nw, far_nb)
    state = max((s.state for s in signals), default=State.OK)
    return Window(
        end=window.closed,
        queries=n_w,
        shares=(window.share(0), window.share(1), window.share(2)),
        score_mean=window.score_mean,
        score_p10=window.score_quantile(0.1),
        score_p50=window.score_quantile(0.5),
        score_p90=window.score_quantile(0.9),
        reference_distance=reference.distance(window.mean, options.spread_floor) if reference else math.nan,
        mean_shift=shift,
        far_share=far_w,
        state=state,
        signals=tuple(signals),
    )


def far_of_sample(sample: np.ndarray, reference: Reference | None) -> tuple[float, int]:
    """(far share, n) of baseline embeddings under `reference` ((nan, 0) without a fit or a sample)."""
    if reference is None or not len(sample):
        return math.nan, 0
    flags = reference.far(sample.astype(np.float32))
    if flags is None:
        return math.nan, 0
    return float(np.count_nonzero(flags)) / len(sample), len(sample)


def worst(states: Sequence[State]) -> State:
    """The worst of `states` (LEARNING when empty)."""
    return max(states, default=State.LEARNING)
