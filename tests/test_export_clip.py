"""open_clip exports (ViT-B-32, RN50): two towers, sidecars, manifest, parity for fp32/fp16/int8, weights errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from skulens.model.manifest import load_manifest
from skulens.model.preprocess_config import PreprocessConfig

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[1]
# model name → (model dir fixture, embedding dim, manifest `embedding.pooling`)
MODELS = {
    "ViT-B-32": ("clip_model_dir", 512, "class_token"),
    "RN50": ("clip_rn50_model_dir", 1024, "attention_pool"),
}


def _session(path: Path, variant: str = "fp32") -> Any:
    from skulens.export.onnx_io import CPU_FP16_DISABLED_OPTIMIZERS, ort_session

    return ort_session(path, disabled_optimizers=CPU_FP16_DISABLED_OPTIMIZERS if variant == "fp16" else ())


@pytest.fixture(scope="module")
def torch_models() -> dict[str, Any]:
    """open_clip models with the fixtures' weights (random, seed 0), built once each on first use."""
    return {}


@pytest.fixture(params=list(MODELS))
def case(request: pytest.FixtureRequest, torch_models: dict[str, Any]) -> tuple[str, Path, int, Any]:
    """(model name, exported model dir, embedding dim, torch model) for each open_clip model."""
    from skulens.export.clip import load_clip

    name = request.param
    fixture, dim, _ = MODELS[name]
    if name not in torch_models:
        model, tag, wid = load_clip("random", model_name=name, seed=0)
        assert (tag, wid) == ("random", "0")
        torch_models[name] = model
    return name, request.getfixturevalue(fixture), dim, torch_models[name]


@pytest.fixture(scope="module")
def torch_model(torch_models: dict[str, Any]) -> Any:
    from skulens.export.clip import load_clip

    if "ViT-B-32" not in torch_models:
        torch_models["ViT-B-32"] = load_clip("random", seed=0)[0]
    return torch_models["ViT-B-32"]


def test_model_dir_layout_and_manifest(case: tuple[str, Path, int, Any]) -> None:
    name, model_dir, dim, _ = case
    m = load_manifest(model_dir, verify=True)
    assert (m.model_name, m.family, m.weights, m.seed, m.variant) == (name, "open_clip", "random", 0, "fp32")
    assert m.embedding_dim == dim and m.opset >= 17 and m.has_text
    assert m.image.input.name == "pixel_values" and m.image.input.shape == ("batch", 3, 224, 224)
    assert m.image.input.dtype == "float32"
    assert m.text is not None and m.text.input.name == "input_ids" and m.text.input.shape == ("batch", 77)
    assert m.text.input.dtype == "int64"
    for spec in (m.image, m.text):
        assert spec.output.name == "embedding" and spec.output.shape == ("batch", dim)
    assert set(m.files) == {
        "image.onnx",
        "text.onnx",
        "preprocess.json",
        "tokenizer/bpe_simple_vocab_16e6.txt.gz",
        "tokenizer/tokenizer.json",
    }
    assert m.tokenizer is not None and m.tokenizer.context_length == 77
    assert {"torch", "open_clip_torch", "onnx", "onnxruntime", "python", "skulens"} <= set(m.tools)
    assert m.created_at and m.fingerprint.startswith(f"{name}/random/{dim}:")
    assert m.embedding["pooling"] == MODELS[name][2] and f"({dim}-d)" in m.embedding["description"]
    for tower in ("image", "text"):
        p = m.parity[tower]
        assert p["max_abs_diff"] <= 1e-4 and p["min_cosine"] > 0.9999 and p["n"] >= 8
    assert not list(model_dir.parent.glob(f".{model_dir.name}.partial"))


def test_onnx_files_are_self_contained(clip_model_dir: Path) -> None:
    import onnx

    for name in ("image.onnx", "text.onnx"):
        model = onnx.load(str(clip_model_dir / name))
        assert model.opset_import[0].version >= 17
        assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert not list(clip_model_dir.glob("*.data"))


def test_preprocess_comes_from_open_clip(case: tuple[str, Path, int, Any]) -> None:
    name, model_dir, _, model = case
    cfg = PreprocessConfig.read(model_dir)
    ref = model.visual.preprocess_cfg
    assert cfg.size == (224, 224) and cfg.crop_fraction == 1.0 and cfg.source["model"] == name
    assert cfg.mean == pytest.approx(ref["mean"]) and cfg.std == pytest.approx(ref["std"])
    assert (cfg.interpolation, cfg.resize_mode) == (ref["interpolation"], ref["resize_mode"])


