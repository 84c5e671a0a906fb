"""Catalog-adapted matching: a closed-form linear head learned from the catalog's own references.

The statistics are the normal equations of a ridge regression from embeddings to one-hot product targets,
accumulated per catalog (and model fingerprint) as references come and go, so a write never retrains anything:

- `count`, `total` (Σx) and `gram` (Σxxᵀ) over every live reference embedding;
- per product: its reference count n_p and sum S_p.

`HeadModel.fit` solves them (one d×d linear solve, tens of milliseconds at d = 1280) into, per product, a ridge score
r_p(q) = (q−μ)ᵀ (Gc + λI)⁻¹ (S_p − n_p μ), with μ the mean embedding and Gc the centred Gram matrix (λ relative to
its mean eigenvalue), and a centroid cosine c_p(q) = q·S_p/‖S_p‖. A product's adapted score is
(c_p + w·r_p) / (1 + w); products with fewer than `min_references` references keep their nearest-neighbour score
(the best reference's cosine), which is also what every product gets when the head is off.

Pure numpy: the backends keep the statistics in their store (updated in each write's transaction from a journal of
added/removed embeddings, `deltas`), `skulens.catalog.adapted.AdaptedMatcher` fits and applies them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from skulens.catalog.matching import ProductHit, decide
from skulens.catalog.models import Match, SearchResult, Verdict


@dataclass(frozen=True)
class HeadSettings:
    """How the head is fitted and applied (defaults measured on the grocery data: docs/BENCHMARKS.md)."""

    enabled: bool = True
    ridge: float = 0.5  # λ as a fraction of the centred Gram matrix's mean eigenvalue
    weight: float = 0.5  # w: ridge score weight next to the centroid cosine
    min_references: int = 3  # a product with fewer keeps its nearest-neighbour score
    candidates: int = 16  # products taken from the nearest-neighbour search, then re-scored
    refit_seconds: float = 0.5  # at most one refit per this many seconds (the head may lag writes by that)

    def __post_init__(self) -> None:
        if not self.ridge > 0:
            raise ValueError(f"head ridge must be > 0, got {self.ridge}")
        if not self.weight >= 0:
            raise ValueError(f"head weight must be >= 0, got {self.weight}")
        if self.min_references < 1:
            raise ValueError(f"head min_references must be >= 1, got {self.min_references}")
        if self.candidates < 1:
            raise ValueError(f"head candidates must be >= 1, got {self.candidates}")
        if self.refit_seconds < 0:
            raise ValueError(f"head refit_seconds must be >= 0, got {self.refit_seconds}")


@dataclass
class ProductSums:
    """One product's share of the statistics: its embeddings (references and their augmented views)."""

    count: int  # embeddings summed
    total: np.ndarray  # [d] float64
    references: int = -1  # references among them (-1: every embedding is a reference)

    def __post_init__(self) -> None:
        if self.references < 0:
            self.references = self.count


@dataclass
class HeadStats:
    """Normal-equation statistics of one model space of a catalog, at catalog `version`."""

    fingerprint: str
    dim: int
    count: int = 0
    total: np.ndarray = field(default_factory=lambda: np.zeros(0))
    gram: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    products: dict[str, ProductSums] = field(default_factory=dict)  # product_id → sums
    version: int = 0

    def __post_init__(self) -> None:
        if self.total.shape != (self.dim,):
            self.total = np.zeros(self.dim)
        if self.gram.shape != (self.dim, self.dim):
            self.gram = np.zeros((self.dim, self.dim))

    @classmethod
    def from_embeddings(cls, fingerprint: str, product_ids: Sequence[str], vectors: np.ndarray,
                        version: int = 0, references: Sequence[int] | None = None) -> HeadStats:
        """Statistics computed from scratch (the oracle the incremental updates must equal); `references[i]`: 1
        when row i is a reference's own embedding, 0 for an augmented view (default: all references)."""
        x = np.asarray(vectors, dtype=np.float64).reshape(len(product_ids), -1)
        refs = np.ones(len(x), dtype=int) if references is None else np.asarray(references, dtype=int)
        stats = cls(fingerprint, x.shape[1], version=version)
        stats.count = len(x)
        stats.total = x.sum(0)
        stats.gram = x.T @ x
        for pid in dict.fromkeys(product_ids):
            mine = np.asarray([p == pid for p in product_ids])
            stats.products[pid] = ProductSums(int(mine.sum()), x[mine].sum(0), int(refs[mine].sum()))
        return stats


