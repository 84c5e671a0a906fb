"""grpc.health.v1 transitions (NOT_SERVING while loading → SERVING → NOT_SERVING while draining), graceful
drain with a call in flight, SIGTERM on a real `skulens serve` process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_harness import SHARED, GatedEngine, RunningServer, make_settings, pattern_image, rpc_error

from skulens.catalog.errors import CatalogClosed
from skulens.client.client import ClientConfig, SkulensClient, image_input
from skulens.service.app import HEALTH_NAMES
from skulens.service.state import Phase
from skulens.v1 import catalog_pb2, recognition_pb2

REPO = Path(__file__).resolve().parents[1]
C = grpc.StatusCode


@pytest.fixture(scope="module")
def engine(clip_model_dir: Path) -> object:
    return SHARED.engine(clip_model_dir)


def _statuses(c: SkulensClient) -> set[str]:
    return {c.health(name) for name in HEALTH_NAMES}


def test_not_serving_until_loaded_then_serving(engine: object, tmp_path: Path) -> None:
    srv = RunningServer(make_settings(tmp_path / "data"), engine, load=False)
    try:
        with srv.client() as c:
            assert _statuses(c) == {"NOT_SERVING"}
            err = rpc_error(c.recognize, [image_input(pattern_image(0))])
            assert err.code() is C.UNAVAILABLE and "loading" in err.details()
            assert rpc_error(c.stats).code() is C.UNAVAILABLE
            srv.load()
            assert _statuses(c) == {"SERVING"}
            assert srv.app.runtime.phase is Phase.SERVING
            c.stats()
    finally:
        srv.stop()


def test_drain_finishes_calls_in_flight(clip_model_dir: Path, tmp_path: Path) -> None:
    lt = SHARED.loop_thread()
    gated = GatedEngine(SHARED.engine(clip_model_dir), lt, closed=True)
    srv = RunningServer(make_settings(tmp_path / "data", drain_delay_seconds=1.0, grace_seconds=20), gated)
    try:
        with srv.client() as c:
            c.upsert_product("p0")
            gated.open()
            c.add_references(
                [catalog_pb2.AddReferenceImagesRequest(product_id="p0", content=pattern_image(0))]
            )
            gated.close_gate()
            in_flight = c.recognition.Recognize.future(
                recognition_pb2.RecognizeRequest(images=[image_input(pattern_image(0))]), timeout=30
            )
            assert gated.entered.wait(10), "the call never reached the engine"
            stopping = lt.submit(srv.app.stop(20))
            deadline = time.monotonic() + 5
            while srv.app.runtime.phase is not Phase.DRAINING and time.monotonic() < deadline:
                time.sleep(0.01)
            # during the drain delay: health says NOT_SERVING and new calls are refused with UNAVAILABLE
            assert _statuses(c) == {"NOT_SERVING"}
            err = rpc_error(c.recognize, [image_input(pattern_image(0))])
            assert err.code() is C.UNAVAILABLE and "shutting down" in err.details()
            assert not in_flight.done()
            gated.open()
            result = in_flight.result(timeout=30)
            assert result.results[0].recognition.matches[0].product_id == "p0"
            stopping.result(timeout=30)
        srv.stopped = True
        assert srv.app.runtime.phase is Phase.STOPPED
        with pytest.raises(CatalogClosed):
            srv.app.runtime.catalog.stats()  # type: ignore[union-attr]
        with SkulensClient(ClientConfig(addr=srv.addr, timeout=2)) as c:  # the port is closed now
            assert rpc_error(c.stats).code() is C.UNAVAILABLE
    finally:
        gated.open()
        srv.stop()


def test_sigterm_stops_a_real_server(effnet_model_dir: Path, tmp_path: Path) -> None:
    """`skulens serve` in a subprocess: port 0 is logged; SIGTERM drains and exits 0, catalog closed."""
    env = {
        **os.environ,
        "SKULENS_MODEL_DIR": str(effnet_model_dir),
        "SKULENS_DATA_DIR": str(tmp_path / "data"),
        "SKULENS_LOG_FORMAT": "text",
        "PYTHONPATH": f"{REPO}:{REPO / 'proto'}",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "skulens.cli", "serve", "--port", "0", "--max-batch", "2"],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        port = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"gRPC listening on 127\.0\.0\.1:(\d+)", line)
            port = int(m.group(1)) if m else port
            if 'msg="serving' in line or "msg=serving" in line:
                break
        assert port, "".join(lines)
        with SkulensClient(ClientConfig(addr=f"127.0.0.1:{port}", timeout=10)) as c:
            assert c.health() == "SERVING"
            assert c.stats().dim == 1280
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
        lines.append(rest)
        assert proc.returncode == 0, "".join(lines)
        log = "".join(lines)
        assert "signal SIGTERM" in log and "msg=stopped" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _watch(addr: str, service: str = "", timeout: float = 30) -> tuple[grpc.Channel, object]:
    ch = grpc.insecure_channel(addr)
    stub = health_pb2_grpc.HealthStub(ch)
    return ch, stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=timeout)


def test_watch_and_list_as_the_standard_says(engine: object, tmp_path: Path) -> None:
    """Watch streams SERVING, then NOT_SERVING when draining starts; List answers every service; a Watch of an
    unknown service says SERVICE_UNKNOWN; 40 Watch clients that cancel or drop their channel leave the server
    up with no call still counted in flight."""
    srv = RunningServer(make_settings(tmp_path / "data", drain_delay_seconds=1.0), engine)
    try:
        with grpc.insecure_channel(srv.addr) as ch:
            listed = health_pb2_grpc.HealthStub(ch).List(health_pb2.HealthListRequest(), timeout=10)
        assert set(listed.statuses) == set(HEALTH_NAMES)
        assert {s.status for s in listed.statuses.values()} == {health_pb2.HealthCheckResponse.SERVING}
        gone = []
        for k in range(40):  # clients that come and go
            ch, watch = _watch(srv.addr, HEALTH_NAMES[k % len(HEALTH_NAMES)])
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING  # type: ignore[call-overload]
            if k % 2:
                watch.cancel()  # type: ignore[attr-defined]
            ch.close()
            gone.append(k)
        ch, unknown = _watch(srv.addr, "no.such.Service")
        assert next(unknown).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN  # type: ignore[call-overload]
        ch.close()
        with srv.client() as c:
            assert _statuses(c) == {"SERVING"} and c.stats().product_count == 0
        ch, watch = _watch(srv.addr)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING  # type: ignore[call-overload]
        stopping = SHARED.loop_thread().submit(srv.app.stop(10))
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING  # type: ignore[call-overload]
        ch.close()
        stopping.result(timeout=30)
        srv.stopped = True
        in_flight = srv.registry.get_sample_value("skulens_grpc_calls_in_flight", {"method": "Watch"})
        assert in_flight in (None, 0.0)
        def watch_calls(code: str) -> float | None:
            return srv.registry.get_sample_value("skulens_grpc_calls_total", {"method": "Watch", "code": code})

        assert (watch_calls("CANCELLED") or 0) >= 40 and watch_calls("INTERNAL") is None
    finally:
        srv.stop()
