"""The drift monitor's Prometheus metrics, read from its report at scrape time (bounded labels: `source` takes
at most --drift-max-sources + 2 values, `verdict` 3, `quantile` 3, `signal` 6).

| metric                                | kind    | labels           | meaning                                       |
|---------------------------------------|---------|------------------|-----------------------------------------------|
| skulens_drift_state                   | gauge   | source           | 0 OK (or learning), 1 WATCH, 2 DRIFT          |
| skulens_drift_baseline_ready          | gauge   | source           | 1 once the source's baseline is learned       |
| skulens_drift_queries_total           | counter | source           | queries monitored                             |
| skulens_drift_share                   | gauge   | source, verdict  | latest window: share of each verdict          |
| skulens_drift_best_score              | gauge   | source, quantile | latest window: best-score percentiles         |
| skulens_drift_mean_shift              | gauge   | source           | latest window: mean embedding vs baseline     |
| skulens_drift_reference_distance      | gauge   | source           | latest window: mean embedding vs catalog      |
| skulens_drift_far_share               | gauge   | source           | latest window: share far from every centre    |
| skulens_drift_signal_z                | gauge   | source, signal   | latest window: each signal's z                |
| skulens_drift_sources                 | gauge   |                  | sources tracked                               |
| skulens_drift_folded_queries_total    | counter |                  | queries counted under _other                  |
| skulens_drift_dropped_queries_total   | counter |                  | queries not monitored (queue full)            |
| skulens_drift_memory_bytes            | gauge   |                  | bytes held by the monitor                     |
| skulens_drift_reference_fit_seconds   | gauge   |                  | cost of the last reference fit                |
| skulens_drift_reference_catalog_version | gauge |                  | catalog version of the reference in force     |
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from skulens.service.drift_monitor import DriftMonitor
from skulens.service.drift_stats import VERDICT_NAMES

log = logging.getLogger("skulens.metrics")


class DriftCollector(Collector):
    """Collects the drift metrics from `monitor.report()` (never raises: a scrape must not fail)."""

    def __init__(self, monitor: DriftMonitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Any]:
        g = GaugeMetricFamily
        state = g("skulens_drift_state", "Drift alert state: 0 OK or learning, 1 WATCH, 2 DRIFT", labels=["source"])
        ready = g("skulens_drift_baseline_ready", "1 once the source's baseline is learned", labels=["source"])
        queries = CounterMetricFamily("skulens_drift_queries", "Queries monitored", labels=["source"])
        share = g("skulens_drift_share", "Latest window: share of each verdict", labels=["source", "verdict"])
        score = g("skulens_drift_best_score", "Latest window: best-score percentile", labels=["source", "quantile"])
        shift = g(
            "skulens_drift_mean_shift",
            "Latest window: mean embedding's distance from the baseline's, in baseline spreads",
            labels=["source"],
        )
        dist = g(
            "skulens_drift_reference_distance",
            "Latest window: mean embedding's distance from the catalog references' mean, in reference spreads",
            labels=["source"],
        )
        far = g(
            "skulens_drift_far_share",
            "Latest window: share of queries far from every reference cluster",
            labels=["source"],
        )
        zs = g(
            "skulens_drift_signal_z",
            "Latest window: z of each signal against the baseline",
            labels=["source", "signal"],
        )
        sources = g("skulens_drift_sources", "Sources tracked by the drift monitor")
        folded = CounterMetricFamily("skulens_drift_folded_queries", "Queries counted under _other")
        dropped = CounterMetricFamily("skulens_drift_dropped_queries", "Queries not monitored (queue full)")
        memory = g("skulens_drift_memory_bytes", "Bytes held by the drift monitor")
        fit = g("skulens_drift_reference_fit_seconds", "Seconds the last reference fit took")
        version = g("skulens_drift_reference_catalog_version", "Catalog version of the reference in force")
        families = (
            state,
            ready,
            queries,
            share,
            score,
            shift,
            dist,
            far,
            zs,
            sources,
            folded,
            dropped,
            memory,
            fit,
            version,
        )
        try:
            rep = self.monitor.report(history=0)
            for s in rep.sources:
                src = [s.source]
                state.add_metric(src, float(s.state.level))
                ready.add_metric(src, 1.0 if s.baseline_ready else 0.0)
                queries.add_metric(src, float(s.queries))
                w = s.current
                if w is None:
                    continue
                for name, value in zip(VERDICT_NAMES, w.shares, strict=True):
                    share.add_metric([s.source, name], value)
                for q, value in (("0.1", w.score_p10), ("0.5", w.score_p50), ("0.9", w.score_p90)):
                    score.add_metric([s.source, q], value)
                shift.add_metric(src, w.mean_shift)
                _finite(dist, src, w.reference_distance)
                _finite(far, src, w.far_share)
                for sig in w.signals:
                    _finite(zs, [s.source, sig.name], sig.z)
            sources.add_metric([], float(len(rep.sources)))
            folded.add_metric([], float(rep.folded_queries))
            dropped.add_metric([], float(rep.dropped_queries))
            memory.add_metric([], float(rep.memory_bytes))
            if rep.reference is not None:
                fit.add_metric([], rep.reference.fit_seconds)
                version.add_metric([], float(rep.reference.catalog_version))
        except Exception:
            log.warning("drift metrics collection failed", exc_info=True)
        yield from families


def _finite(family: GaugeMetricFamily, labels: list[str], value: float) -> None:
    if math.isfinite(value):
        family.add_metric(labels, value)
