"""Suggest `unknown_threshold` and `ambiguity_margin`: from the catalog itself (leave-one-out), or from held-out
labelled photos.

Leave-one-out: each sampled reference r of product P is a query against the catalog without r:
- own(r): best score among P's other references (only when P has at least 2 references: a "genuine" query);
- other(r): best score among references of other products.
Unknown threshold t: a query of a product that is not in the catalog is simulated by r with P removed, so
its best score is other(r); false accept(t) = share of queries with other(r) >= t. A genuine query is falsely
rejected when own(r) < t; false reject(t) = share of genuine queries with own(r) < t.
Ambiguity margin m (genuine queries): gap = own - other. |gap| < m is answered AMBIGUOUS; gap <= -m is a
misidentification that the margin did not catch (a wrong KNOWN answer).
References look far more alike than new photos do, so leave-one-out is optimistic: it under-states false
rejects on new photos, and with one reference per product it cannot measure them at all (shown as n/a).

Held-out (`calibrate_held_out`): the same figures from labelled photos that are not in the catalog: own = the
true product's score, other = the best other product's; impostors are the best scores of photos of products
outside the catalog, or, when the set has none, each in-catalog photo's `other` (as if its product were not
enrolled).
Suggestions: the threshold half-way between the lowest value meeting the false-accept target and the highest
meeting the false-reject target (the equal-error point when none meets both); the smallest margin meeting the
misidentification target (at least 0.005).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class _Catalog(Protocol):  # the part of Catalog used here
    settings: object

    def sample_references(self, limit: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                                                   np.ndarray]: ...
    def nearest_references(self, queries: np.ndarray,
                           k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
    def reference_counts(self, keys: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class ThresholdRow:
    threshold: float
    false_accept: float | None  # None: no impostor query, not measurable
    false_reject: float | None  # None: no genuine query, not measurable


@dataclass(frozen=True)
class MarginRow:
    margin: float
    ambiguous: float | None  # share of genuine queries answered AMBIGUOUS (None: no genuine query)
    misidentified: float | None  # share of genuine queries answered KNOWN with the wrong product


@dataclass(frozen=True)
class CalibrationReport:
    """Score statistics, trade-off tables and suggested settings (`method`: "leave-one-out" or "held-out")."""

    queries: int
    genuine: int
    products: int
    thresholds: list[ThresholdRow]
    margins: list[MarginRow]
    suggested_unknown_threshold: float
    suggested_ambiguity_margin: float
    current_unknown_threshold: float
    current_ambiguity_margin: float
    target_false_accept: float
    target_false_reject: float
    target_misidentified: float
    own_percentiles: dict[int, float] = field(default_factory=dict)  # genuine best-own score p1/p5/p50
    other_percentiles: dict[int, float] = field(default_factory=dict)  # best-other score p50/p95/p99
    notes: list[str] = field(default_factory=list)
    method: str = "leave-one-out"
    impostors: int = 0  # impostor queries behind the false-accept column
    out_of_catalog: int = 0  # held-out: photos labelled as not in the catalog

    def format_table(self) -> str:
        """Human-readable report (markdown tables) for `skulens calibrate`."""
        def pct(x: float | None) -> str:
            return "n/a" if x is None else f"{100 * x:.1f}%"

        def pcts(d: dict[int, float]) -> str:
            return "  ".join(f"p{k} {val:.3f}" for k, val in sorted(d.items())) or "n/a"

        if self.method == "held-out":
            head = (f"Calibration: {self.queries} held-out labelled photos ({self.genuine} of {self.products} catalog "
                    f"products, {self.out_of_catalog} of products not in the catalog)")
        else:
            head = (f"Calibration: leave-one-out over {self.queries} references of {self.products} products "
                    f"({self.genuine} genuine queries: products with >= 2 references)")
        lines = [
            head,
            f"best own-product score (genuine):  {pcts(self.own_percentiles)}",
            f"best other-product score (all):    {pcts(self.other_percentiles)}" if self.method != "held-out" else
            f"best score of impostor queries:    {pcts(self.other_percentiles)}",
            "",
            "| unknown_threshold | false accept (unknown item accepted) | false reject (genuine rejected) |",
            "|---:|---:|---:|",
        ]
        for r in self.thresholds:
            mark = " ←suggested" if abs(r.threshold - self.suggested_unknown_threshold) < 1e-9 else ""
            lines.append(f"| {r.threshold:.3f}{mark} | {pct(r.false_accept)} | {pct(r.false_reject)} |")
        lines += [
            "",
            "| ambiguity_margin | ambiguous (genuine) | misidentified, not flagged (genuine) |",
            "|---:|---:|---:|",
        ]
        for m in self.margins:
            mark = " ←suggested" if abs(m.margin - self.suggested_ambiguity_margin) < 1e-9 else ""
            lines.append(f"| {m.margin:.3f}{mark} | {pct(m.ambiguous)} | {pct(m.misidentified)} |")
        fr_target = (f"false reject <= {pct(self.target_false_reject)}" if self.genuine
                     else "false reject NOT MEASURED")
        fa_target = (f"false accept <= {pct(self.target_false_accept)}" if self.impostors
                     else "false accept NOT MEASURED")
        margin_basis = (f"misidentified <= {pct(self.target_misidentified)}" if self.genuine
                        else "NOT MEASURED: the current value")
        lines += [
            "",
            f"suggested unknown_threshold = {self.suggested_unknown_threshold:.3f} "
            f"(targets: {fa_target}, {fr_target}; current {self.current_unknown_threshold:.3f})",
            f"suggested ambiguity_margin  = {self.suggested_ambiguity_margin:.3f} "
            f"({margin_basis}; current {self.current_ambiguity_margin:.3f})",
        ]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def leave_one_out_scores(catalog: _Catalog, ids: np.ndarray, keys: np.ndarray, vectors: np.ndarray,
                         counts: np.ndarray, start_k: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(own, other) best scores per query with the query's own reference excluded; NaN when absent."""
    n = len(ids)
    own = np.full(n, np.nan)
    other = np.full(n, np.nan)
    pending = np.arange(n)
    k = start_k
    while len(pending):
        D, ids_, K = catalog.nearest_references(vectors[pending], k)
        got = ids_.shape[1]
        still = []
        for j, row in enumerate(pending.tolist()):
            valid = (ids_[j] >= 0) & (ids_[j] != ids[row])
            mine = valid & (K[j] == keys[row])
            theirs = valid & (K[j] != keys[row])
            if mine.any():
                own[row] = float(D[j][mine][0])
            if theirs.any():
                other[row] = float(D[j][theirs][0])
            need_own = counts[row] >= 2 and np.isnan(own[row])
            if (need_own or np.isnan(other[row])) and got >= k:
                still.append(row)
        if not still or got < k:
            break
        pending = np.asarray(still, dtype=np.int64)
        k *= 4
    return own, other


