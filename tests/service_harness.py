"""Helpers for the gRPC service tests: real servers on port 0, one shared engine per test process.

Loading and warming ViT-B/32 costs seconds, so the engine is loaded once per process (on one background
event loop that every test server runs on) and handed to each `ServerApp`; each server opens its own SQLite
catalog in a temporary directory. Tests talk to the servers with the synchronous `SkulensClient`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import shutil
import subprocess
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from PIL import Image
from prometheus_client import CollectorRegistry

from skulens.client.client import ClientConfig, SkulensClient
from skulens.inference.options import BatcherOptions, EngineOptions
from skulens.service.app import ServerApp
from skulens.service.settings import Settings

T = TypeVar("T")
TEST_ENGINE_OPTIONS = EngineOptions(
    batcher=BatcherOptions(max_batch=8, max_wait_ms=2.0, max_queue=256), decode_workers=2
)


class LoopThread:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="skulens-test-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 180) -> T:
        """Run `coro` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> Any:
        """Start `coro` on the loop; returns a concurrent.futures.Future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


class _Shared:
    """Process-wide test resources: the loop thread and engines by model dir (closed at exit)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loop: LoopThread | None = None
        self.engines: dict[Path, Any] = {}
        atexit.register(self.close)

    def loop_thread(self) -> LoopThread:
        with self.lock:
            if self.loop is None:
                self.loop = LoopThread()
            return self.loop

    def engine(self, model_dir: Path) -> Any:
        lt = self.loop_thread()
        with self.lock:
            if model_dir not in self.engines:
                from skulens.inference.engine import Engine

                async def load() -> Any:
                    return await asyncio.to_thread(Engine.load, model_dir, TEST_ENGINE_OPTIONS)

                self.engines[model_dir] = lt.run(load(), timeout=600)
            return self.engines[model_dir]

    def close(self) -> None:
        if self.loop is None:
            return
        for engine in self.engines.values():
            with contextlib.suppress(Exception):  # best effort at interpreter exit
                self.loop.run(engine.close(), timeout=30)
        self.engines.clear()
        self.loop.close()
        self.loop = None


SHARED = _Shared()


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test server: loopback, port 0, small limits where tests probe them. Augmented views (a
    background job that starts once the catalog is quiet, so at a time no test controls) are off unless a test
    turns them on (tests/test_augmenter.py does)."""
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "data_dir": data_dir,
        "grace_seconds": 5.0,
        "sync_commits": False,
        "log_format": "text",
        "augment_references": False,
    }
    base.update(overrides)
    return Settings(**base)


class RunningServer:
    """A started `ServerApp` on the shared loop (engine shared, catalog its own)."""

    def __init__(
        self, settings: Settings, engine: Any, *, load: bool = True, registry: CollectorRegistry | None = None
    ) -> None:
        self.lt = SHARED.loop_thread()
        self.settings = settings
        self.registry = registry or CollectorRegistry()

        async def make() -> ServerApp:
            return ServerApp(settings, engine=engine, registry=self.registry)

        self.app = self.lt.run(make())
        self.port = self.lt.run(self.app.start())
        self.stopped = False
        if load:
            self.load()

    def load(self) -> None:
        """Open the catalog and report SERVING."""
        self.lt.run(self.app.load())

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, **config: Any) -> SkulensClient:
        """A client for this server (ClientConfig keywords: token, tls_ca, ...)."""
        return SkulensClient(ClientConfig(addr=self.addr, **config))

    def stop(self, grace: float = 1.0) -> None:
        """Drain and stop (idempotent)."""
        if not self.stopped:
            self.stopped = True
            self.lt.run(self.app.stop(grace))


# ------------------------------------------------------------------------------------------------ images
def pattern_image(seed: int, size: int = 96, variant: int = 0, fmt: str = "PNG") -> bytes:
    """A distinct blocky random-colour image per `seed` (random-weights embeddings still separate these);
    `variant` adds a little noise for a second picture of the same product."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(blocks).resize((size, size), Image.Resampling.NEAREST)).astype(np.int16)
    if variant:
        img = img + np.random.default_rng(seed * 1000 + variant).integers(-12, 13, img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def rpc_error(call: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    """Call and return the grpc.RpcError it raises (AssertionError when it succeeds)."""
    try:
        call(*args, **kwargs)
    except grpc.RpcError as exc:
        return exc
    raise AssertionError(f"{call} succeeded; expected an RpcError")


# ------------------------------------------------------------------------------------------------ TLS
def make_certs(out: Path, server_san: str = "DNS:localhost,IP:127.0.0.1") -> dict[str, Path]:
    """CA, server (subjectAltName `server_san`) and client certificates (EC P-256) from the openssl CLI."""
    if shutil.which("openssl") is None:  # pragma: no cover
        raise RuntimeError("openssl not found")
    out.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=out, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=skulens-test-ca",
    )
    for name, ext in (
        ("server", f"subjectAltName={server_san}\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        (out / f"{name}.ext").write_text(ext)
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}-localhost")
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
        )
    return {
        k: out / v
        for k, v in {
            "ca": "ca.pem",
            "server_cert": "server.pem",
            "server_key": "server.key",
            "client_cert": "client.pem",
            "client_key": "client.key",
        }.items()
    }


class GatedEngine:
    """Wraps an engine: records each embed call's deadline and holds calls while the gate is closed."""

    def __init__(self, inner: Any, lt: LoopThread, *, closed: bool = False) -> None:
        self._inner = inner
        self._lt = lt
        self.deadlines: list[float | None] = []
        self.entered = threading.Event()

        async def make() -> asyncio.Event:
            return asyncio.Event()

        self.gate = lt.run(make())
        if not closed:
            self.open()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def embed_images(
        self,
        images: Any,
        *,
        regions: Any = None,
        deadline: float | None = None,
        caller: object | None = None,
        pixels: Any = None,
        **more: Any,
    ) -> Any:
        self.deadlines.append(deadline)
        self.entered.set()
        await self.gate.wait()
        return await self._inner.embed_images(
            images, regions=regions, deadline=deadline, caller=caller, pixels=pixels, **more
        )

    def open(self) -> None:
        self._lt.loop.call_soon_threadsafe(self.gate.set)

    def close_gate(self) -> None:
        self.entered.clear()
        self._lt.loop.call_soon_threadsafe(self.gate.clear)
