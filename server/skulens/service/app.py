"""The gRPC server: `create_server` wires servicers, health, reflection and interceptors; `ServerApp` runs the
lifecycle (bind → load + warm → SERVING → drain on SIGTERM → close).

Health (`grpc.health.v1`, service "" and each skulens service) is NOT_SERVING until the model is loaded and
warmed and the catalog is open, and again from the moment draining starts.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from skulens.catalog.location import open_catalog
from skulens.service.augmenter import Augmenter
from skulens.service.auth import AuthInterceptor
from skulens.service.calllog import CallInterceptor
from skulens.service.drift_metrics import DriftCollector
from skulens.service.drift_monitor import DriftMonitor
from skulens.service.health import HealthServicer
from skulens.service.metrics import Metrics, MetricsServer
from skulens.service.migration import MigrationManager
from skulens.service.purger import Purger
from skulens.service.servicer_catalog import CatalogServicer
from skulens.service.servicer_migration import MigrationServicer
from skulens.service.servicer_recognition import RecognitionServicer
from skulens.service.settings import Settings, SettingsError
from skulens.service.state import Phase, Runtime
from skulens.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    migration_pb2,
    migration_pb2_grpc,
    recognition_pb2,
    recognition_pb2_grpc,
)

if TYPE_CHECKING:
    from skulens.catalog.backend import CatalogBackend
    from skulens.inference.protocol import Encoder

log = logging.getLogger("skulens.server")

SERVICE_NAMES = (
    recognition_pb2.DESCRIPTOR.services_by_name["RecognitionService"].full_name,
    catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name,
    migration_pb2.DESCRIPTOR.services_by_name["MigrationService"].full_name,
)
HEALTH_NAMES = ("", *SERVICE_NAMES)
CATALOG_SERVICE = SERVICE_NAMES[1]
_background: set[asyncio.Task[None]] = set()  # keeps fire-and-forget tasks referenced until they finish


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    try:
        key, cert = settings.tls_key.read_bytes(), settings.tls_cert.read_bytes()
        ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    except OSError as exc:
        raise SettingsError(f"cannot read TLS file {exc.filename}: {exc.strerror}") from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


#: Unary methods whose every request embeds at least one model input: refused before their body is read when even
#: that could not be admitted now (`Admission.precheck`).
PRECHECKED_METHODS = frozenset({"Recognize", "Embed"})


def admission_precheck(runtime: Runtime, method: str, deadline: float | None) -> None:
    """`Shed` for a call of `method` that the server could not admit with even its least work (see
    `PRECHECKED_METHODS`); nothing for other methods, or while the model is not loaded."""
    engine = runtime.engine
    if method in PRECHECKED_METHODS and engine is not None:
        runtime.admission.precheck(engine.costs, deadline)


def connection_options(settings: Settings) -> list[tuple[str, int]]:
    """Channel arguments that keep dead or idle clients from holding connections (settings group
    "connections"): keepalive pings find vanished peers even while a call waits for data, idle connections
    are closed."""
    out = [
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_seconds * 1000)),
        ("grpc.http2.max_pings_without_data", 0),  # keep pinging a connection whose calls send nothing
        # gRPC core waits this long for ANY ping's ACK (its default: 1 min); without it a peer that stops answering
        # (a black-holed phone, a SIGSTOPped client) kept its connection and calls past keepalive_timeout_ms
        # (measured: the first keepalive ping went unanswered and the connection stayed up > 24 s with a 1 s timeout)
        ("grpc.http2.ping_timeout_ms", int(settings.keepalive_timeout_seconds * 1000)),
    ]
    if settings.max_connection_idle_seconds > 0:
        out.append(("grpc.max_connection_idle_ms", int(settings.max_connection_idle_seconds * 1000)))
    return out


def create_server(
    settings: Settings,
    engine: Encoder | None = None,
    catalog: CatalogBackend | None = None,
    *,
    runtime: Runtime | None = None,
    health_servicer: Any | None = None,
    tokens: Any = None,
) -> tuple[grpc.aio.Server, int]:
    """Build (not start) a grpc.aio server bound to `settings.bind_address`; returns (server, port).

    With `engine` and `catalog` given it serves at once (health SERVING); otherwise pass the `runtime` that
    `ServerApp` fills in later. Call inside a running event loop.
    """
    if runtime is None:
        runtime = Runtime(settings, Metrics(CollectorRegistry()))
    if engine is not None:
        runtime.engine = engine
    if catalog is not None:
        runtime.catalog = catalog
    if runtime.engine is not None and runtime.catalog is not None and runtime.phase is Phase.LOADING:
        runtime.phase = Phase.SERVING
    tokens = settings.load_tokens() if tokens is None else tokens
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        *connection_options(settings),
    ]
    read_timeout = settings.request_read_timeout_seconds or None
    server = grpc.aio.server(
        interceptors=[
            CallInterceptor(
                runtime.metrics, read_timeout=read_timeout, idle_timeout=settings.stream_idle_seconds or None,
                precheck=functools.partial(admission_precheck, runtime),
                refusal_log_per_second=settings.log_refusals_per_second,
            ),
            AuthInterceptor(tokens),
        ],
        options=options,
    )
    recognition_pb2_grpc.add_RecognitionServiceServicer_to_server(RecognitionServicer(runtime), server)
    catalog_pb2_grpc.add_CatalogServiceServicer_to_server(CatalogServicer(runtime), server)
    migration_pb2_grpc.add_MigrationServiceServicer_to_server(MigrationServicer(runtime), server)
    if health_servicer is None:
        health_servicer = HealthServicer()
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if runtime.phase is Phase.SERVING
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        loop = asyncio.get_running_loop()
        for name in HEALTH_NAMES:  # runs before the first call: the server is not started yet
            task = loop.create_task(health_servicer.set(name, status))
            _background.add(task)
            task.add_done_callback(_background.discard)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    creds = _credentials(settings)
    if creds is None:
        port = server.add_insecure_port(settings.bind_address)
    else:
        port = server.add_secure_port(settings.bind_address, creds)
    if port == 0:
        raise SettingsError(f"cannot bind gRPC to {settings.bind_address} (address in use or not available)")
    return server, port


class ServerApp:
    """One server process: bind, load model + catalog, serve, drain on SIGTERM/SIGINT, close cleanly.

    `engine`/`catalog` may be handed in (tests share one engine); otherwise they are loaded from
    `settings.model_dir` / `settings.data_dir` after the port is bound, while health says NOT_SERVING.
    Objects handed in are not closed by `stop` unless `own=True`.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Encoder | None = None,
        catalog: CatalogBackend | None = None,
        registry: CollectorRegistry | None = None,
        own: bool = False,
    ) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.runtime = Runtime(settings, self.metrics)
        self.metrics.bind(admission=self.runtime.admission)
        if settings.drift_monitor:  # started by `load`, once the catalog is open
            self.runtime.drift = DriftMonitor(settings.drift_options(), lambda: self.runtime.catalog)
            self.registry.register(DriftCollector(self.runtime.drift))
        self._given = (engine, catalog)
        self._own_given = own
        self.health = HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.metrics_server: MetricsServer | None = None
        self._stopped = asyncio.Event()
        self._stop_task: asyncio.Task[None] | None = None
        self._purger: Purger | None = None  # old deletions purged in the background (`--purge-interval-seconds`)

    async def _set_health(self, serving: bool, *, catalog_only: bool = False) -> None:
        """Every service SERVING or NOT_SERVING; `catalog_only`: only CatalogService SERVING (mismatch)."""
        up, down = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        for name in HEALTH_NAMES:
            ok = serving and (not catalog_only or name == CATALOG_SERVICE)
            await self.health.set(name, up if ok else down)
        self.metrics.ready.set(1 if serving and not catalog_only else 0)

    async def start(self) -> int:
        """Bind and start the gRPC server (health NOT_SERVING) and the metrics endpoint; returns the port."""
        tokens = self.settings.load_tokens()
        for warning in self.settings.exposure_warnings(tokens):
            log.warning(warning)
        if not tokens:
            log.info("authentication off (no bearer tokens configured)")
        await self._set_health(False)
        self.server, self.port = create_server(
            self.settings, runtime=self.runtime, health_servicer=self.health, tokens=tokens
        )
        await self.server.start()
        log.info(
            "gRPC listening on %s:%d%s",
            self.settings.host,
            self.port,
            " (TLS)" if self.settings.tls_enabled else "",
            extra={
                "fields": {
                    "port": self.port,
                    "tls": self.settings.tls_enabled,
                    "mtls": self.settings.tls_client_ca is not None,
                    "auth": bool(tokens),
                }
            },
        )
        if self.settings.metrics_port is not None:
            host = self.settings.metrics_host or self.settings.host
            self.metrics_server = MetricsServer(self.registry, host, self.settings.metrics_port)
            log.info(
                "metrics on http://%s:%d/metrics",
                host,
                self.metrics_server.port,
                extra={"fields": {"metrics_port": self.metrics_server.port}},
            )
        return self.port

    async def load(self) -> None:
        """Load + warm the engine, open the catalog (each unless handed in), then report SERVING."""
        engine, catalog = self._given
        t0 = time.perf_counter()
        if engine is None:
            from skulens.inference.engine import Engine

            if self.settings.model_dir is None:
                raise SettingsError("no model directory: pass --model DIR or set SKULENS_MODEL_DIR")
            engine = await asyncio.to_thread(
                Engine.load, self.settings.model_dir, self.settings.engine_options()
            )
            log.info(
                "model %s loaded and warmed",
                engine.fingerprint,
                extra={"fields": {"providers": str(getattr(engine, "provider_report", ""))}},
            )
        self.runtime.engine = engine
        if catalog is None:
            location = self.settings.catalog_location()
            if location is None:
                raise SettingsError(
                    "no catalog: pass --data DIR or --catalog URL (or set SKULENS_DATA_DIR / SKULENS_CATALOG)"
                )
            catalog = await asyncio.to_thread(
                open_catalog,
                location,
                fingerprint=engine.fingerprint,
                dim=engine.dim,
                settings=self.settings.catalog_settings(),
                allow_fingerprint_mismatch=self.settings.allow_model_mismatch,
                cache=self.settings.catalog_cache,
                cache_poll_seconds=self.settings.catalog_cache_poll_ms / 1000.0,
            )
            log.info("catalog %s open%s", location.redacted(),
                     " (answering from a local FAISS copy)" if catalog.cache_state() is not None else "")
        self.runtime.catalog = catalog
        self.metrics.bind(engine, catalog)
        if self.runtime.drift is not None:
            self.runtime.drift.start()
        await self._start_migration_manager()
        settings = self.settings
        if settings.augment_references and settings.matching == "adapted" and settings.store_images:
            self.runtime.augmenter = Augmenter(self.runtime, below=settings.head_min_references,
                                               quiet_seconds=settings.augment_quiet_seconds)
            self.runtime.augmenter.start()
        if settings.purge_interval_seconds > 0:
            self._purger = Purger(self.runtime, older_than_seconds=settings.purge_after_seconds,
                                  interval_seconds=settings.purge_interval_seconds)
            self._purger.start()
        engine = self.runtime.engine
        mismatch = (catalog.fingerprint, catalog.dim) != (engine.fingerprint, engine.dim) and (
            catalog.migration_state().space(engine.fingerprint) is None
        )
        if mismatch:
            log.error(
                "MODEL MISMATCH: the catalog holds embeddings of %s but the model is %s: catalog reads and "
                "deletes work, recognition and enrolment answer FAILED_PRECONDITION; run `skulens reembed`",
                catalog.fingerprint,
                engine.fingerprint,
            )
        if self.runtime.phase is Phase.LOADING:
            self.runtime.phase = Phase.SERVING
            await self._set_health(True, catalog_only=mismatch)
            log.info("serving (ready after %.2f s)", time.perf_counter() - t0)

    async def _start_migration_manager(self) -> None:
        """Follow the catalog's model migration (models, back-fill, shadow; see `skulens.service.migration`)."""
        settings = self.settings

        async def load(model_dir: str) -> Encoder:
            from skulens.inference.engine import Engine

            return await asyncio.to_thread(Engine.load, Path(model_dir), settings.engine_options())

        manager = MigrationManager(
            self.runtime, load, poll_seconds=settings.migration_poll_seconds, backfill_batch=settings.backfill_batch,
            backfill_pause_seconds=settings.backfill_pause_seconds,
            model_dir=str(settings.model_dir.resolve()) if settings.model_dir is not None else "",
        )
        await manager.start()
        self.runtime.migration = manager
        self.registry.register(manager.collector())

    async def stop(self, grace: float | None = None) -> None:
        """Drain: health NOT_SERVING, refuse new calls, let calls in flight finish within `grace` seconds,
        then close the engine and the catalog. Safe to call more than once."""
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(
                self._stop(self.settings.grace_seconds if grace is None else grace)
            )
        await asyncio.shield(self._stop_task)

    async def _stop(self, grace: float) -> None:
        log.info("draining: finishing calls in flight (grace %.1f s)", grace)
        self.runtime.phase = Phase.DRAINING
        await self._set_health(False)
        if self.settings.drain_delay_seconds > 0 and self.server is not None:
            await asyncio.sleep(self.settings.drain_delay_seconds)
        if self.server is not None:
            await self.server.stop(grace)
        engine, catalog = self.runtime.engine, self.runtime.catalog
        if self._purger is not None:
            await self._purger.stop()
        if self.runtime.augmenter is not None:  # it embeds with the engine and writes the catalog: stop it first
            await self.runtime.augmenter.stop()
        if self.runtime.migration is not None:  # closes the models it loaded; the initial one is ours
            engine = self.runtime.migration.initial_engine or engine
            await self.runtime.migration.stop()
        if self.runtime.drift is not None:  # its refit thread reads the catalog: stop it first
            await asyncio.to_thread(self.runtime.drift.close)
        if engine is not None and (self._given[0] is None or self._own_given):
            await engine.close()
        if catalog is not None and (self._given[1] is None or self._own_given):
            await asyncio.to_thread(catalog.close)
        if self.metrics_server is not None:
            self.metrics_server.close()
        self.runtime.phase = Phase.STOPPED
        log.info("stopped")
        self._stopped.set()

    async def wait(self) -> None:
        """Until `stop` finished."""
        await self._stopped.wait()

    def install_signal_handlers(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """SIGTERM/SIGINT start a graceful stop."""
        loop = asyncio.get_running_loop()

        def on_signal(sig: int) -> None:
            log.info("signal %s: shutting down", signal.Signals(sig).name)
            task = asyncio.ensure_future(self.stop())
            _background.add(task)
            task.add_done_callback(_background.discard)

        for sig in signals:
            loop.add_signal_handler(sig, on_signal, sig)


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    """Run a server until SIGTERM/SIGINT: bind, load, serve, drain, close."""
    app = ServerApp(settings)
    app.install_signal_handlers()
    await app.start()
    try:
        await app.load()
    except BaseException:
        await app.stop(0)
        raise
    if ready is not None:
        ready.set()
    await app.wait()
