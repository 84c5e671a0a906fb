"""`CatalogView`: the in-memory state derived from the store, which searches read without touching SQLite.

Products (by pk, category and label), the live references (`RefMap`), the vector index, the store generation
they reflect, the model identity of the stored embeddings, the reload epoch and the journal of a background
rebuild. All of it is guarded by `rw`, which the methods do not take: the caller holds the read side to read
and the write side to change, so that one write is applied as one change (a deleted product's references,
index vectors and maps go together) and a search never sees half of it.
"""

from __future__ import annotations

import numpy as np

from skulens.catalog.index import VectorIndex
from skulens.catalog.matching import ProductHit, RefMap, decide, first_round_k, search_products
from skulens.catalog.models import Match, SearchResult
from skulens.catalog.rwlock import RWLock
from skulens.catalog.store import ProductRow, StoreSnapshot

#: A change applied while a background rebuild reads the store: (generation, "add" | "remove", ids, vectors).
JournalEntry = tuple[int, str, np.ndarray, np.ndarray | None]


class CatalogView:
    """Products, live references and the index at one store generation, guarded by `rw`."""

    def __init__(self, fingerprint: str, dim: int) -> None:
        self.rw = RWLock()
        self.fingerprint = fingerprint  # model that made the stored embeddings
        self.dim = dim
        self.index: VectorIndex | None = None  # None while the model mismatches (nothing may search)
        self.spaces: dict[str, VectorIndex] = {}  # a migration's other model space (exact), by fingerprint
        self.refs = RefMap()
        self.products: dict[int, ProductRow] = {}
        self.by_category: dict[str, set[int]] = {}
        self.by_label: dict[tuple[str, str], set[int]] = {}
        self.generation = 0  # store generation that the state reflects
        self.epoch = 0  # bumped by every reload; a background rebuild begun in an older epoch is discarded
        self.journal: list[JournalEntry] | None = None  # kept while a background rebuild runs

    # ---------------------------------------------------------------- changes (caller holds rw's write side)
    def reload(self, snap: StoreSnapshot) -> np.ndarray:
        """Take products and references from the store at `snap` and start a new epoch; returns the reference
        ids. The index is left as it is: the caller installs one (or clears it)."""
        self.epoch += 1
        self.journal = None
        self.spaces = {}
        products = snap.products()
        ids, pks = snap.reference_map()
        self.products, self.by_category, self.by_label = {}, {}, {}
        for row in products.values():
            self.put_product(row)
        self.refs = RefMap()
        self.refs.set(ids, pks)
        self.generation = snap.generation
        return ids

    def install(self, index: VectorIndex) -> None:
        """Search `index` from now on; it holds every live reference (HNSW: plus its tombstones)."""
        if index.kind == "hnsw":
            index.tombstones = index.ntotal - self.refs.live
        self.index = index

    def advance(self, gen: int) -> bool:
        """Note that the state reflects store generation `gen`; False if another writer interleaved."""
        ok = gen in (self.generation, self.generation + 1)
        self.generation = gen
        return ok

    def put_product(self, row: ProductRow) -> None:
        """Add or replace a product."""
        self.drop_product(row.pk)
        self.products[row.pk] = row
        self.by_category.setdefault(row.category, set()).add(row.pk)
        for kv in row.labels.items():
            self.by_label.setdefault(kv, set()).add(row.pk)

    def drop_product(self, pk: int) -> None:
        """Forget a product (its references are removed apart, with `remove_references`)."""
        old = self.products.pop(pk, None)
        if old is None:
            return
        self.by_category.get(old.category, set()).discard(pk)
        for kv in old.labels.items():
            self.by_label.get(kv, set()).discard(pk)

    def add_references(self, gen: int, pk: int, ids: np.ndarray, vectors: np.ndarray) -> None:
        """References `ids` of product `pk`, committed at generation `gen`, become searchable."""
        self.refs.set(ids, np.full(len(ids), pk, dtype=np.int64))
        self._apply(gen, "add", ids, vectors)

    def remove_references(self, gen: int, ids: np.ndarray) -> None:
        """References `ids`, deleted at generation `gen`, are no longer found."""
        self.refs.clear(ids)
        self._apply(gen, "remove", ids)

    def _apply(self, gen: int, op: str, ids: np.ndarray, vectors: np.ndarray | None = None) -> None:
        """Change the index and, while a background rebuild runs, journal the change for it to replay."""
        idx = self.index
        if idx is not None:
            if op == "add" and vectors is not None:
                idx.add(ids, vectors)
            else:
                idx.remove(ids)
        if self.journal is not None:
            self.journal.append((gen, op, ids, vectors))
        if op == "remove":
            for space in self.spaces.values():
                space.remove(ids)

    def add_space_vectors(self, fingerprint: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Vectors of live references in the non-serving space `fingerprint` (ignored when it is not held)."""
        space = self.spaces.get(fingerprint)
        if space is not None and len(ids):
            space.add(ids, vectors)

    # ---------------------------------------------------------------- reads (caller holds rw's read side)
    def search(self, q: np.ndarray, top_k: int, floor: float | None, category: str, labels: dict[str, str],
               threshold: float, margin: float, index: VectorIndex | None = None) -> list[SearchResult]:
        """Top-k products per query row with a verdict each (arguments already validated), in the serving index
        or in `index` (another model space's)."""
        out = []
        for row in self._product_hits(q, top_k, floor, category, labels, margin, index):
            verdict, confusable = decide(row, threshold, margin)
            matches = [self._match(h) for h in row[:top_k] if floor is None or h.score >= floor]
            best = row[0].score if row else -1.0
            out.append(SearchResult(matches, verdict, best,
                                    [self.products[h.product_pk].product_id for h in confusable]))
        return out

    def _match(self, h: ProductHit) -> Match:
        p = self.products[h.product_pk]
        return Match(p.product_id, p.display_name, h.score, h.reference_id)

    def filter_pks(self, category: str, labels: dict[str, str]) -> np.ndarray:
        """Keys of the products in `category` (if given) that carry every label pair of `labels`."""
        sets: list[set[int]] = []
        if category:
            sets.append(self.by_category.get(category, set()))
        sets.extend(self.by_label.get(kv, set()) for kv in labels.items())
        sets.sort(key=len)
        chosen = set(sets[0]).intersection(*sets[1:])
        return np.fromiter(chosen, dtype=np.int64, count=len(chosen))

    def _product_hits(self, q: np.ndarray, top_k: int, floor: float | None, category: str,
                      labels: dict[str, str], margin: float,
                      index: VectorIndex | None = None) -> list[list[ProductHit]]:
        idx = index if index is not None else self.index
        assert idx is not None
        allowed: np.ndarray | None = None
        candidates, products = self.refs.live, max(1, len(self.products))
        if category or labels:
            pks = self.filter_pks(category, labels)
            allowed = self.refs.allowed_mask(pks)
            candidates, products = int(np.count_nonzero(allowed)), max(1, len(pks))
        if candidates == 0 or idx.ntotal == 0:
            return [[] for _ in range(len(q))]
        per_product = max(1.0, candidates / products)
        dead = idx.ntotal / max(1, self.refs.live) if idx.kind == "hnsw" else 1.0
        initial = first_round_k(top_k, per_product, idx.ntotal, dead)

        def searcher(queries: np.ndarray, k: int, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            return idx.search(queries, k, allowed=allowed, depth=depth)

        return search_products(searcher, self.refs.lookup, q, top_k=top_k, initial_k=initial,
                               max_k=idx.ntotal, min_score=floor, ambiguity_margin=margin)

    def sample(self, limit: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(reference ids, product keys) of up to `limit` live references (seeded random sample, sorted)."""
        ids = self.refs.live_ids()
        if limit is not None and len(ids) > limit:
            ids = np.sort(np.random.default_rng(seed).choice(ids, limit, replace=False))
        return ids, self.refs.lookup(ids)

    def nearest(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, reference ids, product keys) of the k nearest live references per query (-1 pads)."""
        idx = self.index
        assert idx is not None
        if idx.ntotal == 0:
            empty = np.full((len(q), 0), -1, dtype=np.int64)
            return empty.astype(np.float32), empty, empty
        scores, ids, _ = idx.search(q, min(k, idx.ntotal), depth=2)
        keys = self.refs.lookup(ids)
        return scores, np.where(keys >= 0, ids, -1), keys

    def live_keys(self) -> np.ndarray:
        """The product key of every live reference."""
        return self.refs.lookup(self.refs.live_ids())