def _lowest_within(values: np.ndarray, target: float) -> float:
    """Smallest t on a 0.001 grid with mean(values >= t) <= target."""
    s = np.sort(values)
    allowed = int(np.floor(target * len(s) + 1e-9))
    if allowed >= len(s):
        return -1.0
    t = (np.floor(float(s[len(s) - 1 - allowed]) * 1000.0) + 1.0) / 1000.0
    while np.mean(values >= t) > target:  # guards float rounding at the grid step
        t += 0.001
    return round(float(t), 3)


def _highest_within_below(values: np.ndarray, target: float) -> float:
    """Largest t on a 0.001 grid with mean(values < t) <= target."""
    s = np.sort(values)
    allowed = int(np.floor(target * len(s) + 1e-9))
    if allowed >= len(s):
        return 1.0
    t = np.floor(float(s[allowed]) * 1000.0) / 1000.0
    while np.mean(values < t) > target:
        t -= 0.001
    return round(float(t), 3)


def _equal_error(impostor: np.ndarray, genuine: np.ndarray) -> float:
    """Threshold (0.001 grid) where the false-accept and false-reject shares are closest."""
    grid = np.unique(np.round(np.concatenate([impostor, genuine]), 3))
    fa = (impostor[None, :] >= grid[:, None]).mean(axis=1)
    fr = (genuine[None, :] < grid[:, None]).mean(axis=1)
    return round(float(grid[int(np.argmin(np.abs(fa - fr) + 1e-6 * np.maximum(fa, fr)))]), 3)


def calibrate(catalog: _Catalog, *, max_queries: int = 2000, seed: int = 0, target_false_accept: float = 0.01,
              target_false_reject: float = 0.05, target_misidentified: float = 0.01) -> CalibrationReport:
    """Leave-one-out calibration of unknown_threshold and ambiguity_margin from the catalog's references."""
    ids, keys, vectors = catalog.sample_references(max_queries, seed)
    counts = catalog.reference_counts(keys)
    settings = catalog.settings
    own, other = leave_one_out_scores(catalog, ids, keys, vectors, counts)
    genuine = ~np.isnan(own)
    both = genuine & ~np.isnan(other)
    notes: list[str] = []
    if not genuine.any():
        notes.append("no product has 2 references: false reject and ambiguity cannot be measured by leave-one-out "
                     "(give held-out photos: skulens calibrate --labelled SET)")
    else:
        notes.append("leave-one-out compares the catalog's references with each other, which look more alike than "
                     "new photos: false rejects on new photos are usually much higher (measure them with held-out "
                     "photos: skulens calibrate --labelled SET)")
    return _report(
        own[genuine], other[~np.isnan(other)], own[both] - other[both], settings, method="leave-one-out",
        queries=len(ids), products=len(np.unique(keys)), notes=notes, target_false_accept=target_false_accept,
        target_false_reject=target_false_reject, target_misidentified=target_misidentified)