@dataclass
class StatDelta:
    """What a batch of added (+1) / removed (−1) embeddings changes; applied by `apply_delta` or by a store."""

    count: int
    total: np.ndarray
    gram: np.ndarray
    products: dict[int, ProductSums]  # product key (the store's pk) → change


def deltas(product_keys: Sequence[int], vectors: np.ndarray, signs: Sequence[int],
           references: Sequence[int] | None = None, *, gram: bool = True) -> StatDelta:
    """The change to the statistics when `vectors[i]` of product `product_keys[i]` is added (sign +1) or
    removed (−1); `references[i]` is 1 when the vector is a reference's own embedding, 0 for an augmented view
    (default: all references). `gram=False`: leave the Gram change out (zeros; the stores fold it in batches)."""
    x = np.asarray(vectors, dtype=np.float64).reshape(len(product_keys), -1)
    s = np.asarray(signs, dtype=np.float64)
    refs = [1] * len(product_keys) if references is None else list(references)
    sx = x * s[:, None]
    per: dict[int, ProductSums] = {}
    for key, row, sign, is_ref in zip(product_keys, sx, s.tolist(), refs, strict=True):
        cur = per.setdefault(int(key), ProductSums(0, np.zeros(x.shape[1])))
        cur.count += int(sign)
        cur.references += int(sign) * int(is_ref)
        cur.total += row
    d = x.shape[1]
    return StatDelta(int(s.sum()), sx.sum(0), sx.T @ x if gram else np.zeros((d, d)), per)


