"""Prometheus metrics over HTTP from a registry passed in: calls by method and status, latency, batch sizes,
images (a counter → images/s), queue depth, catalog size."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry
from service_harness import SHARED, RunningServer, make_settings, pattern_image, rpc_error

from skulens.client.client import image_input
from skulens.service.metrics import Metrics, MetricsServer
from skulens.v1 import catalog_pb2


def _value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.fullmatch(r"([a-z_]+)(\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(4))
    raise AssertionError(f"{name}{labels} not in metrics")


@pytest.fixture(scope="module")
def server(clip_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = make_settings(tmp_path_factory.mktemp("metrics") / "data", metrics_port=0)
    srv = RunningServer(settings, SHARED.engine(clip_model_dir))
    yield srv
    srv.stop()


def _scrape(srv: RunningServer) -> str:
    assert srv.app.metrics_server is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.app.metrics_server.port}/metrics", timeout=10) as r:
        return str(r.read().decode())


def test_metrics_endpoint_counts_calls_images_and_catalog(server: RunningServer) -> None:
    with server.client() as c:
        c.upsert_product("m1")
        c.add_references(
            [
                catalog_pb2.AddReferenceImagesRequest(product_id="m1", content=pattern_image(1)),
                catalog_pb2.AddReferenceImagesRequest(product_id="m1", content=b"bad"),
            ]
        )
        c.recognize([image_input(pattern_image(1)), image_input(pattern_image(2)), image_input(b"junk")])
        assert c.get_product("missing") is None
        rpc_error(c.upsert_product, "")
    # a call is counted when its handler returns, which may be just after the client has its answer
    deadline = time.monotonic() + 5
    while True:
        text = _scrape(server)
        try:
            _value(text, "skulens_grpc_calls_total", method="UpsertProduct", code="INVALID_ARGUMENT")
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    assert _value(text, "skulens_grpc_calls_total", method="Recognize", code="OK") == 1
    assert _value(text, "skulens_grpc_calls_total", method="GetProduct", code="NOT_FOUND") == 1
    assert _value(text, "skulens_grpc_calls_total", method="UpsertProduct", code="INVALID_ARGUMENT") == 1
    assert _value(text, "skulens_grpc_call_seconds_count", method="Recognize") == 1
    assert _value(text, "skulens_grpc_call_seconds_sum", method="Recognize") > 0
    assert _value(text, "skulens_images_total", method="Recognize", code="OK") == 2
    assert _value(text, "skulens_images_total", method="Recognize", code="INVALID_ARGUMENT") == 1
    assert _value(text, "skulens_images_total", method="AddReferenceImages", code="OK") == 1
    assert _value(text, "skulens_request_items_count", method="Recognize") == 1
    assert _value(text, "skulens_request_items_sum", method="Recognize") == 3
    assert _value(text, "skulens_catalog_products") == 1
    assert _value(text, "skulens_catalog_references") == 1
    assert _value(text, "skulens_inference_queue_depth") == 0
    assert _value(text, "skulens_ready") == 1
    assert _value(text, "skulens_grpc_calls_in_flight", method="Recognize") == 0
    assert "skulens_model_batches_total" in text


def test_no_metrics_on_the_global_registry(server: RunningServer) -> None:
    names = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert not any(n.startswith("skulens") for n in names)


def test_metrics_server_port_zero_and_close() -> None:
    reg = CollectorRegistry()
    metrics = Metrics(reg)
    metrics.count_images("Recognize", "OK", 3)
    srv = MetricsServer(reg, "127.0.0.1", 0)
    try:
        assert srv.port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=10) as r:
            assert _value(r.read().decode(), "skulens_images_total", method="Recognize", code="OK") == 3
    finally:
        srv.close()


def test_broken_catalog_does_not_break_scrapes() -> None:
    class Broken:
        def stats(self) -> None:
            raise RuntimeError("boom")

    reg = CollectorRegistry()
    Metrics(reg).bind(catalog=Broken())
    text = prometheus_client.generate_latest(reg).decode()
    assert "skulens_grpc_calls_total" in text or "skulens_ready" in text
