"""Shared pieces of the exporters: error type, staging directories, tool versions, tower export + parity."""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from skulens.export import onnx_io, parity, quantize
from skulens.model.manifest import VARIANTS, TowerSpec, sha256_file

log = logging.getLogger(__name__)

INCOMPLETE_MARKER = "EXPORT_INCOMPLETE"


class ExportError(RuntimeError):
    """An export could not produce a valid model directory; the message says what failed and what to do."""


def tool_versions(*dists: str) -> dict[str, str]:
    """Versions of the export toolchain (dists not installed read "absent")."""
    out = {"python": platform.python_version()}
    for name in ("torch", "onnx", "onnxruntime", "skulens", *dists):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


@dataclass(frozen=True)
class WeightsChoice:
    """Which weights an export loads: `tag` is the manifest's `weights` ("random", "checkpoint" or the model's
    published weights, e.g. "openai"); `weights_id` feeds the embedding fingerprint (the seed, the checkpoint's
    sha256, or the tag)."""

    tag: str
    weights_id: str
    checkpoint: Path | None = None
    seed: int | None = None


def choose_weights(
    model_name: str, published: str, weights: str | None, *, seed: int = 0, checkpoint: Path | None = None
) -> WeightsChoice:
    """Resolve the export options: a `checkpoint` wins; `weights` None means the `published` weights.

    Raises `ExportError` for a missing checkpoint file or weights the model does not have.
    """
    if checkpoint is not None:
        ckpt = Path(checkpoint)
        if not ckpt.is_file():
            raise ExportError(f"checkpoint {ckpt} does not exist")
        return WeightsChoice("checkpoint", sha256_file(ckpt), checkpoint=ckpt)
    chosen = published if weights is None else weights
    if chosen == "random":
        return WeightsChoice("random", str(seed), seed=seed)
    if chosen != published:
        raise ExportError(
            f"{model_name} weights must be {published!r} (published) or 'random' (or give a checkpoint), got {chosen!r}"
        )
    return WeightsChoice(published, published)


def unreachable_weights(model_name: str, published: str, exc: BaseException) -> ExportError:
    """The error for published weights that could not be fetched: names the offline options."""
    return ExportError(
        f"could not get the {published} {model_name} weights (download failed or no network: "
        f"{type(exc).__name__}: {exc}). Offline options: `--checkpoint PATH` with a local checkpoint, or "
        "`--weights random --seed N` for test weights."
    )


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def check_variant(variant: str, opset: int) -> None:
    if variant not in VARIANTS:
        raise ExportError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if opset < onnx_io.MIN_OPSET:
        raise ExportError(f"opset must be >= {onnx_io.MIN_OPSET}, got {opset}")


@contextlib.contextmanager
def staging_dir(out_dir: Path, force: bool) -> Iterator[Path]:
    """Build the model in a sibling staging folder; move it to `out_dir` only when the block succeeds.

    On failure `out_dir` is left as it was and the staging folder stays, holding an `EXPORT_INCOMPLETE` file
    with the error, for inspection (it is replaced by the next attempt).
    """
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise ExportError(f"output directory {out_dir} is not empty; pass --force to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = out_dir.parent / f".{out_dir.name}.partial"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    marker = stage / INCOMPLETE_MARKER
    marker.write_text("export in progress\n")
    try:
        yield stage
    except BaseException as exc:
        marker.write_text(f"export failed: {type(exc).__name__}: {exc}\n")
        raise
    marker.unlink()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    stage.rename(out_dir)


def file_hashes(model_dir: Path) -> dict[str, str]:
    """sha256 of every file under `model_dir` (relative POSIX paths), manifest.json excluded."""
    files = {}
    for p in sorted(Path(model_dir).rglob("*")):
        if p.is_file() and p.name not in ("manifest.json", INCOMPLETE_MARKER):
            files[p.relative_to(model_dir).as_posix()] = sha256_file(p)
    return files


@dataclass(frozen=True)
class TowerResult:
    spec: TowerSpec
    parity: parity.TowerParity
    seconds: float


def export_variant_tower(
    *,
    name: str,
    module: Any,
    example: Any,
    inputs: np.ndarray,
    reference: np.ndarray,
    out_dir: Path,
    input_name: str,
    variant: str,
    opset: int,
    work_dir: Path | None = None,
) -> TowerResult:
    """Export `module` as `<name>.onnx` in `variant`, then measure and check it against `reference`."""
    t0 = time.perf_counter()
    final = Path(out_dir) / f"{name}.onnx"
    with tempfile.TemporaryDirectory(prefix="skulens-export-", dir=work_dir) as tmp:
        fp32 = final if variant == "fp32" else Path(tmp) / f"{name}.fp32.onnx"
        try:
            onnx_io.export_tower(module, example, fp32, input_name=input_name, opset=opset)
        except Exception as exc:
            raise ExportError(f"ONNX export of the {name} tower failed: {exc}") from exc
        convert: dict[str, Callable[[Path, Path], Path]] = {
            "fp16": quantize.to_fp16,
            "int8": quantize.to_int8,
        }
        if variant in convert:
            try:
                convert[variant](fp32, final)
            except Exception as exc:
                raise ExportError(f"{variant} conversion of the {name} tower failed: {exc}") from exc
    disabled = onnx_io.CPU_FP16_DISABLED_OPTIMIZERS if variant == "fp16" else ()
    try:
        got = onnx_io.run_onnx(final, inputs, disabled_optimizers=disabled)
    except Exception as exc:
        raise ExportError(f"ONNX Runtime cannot run the exported {name} tower ({variant}): {exc}") from exc
    result = parity.compare(reference, got)
    try:
        parity.check(name, variant, result)
    except parity.ParityError as exc:
        raise ExportError(str(exc)) from exc
    in_spec, out_spec = onnx_io.io_specs(final)
    return TowerResult(
        TowerSpec(file=final.name, input=in_spec, output=out_spec), result, time.perf_counter() - t0
    )


def parity_block(results: dict[str, TowerResult], variant: str) -> dict[str, Any]:
    """The manifest's `parity` object."""
    block: dict[str, Any] = {
        "reference": "pytorch fp32 (cpu)",
        "variant": variant,
        "thresholds": (
            {"max_abs_diff": parity.FP32_MAX_ABS}
            if variant == "fp32"
            else {"min_cosine": parity.REDUCED_MIN_COSINE}
        ),
    }
    if variant == "fp16":
        block["ort_cpu_disabled_optimizers"] = list(onnx_io.CPU_FP16_DISABLED_OPTIMIZERS)
    for tower, res in results.items():
        block[tower] = res.parity.to_dict()
    return block
