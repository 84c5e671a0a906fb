"""What a model expects of its input pixels: the `preprocess.json` sidecar (torch-free)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PREPROCESS_FILE = "preprocess.json"
RESIZE_MODES = ("shortest", "longest", "squash")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos")


@dataclass(frozen=True)
class PreprocessConfig:
    """Pixel pipeline: resize (by `resize_mode`) → centre crop to `size` → scale → (x - mean) / std → NCHW.

    `size` is (height, width). `crop_fraction` f < 1 resizes to `resize_size` = ⌊size / f⌋ instead (timm's rule:
    224 at 224/256 → 256), so that the centre crop of `size` keeps the fraction f of the resized image.
    Pixels are first scaled to [0, 1] by `scale` (1/255); `mean` and `std` apply per channel after that, so
    "(pixel - 127) / 128" is mean = 127/255, std = 128/255. A `preprocess.json` without a key gets the default
    (written by older exporters: `crop_fraction` 1.0).
    """

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    crop: str = "center"
    mode: str = "RGB"
    scale: float = 1.0 / 255.0
    fill_color: int = 0
    layout: str = "NCHW"
    crop_fraction: float = 1.0
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(
                f"preprocess.resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"preprocess.interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}"
            )
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"preprocess.size must be [height, width] > 0, got {self.size!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("preprocess.mean and preprocess.std must have 3 entries, std > 0")
        if self.crop != "center" or self.mode != "RGB" or self.layout != "NCHW":
            raise ValueError("only crop=center, mode=RGB, layout=NCHW are supported")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f"preprocess.crop_fraction must be in (0, 1], got {self.crop_fraction!r}")

    @property
    def resize_size(self) -> tuple[int, int]:
        """(height, width) the image is resized to before the centre crop to `size`: ⌊size / crop_fraction⌋."""
        if self.crop_fraction == 1.0:
            return self.size
        h, w = (math.floor(s / self.crop_fraction + 1e-6) for s in self.size)
        return (h, w)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["size"] = list(self.size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        """Build from a parsed `preprocess.json`."""
        return cls(
            size=(int(d["size"][0]), int(d["size"][1])),
            mean=(float(d["mean"][0]), float(d["mean"][1]), float(d["mean"][2])),
            std=(float(d["std"][0]), float(d["std"][1]), float(d["std"][2])),
            resize_mode=str(d.get("resize_mode", "shortest")),
            interpolation=str(d.get("interpolation", "bicubic")),
            crop=str(d.get("crop", "center")),
            mode=str(d.get("mode", "RGB")),
            scale=float(d.get("scale", 1.0 / 255.0)),
            fill_color=int(d.get("fill_color", 0)),
            layout=str(d.get("layout", "NCHW")),
            crop_fraction=float(d.get("crop_fraction", 1.0)),
            source=dict(d.get("source", {})),
        )

    def write(self, model_dir: Path) -> Path:
        """Write `preprocess.json` into `model_dir`."""
        path = Path(model_dir) / PREPROCESS_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, model_dir: Path) -> PreprocessConfig:
        """Read `preprocess.json` from `model_dir`."""
        return cls.from_dict(json.loads((Path(model_dir) / PREPROCESS_FILE).read_text()))
