"""Export DINOv2 ViT-S/14 and ViT-B/14 as image-only embedders (the CLS token), the architecture from `timm`.

Weights: `lvd142m` (default: Meta's published LVD-142M weights, timm's copy on the Hugging Face hub), a local
checkpoint (`--checkpoint`) in either DINOv2's official format (`dinov2_vits14_pretrain.pth`: a flat state dict
with `mask_token` and a 37×37 position grid for 518 px) or timm's (`model.safetensors` or a saved
`state_dict()`), or seeded random weights (tests).

The ONNX graph has a fixed 224×224 input, so the position embeddings are resampled once, at export, to the
16×16 patch grid — the way the checkpoint's own library does it at a 224 input: DINOv2's
`interpolate_pos_encoding` (bicubic, no antialias, scale factor (16 + 0.1) / 37) for the official format,
timm's `resample_abs_pos_embed` (bicubic, antialiased) for timm's format and for `lvd142m`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from skulens.export.common import ExportError, check_variant, choose_weights, unreachable_weights
from skulens.export.image_only import export_image_model
from skulens.export.torch_compat import import_timm
from skulens.model.manifest import Manifest
from skulens.model.preprocess_config import PreprocessConfig

log = logging.getLogger(__name__)

# skulens name → timm architecture (patch 14, no registers, MLP feed-forward).
DINOV2_ARCHS: dict[str, str] = {
    "dinov2-vits14": "vit_small_patch14_dinov2",
    "dinov2-vitb14": "vit_base_patch14_dinov2",
}
DINOV2_MODELS = tuple(DINOV2_ARCHS)
PUBLISHED = "lvd142m"
INPUT_SIZE = 224
# DINOv2's interpolate_pos_encoding adds this to the target grid before computing the scale factor.
OFFICIAL_INTERPOLATE_OFFSET = 0.1
# DINOv2's evaluation transform (dinov2.data.transforms.make_classification_eval_transform).
DINOV2_PREPROCESS = PreprocessConfig(
    size=(INPUT_SIZE, INPUT_SIZE),
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    resize_mode="shortest",
    interpolation="bicubic",
    crop_fraction=224.0 / 256.0,
    source={"from": "DINOv2 eval transform: Resize(256, bicubic), CenterCrop(224), ImageNet mean/std"},
)
DINOV2_EMBEDDING = {
    "pooling": "cls_token",
    "description": "the CLS token after the final LayerNorm (x_norm_clstoken: what the DINOv2 backbone returns "
    "and what DINOv2's k-NN evaluation retrieves with); L2-normalised",
}

__all__ = ["DINOV2_MODELS", "ExportError", "build_dinov2", "export_dinov2", "load_dinov2"]


def _arch(model_name: str) -> str:
    if model_name not in DINOV2_ARCHS:
        raise ExportError(f"DINOv2 model must be one of {DINOV2_MODELS}, got {model_name!r}")
    return DINOV2_ARCHS[model_name]


def build_dinov2(model_name: str, *, img_size: int = INPUT_SIZE) -> Any:
    """The timm architecture of `model_name` (CLS-token output, no head), freshly initialised.

    LayerScale starts at 1.0, as DINOv2's own hub constructor does (timm's default, 1e-5, would leave random
    weights almost image-independent); loaded weights overwrite it.
    """
    timm = import_timm()
    return timm.create_model(
        _arch(model_name), pretrained=False, img_size=img_size, num_classes=0, init_values=1.0
    )


def load_dinov2(
    model_name: str, weights: str | None = None, *, seed: int = 0, checkpoint: Path | None = None
) -> tuple[Any, str, str]:
    """Build DINOv2 `model_name` for a 224 input in eval mode; returns (module, weights_tag, weights_id).

    `weights` None or "lvd142m" downloads the published weights; "random" seeds `torch.manual_seed(seed)`; a
    `checkpoint` (official or timm format) wins over both. Raises `ExportError`.
    """
    import torch

    arch = _arch(model_name)
    choice = choose_weights(model_name, PUBLISHED, weights, seed=seed, checkpoint=checkpoint)
    if choice.seed is not None:
        torch.manual_seed(choice.seed)
        model = build_dinov2(model_name)
    elif choice.checkpoint is not None:
        model = build_dinov2(model_name)
        load_checkpoint(model, choice.checkpoint, model_name)
    else:
        try:
            model = import_timm().create_model(
                f"{arch}.{PUBLISHED}", pretrained=True, img_size=INPUT_SIZE, num_classes=0
            )
        except Exception as exc:
            raise unreachable_weights(model_name, PUBLISHED, exc) from exc
    return model.eval(), choice.tag, choice.weights_id


def read_state_dict(path: Path) -> dict[str, Any]:
    """The tensors of a checkpoint file (`.safetensors`, or a torch file holding a state dict, possibly under
    "model" / "state_dict")."""
    import torch

    try:
        if Path(path).suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ExportError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportError(f"checkpoint {path} does not hold a state dict of tensors")
    return state


def checkpoint_format(state: dict[str, Any]) -> str:
    """ "official" (DINOv2's own files carry `mask_token`) or "timm"."""
    return "official" if "mask_token" in state else "timm"


def official_pos_embed(pos_embed: Any, grid: tuple[int, int]) -> Any:
    """Position embeddings [1, 1 + M², D] resampled to `grid` exactly as DINOv2's `interpolate_pos_encoding`
    does at run time (bicubic, no antialias, scale factor (grid + 0.1) / M); unchanged when M² already fits."""
    import torch
    import torch.nn.functional as F

    n = int(pos_embed.shape[1]) - 1
    m = math.isqrt(n)
    if m * m != n:
        raise ExportError(f"checkpoint pos_embed has {n} patch positions, not a square grid")
    if (m, m) == tuple(grid):
        return pos_embed
    dim = int(pos_embed.shape[-1])
    patch = pos_embed[:, 1:].float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
    scale = tuple((g + OFFICIAL_INTERPOLATE_OFFSET) / m for g in grid)
    patch = F.interpolate(patch, scale_factor=scale, mode="bicubic")
    if tuple(patch.shape[-2:]) != tuple(grid):
        raise ExportError(f"pos_embed resampled to {tuple(patch.shape[-2:])}, expected {tuple(grid)}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)
    return torch.cat([pos_embed[:, :1].float(), patch], dim=1).to(pos_embed.dtype)


def load_checkpoint(model: Any, path: Path, model_name: str) -> str:
    """Load an official- or timm-format checkpoint into `model` (strict); returns the format found."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = read_state_dict(path)
    if "register_tokens" in state or "reg_token" in state:
        raise ExportError(f"checkpoint {path} is DINOv2 with registers; {model_name} has none")
    fmt = checkpoint_format(state)
    if fmt == "official" and "pos_embed" in state:
        state = {
            **state,
            "pos_embed": official_pos_embed(state["pos_embed"], tuple(model.patch_embed.grid_size)),
        }
    try:
        model.load_state_dict(checkpoint_filter_fn(state, model), strict=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(
            f"checkpoint {path} ({fmt} format) does not fit {model_name}: {first[:400]}"
        ) from exc
    log.info("loaded %s checkpoint %s into %s", fmt, path, model_name)
    return fmt


def export_dinov2(
    out_dir: Path,
    *,
    model_name: str,
    weights: str | None = None,
    seed: int = 0,
    checkpoint: Path | None = None,
    variant: str = "fp32",
    opset: int = 17,
    force: bool = False,
) -> Manifest:
    """Export DINOv2 `model_name` as an image-only 384-d (ViT-S/14) or 768-d (ViT-B/14) embedder."""
    check_variant(variant, opset)
    module, tag, wid = load_dinov2(model_name, weights, seed=seed, checkpoint=checkpoint)
    return export_image_model(
        module,
        out_dir,
        DINOV2_PREPROCESS,
        model_name,
        tag,
        weights_id=wid,
        seed=seed if tag == "random" else None,
        variant=variant,
        opset=opset,
        force=force,
        extra_tools=("timm",),
        embedding=DINOV2_EMBEDDING,
    )
