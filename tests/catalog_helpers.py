"""Seeded vector helpers shared by the catalog tests (real functions, no mocks)."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int, *, clusters: int = 50, spread: float = 0.35, seed: int = 0) -> np.ndarray:
    """n unit vectors from a gaussian mixture (so nearest neighbours are meaningful)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    which = rng.integers(0, clusters, n)
    return unit(centers[which] + spread * rng.standard_normal((n, dim)).astype(np.float32))


def product_refs(n_products: int, refs_per: int, dim: int, *, noise: float = 0.15,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(centres [P, dim], refs [P, refs_per, dim]): each product's references scatter around its centre."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((n_products, dim)))
    jitter = rng.standard_normal((n_products, refs_per, dim)) * (4 * noise / np.sqrt(dim))
    refs = unit(centres[:, None, :] + jitter)
    return centres, refs


def image_bytes(product: str, j: int) -> bytes:
    """A fake encoded image: the fake model below reads the product name from it."""
    return f"img:{product}:{j}".encode()


def fake_model(dim: int, seed: int = 7):  # type: ignore[no-untyped-def]
    """A deterministic 'model': image bytes -> unit vector near a per-product centre; b"corrupt..." fails."""

    def centre(product: str) -> np.ndarray:
        h = int.from_bytes(hashlib.sha256(f"{seed}:{product}".encode()).digest()[:8], "little")
        return np.random.default_rng(h).standard_normal(dim)

    def embed(images: list[bytes], regions: list[Any] | None = None) -> list[np.ndarray | Exception]:
        out: list[np.ndarray | Exception] = []
        for img in images:
            if img.startswith(b"corrupt"):
                out.append(ValueError("cannot decode image"))
                continue
            _, product, _ = img.decode().split(":")
            h = int.from_bytes(hashlib.sha256(img).digest()[:8], "little")
            noise = np.random.default_rng(h).standard_normal(dim)
            out.append(unit(centre(product) + 0.2 * noise))
        return out

    return embed
