"""Pixels → the model's input tensor, driven by `preprocess.json` (`skulens.model.preprocess_config`).

The exact path reproduces open_clip's eval transform (`open_clip.transform.image_transform`) on PIL
images: torchvision `Resize` size rounding, PIL resampling with the same filter, `CenterCrop` /
`CenterCropOrPad` offsets, `ToTensor` and `Normalize` in float32 — the result equals open_clip's output
(to 1e-5 in the tests). With a `crop_fraction` < 1 it is torchvision's `Resize(⌊size / f⌋)` + `CenterCrop(size)`
(timm's / DINOv2's eval transform), also tested against torchvision. The fast path only
changes how a JPEG is decoded (a reduced DCT scale via `Image.draft`, keeping the shortest side ≥
`draft_factor` × the resize size) and then runs the exact path on the smaller image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from skulens.errors import SkulensError, field_path
from skulens.imaging.decode import DRAFT_SCALES, DecodedImage, decode_image, peek_size
from skulens.imaging.errors import ImageTooSmall, InvalidRegion
from skulens.imaging.limits import DecodeLimits
from skulens.imaging.quality import ImageQuality, measure_quality
from skulens.model.preprocess_config import PreprocessConfig

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}
_UNMEASURED = ImageQuality(0, 0, 0.0)


@dataclass(frozen=True)
class Box:
    """A region in pixels of the EXIF-oriented, full-resolution image: top-left (x, y), width, height."""

    x: int
    y: int
    width: int
    height: int


def _resize(img: Image.Image, size_hw: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    """torchvision `F.resize` on a PIL image with an explicit (h, w): a no-op when the size is unchanged."""
    h, w = size_hw
    if (img.height, img.width) == (h, w):
        return img
    return img.resize((w, h), resample)


def _keep_ratio_size(img: Image.Image, target_hw: tuple[int, int], longest: float) -> tuple[int, int]:
    """open_clip `ResizeKeepRatio.get_params` without random scale/aspect: (h, w)."""
    h, w = img.height, img.width
    ratio_h, ratio_w = h / target_hw[0], w / target_hw[1]
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    return round(h * 1.0 / ratio), round(w * 1.0 / ratio)


def _center_crop_or_pad(img: Image.Image, target_hw: tuple[int, int], fill: int) -> Image.Image:
    """torchvision `center_crop` / open_clip `center_crop_or_pad` on a PIL image."""
    th, tw = target_hw
    if tw > img.width or th > img.height:
        left = (tw - img.width) // 2 if tw > img.width else 0
        top = (th - img.height) // 2 if th > img.height else 0
        right = (tw - img.width + 1) // 2 if tw > img.width else 0
        bottom = (th - img.height + 1) // 2 if th > img.height else 0
        padded = Image.new(img.mode, (img.width + left + right, img.height + top + bottom), (fill,) * 3)
        padded.paste(img, (left, top))
        img = padded
        if (img.height, img.width) == (th, tw):
            return img
    top = round((img.height - th) / 2.0)
    left = round((img.width - tw) / 2.0)
    return img.crop((left, top, left + tw, top + th))


class Preprocessor:
    """Turns image bytes or PIL images into float32 CHW arrays for one model's `PreprocessConfig`."""

    def __init__(
        self,
        config: PreprocessConfig,
        limits: DecodeLimits | None = None,
        *,
        fast: bool = False,
        draft_factor: float = 2.0,
    ) -> None:
        self.config = config
        self.limits = limits or DecodeLimits()
        self.fast = fast
        self.draft_factor = draft_factor
        self._resample = _RESAMPLE[config.interpolation]
        self._lut = self._normalisation_lut(config)

    @staticmethod
    def _normalisation_lut(config: PreprocessConfig) -> np.ndarray:
        """[3, 256] table of (v * scale - mean) / std, computed in float32 like ToTensor + Normalize."""
        v = np.arange(256, dtype=np.float32)
        inv = 1.0 / config.scale
        scaled = v / np.float32(inv) if abs(inv - round(inv)) < 1e-9 else v * np.float32(config.scale)
        mean = np.asarray(config.mean, dtype=np.float32)[:, None]
        std = np.asarray(config.std, dtype=np.float32)[:, None]
        return np.ascontiguousarray((scaled[None, :] - mean) / std, dtype=np.float32)

    def resize_crop(self, img: Image.Image) -> Image.Image:
        """The geometric part of the eval transform: resize to `config.resize_size` by `config.resize_mode`
        (open_clip's rules), then one centre crop (or pad) to `config.size`.

        With `crop_fraction` 1 this is open_clip's eval transform; with f < 1 and `shortest` it is torchvision's
        `Resize(⌊size / f⌋)` + `CenterCrop(size)` (timm's and DINOv2's eval transform)."""
        cfg = self.config
        target = cfg.resize_size
        if cfg.resize_mode == "squash":
            img = _resize(img, target, self._resample)
            fill = 0
        elif cfg.resize_mode == "longest":
            img = _resize(img, _keep_ratio_size(img, target, 1.0), self._resample)
            fill = cfg.fill_color
        elif target[0] == target[1]:  # "shortest", square
            short, long = sorted((img.width, img.height))
            new_short, new_long = target[0], int(target[0] * long / short)
            new_hw = (new_long, new_short) if img.width <= img.height else (new_short, new_long)
            img = _resize(img, new_hw, self._resample)
            fill = 0
        else:  # "shortest", not square: open_clip uses ResizeKeepRatio(size) here, always bicubic
            img = _resize(img, _keep_ratio_size(img, target, 0.0), Image.Resampling.BICUBIC)
            fill = 0
        if (img.height, img.width) == cfg.size:
            return img
        return _center_crop_or_pad(img, cfg.size, fill)

    def normalise(self, img: Image.Image) -> np.ndarray:
        """RGB image of the input size → float32 [3, H, W] = (pixel * scale - mean) / std (lookup table)."""
        arr = np.asarray(img.convert("RGB") if img.mode != "RGB" else img)
        out = np.empty((3, arr.shape[0], arr.shape[1]), dtype=np.float32)
        for c in range(3):
            np.take(self._lut[c], arr[:, :, c], out=out[c])
        return out

    def transform(self, img: Image.Image) -> np.ndarray:
        """Exact path on an already-decoded RGB image: resize, crop, normalise → float32 [3, H, W]."""
        return self.normalise(self.resize_crop(img))

    def _draft_min_side(self) -> int | None:
        if not self.fast:
            return None
        return math.ceil(self.draft_factor * max(self.config.resize_size))

    def decode_pixels(self, data: bytes) -> int:
        """Pixels the decoder will produce for `data` (after the fast path's JPEG scale), read from the header
        alone: the decode cost an admission check weighs. 0 for data that will fail before decoding."""
        size = peek_size(data)
        if size is None:
            return 0
        width, height, fmt = size
        if width * height > self.limits.max_pixels or min(width, height) < self.limits.min_side:
            return 0
        min_side = self._draft_min_side()
        if fmt in ("JPEG", "MPO") and min_side is not None:
            for s in DRAFT_SCALES:
                if min(width, height) // s >= min_side:
                    return (width // s) * (height // s)
        return width * height

    def decode(self, data: bytes, *, field: str | None = None, draft_max_scale: int = 8) -> DecodedImage:
        """Decode under the limits, at a reduced JPEG scale when the fast path is on."""
        return decode_image(
            data,
            self.limits,
            draft_min_side=self._draft_min_side(),
            draft_max_scale=draft_max_scale,
            field=field,
        )

    def image_tensor(self, data: bytes, *, field: str | None = None) -> np.ndarray:
        """Bytes → float32 [3, H, W] for the whole image (raises an `ImageError` subclass)."""
        return self.transform(self.decode(data, field=field).image)

    def region_tensors(
        self, data: bytes, boxes: Sequence[Box], *, field: str | None = None, field_prefix: str = "regions"
    ) -> list[np.ndarray | SkulensError]:
        """Bytes → one float32 [3, H, W] per box (a bad box is an error in its slot, not for the others).

        Raises for the image itself (undecodable, over limits; naming `field`). Boxes are in
        full-resolution oriented pixels; `field_prefix` (a repeated field's path) names them in errors as
        ``{field_prefix}[j]``.
        """
        return [r if isinstance(r, SkulensError) else r[0]
                for r in self._region_inputs(data, boxes, field, field_prefix, measured=False)]

    def measured_inputs(
        self, data: bytes, boxes: Sequence[Box] | None, *, field: str | None = None, field_prefix: str = "regions"
    ) -> list[tuple[np.ndarray, ImageQuality] | SkulensError]:
        """Like `image_tensor` (`boxes` None: one result) or `region_tensors`, each tensor with the
        `ImageQuality` of the pixels it was made from (measured on them: no second decode)."""
        if boxes is None:
            decoded = self.decode(data, field=field)
            shown = self.resize_crop(decoded.image)
            return [(self.normalise(shown), measure_quality(shown, decoded.original_size))]
        return self._region_inputs(data, boxes, field, field_prefix, measured=True)

    def _region_inputs(
        self, data: bytes, boxes: Sequence[Box], field: str | None, field_prefix: str, measured: bool
    ) -> list[tuple[np.ndarray, ImageQuality] | SkulensError]:
        """One (tensor, quality) or error per box; the quality is `_UNMEASURED` unless `measured`."""
        if not boxes:
            return []
        draft_max_scale = 8
        min_side = self._draft_min_side()
        if min_side is not None:
            shortest_box = min(max(1, min(b.width, b.height)) for b in boxes)
            draft_max_scale = max(1, shortest_box // min_side)
        decoded = self.decode(data, field=field, draft_max_scale=draft_max_scale)
        out: list[tuple[np.ndarray, ImageQuality] | SkulensError] = []
        for j, box in enumerate(boxes):
            name = field_path(field_prefix, j)
            try:
                shown = self.resize_crop(self._crop(decoded, box, name))
                out.append((self.normalise(shown),
                            measure_quality(shown, (box.width, box.height)) if measured else _UNMEASURED))
            except SkulensError as exc:
                out.append(exc)
        return out

    def crop(self, decoded: DecodedImage, box: Box, field: str) -> Image.Image:
        """The box of a decoded image (full-resolution oriented pixels; `InvalidRegion` naming `field`)."""
        return self._crop(decoded, box, field)

    def _crop(self, decoded: DecodedImage, box: Box, field: str) -> Image.Image:
        w, h = decoded.original_size
        desc = f"region (x={box.x}, y={box.y}, width={box.width}, height={box.height})"
        if box.width <= 0 or box.height <= 0 or box.x < 0 or box.y < 0:
            raise InvalidRegion(
                f"{desc} must have x, y >= 0 and width, height > 0",
                field,
            )
        if box.x + box.width > w or box.y + box.height > h:
            raise InvalidRegion(
                f"{desc} extends past the image ({w}x{h} pixels after EXIF orientation)",
                field,
            )
        if min(box.width, box.height) < self.limits.min_side:
            raise ImageTooSmall(
                f"region is {box.width}x{box.height} pixels, shortest side "
                f"{min(box.width, box.height)} is under the minimum {self.limits.min_side}",
                field,
            )
        if (w, h) == decoded.image.size:
            return decoded.image.crop((box.x, box.y, box.x + box.width, box.y + box.height))
        sx, sy = decoded.scale
        left, top = round(box.x / sx), round(box.y / sy)
        right = max(left + 1, round((box.x + box.width) / sx))
        bottom = max(top + 1, round((box.y + box.height) / sy))
        return decoded.image.crop(
            (left, top, min(right, decoded.image.width), min(bottom, decoded.image.height))
        )
