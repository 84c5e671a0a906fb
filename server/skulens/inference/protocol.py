"""`Encoder`: the seam between the service and whatever turns photos and texts into embeddings.

The service, the runtime and the CLI depend on this Protocol only; `skulens.inference.engine.Engine` (decode
pool + micro-batcher + ONNX towers) is the implementation, and a second model served side by side is a second
`Encoder`. Every vector an `Encoder` returns is float32, unit-norm and of `dim` values, in the embedding space
named by `fingerprint`: the one fact a catalog checks (once, at the door) before comparing vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from skulens.errors import SkulensError
from skulens.imaging.preprocess import Box
from skulens.imaging.quality import ImageQuality
from skulens.inference.cost_model import CostModel


@runtime_checkable
class Encoder(Protocol):
    """Embeds image bytes (whole images or regions) and texts with one model."""

    @property
    def fingerprint(self) -> str:
        """Identity of the embedding space (catalogs are bound to it)."""
        ...

    @property
    def model_name(self) -> str:
        """The model's name from its manifest (e.g. "ViT-B-32")."""
        ...

    @property
    def dim(self) -> int:
        """Values per embedding."""
        ...

    @property
    def random_weights(self) -> bool:
        """True when the model carries seeded random weights (tests): its answers mean nothing."""
        ...

    @property
    def has_text(self) -> bool:
        """True when `embed_texts` works (CLIP); False for image-only models."""
        ...

    @property
    def costs(self) -> CostModel:
        """What work costs on this machine (admission control reads it before any work is done)."""
        ...

    def decode_pixels(self, data: bytes) -> int:
        """Pixels decoding `data` will produce, read from its header alone (0 when it will fail first)."""
        ...

    async def embed_images(
        self,
        images: Sequence[bytes],
        *,
        regions: Sequence[Sequence[Box] | None] | None = None,
        deadline: float | None = None,
        caller: object | None = None,
        pixels: Sequence[int] | None = None,
        qualities: list[ImageQuality | None] | None = None,
        mirror: bool = False,
    ) -> list[np.ndarray | SkulensError]:
        """One unit vector or one `SkulensError` per image (or per box of an image with regions), in order;
        `qualities`, when given, is extended with each result's `ImageQuality` (None where decoding failed);
        `mirror`: each vector is the normalised mean of the image's and its mirror image's embedding."""
        ...

    async def embed_views(
        self,
        data: bytes,
        views: Callable[[Image.Image], list[Image.Image]],
        *,
        region: Box | None = None,
        deadline: float | None = None,
    ) -> np.ndarray:
        """float32 [V, dim] unit-norm rows of the views `views` makes of one image (or of its `region`)."""
        ...

    async def embed_texts(self, texts: Sequence[str], *, deadline: float | None = None) -> np.ndarray:
        """float32 [len(texts), dim] unit-norm rows; `Unsupported` on an image-only model."""
        ...

    async def close(self, *, drain: bool = True) -> None:
        """Finish (or cancel) queued work and stop every thread."""
        ...
