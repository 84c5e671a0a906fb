"""DINOv2 export (timm architecture): the model dir, parity, the CLS-token embedding, both checkpoint formats."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from skulens.model.manifest import load_manifest, sha256_file
from skulens.model.preprocess_config import PreprocessConfig

pytestmark = pytest.mark.slow
NAME = "dinov2-vits14"


def _embed(module: Any, x: np.ndarray) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        return F.normalize(module(torch.from_numpy(x)), dim=-1).numpy()


def _images(n: int, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 224, 224)).astype(np.float32)


@pytest.fixture(scope="module")
def torch_model() -> Any:
    from skulens.export.dinov2 import load_dinov2

    module, tag, wid = load_dinov2(NAME, "random", seed=0)
    assert (tag, wid) == ("random", "0")
    return module


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A seeded ViT-S/14 at 518 px (37×37 grid, as published) saved in timm's and in DINOv2's official format,
    plus an official-format file already at the 16×16 grid of a 224 input."""
    import torch
    from safetensors.torch import save_file

    from skulens.export.dinov2 import build_dinov2

    d = tmp_path_factory.mktemp("dinov2-ckpt")
    torch.manual_seed(1)
    at518 = build_dinov2(NAME, img_size=518).eval()
    state = {k: v.contiguous() for k, v in at518.state_dict().items()}
    mask = {"mask_token": torch.zeros(1, state["cls_token"].shape[-1])}
    save_file(state, str(d / "timm.safetensors"))
    torch.save({"state_dict": state}, d / "timm-wrapped.pth")
    torch.save({**state, **mask}, d / "official.pth")
    torch.manual_seed(2)
    at224 = build_dinov2(NAME).eval()
    torch.save({**at224.state_dict(), **mask}, d / "official-224.pth")
    return {"dir": d, "state518": state, "at224": at224}


def test_model_dir_manifest_and_preprocess(dinov2_model_dir: Path) -> None:
    m = load_manifest(dinov2_model_dir, verify=True)
    assert (m.model_name, m.family, m.weights, m.seed, m.variant) == (NAME, "image_only", "random", 0, "fp32")
    assert m.embedding_dim == 384 and not m.has_text and m.text is None and m.tokenizer is None
    assert set(m.files) == {"image.onnx", "preprocess.json"}
    assert m.image.input.shape == ("batch", 3, 224, 224) and m.image.output.shape == ("batch", 384)
    assert m.fingerprint.startswith(f"{NAME}/random/384:")
    assert m.embedding["pooling"] == "cls_token" and "CLS token" in m.embedding["description"]
    assert m.parity["image"]["max_abs_diff"] <= 1e-4 and m.parity["image"]["n"] >= 8
    assert m.tools["timm"] != "absent"
    cfg = PreprocessConfig.read(dinov2_model_dir)
    assert (cfg.size, cfg.resize_size, cfg.interpolation, cfg.resize_mode) == (
        (224, 224),
        (256, 256),
        "bicubic",
        "shortest",
    )
    assert cfg.mean == pytest.approx((0.485, 0.456, 0.406)) and cfg.std == pytest.approx(
        (0.229, 0.224, 0.225)
    )


def test_onnx_is_the_normalised_cls_token(dinov2_model_dir: Path, torch_model: Any) -> None:
    import torch

    from skulens.export.onnx_io import ort_session

    sess = ort_session(dinov2_model_dir / "image.onnx")
    x = _images(3)
    with torch.no_grad():
        tokens = torch_model.forward_features(torch.from_numpy(x))  # [N, 1 + 256, 384] after the final norm
    cls = tokens[:, 0].numpy()
    want = cls / np.linalg.norm(cls, axis=1, keepdims=True)
    for n in (1, 3):
        got = sess.run(None, {"pixel_values": x[:n]})[0]
        assert got.shape == (n, 384)
        assert np.abs(got - want[:n]).max() <= 1e-4
    # random weights still tell images apart (LayerScale starts at 1, not timm's 1e-5)
    assert float(want[0] @ want[1]) < 0.99


@pytest.mark.parametrize("fname", ["timm.safetensors", "timm-wrapped.pth"])
def test_timm_format_checkpoint_loads_as_timm_does(checkpoints: dict[str, Any], fname: str) -> None:
    """timm's format at 518 px: the result equals timm's own loader of the same file at img_size 224."""
    from skulens.export.dinov2 import load_dinov2
    from skulens.export.torch_compat import import_timm

    path = checkpoints["dir"] / fname
    module, tag, wid = load_dinov2(NAME, checkpoint=path)
    assert (tag, wid) == ("checkpoint", sha256_file(path))
    ref = import_timm().create_model(
        "vit_small_patch14_dinov2",
        pretrained=True,
        pretrained_cfg_overlay={"file": str(checkpoints["dir"] / "timm.safetensors")},
        img_size=224,
        num_classes=0,
    )
    x = _images(2)
    np.testing.assert_allclose(_embed(module, x), _embed(ref.eval(), x), atol=1e-6)


