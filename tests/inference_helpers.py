"""Helpers for the inference tests: a tiny model directory (built with `onnx` in milliseconds) and images."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from skulens.model.manifest import (
    Manifest,
    TensorSpec,
    TowerSpec,
    embedding_fingerprint,
    sha256_file,
    write_manifest,
)
from skulens.model.preprocess_config import PreprocessConfig

TINY_DIM = 4
TINY_SIZE = 16
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def tiny_model_dir(
    out: Path,
    *,
    input_name: str = "pixel_values",
    graph_input_name: str | None = None,
    graph_size: int | None = None,
    weights: str = "random",
) -> Path:
    """An image-only model dir: pixel_values [batch,3,16,16] → mean over H,W → MatMul → embedding [batch,4]
    (not normalised, so the encoder's renormalisation is exercised). `graph_*` make the graph disagree with
    the manifest."""
    import onnx
    from onnx import TensorProto, helper

    out.mkdir(parents=True, exist_ok=True)
    gsize = graph_size or TINY_SIZE
    gname = graph_input_name or input_name
    w = np.array([[1.0, 0.5, -0.25, 2.0], [0.0, 1.0, 0.5, -1.0], [0.3, -0.2, 1.0, 0.1]], dtype=np.float32)
    nodes = [
        helper.make_node("ReduceMean", [gname, "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["proj"]),
        helper.make_node("Add", ["proj", "bias"], ["embedding"]),
    ]
    inits = [
        helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3]),
        helper.make_tensor("w", TensorProto.FLOAT, [3, TINY_DIM], w.flatten().tolist()),
        helper.make_tensor("bias", TensorProto.FLOAT, [TINY_DIM], [0.1, 0.2, 0.3, 0.4]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(gname, TensorProto.FLOAT, ["batch", 3, gsize, gsize])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", TINY_DIM])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(out / "image.onnx"))
    PreprocessConfig(size=(TINY_SIZE, TINY_SIZE), mean=CLIP_MEAN, std=CLIP_STD).write(out)
    manifest = Manifest(
        model_name="tiny",
        family="test",
        weights=weights,
        variant="fp32",
        embedding_dim=TINY_DIM,
        opset=18,
        image=TowerSpec(
            file="image.onnx",
            input=TensorSpec(input_name, ("batch", 3, TINY_SIZE, TINY_SIZE), "float32"),
            output=TensorSpec("embedding", ("batch", TINY_DIM), "float32"),
        ),
        fingerprint=embedding_fingerprint("tiny", weights, "0", TINY_DIM),
        files={f: sha256_file(out / f) for f in ("image.onnx", "preprocess.json")},
        seed=0,
    )
    write_manifest(out, manifest)
    return out


def tiny_reference(pixels: np.ndarray) -> np.ndarray:
    """What the tiny model computes, normalised: float32 [N, 4]."""
    w = np.array([[1.0, 0.5, -0.25, 2.0], [0.0, 1.0, 0.5, -1.0], [0.3, -0.2, 1.0, 0.1]], dtype=np.float32)
    e = pixels.mean(axis=(2, 3)) @ w + np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth, asymmetric RGB test picture (gradients plus a few blocks), like a photo for codecs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 255 * x / max(1, width - 1)
    g = 255 * y / max(1, height - 1)
    b = 127 + 100 * np.sin(x / 7.0 + seed) * np.cos(y / 11.0)
    arr = np.stack([r, g, b], axis=-1)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, max(1, width - 8))), int(rng.integers(0, max(1, height - 8)))
        arr[y0 : y0 + height // 5, x0 : x0 + width // 5] = rng.integers(0, 256, 3)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    """Save `img` to bytes in `fmt`."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def decode_workers_cpu(pid: int | None = None) -> dict[int, int]:
    """Decode worker processes of `pid` (default: this process) — its spawned children, not multiprocessing's
    resource tracker — with the user + system clock ticks each has used."""
    out: dict[int, int] = {}
    for task in Path(f"/proc/{os.getpid() if pid is None else pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
                    out[int(child)] = int(fields[11]) + int(fields[12])
    return out
