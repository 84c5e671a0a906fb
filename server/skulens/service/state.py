"""What the servicers share: settings, metrics, the engine and catalog once loaded, and the serving phase."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from skulens.catalog.adapted import AdaptedMatcher
from skulens.catalog.errors import FingerprintMismatch
from skulens.service.admission import Admission
from skulens.service.errors_grpc import Draining, NotReady
from skulens.service.metrics import Metrics
from skulens.service.settings import Settings

if TYPE_CHECKING:
    from skulens.catalog.backend import CatalogBackend
    from skulens.inference.protocol import Encoder
    from skulens.service.augmenter import Augmenter
    from skulens.service.drift_monitor import DriftMonitor
    from skulens.service.migration import MigrationManager


class Phase(enum.Enum):
    """Lifecycle of the server: LOADING → SERVING → DRAINING → STOPPED."""

    LOADING = "loading"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass
class Runtime:
    """Mutable holder read by every call; only `ServerApp` changes it."""

    settings: Settings
    metrics: Metrics | None = None
    engine: Encoder | None = None
    catalog: CatalogBackend | None = None
    phase: Phase = Phase.LOADING
    admission: Admission = None  # type: ignore[assignment]  # built from settings when not given
    drift: DriftMonitor | None = None  # per-source drift signals (None: --no-drift-monitor, or not a ServerApp)
    #: During a model migration: the other model (candidate, or previous after a switch), which enrolments
    #: also embed with, and the manager that keeps both (None: no migration support wired).
    other_engine: Encoder | None = None
    migration: MigrationManager | None = None
    #: Embeds augmented views of small products' references in the background (None: off).
    augmenter: Augmenter | None = None
    #: Ranks products with the catalog-adapted head (`--matching adapted`) or plain nearest neighbour.
    matcher: AdaptedMatcher = None  # type: ignore[assignment]  # built from settings when not given
    _paired: tuple[Encoder, CatalogBackend, str, bool] | None = field(
        default=None, init=False, repr=False
    )

    def __post_init__(self) -> None:
        if self.admission is None:
            self.admission = Admission(self.settings.admission_options())
        if self.matcher is None:
            self.matcher = AdaptedMatcher(self.settings.head_settings())

    def ready(self) -> tuple[Encoder, CatalogBackend]:
        """(engine, catalog) when serving; raises NotReady while loading, Draining when shutting down."""
        if self.phase is Phase.SERVING and self.engine is not None and self.catalog is not None:
            return self.engine, self.catalog
        if self.phase is Phase.LOADING:
            raise NotReady("the server is still loading the model and catalog; retry shortly")
        raise Draining("the server is shutting down; retry on another instance")

    def searchable(self) -> tuple[Encoder, CatalogBackend]:
        """Like `ready`, and FingerprintMismatch when the catalog belongs to another model.

        The fingerprints are compared once per (encoder, catalog) pair installed, not on every call: this is
        the door where a request's vectors are bound to the catalog's space."""
        engine, catalog = self.ready()
        serving = catalog.fingerprint
        if engine.fingerprint != serving and self.migration is not None:
            switched = self.migration.engine_for(serving)  # another replica switched the catalog: follow it
            if switched is not None:
                self.engine = engine = switched
        if self._paired is None or self._paired[:3] != (engine, catalog, serving):
            same = (serving, catalog.dim) == (engine.fingerprint, engine.dim)
            if not same:  # still fine when the catalog holds this model's space (a migration's other model)
                space = catalog.migration_state().space(engine.fingerprint)
                same = space is not None and space.dim == engine.dim
            self._paired = (engine, catalog, serving, same)
        if not self._paired[3]:  # a fresh error per refused call (an exception instance is not shared)
            raise FingerprintMismatch.between(catalog.fingerprint, catalog.dim, engine.fingerprint, engine.dim)
        return engine, catalog

    @property
    def model_fingerprint(self) -> str:
        """The engine's fingerprint ("" before it is loaded)."""
        return self.engine.fingerprint if self.engine is not None else ""


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline as an absolute `time.monotonic()` value (None when the client set none)."""
    remaining: Any = context.time_remaining()
    return None if remaining is None else time.monotonic() + float(remaining)
