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


def branded_refs(products: int, dim: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(reference ids, float32 vectors, product keys): five references a product near it, products near 30 brands
    (look-alike products, as in a real catalog); ids sparse (3i + 1), products keyed 0..products-1."""
    rng = np.random.default_rng(seed)
    brands = rng.standard_normal((30, dim))
    centres = brands[rng.integers(0, 30, products)] + 0.6 * rng.standard_normal((products, dim))
    refs = unit(centres[:, None, :] + 0.35 * rng.standard_normal((products, 5, dim)))
    ids = np.arange(products * 5, dtype=np.int64) * 3 + 1
    return ids, refs.reshape(-1, dim).astype(np.float32), np.repeat(np.arange(products, dtype=np.int64), 5)


def exact_top_products(q: np.ndarray, vecs: np.ndarray, products: np.ndarray, k: int) -> list[set[int]]:
    """Each query's k best product keys by brute force (a product scores its best reference)."""
    out = []
    for row in q @ vecs.T:
        best = np.full(int(products.max()) + 1, -np.inf)
        np.maximum.at(best, products, row)
        out.append(set(np.argsort(-best)[:k].tolist()))
    return out


def recalls_of(view: Any, search: Any) -> tuple[float, float]:
    """(product recall@10 of `search` (queries -> results with `.matches`) on the probes `view.index` measures its
    recall with, against brute force over the vectors it holds; that index's reference recall@10)."""
    idx = view.index
    ids, held = idx.stored_vectors()
    name = {pk: row.product_id for pk, row in view.products.items()}
    probes = idx._probe_queries(ids, held)
    want = [{name[k] for k in w} for w in exact_top_products(probes, held, view.refs.lookup(ids), 10)]
    got = [{m.product_id for m in r.matches} for r in search(probes)]
    return (sum(len(w & g) for w, g in zip(want, got, strict=True)) / (10 * len(probes)),
            idx.measure_recall(ids, held))


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