def test_official_checkpoint_pos_embed_is_resampled_as_dinov2_does(checkpoints: dict[str, Any]) -> None:
    """DINOv2's interpolate_pos_encoding at a 224 input: w0 = 224 // 14 + 0.1; bicubic, scale w0 / 37."""
    import torch
    import torch.nn.functional as F

    from skulens.export.dinov2 import load_dinov2

    module, tag, _ = load_dinov2(NAME, checkpoint=checkpoints["dir"] / "official.pth")
    assert tag == "checkpoint"
    src = checkpoints["state518"]
    n = src["pos_embed"].shape[1] - 1
    m = int(math.sqrt(n))
    w0 = 224 // 14 + 0.1
    patch = F.interpolate(
        src["pos_embed"][:, 1:].reshape(1, m, m, 384).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(n), w0 / math.sqrt(n)),
        mode="bicubic",
    )
    want = torch.cat([src["pos_embed"][:, :1], patch.permute(0, 2, 3, 1).reshape(1, -1, 384)], dim=1)
    got = module.pos_embed.detach()
    assert got.shape == (1, 257, 384)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    for key in ("cls_token", "patch_embed.proj.weight", "blocks.11.ls2.gamma", "norm.weight"):
        torch.testing.assert_close(module.state_dict()[key], src[key], atol=0, rtol=0)
    # timm's own resample (antialiased) would give other values: the official rule was applied
    from timm.layers import resample_abs_pos_embed

    timm_way = resample_abs_pos_embed(src["pos_embed"], new_size=(16, 16), num_prefix_tokens=1)
    assert float((timm_way - got).abs().max()) > 1e-3


def test_official_checkpoint_at_the_model_grid_loads_exactly(checkpoints: dict[str, Any]) -> None:
    from skulens.export.dinov2 import load_dinov2

    module, _, _ = load_dinov2(NAME, checkpoint=checkpoints["dir"] / "official-224.pth")
    x = _images(2, seed=8)
    np.testing.assert_array_equal(_embed(module, x), _embed(checkpoints["at224"], x))


def test_bad_checkpoints_are_export_errors(checkpoints: dict[str, Any], tmp_path: Path) -> None:
    import torch

    from skulens.export.dinov2 import ExportError, load_dinov2

    with pytest.raises(ExportError, match="does not exist"):
        load_dinov2(NAME, checkpoint=tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError, match="cannot read checkpoint"):
        load_dinov2(NAME, checkpoint=junk)
    regs = tmp_path / "reg.pth"
    torch.save(
        {
            **checkpoints["state518"],
            "mask_token": torch.zeros(1, 384),
            "register_tokens": torch.zeros(1, 4, 384),
        },
        regs,
    )
    with pytest.raises(ExportError, match="registers"):
        load_dinov2(NAME, checkpoint=regs)
    with pytest.raises(ExportError, match=r"official format\) does not fit dinov2-vitb14"):
        load_dinov2("dinov2-vitb14", checkpoint=checkpoints["dir"] / "official.pth")
    with pytest.raises(ExportError, match="'lvd142m'"):
        load_dinov2(NAME, "openai")
    with pytest.raises(ExportError, match="must be one of"):
        load_dinov2("dinov2-vitg14", "random")


def test_vitb14_architecture() -> None:
    """ViT-B/14 (exported in bench/bench_backbones.py, not here): 768-d CLS token, 16×16 grid at 224."""
    import torch

    from skulens.export.dinov2 import DINOV2_PREPROCESS, load_dinov2

    module, tag, _ = load_dinov2("dinov2-vitb14", "random", seed=0)
    assert tag == "random"
    assert module.patch_embed.patch_size == (14, 14) and module.patch_embed.grid_size == (16, 16)
    assert module.pos_embed.shape == (1, 257, 768) and len(module.blocks) == 12
    assert module.blocks[0].attn.num_heads == 12 and module.global_pool == "token"
    with torch.no_grad():
        out = module(torch.zeros(1, 3, *DINOV2_PREPROCESS.size))
    assert out.shape == (1, 768)


def test_published_weights_offline_fail_fast_and_name_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    from skulens.export.dinov2 import ExportError, export_dinov2

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    out = tmp_path / "m"
    with pytest.raises(ExportError) as err:
        export_dinov2(out, model_name=NAME)
    message = str(err.value)
    assert "lvd142m" in message and "--checkpoint PATH" in message and "--weights random" in message
    assert not out.exists()