def apply_delta(count: int, total: np.ndarray, gram: np.ndarray, d: StatDelta) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, Σx, Σxxᵀ) after `d`."""
    return count + d.count, total + d.total, gram + d.gram


def gram_with(stored: bytes | None, vectors: np.ndarray | None, signs: Sequence[float]) -> np.ndarray | None:
    """A stored Gram matrix (little-endian float64 bytes, d×d) plus the signed outer products of `vectors`' rows —
    how both stores read the matrix with the journal rows not folded into it yet; None when there is neither."""
    if stored is None and (vectors is None or not len(vectors)):
        return None
    delta = None
    if vectors is not None and len(vectors):
        x = np.asarray(vectors, dtype=np.float64)
        delta = (x * np.asarray(signs, dtype=np.float64)[:, None]).T @ x
    dim = delta.shape[0] if delta is not None else int(np.sqrt(len(stored or b"") // 8))
    gram = np.zeros((dim, dim)) if stored is None or len(stored) != 8 * dim * dim else \
        np.frombuffer(stored, "<f8").reshape(dim, dim).copy()
    return gram if delta is None else gram + delta


@dataclass(frozen=True)
class HeadModel:
    """The fitted head of one catalog version: one linear scorer per product, `vectors[p] · q + bias[p]`.

    For a product with the ridge score that is ((c_p + w·W_p)·q − w·W_p·μ) / (1 + w) with W_p = (Gc + λI)⁻¹ M_p;
    for the others c_p·q. Folding the ridge into one vector per product at fit time makes a query cost one dot
    product per candidate, like the centroid alone."""

    version: int
    settings: HeadSettings
    index: dict[str, int]  # product_id → row of the arrays below
    vectors: np.ndarray  # [P, d] float32
    bias: np.ndarray  # [P] float32
    ridge: np.ndarray  # [P] bool: the product has enough references for the ridge score
    fit_seconds: float = 0.0

    @property
    def products(self) -> int:
        """How many products the head scores (the others keep their nearest-neighbour score)."""
        return len(self.index)

    @property
    def ridge_products(self) -> int:
        """How many of them get the ridge score next to their centroid cosine."""
        return int(np.count_nonzero(self.ridge))

    @classmethod
    def fit(cls, stats: HeadStats, settings: HeadSettings) -> HeadModel:
        """Solve the normal equations. Every product with an embedding gets its centroid; the ridge score needs
        `min_references` references (and two such products: one product alone has nothing to be told from)."""
        t0 = time.perf_counter()
        d = stats.dim
        chosen = [(pid, p) for pid, p in sorted(stats.products.items()) if p.count > 0 and np.any(p.total)]
        ridge = np.asarray([p.references >= settings.min_references for _, p in chosen], dtype=bool)
        if stats.count < 2 or int(ridge.sum()) < 2:
            ridge[:] = False
        if not chosen:
            return cls(stats.version, settings, {}, np.zeros((0, d), np.float32), np.zeros(0, np.float32), ridge)
        sums = np.stack([p.total for _, p in chosen])
        vectors = sums / np.linalg.norm(sums, axis=1, keepdims=True)  # centroids
        bias = np.zeros(len(chosen))
        if ridge.any():
            mu = stats.total / stats.count
            centred = stats.gram - stats.count * np.outer(mu, mu)
            centred = (centred + centred.T) / 2
            lam = settings.ridge * max(float(np.trace(centred)) / d, 1e-12)
            a = centred + lam * np.eye(d)
            counts = np.asarray([p.count for _, p in chosen], dtype=np.float64)[ridge]
            prototypes = sums[ridge] - counts[:, None] * mu[None, :]  # M_p
            try:  # W_p = A⁻¹ M_p: one LU solve for every product at once (A is symmetric positive definite)
                w_rows = np.linalg.solve(a, prototypes.T).T
            except np.linalg.LinAlgError:  # numerically singular after many updates: least squares
                w_rows = np.linalg.lstsq(a, prototypes.T, rcond=None)[0].T
            w = settings.weight
            vectors[ridge] = (vectors[ridge] + w * w_rows) / (1.0 + w)
            bias[ridge] = -w * (w_rows @ mu) / (1.0 + w)
        return cls(stats.version, settings, {pid: i for i, (pid, _) in enumerate(chosen)},
                   vectors.astype(np.float32), bias.astype(np.float32), ridge, time.perf_counter() - t0)

    def score(self, queries: np.ndarray, product_ids: Sequence[Sequence[str]],
              nn_scores: Sequence[Sequence[float]]) -> list[list[float]]:
        """Adapted score of each candidate product of each query, clamped to [-1, 1]: (centroid cosine + w·ridge
        score) / (1 + w) for products with the ridge score, the centroid cosine of its embeddings (augmented views
        included; for a single plain reference that is its nearest-neighbour score) for the others, and the
        nearest-neighbour score as given for a product the head does not know (enrolled after the fit)."""
        q = np.asarray(queries, dtype=np.float32)
        out: list[list[float]] = []
        for i, (pids, nn) in enumerate(zip(product_ids, nn_scores, strict=True)):
            rows = [self.index.get(pid, -1) for pid in pids]
            have = [k for k, r in enumerate(rows) if r >= 0]
            scores = [float(s) for s in nn]
            if have:
                sel = np.asarray([rows[k] for k in have])
                adapted = np.clip(self.vectors[sel] @ q[i] + self.bias[sel], -1.0, 1.0)
                for k, val in zip(have, adapted.tolist(), strict=True):
                    scores[k] = float(val)
            out.append(scores)
        return out


def rerank(results: Sequence[SearchResult], queries: np.ndarray, model: HeadModel, *, top_k: int,
           min_score: float | None, unknown_threshold: float, ambiguity_margin: float) -> list[SearchResult]:
    """Re-score each query's candidate products (from a nearest-neighbour search with a wider top-k) with the
    head, then sort, decide the verdict and cut to `top_k` (matches below `min_score` dropped) again."""
    scores = model.score(queries, [[m.product_id for m in r.matches] for r in results],
                         [[m.score for m in r.matches] for r in results])
    out: list[SearchResult] = []
    for r, row in zip(results, scores, strict=True):
        ranked = sorted(zip(row, r.matches, strict=True), key=lambda t: -t[0])
        hits = [ProductHit(k, s, m.reference_id) for k, (s, m) in enumerate(ranked)]
        verdict, confusable = decide(hits, unknown_threshold, ambiguity_margin)
        matches = [Match(m.product_id, m.display_name, s, m.reference_id) for s, m in ranked[:top_k]
                   if min_score is None or s >= min_score]
        best = ranked[0][0] if ranked else -1.0
        out.append(SearchResult(matches, verdict if ranked else Verdict.UNKNOWN, best,
                                [ranked[h.product_pk][1].product_id for h in confusable]))
    return out

