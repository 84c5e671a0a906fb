"""`skulens catalog doctor`: which products of a catalog look alike, which have too few references, and which
references sit closer to another product than to their own — from the stored embeddings alone, on any backend
(read through `list_products` and `export_references`).

Exact: every reference is compared with every other one (numpy, in blocks of `BLOCK` rows), so the cost grows
with the square of the references (2,640 references of 1280 values: well under a second; 100,000: minutes).

A pair of products is a *look-alike* when any of these holds:
  * the cosine of their centroids (the normalised mean of each product's references) reaches `pair_threshold`;
  * a reference of one is closer to a reference of the other than to any other reference of its own product
    ("confused", the catalog-wide form of the CLOSER_TO_OTHER_PRODUCT enrolment warning);
  * their closest pair of references reaches `near_duplicate_threshold` (the same photo under two products?).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from skulens.catalog.backend import CatalogBackend
from skulens.catalog.models import Product

#: Reference rows compared with the whole catalog at once (memory: BLOCK x references floats and booleans).
BLOCK = 512


@dataclass(frozen=True)
class LookAlike:
    """Two products that look alike, with the evidence (`a` < `b` by product id)."""

    product_a: str
    product_b: str
    centroid_cosine: float
    closest_score: float  # their closest pair of references
    closest_reference_a: int
    closest_reference_b: int
    confused_a: int  # references of a nearer to a reference of b than to any other reference of a
    confused_b: int
    name_a: str = ""
    name_b: str = ""


@dataclass
class DoctorReport:
    """What `diagnose` found. `clean` when there is no look-alike pair and no product with too few references."""

    products: int
    references: int
    pair_threshold: float
    near_duplicate_threshold: float
    min_references: int
    look_alikes: list[LookAlike] = field(default_factory=list)  # highest centroid cosine first
    few_references: list[tuple[str, int]] = field(default_factory=list)  # (product id, references), fewest first
    closer_to_other: int = 0  # references nearer to another product than to any other reference of their own
    near_duplicates: int = 0  # pairs of references of different products at or above near_duplicate_threshold
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        """No finding."""
        return not self.look_alikes and not self.few_references

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (every field, `clean` included)."""
        out = asdict(self)
        out["few_references"] = [{"product_id": p, "references": n} for p, n in self.few_references]
        out["clean"] = self.clean
        return out

    def format(self, limit: int = 20) -> str:
        """The report for people: summary, then up to `limit` look-alike pairs and products with few references."""
        lines = [
            f"{self.products} products, {self.references} references ({self.seconds:.2f} s)",
            f"look-alike product pairs: {len(self.look_alikes)} (centroid cosine >= {self.pair_threshold:g}, a "
            f"reference closer to the other product than to its own, or references >= "
            f"{self.near_duplicate_threshold:g} apart)",
            f"references closer to another product than to their own: {self.closer_to_other}",
            f"cross-product reference pairs >= {self.near_duplicate_threshold:g} (near-duplicates): "
            f"{self.near_duplicates}",
            f"products with fewer than {self.min_references} references: {len(self.few_references)}",
        ]
        if self.look_alikes:
            lines.append("")
            lines.append("centroid  closest (references)         confused  products")
            for p in self.look_alikes[:limit]:
                a = f"{p.product_a} ({p.name_a})" if p.name_a else p.product_a
                b = f"{p.product_b} ({p.name_b})" if p.name_b else p.product_b
                refs = f"{p.closest_reference_a} ~ {p.closest_reference_b}"
                lines.append(f"{p.centroid_cosine:8.4f}  {p.closest_score:.4f} ({refs:<20}) "
                             f"{p.confused_a:>4}/{p.confused_b:<4} {a}  ~  {b}")
            if len(self.look_alikes) > limit:
                lines.append(f"... and {len(self.look_alikes) - limit} more (--limit, --json)")
        if self.few_references:
            lines.append("")
            shown = ", ".join(f"{p} ({n})" for p, n in self.few_references[:limit])
            more = f", ... and {len(self.few_references) - limit} more" if len(self.few_references) > limit else ""
            lines.append(f"fewer than {self.min_references} references: {shown}{more}")
        lines.append("")
        lines.append("verdict: clean" if self.clean else "verdict: findings (exit status 1)")
        return "\n".join(lines)


def read_catalog(catalog: CatalogBackend, batch: int = 1024) -> tuple[list[Product], np.ndarray, list[str], np.ndarray]:
    """(every product, reference ids, their product ids, their embeddings [n, dim]) of a catalog."""
    products: list[Product] = []
    token = ""
    while True:
        page, token = catalog.list_products(catalog.settings.max_page_size, token)
        products.extend(page)
        if not token:
            break
    ids: list[int] = []
    pids: list[str] = []
    rows: list[np.ndarray] = []
    after = 0
    while chunk := catalog.export_references(after, batch):
        for r in chunk:
            ids.append(r.reference_id)
            pids.append(r.product_id)
            rows.append(np.asarray(r.embedding, dtype=np.float32))
        after = chunk[-1].reference_id
    vectors = np.stack(rows) if rows else np.zeros((0, catalog.dim), dtype=np.float32)
    return products, np.asarray(ids, dtype=np.int64), pids, vectors


