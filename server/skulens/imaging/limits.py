"""What an input image may be (encoded bytes, pixels, smallest side) and how transparency is flattened."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class DecodeLimits:
    """What an input image may be; each violation is a typed `skulens.imaging.errors` error naming limit and value."""

    max_bytes: int = 20 * MIB
    max_pixels: int = 40_000_000
    min_side: int = 16
    alpha_fill: tuple[int, int, int] = (255, 255, 255)

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1 or self.min_side < 1:
            raise ValueError("decode limits must be positive")
        if len(self.alpha_fill) != 3 or not all(0 <= c <= 255 for c in self.alpha_fill):
            raise ValueError(f"alpha_fill must be three values in 0..255, got {self.alpha_fill!r}")
