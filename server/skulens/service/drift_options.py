"""`DriftOptions`: the drift monitor's windows, thresholds and bounds (built by `Settings.drift_options`).

docs/MONITORING.md explains each; the fields without a server flag are fixed design constants, kept here so tests
and benchmarks can change them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Longest `source` of a request, in characters (after NFC normalisation).
MAX_SOURCE_CHARS = 64
#: Queries without a source are counted under this name; sources past `max_sources` under OVERFLOW_SOURCE.
DEFAULT_SOURCE = "_default"
OVERFLOW_SOURCE = "_other"


@dataclass(frozen=True)
class DriftOptions:
    """Windows, baseline, thresholds and bounds of the drift monitor."""

    max_sources: int = 64  # named sources tracked; later ones fold into OVERFLOW_SOURCE
    window_size: int = 200  # queries per window
    window_seconds: float = 900.0  # a window never spans more than this
    baseline_windows: int = 2  # a source's first baseline_windows × window_size queries are its baseline
    clusters: int = 64  # k-means centres fitted on the catalog's references
    refit_seconds: float = 300.0  # least time between two fits when the catalog keeps changing
    watch_z: float = 3.0
    alert_z: float = 5.0
    watch_effect: float = 0.2
    alert_effect: float = 0.5
    history: int = 240  # judged windows kept per source (report, plot)
    # -- design constants (no flag)
    slices: int = 4  # a window is its last `slices` slices: it slides by window_size / slices queries
    baseline_sample: int = 256  # embeddings of the baseline kept (float16) to re-judge "far" after a refit
    far_quantile: float = 0.05  # "far": nearer no centre than 95 % of the references are to theirs
    score_sd_floor: float = 0.01  # best-score spread below this is taken as this (cosine units)
    spread_floor: float = 0.01  # embedding spread below this is taken as this
    queue_max: int = 4096  # queries waiting for the aggregator; more are dropped (and counted)
    interval_seconds: float = 0.25  # aggregator period
    refit_check_seconds: float = 5.0  # how often the catalog version is read
    min_window_fraction: float = 0.25  # a window with fewer queries than this share of window_size is not judged

    @property
    def slice_size(self) -> int:
        """Queries per slice (a slice also closes after window_seconds / slices)."""
        return max(1, math.ceil(self.window_size / self.slices))

    @property
    def baseline_queries(self) -> int:
        """Queries a source's baseline is learned from."""
        return self.window_size * self.baseline_windows

    @property
    def min_window_queries(self) -> int:
        """Fewest queries a window is judged on."""
        return max(1, math.ceil(self.window_size * self.min_window_fraction))

    def sample_size(self) -> int:
        """Catalog embeddings read for a fit: what faiss trains on at most, at least 4096."""
        return max(4096, self.clusters * 256)
