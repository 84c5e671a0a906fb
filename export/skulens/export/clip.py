"""Export open_clip models (ViT-B-32, RN50) to `image.onnx` + `text.onnx`, preprocess/tokenizer sidecars and a
manifest."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from skulens.export import parity
from skulens.export.common import (
    ExportError,
    check_variant,
    choose_weights,
    export_variant_tower,
    file_hashes,
    parity_block,
    staging_dir,
    tool_versions,
    unreachable_weights,
    utc_now,
)
from skulens.export.torch_compat import import_open_clip
from skulens.model.manifest import Manifest, TokenizerSpec, embedding_fingerprint, write_manifest
from skulens.model.preprocess_config import PreprocessConfig

log = logging.getLogger(__name__)

MODEL_NAME = "ViT-B-32"
FAMILY = "open_clip"
PUBLISHED = "openai"
# What each model's image embedding is (the manifest's `embedding`); both towers end in the joint space.
EMBEDDINGS: dict[str, dict[str, str]] = {
    "ViT-B-32": {
        "pooling": "class_token",
        "description": "open_clip encode_image: the class token after ln_post, projected into CLIP's joint "
        "image-text space (512-d); L2-normalised",
    },
    "RN50": {
        "pooling": "attention_pool",
        "description": "open_clip encode_image: the final ResNet feature map attention-pooled (one query, the "
        "mean feature) and projected into CLIP's joint image-text space (1024-d); L2-normalised",
    },
}
CLIP_MODELS = tuple(EMBEDDINGS)
TOKENIZER_DIR = "tokenizer"
TOKENIZER_CONFIG = "tokenizer.json"
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
# The pre-tokenisation pattern of open_clip's SimpleTokenizer (special tokens are prepended at load time).
TOKEN_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

__all__ = ["CLIP_MODELS", "ExportError", "export_clip", "load_clip"]


def load_clip(
    weights: str | None = None,
    *,
    model_name: str = MODEL_NAME,
    seed: int = 0,
    checkpoint: Path | None = None,
) -> tuple[Any, str, str]:
    """Build the open_clip model `model_name` in eval mode; returns (model, weights_tag, weights_id).

    `weights` None or "openai" downloads OpenAI's; "random" seeds `torch.manual_seed(seed)`; a `checkpoint`
    (open_clip or OpenAI format) wins over both. `weights_tag` is "openai", "random" or "checkpoint";
    `weights_id` identifies the exact weights for the embedding fingerprint ("openai", the seed, or the
    checkpoint's sha256).
    """
    import torch

    if model_name not in CLIP_MODELS:
        raise ExportError(f"open_clip model must be one of {CLIP_MODELS}, got {model_name!r}")
    choice = choose_weights(model_name, PUBLISHED, weights, seed=seed, checkpoint=checkpoint)
    open_clip = import_open_clip()
    if choice.checkpoint is not None:
        try:
            model = open_clip.create_model(model_name, pretrained=str(choice.checkpoint))
        except Exception as exc:
            raise ExportError(
                f"cannot load {model_name} weights from checkpoint {choice.checkpoint}: {exc}"
            ) from exc
    elif choice.seed is not None:
        torch.manual_seed(choice.seed)
        model = open_clip.create_model(model_name, pretrained=None)
    else:
        try:
            model = open_clip.create_model(model_name, pretrained=PUBLISHED)
        except Exception as exc:
            raise unreachable_weights(model_name, "OpenAI", exc) from exc
    model.eval()
    return model, choice.tag, choice.weights_id


def preprocess_from_model(model: Any, model_name: str = MODEL_NAME) -> PreprocessConfig:
    """`PreprocessConfig` from open_clip's own `model.visual.preprocess_cfg`."""
    cfg = dict(model.visual.preprocess_cfg)
    size = cfg["size"]
    hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    fill = cfg.get("fill_color", 0)
    return PreprocessConfig(
        size=hw,
        mean=tuple(float(v) for v in cfg["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in cfg["std"]),  # type: ignore[arg-type]
        resize_mode=str(cfg.get("resize_mode", "shortest")),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        mode=str(cfg.get("mode", "RGB")),
        fill_color=int(fill if isinstance(fill, int) else 0),
        source={"from": "open_clip model.visual.preprocess_cfg", "model": model_name},
    )


def write_tokenizer(model_dir: Path, tokenizer: Any) -> TokenizerSpec:
    """Copy open_clip's BPE vocab and write `tokenizer.json` next to it."""
    import open_clip.tokenizer as oct

    tdir = Path(model_dir) / TOKENIZER_DIR
    tdir.mkdir(parents=True, exist_ok=True)
    src = Path(oct.default_bpe())
    shutil.copyfile(src, tdir / VOCAB_FILE)
    n_merges = 49152 - 256 - 2
    config = {
        "type": "clip_bpe",
        "vocab_file": VOCAB_FILE,
        "context_length": int(tokenizer.context_length),
        "vocab_size": int(tokenizer.vocab_size),
        "n_merges": n_merges,
        "sot_token": "<start_of_text>",
        "eot_token": "<end_of_text>",
        "sot_token_id": int(tokenizer.sot_token_id),
        "eot_token_id": int(tokenizer.eot_token_id),
        "pad_token_id": 0,
        "clean": "lower",
        "truncate": "keep_eot",
        "pattern": TOKEN_PATTERN,
    }
    (tdir / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return TokenizerSpec(
        type="clip_bpe",
        vocab_file=f"{TOKENIZER_DIR}/{VOCAB_FILE}",
        config_file=f"{TOKENIZER_DIR}/{TOKENIZER_CONFIG}",
        context_length=int(tokenizer.context_length),
    )


def _towers(model: Any) -> tuple[Any, Any]:
    import torch
    import torch.nn.functional as F

    class ImageTower(torch.nn.Module):
        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.m.encode_image(pixel_values), dim=-1)

    class TextTower(torch.nn.Module):
        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.m.encode_text(input_ids), dim=-1)

    return ImageTower(model).eval(), TextTower(model).eval()


def _reference(module: Any, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.asarray(module(torch.from_numpy(x)).float().numpy(), dtype=np.float32)


def export_clip(
    out_dir: Path,
    *,
    model_name: str = MODEL_NAME,
    weights: str | None = None,
    seed: int = 0,
    checkpoint: Path | None = None,
    variant: str = "fp32",
    opset: int = 17,
    force: bool = False,
) -> Manifest:
    """Export an open_clip model (both towers, sidecars, manifest with parity) into `out_dir`; raises
    `ExportError`. `weights`, `seed`, `checkpoint` as for `load_clip`."""
    check_variant(variant, opset)
    t0 = time.perf_counter()
    model, tag, wid = load_clip(weights, model_name=model_name, seed=seed, checkpoint=checkpoint)
    tokenizer = import_open_clip().get_tokenizer(model_name)
    pre = preprocess_from_model(model, model_name)
    image_tower, text_tower = _towers(model)

    images = parity.parity_images(pre)
    ids = np.asarray(tokenizer(list(parity.PARITY_TEXTS)).numpy(), dtype=np.int64)
    import torch

    ref_img = _reference(image_tower, images)
    ref_txt = _reference(text_tower, ids)
    dim = int(ref_img.shape[1])
    with staging_dir(Path(out_dir), force) as stage:
        img = export_variant_tower(
            name="image",
            module=image_tower,
            example=torch.from_numpy(images[:2]),
            inputs=images,
            reference=ref_img,
            out_dir=stage,
            input_name="pixel_values",
            variant=variant,
            opset=opset,
        )
        txt = export_variant_tower(
            name="text",
            module=text_tower,
            example=torch.from_numpy(ids[:2]),
            inputs=ids,
            reference=ref_txt,
            out_dir=stage,
            input_name="input_ids",
            variant=variant,
            opset=opset,
        )
        pre.write(stage)
        tok_spec = write_tokenizer(stage, tokenizer)
        par = parity_block({"image": img, "text": txt}, variant)
        par["seconds"] = {
            "image": round(img.seconds, 2),
            "text": round(txt.seconds, 2),
            "total": round(time.perf_counter() - t0, 2),
        }
        manifest = Manifest(
            model_name=model_name,
            family=FAMILY,
            weights=tag,
            variant=variant,
            embedding_dim=dim,
            opset=opset,
            image=img.spec,
            text=txt.spec,
            tokenizer=tok_spec,
            embedding=EMBEDDINGS[model_name],
            fingerprint=embedding_fingerprint(model_name, tag, wid, dim),
            files=file_hashes(stage),
            seed=seed if tag == "random" else None,
            parity=par,
            tools=tool_versions("open_clip_torch"),
            created_at=utc_now(),
        )
        write_manifest(stage, manifest)
    log.info(
        "exported %s (%s, %s) to %s in %.1fs", model_name, tag, variant, out_dir, time.perf_counter() - t0
    )
    return manifest
