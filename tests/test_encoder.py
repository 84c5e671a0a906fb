"""skulens.inference.encoder: manifest checks, provider report, IO binding, unit-norm outputs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from inference_helpers import TINY_DIM, tiny_model_dir, tiny_reference

from skulens.inference.encoder import OnnxEncoder, resolve_providers
from skulens.inference.errors import ModelLoadError, Unsupported
from skulens.inference.options import EncoderOptions


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return tiny_model_dir(tmp_path / "tiny")


def test_embeds_unit_norm_and_matches_reference(tiny: Path) -> None:
    enc = OnnxEncoder.load(tiny)
    x = np.random.default_rng(0).standard_normal((5, 3, 16, 16)).astype(np.float32)
    out = enc.embed_images(x)
    assert out.dtype == np.float32 and out.shape == (5, TINY_DIM) == (5, enc.dim)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(out, tiny_reference(x), atol=1e-6)
    assert enc.provider_report.active == ("CPUExecutionProvider",)
    assert not enc.provider_report.fell_back


def test_io_binding_path_equals_plain_run(tiny: Path) -> None:
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    plain = OnnxEncoder.load(tiny, EncoderOptions(io_binding=False)).embed_images(x)
    bound = OnnxEncoder.load(
        tiny, EncoderOptions(io_binding=True, intra_op_threads=1, graph_optimization="basic")
    )
    assert bound.image.use_io_binding
    np.testing.assert_array_equal(bound.embed_images(x), plain)


def test_provider_fallback_reported_when_cuda_requested_but_absent(
    tiny: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="skulens.inference.encoder"):
        enc = OnnxEncoder.load(tiny, EncoderOptions(providers=("CUDAExecutionProvider", "CPUExecutionProvider")))
    report = enc.provider_report
    assert report.requested == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert report.active == ("CPUExecutionProvider",)
    assert report.fell_back and not report.gpu_active
    assert "CPUExecutionProvider" in report.available
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert (
        errors
        and "GPU FALLBACK" in errors[0].getMessage()
        and "CUDAExecutionProvider" in errors[0].getMessage()
    )
    assert report.to_dict()["fell_back"] is True


def test_require_gpu_makes_fallback_fatal(tiny: Path) -> None:
    with pytest.raises(ModelLoadError, match="require_gpu"):
        OnnxEncoder.load(tiny, EncoderOptions(providers=("CUDAExecutionProvider",), require_gpu=True))


def test_default_provider_order() -> None:
    assert resolve_providers(None, ["CPUExecutionProvider"]) == ("CPUExecutionProvider",)
    everything = [
        "CPUExecutionProvider",
        "CUDAExecutionProvider",
        "TensorrtExecutionProvider",
        "AzureExecutionProvider",
    ]
    assert resolve_providers(None, everything) == (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    )
    assert resolve_providers(["CPUExecutionProvider"], everything) == ("CPUExecutionProvider",)


def test_sha256_mismatch_refused(tiny: Path) -> None:
    with open(tiny / "image.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelLoadError, match=r"image.onnx has sha256 [0-9a-f]{64}, manifest says"):
        OnnxEncoder.load(tiny)


def test_wrong_input_name_refused(tmp_path: Path) -> None:
    d = tiny_model_dir(tmp_path / "m", input_name="pixel_values", graph_input_name="images")
    with pytest.raises(
        ModelLoadError, match=r"input is named \['images'\] in the ONNX graph, manifest says 'pixel_values'"
    ):
        OnnxEncoder.load(d)


def test_wrong_static_dim_refused(tmp_path: Path) -> None:
    d = tiny_model_dir(tmp_path / "m", graph_size=32)
    with pytest.raises(ModelLoadError, match="dim 2 is 32, manifest says 16"):
        OnnxEncoder.load(d)


def test_wrong_dtype_and_rank_refused(tiny: Path) -> None:
    manifest = json.loads((tiny / "manifest.json").read_text())
    manifest["image"]["input"]["dtype"] = "float16"
    (tiny / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="dtype float32, manifest says float16"):
        OnnxEncoder.load(tiny)
    manifest["image"]["input"]["dtype"] = "float32"
    manifest["image"]["input"]["shape"] = ["batch", 3, 16]
    (tiny / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="rank 4"):
        OnnxEncoder.load(tiny)


@pytest.mark.parametrize("spinning", [False, True])
def test_thread_spinning_follows_the_options(tiny: Path, spinning: bool) -> None:
    enc = OnnxEncoder.load(tiny, EncoderOptions(spinning=spinning))
    so = enc.image.session.get_session_options()
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spinning else "0")


def test_missing_manifest_is_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no manifest\.json"):
        OnnxEncoder.load(tmp_path)


def test_text_on_image_only_model_unsupported(tiny: Path) -> None:
    enc = OnnxEncoder.load(tiny)
    assert not enc.has_text
    with pytest.raises(Unsupported, match="no text tower"):
        enc.embed_texts(np.zeros((1, 77), dtype=np.int64))
    enc.warmup([1, 4])


def test_real_clip_batched_equals_single(clip_model_dir: Path) -> None:
    enc = OnnxEncoder.load(clip_model_dir, EncoderOptions())
    assert enc.has_text and enc.dim == 512
    x = np.random.default_rng(2).standard_normal((4, 3, 224, 224)).astype(np.float32)
    batched = enc.embed_images(x)
    single = np.concatenate([enc.embed_images(x[i : i + 1]) for i in range(4)])
    assert np.abs(batched - single).max() <= 1e-5
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    ids = np.zeros((2, 77), dtype=np.int64)
    ids[:, 0], ids[0, 1], ids[1, 1:3], ids[1, 3] = 49406, 49407, (320, 321), 49407
    t = enc.embed_texts(ids)
    assert t.shape == (2, 512)
    t1 = enc.embed_texts(ids[1:])
    assert np.abs(t[1:] - t1).max() <= 1e-5


def test_fp16_model_serves_on_cpu_close_to_fp32(clip_model_dir: Path, clip_fp16_model_dir: Path) -> None:
    """fp16 graphs crash ORT's CPU NCHWc pass unless the encoder disables it; the result tracks fp32."""
    x = np.random.default_rng(3).standard_normal((3, 3, 224, 224)).astype(np.float32)
    ref = OnnxEncoder.load(clip_model_dir, EncoderOptions()).embed_images(x)
    half = OnnxEncoder.load(clip_fp16_model_dir, EncoderOptions())
    assert half.manifest.variant == "fp16"
    got = half.embed_images(x)
    assert got.dtype == np.float32
    assert float((got * ref).sum(axis=1).min()) >= 0.999
