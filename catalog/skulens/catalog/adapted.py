"""`AdaptedMatcher`: search any `CatalogBackend` with the catalog-adapted head (`skulens.catalog.head`).

The backend's nearest-neighbour search (filters, oversampling, exact or approximate index) proposes the
`candidates` best products per query; the head, fitted from the statistics the backend keeps in its store, re-scores
them; the verdict is then decided on the adapted scores, with the thresholds in force (the request's, else the
catalog's stored ones for this matching mode and model, else the settings'). The fitted head is cached and refitted
when the catalog version moves (checked at most once per `refit_seconds`): answers may use a head up to that much
older than the catalog, and `info().fitted_version` says which version it reflects. A product enrolled since the
fit keeps its nearest-neighbour score until the next one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from skulens.catalog.backend import CatalogBackend
from skulens.catalog.errors import CatalogUnavailable
from skulens.catalog.head import HeadModel, HeadSettings, rerank
from skulens.catalog.models import SearchResult
from skulens.catalog.thresholds import VerdictThresholds, pick

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadInfo:
    """What the matcher uses now, for stats and server info."""

    enabled: bool
    fitted_version: int  # catalog version of the statistics the head was fitted from (-1: never fitted)
    products: int  # products the head scores (the others keep their nearest-neighbour score)
    fit_ms: float


@dataclass(frozen=True)
class ThresholdsInForce:
    """The verdict thresholds image queries get when the request sets none, and where they come from."""

    unknown_threshold: float
    ambiguity_margin: float
    source: str  # "catalog" (stored by `skulens calibrate --apply` for this mode and model) or "settings"
    detail: str = ""  # the stored entry's own note (how it was measured)


class AdaptedMatcher:
    """Ranks products for query embeddings with the head where it applies, plain nearest neighbour elsewhere, and
    decides verdicts with the catalog's stored thresholds for this matching mode and model (else the settings')."""

    def __init__(self, settings: HeadSettings, clock: Callable[[], float] = time.monotonic, *,
                 background: bool = False) -> None:
        self.settings = settings
        self.background = background
        self.matching = "adapted" if settings.enabled else "nearest"
        self._clock = clock
        self._lock = threading.Lock()
        self._refitting: threading.Thread | None = None
        self._model: HeadModel | None = None
        self._stored: list[VerdictThresholds] = []
        self._key: tuple[int, str] | None = None  # (id of the backend, fingerprint) the state belongs to
        self._version = -1  # catalog version the state was read at
        self._checked_at = -float("inf")
        self._fit_ms = 0.0

    def info(self) -> HeadInfo:
        m = self._model
        return HeadInfo(self.settings.enabled, m.version if m is not None else -1,
                        m.products if m is not None else 0, self._fit_ms)

    def _refresh(self, catalog: CatalogBackend) -> None:
        """Re-read the head statistics (and refit) and the stored thresholds when the catalog changed (caller holds
        the lock). The version is checked at most once per `refit_seconds` (and never sooner than four times the
        last fit took, so refits cost at most a quarter of a core); another catalog or model is read at once. A
        change is refitted in the calling search (the first search after a write pays the fit: a head never
        answers for a catalog it has not seen for longer than that interval), or with `background` in a thread
        while the current head keeps answering (no search waits; a head may then answer for an older catalog for
        as long as a fit takes — a product deleted and enrolled again meanwhile is scored by its old sums)."""
        key = (id(catalog), catalog.fingerprint)
        now = self._clock()
        if self._key == key:
            if now - self._checked_at < max(self.settings.refit_seconds, 4.0 * self._fit_ms / 1000.0):
                return
            self._checked_at = now
            if catalog.version() == self._version or self._refitting is not None:
                return
            if self.background:
                self._refitting = threading.Thread(target=self._refit_in_background, args=(catalog, key),
                                                   name="skulens-head-refit", daemon=True)
                self._refitting.start()
                return
        try:
            read = self._read(catalog)
        except CatalogUnavailable as exc:
            if self._key != key:
                raise
            self._checked_at = now  # the head fitted last keeps answering; read again after the interval
            log.warning("catalog-adapted matching: cannot read the catalog's statistics (%s); the head fitted at "
                        "version %d keeps answering", exc, self._version)
            return
        self._install(catalog, key, *read, now)

    def _read(self, catalog: CatalogBackend) -> tuple[HeadModel | None, int, list[VerdictThresholds], float]:
        """(fitted head or None when off, catalog version it reflects, stored thresholds, fit ms); reads only."""
        t0 = time.perf_counter()
        if self.settings.enabled:
            stats = catalog.head_statistics()
            model: HeadModel | None = HeadModel.fit(stats, self.settings)
            version = stats.version
        else:
            model, version = None, catalog.version()
        return model, version, catalog.verdict_thresholds(), (time.perf_counter() - t0) * 1000.0

    def _install(self, catalog: CatalogBackend, key: tuple[int, str], model: HeadModel | None, version: int,
                 stored: list[VerdictThresholds], fit_ms: float, now: float) -> None:
        if catalog.fingerprint != key[1]:  # a switch landed while reading: the next call reads again
            return
        self._model, self._stored, self._fit_ms = model, stored, fit_ms
        self._key, self._version, self._checked_at = key, version, now

    def _refit_in_background(self, catalog: CatalogBackend, key: tuple[int, str]) -> None:
        try:
            read = self._read(catalog)
            with self._lock:
                if self._key == key:
                    self._install(catalog, key, *read, self._clock())
        except Exception:
            log.exception("catalog-adapted matching: refit failed; the previous head keeps answering")
        finally:
            with self._lock:
                self._refitting = None

    def wait_refit(self, timeout: float = 10.0) -> bool:
        """Wait for a background refit in progress (tests, benchmarks); True when none is left running."""
        with self._lock:
            running = self._refitting
        if running is None:
            return True
        running.join(timeout)
        return not running.is_alive()

    def current(self, catalog: CatalogBackend) -> tuple[HeadModel | None, ThresholdsInForce]:
        """The head (None when disabled) and the verdict thresholds in force for image queries of `catalog`'s
        serving model, after one `_refresh`."""
        key = (id(catalog), catalog.fingerprint)
        with self._lock:
            self._refresh(catalog)
            mine = self._key == key
            model = self._model if mine and self.settings.enabled else None
            entry = pick(self._stored, self.matching, catalog.fingerprint) if mine else None
        if entry is not None:
            return model, ThresholdsInForce(entry.unknown_threshold, entry.ambiguity_margin, "catalog", entry.source)
        return model, ThresholdsInForce(catalog.settings.unknown_threshold, catalog.settings.ambiguity_margin,
                                        "settings")

    def model(self, catalog: CatalogBackend) -> HeadModel | None:
        """The head for `catalog`'s serving model (refitted as `_refresh` says); None when disabled."""
        return self.current(catalog)[0] if self.settings.enabled else None

    def thresholds(self, catalog: CatalogBackend) -> ThresholdsInForce:
        """The verdict thresholds in force for image queries of `catalog`'s serving model."""
        return self.current(catalog)[1]

    def search(self, catalog: CatalogBackend, queries: np.ndarray, *, top_k: int = 5, min_score: float | None = None,
               category: str = "", labels: Mapping[str, str] | None = None, unknown_threshold: float | None = None,
               ambiguity_margin: float | None = None, trusted: bool = False, space: str = "",
               adapt: bool = True) -> list[SearchResult]:
        """`catalog.search` with the same arguments, for image queries of the serving model (`adapt`) the products
        re-scored by the head when it is on and the verdict thresholds the request leaves unset taken from
        `thresholds`; text queries (`adapt=False`) and a migration's other space are searched as they are."""
        serving = not space or space == catalog.fingerprint
        if not (adapt and serving):
            return catalog.search(queries, top_k=top_k, min_score=min_score, category=category, labels=labels,
                                  unknown_threshold=unknown_threshold, ambiguity_margin=ambiguity_margin,
                                  trusted=trusted, space=space)
        model, in_force = self.current(catalog)
        threshold = in_force.unknown_threshold if unknown_threshold is None else unknown_threshold
        margin = in_force.ambiguity_margin if ambiguity_margin is None else ambiguity_margin
        if model is None or model.products == 0:
            return catalog.search(queries, top_k=top_k, min_score=min_score, category=category, labels=labels,
                                  unknown_threshold=threshold, ambiguity_margin=margin, trusted=trusted, space=space)
        limit = catalog.settings.max_top_k
        wide = catalog.search(queries, top_k=min(limit, max(top_k, self.settings.candidates)), min_score=None,
                              category=category, labels=labels, unknown_threshold=threshold,
                              ambiguity_margin=margin, trusted=trusted, space=space)
        return rerank(wide, queries, model, top_k=top_k, min_score=min_score, unknown_threshold=threshold,
                      ambiguity_margin=margin)