def calibrate_held_out(own: np.ndarray, other: np.ndarray, out: np.ndarray, settings: object, *, products: int,
                       target_false_accept: float = 0.01, target_false_reject: float = 0.05,
                       target_misidentified: float = 0.01) -> CalibrationReport:
    """Calibration from held-out labelled photos (`skulens.catalog.evaluation.held_out_scores` makes the arrays):
    `own` / `other` per in-catalog photo (-1.0: the product was not among those ranked), `out` the best score of
    each photo of a product outside the catalog; `settings` gives the current thresholds."""
    own, other, out = (np.asarray(a, dtype=np.float64) for a in (own, other, out))
    notes: list[str] = []
    if len(out):
        impostor = out
    else:
        impostor = other
        notes.append("no photo of a product outside the catalog: false accepts are simulated by each photo's best "
                     "score among the other products (as if its own product were not enrolled)")
    if not len(own):
        notes.append("no photo of a catalog product: false reject and ambiguity cannot be measured")
    return _report(own, impostor, own - other, settings, method="held-out", queries=len(own) + len(out),
                   products=products, notes=notes, out_of_catalog=len(out), target_false_accept=target_false_accept,
                   target_false_reject=target_false_reject, target_misidentified=target_misidentified)


def _report(g: np.ndarray, imp: np.ndarray, gap: np.ndarray, settings: object, *, method: str, queries: int,
            products: int, notes: list[str], target_false_accept: float, target_false_reject: float,
            target_misidentified: float, out_of_catalog: int = 0) -> CalibrationReport:
    """Trade-off tables and suggestions from genuine scores `g`, impostor scores `imp` and genuine gaps
    (own - other)."""
    cur_t = float(getattr(settings, "unknown_threshold", 0.0))
    cur_m = float(getattr(settings, "ambiguity_margin", 0.0))
    if not len(imp):
        notes.append("the catalog has a single product: false accept cannot be measured")
    # unknown threshold: the lowest value whose false-accept share is within its target; when the highest
    # value whose false-reject share is within its target lies above it, the midpoint of the two (slack both
    # ways); when no value meets both targets, the equal-error point
    suggested_t = _lowest_within(imp, target_false_accept) if len(imp) else cur_t
    if len(g) and len(imp):
        t_fr = _highest_within_below(g, target_false_reject)
        if t_fr >= suggested_t:
            suggested_t = round((suggested_t + t_fr) / 2, 3)
        else:
            t_fa = suggested_t
            suggested_t = _equal_error(imp, g)
            notes.append(
                f"no threshold meets both targets (false accept <= {target_false_accept:.1%}, false reject "
                f"<= {target_false_reject:.1%}): suggested is the equal-error point (false accept "
                f"{np.mean(imp >= suggested_t):.1%}, false reject {np.mean(g < suggested_t):.1%}); "
                f"{t_fa:.3f} keeps false accepts in target but rejects {np.mean(g < t_fa):.1%} of genuine "
                "queries")
    lo = float(np.quantile(imp, 0.5)) if len(imp) else (float(g.min()) if len(g) else cur_t)
    hi = float(np.quantile(g, 0.99)) if len(g) else max(lo, suggested_t)
    grid = sorted({round(float(x), 3) for x in np.linspace(min(lo, hi), max(lo, hi), 12)} |
                  {suggested_t, round(cur_t, 3)})
    thresholds = [ThresholdRow(t, float(np.mean(imp >= t)) if len(imp) else None,
                               float(np.mean(g < t)) if len(g) else None) for t in grid]

    # ambiguity margin: the smallest margin after which misidentifications stay within the target
    suggested_m = max(0.005, _lowest_within(-gap, target_misidentified)) if len(gap) else cur_m
    mgrid = sorted({0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, suggested_m, round(cur_m, 3)})
    margins = [MarginRow(m, float(np.mean(np.abs(gap) < m)) if len(gap) else None,
                         float(np.mean(gap <= -m)) if len(gap) else None) for m in mgrid]
    return CalibrationReport(
        queries=queries, genuine=len(g), products=products, thresholds=thresholds,
        margins=margins, suggested_unknown_threshold=suggested_t, suggested_ambiguity_margin=suggested_m,
        current_unknown_threshold=cur_t, current_ambiguity_margin=cur_m,
        target_false_accept=target_false_accept, target_false_reject=target_false_reject,
        target_misidentified=target_misidentified,
        own_percentiles={p: float(np.percentile(g, p)) for p in (1, 5, 50)} if len(g) else {},
        other_percentiles={p: float(np.percentile(imp, p)) for p in (50, 95, 99)} if len(imp) else {},
        notes=notes, method=method, impostors=len(imp), out_of_catalog=out_of_catalog)
