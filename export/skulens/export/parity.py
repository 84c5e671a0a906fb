"""Parity of an exported tower against its PyTorch reference on fixed, deterministic inputs (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from skulens.model.preprocess_config import PreprocessConfig

# Thresholds from issue 2: fp32 must match the reference numerically; reduced precision by direction.
FP32_MAX_ABS = 1e-4
REDUCED_MIN_COSINE = 0.995

PARITY_TEXTS: tuple[str, ...] = (
    "a photo of a can of soda",
    "red running shoes, size 42",
    "Crème brûlée au café — 250 g",
    "有機緑茶 500ml ペットボトル",
    "chocolate bar 🍫 with almonds &amp; sea salt",
    "",
    "   ",
    "an extremely long product description " * 12,
)


class ParityError(RuntimeError):
    """An exported tower does not match its reference within the variant's tolerance."""


@dataclass(frozen=True)
class TowerParity:
    """Agreement of one tower with the reference embeddings."""

    max_abs_diff: float
    mean_abs_diff: float
    min_cosine: float
    mean_cosine: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "mean_abs_diff": self.mean_abs_diff,
            "min_cosine": self.min_cosine,
            "mean_cosine": self.mean_cosine,
            "n": self.n,
        }


def parity_images(cfg: PreprocessConfig, n_random: int = 8, seed: int = 1234) -> np.ndarray:
    """Fixed batch of model inputs [N,3,H,W] float32: seeded noise images plus structured ones.

    Pixels are generated in [0, 255], then normalised with the model's own mean/std, as the server would.
    """
    h, w = cfg.size
    rng = np.random.default_rng(seed)
    imgs = [rng.integers(0, 256, size=(h, w, 3)).astype(np.float32) for _ in range(n_random)]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    imgs.append(np.stack([xx / (w - 1) * 255, yy / (h - 1) * 255, np.full_like(xx, 128.0)], axis=-1))
    imgs.append(np.full((h, w, 3), 255.0, dtype=np.float32))  # white
    imgs.append(np.zeros((h, w, 3), dtype=np.float32))  # black
    checker = (((yy // 16) + (xx // 16)) % 2 * 255).astype(np.float32)
    imgs.append(np.stack([checker, 255 - checker, checker], axis=-1))
    batch = np.stack(imgs).astype(np.float32) * np.float32(cfg.scale)
    mean = np.asarray(cfg.mean, dtype=np.float32).reshape(1, 1, 1, 3)
    std = np.asarray(cfg.std, dtype=np.float32).reshape(1, 1, 1, 3)
    return np.ascontiguousarray(((batch - mean) / std).transpose(0, 3, 1, 2), dtype=np.float32)


def compare(reference: np.ndarray, got: np.ndarray) -> TowerParity:
    """Element and cosine agreement of two [N,D] embedding batches."""
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(got, dtype=np.float64)
    if ref.shape != out.shape:
        raise ParityError(f"shape mismatch: reference {ref.shape} vs exported {out.shape}")
    diff = np.abs(ref - out)
    denom = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cos = np.sum(ref * out, axis=1) / np.maximum(denom, 1e-12)
    return TowerParity(
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        min_cosine=float(cos.min()),
        mean_cosine=float(cos.mean()),
        n=int(ref.shape[0]),
    )


def check(tower: str, variant: str, parity: TowerParity) -> None:
    """Raise `ParityError` when `parity` is outside the variant's tolerance."""
    if variant == "fp32":
        if not parity.max_abs_diff <= FP32_MAX_ABS:
            raise ParityError(
                f"{tower} tower fp32 parity failed: max abs diff {parity.max_abs_diff:.3g} > {FP32_MAX_ABS:g}"
            )
    elif not parity.min_cosine >= REDUCED_MIN_COSINE:
        raise ParityError(
            f"{tower} tower {variant} parity failed: "
            f"min cosine {parity.min_cosine:.5f} < {REDUCED_MIN_COSINE}"
        )
