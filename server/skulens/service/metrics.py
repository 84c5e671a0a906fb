"""Prometheus metrics on a registry passed in (never the global default one), and their HTTP endpoint.

| metric                        | kind      | labels       | meaning                                  |
|-------------------------------|-----------|--------------|------------------------------------------|
| skulens_grpc_calls_total      | counter   | method, code | finished calls                           |
| skulens_grpc_call_seconds     | histogram | method       | call latency                             |
| skulens_grpc_calls_in_flight  | gauge     | method       | calls running now                        |
| skulens_request_items         | histogram | method       | images/texts per request (batch size)    |
| skulens_images_total          | counter   | method, code | images/regions done; rate() = images/s   |
| skulens_texts_total           | counter   | method       | text queries embedded                    |
| skulens_inference_queue_depth | gauge     |              | items waiting for the model              |
| skulens_model_batches_total   | counter   | size         | model micro-batches by size              |
| skulens_catalog_products      | gauge     |              | products in the catalog                  |
| skulens_catalog_references    | gauge     |              | reference images in the catalog          |
| skulens_ready                 | gauge     |              | 1 serving, 0 loading or draining         |
| skulens_admission_backlog_seconds | gauge |              | expected seconds of admitted work        |
| skulens_admission_calls       | gauge     |              | embedding calls admitted and running     |
| skulens_admission_inflight_bytes | gauge  |              | image bytes held by admitted work        |
| skulens_admission_refused_total | counter | reason     | refused before decoding, by check |
| skulens_enrolment_warnings_total | counter | kind      | warnings about enrolled references (catalog.proto) |
| skulens_catalog_purged_total  | counter   | what         | deleted rows purged, by table (`Purger`) |

The drift monitor registers its own `skulens_drift_*` metrics on the same registry
(`skulens.service.drift_metrics`, docs/MONITORING.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("skulens.metrics")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _LiveCollector(Collector):
    """Reads engine/catalog state at scrape time (in the HTTP thread; failures are logged, not raised)."""

    def __init__(self) -> None:
        self.engine_stats: Callable[[], Any] | None = None
        self.queue_depth: Callable[[], int] | None = None
        self.catalog_stats: Callable[[], Any] | None = None
        self.admission_stats: Callable[[], Any] | None = None

    def collect(self) -> Iterator[Any]:
        depth = GaugeMetricFamily("skulens_inference_queue_depth", "Items waiting for the model")
        batches = CounterMetricFamily("skulens_model_batches", "Model micro-batches by size", labels=["size"])
        products = GaugeMetricFamily("skulens_catalog_products", "Products in the catalog")
        refs = GaugeMetricFamily("skulens_catalog_references", "Reference images in the catalog")
        backlog = GaugeMetricFamily("skulens_admission_backlog_seconds", "Expected seconds of admitted work")
        calls = GaugeMetricFamily("skulens_admission_calls", "Embedding calls admitted and running")
        held = GaugeMetricFamily("skulens_admission_inflight_bytes", "Image bytes held by admitted work")
        slowdown = GaugeMetricFamily(
            "skulens_admission_slowdown",
            "How much slower than the cost model expects admitted work drains while the books are busy",
        )
        refused = CounterMetricFamily(
            "skulens_admission_refused", "Work refused at admission, before decoding", labels=["reason"]
        )
        restarts = CounterMetricFamily(
            "skulens_decode_worker_restarts", "Times the decode worker processes were replaced after one died"
        )
        try:
            if self.admission_stats is not None:
                ad = self.admission_stats()
                backlog.add_metric([], float(ad.backlog_s))
                calls.add_metric([], float(ad.calls))
                held.add_metric([], float(ad.inflight_bytes))
                slowdown.add_metric([], float(ad.slowdown))
                for reason, n in sorted(ad.refused.items()):
                    refused.add_metric([reason], float(n))
            if self.queue_depth is not None:
                depth.add_metric([], float(self.queue_depth()))
            if self.engine_stats is not None:
                es = self.engine_stats()
                hist = getattr(es.image_batcher, "batch_size_histogram", {}) or {}
                for size, count in sorted(hist.items()):
                    batches.add_metric([str(size)], float(count))
                restarts.add_metric([], float(getattr(es, "decode_worker_restarts", 0)))
            if self.catalog_stats is not None:
                st = self.catalog_stats()
                products.add_metric([], float(st.products))
                refs.add_metric([], float(st.references))
        except Exception:  # a scrape must never take the endpoint down
            log.warning("metrics collection failed", exc_info=True)
        yield from (depth, batches, products, refs, backlog, calls, held, slowdown, refused, restarts)


class Metrics:
    """All skulens metrics, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.calls = Counter(
            "skulens_grpc_calls", "Finished gRPC calls", ["method", "code"], registry=registry
        )
        self.latency = Histogram(
            "skulens_grpc_call_seconds",
            "gRPC call latency",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "skulens_grpc_calls_in_flight", "gRPC calls running", ["method"], registry=registry
        )
        self.request_items = Histogram(
            "skulens_request_items",
            "Images or texts per request (or stream message)",
            ["method"],
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self.images = Counter(
            "skulens_images", "Images or regions processed, by outcome", ["method", "code"], registry=registry
        )
        self.texts = Counter("skulens_texts", "Text queries embedded", ["method"], registry=registry)
        self.ready = Gauge("skulens_ready", "1 when serving, 0 while loading or draining", registry=registry)
        self.enrolment_warnings = Counter(
            "skulens_enrolment_warnings", "Warnings given about enrolled references, by kind", ["kind"],
            registry=registry,
        )
        self.purged = Counter(
            "skulens_catalog_purged", "Deleted catalog rows purged for good, by table", ["what"], registry=registry
        )
        self._live = _LiveCollector()
        registry.register(self._live)

    def bind(self, engine: Any | None = None, catalog: Any | None = None, admission: Any | None = None) -> None:
        """Read queue depth / batch sizes from `engine`, sizes from `catalog` and the admission books at
        scrape time."""
        if admission is not None:
            self._live.admission_stats = admission.stats
        if engine is not None:
            self._live.queue_depth = lambda: int(engine.queue_depth)
            self._live.engine_stats = engine.stats if hasattr(engine, "stats") else None
        if catalog is not None:
            self._live.catalog_stats = catalog.stats

    def observe_items(self, method: str, n: int) -> None:
        """Record the size of one request (images or texts)."""
        self.request_items.labels(method).observe(n)

    def count_enrolment_warning(self, kind: str) -> None:
        """Count one enrolment warning of `kind` (CLOSER_TO_OTHER_PRODUCT, NEAR_DUPLICATE_OF_OTHER_PRODUCT, ...)."""
        self.enrolment_warnings.labels(kind).inc()

    def count_purged(self, report: Any) -> None:
        """Count the rows a `skulens.catalog.purge.PurgeReport` removed."""
        for what in ("products", "references", "embeddings", "augmented"):
            n = int(getattr(report, what))
            if n:
                self.purged.labels(what).inc(n)

    def count_images(self, method: str, code: str, n: int = 1) -> None:
        """Count `n` images with outcome `code` (OK, INVALID_ARGUMENT, ...)."""
        if n:
            self.images.labels(method, code).inc(n)


class MetricsServer:
    """The /metrics endpoint (prometheus_client's threaded WSGI server) on host:port (0 = a free port)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port: int = int(self._httpd.server_port)
        self.host = host

    def close(self) -> None:
        """Stop serving and join the thread."""
        self._httpd.shutdown()
        self._httpd.server_close()
        if isinstance(self._thread, threading.Thread):
            self._thread.join(timeout=5)
