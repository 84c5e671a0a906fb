"""`python -m skulens.client.healthcheck` against a real gRPC server carrying the standard health servicer.

No skulens model or catalog is involved: the server here only has `grpc.health.v1`, on an ephemeral port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from service_harness import make_certs

from skulens.client import healthcheck

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class HealthServer:
    addr: str
    servicer: health.HealthServicer


@pytest.fixture
def health_server() -> Iterator[HealthServer]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield HealthServer(f"127.0.0.1:{port}", servicer)
    finally:
        server.stop(grace=None).wait(5)


def _set(srv: HealthServer, status: int, service: str = "") -> None:
    srv.servicer.set(service, status)


def _run_module(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs the probe as the Dockerfile HEALTHCHECK does: a fresh interpreter, `-m skulens.client.healthcheck`."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "skulens.client.healthcheck", *args],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_serving_then_not_serving_subprocess(health_server: HealthServer) -> None:
    _set(health_server, health_pb2.HealthCheckResponse.SERVING)
    ok = _run_module("--addr", health_server.addr, "--timeout", "5")
    assert ok.returncode == 0, ok.stderr
    assert "SERVING" in ok.stdout

    _set(health_server, health_pb2.HealthCheckResponse.NOT_SERVING)
    bad = _run_module("--addr", health_server.addr, "--timeout", "5")
    assert bad.returncode == 1
    assert "NOT_SERVING" in bad.stderr

    _set(health_server, health_pb2.HealthCheckResponse.SERVING)
    assert _run_module("--addr", health_server.addr).returncode == 0


def test_main_in_process(health_server: HealthServer) -> None:
    _set(health_server, health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.main(["--addr", health_server.addr]) == 0
    _set(health_server, health_pb2.HealthCheckResponse.NOT_SERVING)
    assert healthcheck.main(["--addr", health_server.addr]) == 1
    _set(health_server, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
    assert healthcheck.main(["--addr", health_server.addr]) == 1


def test_named_service(health_server: HealthServer) -> None:
    _set(health_server, health_pb2.HealthCheckResponse.SERVING, "skulens.v1.Recognition")
    assert healthcheck.check(health_server.addr, "skulens.v1.Recognition") == (True, "SERVING")
    serving, detail = healthcheck.check(health_server.addr, "no.such.Service")
    assert not serving
    assert detail.startswith("NOT_FOUND")


def test_unreachable_is_unhealthy() -> None:
    res = _run_module("--addr", f"127.0.0.1:{_free_port()}", "--timeout", "1")
    assert res.returncode == 1
    assert "UNAVAILABLE" in res.stderr or "DEADLINE_EXCEEDED" in res.stderr


def test_default_addr_follows_skulens_port(health_server: HealthServer) -> None:
    _set(health_server, health_pb2.HealthCheckResponse.SERVING)
    port = health_server.addr.rsplit(":", 1)[1]
    assert _run_module(env={"SKULENS_PORT": port}).returncode == 0


def test_bad_timeout_is_unhealthy() -> None:
    assert healthcheck.main(["--addr", "127.0.0.1:1", "--timeout", "0"]) == 1


def test_probe_stays_light() -> None:
    """The HEALTHCHECK runs every few seconds in the runtime image: no torch, onnxruntime, faiss or numpy."""
    code = (
        "import sys, skulens.client.healthcheck; "
        "heavy = sorted({'torch', 'onnxruntime', 'faiss', 'numpy', 'open_clip'} & set(sys.modules)); "
        "print(','.join(heavy)); sys.exit(1 if heavy else 0)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, f"heavy imports: {res.stdout} {res.stderr}"


# ---------------------------------------------------------------------------------------------------- TLS
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away CA, a server certificate for `skulens.test` only (so the probe must be told the name) and a
    client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("pki")
    make_certs(d, server_san="DNS:skulens.test")
    return d


def _tls_server(pki: Path, require_client_cert: bool) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.pem").read_bytes())],
        root_certificates=(pki / "ca.pem").read_bytes() if require_client_cert else None,
        require_client_auth=require_client_cert,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    return server, f"127.0.0.1:{port}"


def test_tls(pki: Path) -> None:
    server, addr = _tls_server(pki, require_client_cert=False)
    try:
        tls = ["--tls-ca", str(pki / "ca.pem"), "--tls-server-name", "skulens.test", "--timeout", "5"]
        assert healthcheck.main(["--addr", addr, *tls], environ={}) == 0
        assert healthcheck.main(["--addr", addr, "--timeout", "2"], environ={}) == 1  # plaintext to TLS
        env = {
            "SKULENS_PORT": addr.rsplit(":", 1)[1],
            "SKULENS_HEALTHCHECK_TLS_CA": str(pki / "ca.pem"),
            "SKULENS_HEALTHCHECK_TLS_SERVER_NAME": "skulens.test",
        }
        assert _run_module("--timeout", "5", env=env).returncode == 0  # the HEALTHCHECK form: env only
    finally:
        server.stop(grace=None).wait(5)


def test_mutual_tls(pki: Path) -> None:
    server, addr = _tls_server(pki, require_client_cert=True)
    try:
        tls = ["--tls-ca", str(pki / "ca.pem"), "--tls-server-name", "skulens.test", "--timeout", "5"]
        client = ["--tls-cert", str(pki / "client.pem"), "--tls-key", str(pki / "client.key")]
        assert healthcheck.main(["--addr", addr, *tls, *client], environ={}) == 0
        assert healthcheck.main(["--addr", addr, *tls], environ={}) == 1  # no client certificate
        assert healthcheck.main(["--addr", addr, *tls, client[0], client[1]], environ={}) == 1  # cert, no key
    finally:
        server.stop(grace=None).wait(5)