def diagnose(catalog: CatalogBackend, *, pair_threshold: float = 0.9, near_duplicate_threshold: float | None = None,
             min_references: int = 3) -> DoctorReport:
    """Read a catalog and `examine` it (`near_duplicate_threshold`: default the catalog's setting)."""
    t0 = time.perf_counter()
    products, ids, pids, vectors = read_catalog(catalog)
    near = catalog.settings.near_duplicate_threshold if near_duplicate_threshold is None else near_duplicate_threshold
    report = examine(products, ids, pids, vectors, pair_threshold=pair_threshold, near_duplicate_threshold=near,
                     min_references=min_references)
    report.seconds = time.perf_counter() - t0
    return report


def examine(products: Sequence[Product], reference_ids: np.ndarray, product_ids: Sequence[str], vectors: np.ndarray,
            *, pair_threshold: float, near_duplicate_threshold: float, min_references: int) -> DoctorReport:
    """The findings for these references (unit rows of `vectors`, of `product_ids`); pure."""
    t0 = time.perf_counter()
    names = {p.product_id: p.display_name for p in products}
    order = sorted(set(names) | set(product_ids))
    pk = {p: i for i, p in enumerate(order)}
    keys = np.asarray([pk[p] for p in product_ids], dtype=np.int64)
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2 or len(x) != len(keys) or len(ids := np.asarray(reference_ids)) != len(keys):
        raise ValueError(f"{len(keys)} product ids, {len(reference_ids)} reference ids, vectors {x.shape}")
    counts = np.bincount(keys, minlength=len(order)) if len(keys) else np.zeros(len(order), dtype=np.int64)
    report = DoctorReport(len(order), len(keys), pair_threshold, near_duplicate_threshold, min_references)
    report.few_references = sorted(((order[k], int(counts[k])) for k in range(len(order))
                                    if counts[k] < min_references), key=lambda t: (t[1], t[0]))
    confused: dict[tuple[int, int], int] = {}  # (product of the reference, product it is nearer to) -> references
    near_pairs: set[tuple[int, int]] = set()
    for start in range(0, len(keys), BLOCK):
        rows = slice(start, min(start + BLOCK, len(keys)))
        sims = x[rows] @ x.T
        sims[np.arange(sims.shape[0]), np.arange(start, rows.stop)] = -np.inf  # never itself
        same = keys[rows, None] == keys[None, :]
        own = np.where(same, sims, -np.inf).max(axis=1)
        cross = np.where(same, -np.inf, sims)
        nearest = cross.argmax(axis=1)
        best = cross[np.arange(cross.shape[0]), nearest]
        for r in np.flatnonzero(np.isfinite(own) & (best > own)):  # only products with another reference
            pair = (int(keys[start + r]), int(keys[nearest[r]]))
            confused[pair] = confused.get(pair, 0) + 1
        report.closer_to_other += int(np.count_nonzero(np.isfinite(own) & (best > own)))
        hi_r, hi_c = np.nonzero(cross >= near_duplicate_threshold)
        report.near_duplicates += int(np.count_nonzero(hi_c > hi_r + start))  # each pair once
        near_pairs.update((min(a, b), max(a, b)) for a, b in zip(keys[start + hi_r].tolist(), keys[hi_c].tolist(),
                                                                  strict=True))
    centroids = _centroids(x, keys, len(order))
    candidates = set(near_pairs) | {(min(a, b), max(a, b)) for a, b in confused}
    present = np.flatnonzero(counts > 0)
    for start in range(0, len(present), BLOCK):
        block = present[start:start + BLOCK]
        cc = centroids[block] @ centroids[present].T
        above_r, above_c = np.nonzero(cc >= pair_threshold)
        candidates.update((int(block[i]), int(present[j])) for i, j in zip(above_r, above_c, strict=True)
                          if block[i] < present[j])
    for a, b in candidates:
        rows_a, rows_b = np.flatnonzero(keys == a), np.flatnonzero(keys == b)
        sub = x[rows_a] @ x[rows_b].T
        i, j = np.unravel_index(int(sub.argmax()), sub.shape)
        report.look_alikes.append(LookAlike(
            order[a], order[b], float(centroids[a] @ centroids[b]), float(sub[i, j]), int(ids[rows_a[i]]),
            int(ids[rows_b[j]]), confused.get((a, b), 0), confused.get((b, a), 0), names.get(order[a], ""),
            names.get(order[b], "")))
    report.look_alikes.sort(key=lambda p: (-p.centroid_cosine, p.product_a, p.product_b))
    report.seconds = time.perf_counter() - t0
    return report


def _centroids(x: np.ndarray, keys: np.ndarray, n: int) -> np.ndarray:
    """Unit-norm mean of each product's rows (zero rows for products without references)."""
    sums = np.zeros((n, x.shape[1]), dtype=np.float64)
    np.add.at(sums, keys, x)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32)