def test_image_tower_matches_torch_any_batch(case: tuple[str, Path, int, Any]) -> None:
    import torch

    _, model_dir, dim, model = case
    rng = np.random.default_rng(7)
    sess = _session(model_dir / "image.onnx")
    for n in (1, 3):
        x = rng.standard_normal((n, 3, 224, 224)).astype(np.float32)
        got = sess.run(None, {"pixel_values": x})[0]
        with torch.no_grad():
            ref = model.encode_image(torch.from_numpy(x), normalize=True).numpy()
        assert got.shape == (n, dim)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert np.abs(got - ref).max() <= 1e-4


def test_text_tower_with_serve_tokenizer_matches_torch(case: tuple[str, Path, int, Any]) -> None:
    import torch

    from skulens.export.torch_compat import import_open_clip
    from skulens.inference.tokenizer import ClipTokenizer

    name, model_dir, dim, model = case
    m = load_manifest(model_dir)
    tok = ClipTokenizer.from_model_dir(model_dir, m.tokenizer)
    texts = ["fresh orange juice 1l", "", "日本茶", "word " * 100, "A"]
    ids = tok.encode_batch(texts)
    np.testing.assert_array_equal(ids, import_open_clip().get_tokenizer(name)(texts).numpy())
    sess = _session(model_dir / "text.onnx")
    for batch in (ids[:1], ids):  # dynamic batch, EOT pooling at different positions
        got = sess.run(None, {"input_ids": batch})[0]
        with torch.no_grad():
            ref = model.encode_text(torch.from_numpy(batch), normalize=True).numpy()
        assert got.shape == (len(batch), dim)
        assert np.abs(got - ref).max() <= 1e-4


@pytest.mark.parametrize("fixture", ["clip_fp16_model_dir", "clip_int8_model_dir"])
def test_reduced_precision_variants(
    fixture: str, request: pytest.FixtureRequest, clip_model_dir: Path
) -> None:
    d: Path = request.getfixturevalue(fixture)
    m = load_manifest(d, verify=True)
    fp32 = load_manifest(clip_model_dir, verify=False)
    assert m.variant == fixture.split("_")[1]
    assert m.fingerprint == fp32.fingerprint  # same embedding space
    assert m.image.input.dtype == "float32" and m.image.output.dtype == "float32"
    for tower in ("image", "text"):
        assert m.parity[tower]["min_cosine"] >= 0.995
    for name in ("image.onnx", "text.onnx"):
        assert (d / name).stat().st_size < 0.6 * (clip_model_dir / name).stat().st_size
    # Runs with float32 IO on CPU and agrees with fp32 in direction.
    x = np.random.default_rng(3).standard_normal((2, 3, 224, 224)).astype(np.float32)
    a = _session(d / "image.onnx", m.variant).run(None, {"pixel_values": x})[0]
    b = _session(clip_model_dir / "image.onnx").run(None, {"pixel_values": x})[0]
    assert a.dtype == np.float32
    assert (np.sum(a * b, axis=1) >= 0.995).all()


def _run_isolated(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_openai_weights_offline_fails_fast_and_names_options(tmp_path: Path) -> None:
    out = tmp_path / "m"
    r = _run_isolated(
        f"""
        from pathlib import Path
        from skulens.export.clip import ExportError, export_clip
        try:
            export_clip(Path({str(out)!r}), weights="openai")
        except ExportError as exc:
            print("EXPORT_ERROR", exc)
            raise SystemExit(3)
        """,
        HF_HUB_OFFLINE="1",
    )
    assert r.returncode == 3, r.stdout + r.stderr
    assert "--checkpoint PATH" in r.stdout and "--weights random" in r.stdout
    assert not out.exists()


def test_checkpoint_weights(tmp_path: Path, torch_model: Any) -> None:
    import torch

    from skulens.export.clip import ExportError, load_clip
    from skulens.model.manifest import sha256_file

    ckpt = tmp_path / "vit-b-32.pt"
    torch.save(torch_model.state_dict(), ckpt)
    model, tag, wid = load_clip(checkpoint=ckpt)
    assert tag == "checkpoint" and wid == sha256_file(ckpt)
    assert torch.equal(model.text_projection, torch_model.text_projection)
    with pytest.raises(ExportError, match="does not exist"):
        load_clip(checkpoint=tmp_path / "missing.pt")


def test_bad_arguments_are_export_errors(tmp_path: Path) -> None:
    from skulens.export.clip import ExportError, export_clip

    with pytest.raises(ExportError, match="variant"):
        export_clip(tmp_path / "a", weights="random", variant="int4")
    with pytest.raises(ExportError, match="opset"):
        export_clip(tmp_path / "b", weights="random", opset=13)
    with pytest.raises(ExportError, match="weights"):
        export_clip(tmp_path / "c", weights="laion")
    with pytest.raises(ExportError, match="must be one of"):
        export_clip(tmp_path / "d", model_name="RN101", weights="random")
    with pytest.raises(ExportError, match="'openai'"):
        export_clip(tmp_path / "e", model_name="RN50", weights="lvd142m")
    assert not any(tmp_path.iterdir())
