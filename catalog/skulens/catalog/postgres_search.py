"""`RoundSearch` and `HnswTuning`: nearest-product search in the shared catalog, and its HNSW search width.

Search keeps the embedded backend's semantics by reusing its pure parts: `matching.search_products` drives the
rounds (a product scores its best reference; top-k *products*, searching deeper, k x4 a round, until every row has
enough products and a runner-up for the verdict), and `matching.decide` gives the verdict. Each round is one SQL
statement for all pending query rows (`unnest … CROSS JOIN LATERAL (… ORDER BY distance LIMIT k)`), with the
category / label filters inside it and the product names joined, so the answer of the last round is read at one
snapshot; a search costs two round trips (counts, then one per round, pipelined with its settings).
- Exact (`index_kind` "flat"): when the references the call may return (all live ones, or those the filters let
  through) number at most `exact_limit` (see `PostgresCatalog.open`), the candidates are materialised once and
  every query is compared with all of them.
- Approximate ("hnsw"): the partial HNSW index with `hnsw.iterative_scan = relaxed_order` (without it a filter
  that removes most neighbours collapses recall: 0.20 measured at 5 % selectivity), rows re-sorted by score here,
  `hnsw.ef_search` = the tuned width, doubled with each deeper round, and `hnsw.max_scan_tuples` x4 a round.
- Plans are pinned per transaction (`enable_*` settings), so that they do not depend on table statistics (which a
  freshly filled catalog lacks until autovacuum analyses it; unpinned plans were 2-20x slower then).

The width (`HnswTuning`): `recall_queries` stored vectors plus noise (as the embedded index's tuning) are searched
exactly and through HNSW; the width starts at `hnsw_ef_search` and doubles until recall@10 reaches `recall_target`
or `min(hnsw_max_ef_search, 1000)` (pgvector's limit); stats report it (`index_search_width`, `recall_at_10`).
Measured at open (or on `tune()`) and stored in `meta` for the other replicas, which reuse it while the catalog
stays within 2x the measured size and the settings are the same. Small catalogs (exact) skip the measurement.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from psycopg import sql
from psycopg.types.json import Jsonb

from skulens.catalog.errors import CatalogError
from skulens.catalog.matching import ProductHit, decide, search_products
from skulens.catalog.models import Match, SearchResult
from skulens.catalog.postgres_pool import Conn, Database, one_row
from skulens.catalog.postgres_schema import CatalogSchema, parse_vec, vec_text
from skulens.catalog.settings import CatalogSettings

log = logging.getLogger(__name__)

HNSW_MAX_EF_SEARCH = 1000  # pgvector's upper bound for hnsw.ef_search
_MAX_SCAN_TUPLES = 20_000  # pgvector's default hnsw.max_scan_tuples, the first round's
_TUNING_SETTINGS = ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "hnsw_max_ef_search", "recall_target",
                    "recall_queries", "seed")

# Plan shapes, pinned per transaction (SET LOCAL) so that they do not depend on table statistics (a freshly
# filled catalog has none until autovacuum analyses it, and the planner then picks nested loops over scans that
# cost 10-20x). HNSW: the index scan drives nested loops of primary-key lookups, never a sort (which would mean
# no index) nor a re-scanned materialisation. Exact with a filter: products by the filter's index, then their
# references and vectors by index. Exact without one: one pass over the vectors, hash-joined with live references.
_PLAN_HNSW = {"enable_sort": "off", "enable_seqscan": "off", "enable_bitmapscan": "off", "enable_material": "off",
              "enable_memoize": "off", "enable_hashjoin": "off", "enable_mergejoin": "off", "enable_nestloop": "on"}
_PLAN_INDEX_LOOKUPS = {"enable_hashjoin": "off", "enable_mergejoin": "off", "enable_material": "off"}
_PLAN_SCAN_ALL = {"enable_nestloop": "off", "enable_mergejoin": "off"}

#: product key -> (product id, display name), filled by the rounds of one search.
Names = dict[int, tuple[str, str]]


def max_width(settings: CatalogSettings) -> int:
    """The widest `hnsw.ef_search` the settings (and pgvector) allow."""
    return max(1, min(settings.hnsw_max_ef_search, HNSW_MAX_EF_SEARCH))


def _set(conn: Conn, settings: Mapping[str, object]) -> None:
    """SET LOCAL each setting (one statement)."""
    calls = ", ".join("set_config(%s, %s, true)" for _ in settings)
    conn.execute(f"SELECT {calls}", [x for kv in settings.items() for x in (kv[0], str(kv[1]))])


def _filter_sql(cat: bool, lab: bool) -> str:
    """The WHERE fragment of the category / label filters (products aliased p; parameters cat and labels)."""
    out = ""
    if cat:
        out += " AND p.category = %(cat)s"
    if lab:
        out += " AND p.labels @> %(labels)s"
    return out


@dataclass(frozen=True)
class Rounds:
    """What every round of one search shares: the statement, exact or not, and what bounds the rounds."""

    query: sql.Composed
    exact: bool
    filtered: bool  # a category / label filter applies
    max_k: int  # references a round may return at most (the candidates, or every live one)
    indexed: int  # vectors in the HNSW index (deleted ones included)
    args: dict[str, Any]  # the statement's filter parameters
    width: int  # the first round's hnsw.ef_search


class RoundSearch:
    """The search rounds of one catalog (`schema`); searches are exact up to `exact_limit` candidates. `width` is
    the first round's `hnsw.ef_search`, which `HnswTuning` sets. Thread-safe."""

    def __init__(self, db: Database, schema: CatalogSchema, settings: CatalogSettings, exact_limit: int) -> None:
        self._db = db
        self._schema = schema
        self.exact_limit = exact_limit
        self.width = min(settings.hnsw_ef_search, max_width(settings))
        self._statements: dict[tuple[bool, bool, bool], sql.Composed] = {}

    def kind(self, live: int) -> str:
        """"flat" (exact) or "hnsw": how a search over `live` references runs."""
        return "flat" if live <= self.exact_limit else "hnsw"

    def search(self, texts: list[str], top_k: int, floor: float | None, cat: str, lab: dict[str, str],
               threshold: float, margin: float) -> list[SearchResult]:
        """Top-k products per query (pgvector text forms), best first, with a verdict each (`Catalog.search`)."""
        hits, names = self._db.run(lambda conn: self._search_rounds(conn, texts, top_k, floor, cat, lab, margin),
                                   tx=False)
        out = []
        for row in hits:
            verdict, confusable = decide(row, threshold, margin)
            matches = [Match(*names[h.product_pk], h.score, h.reference_id)
                       for h in row[:top_k] if floor is None or h.score >= floor]
            best = row[0].score if row else -1.0
            out.append(SearchResult(matches, verdict, best, [names[h.product_pk][0] for h in confusable]))
        return out

    def _counts(self, conn: Conn, cat: str, lab: dict[str, str], args: dict[str, Any]) -> tuple[int, int, int, int]:
        """(live references, products, indexed vectors, candidates) in one round trip: the candidates and products
        are those the filter lets through (counted up to the exact limit), or all live ones without a filter."""
        filtered = bool(cat or lab)
        with conn.pipeline():
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            if filtered:
                _set(conn, _PLAN_INDEX_LOOKUPS)
            meta_cur = conn.execute(self._schema.q("SELECT live_refs, live_products, indexed_refs FROM {meta}"))
            count_cur = conn.execute(self._schema.q(
                "SELECT count(*), count(DISTINCT product_pk) FROM (SELECT r.product_pk FROM {products} p "
                "JOIN {refs} r ON r.product_pk = p.pk AND r.deleted_at IS NULL WHERE p.deleted_at IS NULL"
                + _filter_sql(bool(cat), bool(lab)) + " LIMIT %(lim)s) s"), args) if filtered else None
            conn.execute("COMMIT")
        live, products, indexed = (int(x) for x in one_row(meta_cur))
        candidates = live
        if count_cur is not None:
            candidates, products = (int(x) for x in one_row(count_cur))
        return live, products, indexed, candidates

    def _search_rounds(self, conn: Conn, texts: list[str], top_k: int, floor: float | None, cat: str,
                       lab: dict[str, str], margin: float) -> tuple[list[list[ProductHit]], Names]:
        """Product hits per query row (`matching.search_products`), and (product_id, display_name) by product key.

        Round trips: one for the counts (meta, and how many references the filter lets through, up to the exact
        limit), one per round (each round is one statement, complete in itself: the last round's answer is read
        at one snapshot, names included).
        """
        n = len(texts)
        args: dict[str, Any] = {"cat": cat, "labels": Jsonb(lab), "lim": self.exact_limit + 1}
        live, products, indexed, candidates = self._counts(conn, cat, lab, args)
        if candidates == 0:
            return [[] for _ in range(n)], {}
        exact = candidates <= self.exact_limit
        per_product = max(1.0, candidates / max(1, products))
        max_k = candidates if exact else live
        initial = max(16, min(math.ceil(max(top_k, 2) * per_product * 2), max_k))
        rounds = Rounds(self.statement(exact, bool(cat), bool(lab)), exact, bool(cat or lab), max_k, indexed, args,
                        self.width)
        pk_of: dict[int, int] = {}
        names: Names = {}

        def searcher(rows: np.ndarray, k: int, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            scores, ids, pks, exhausted = self.refs_search(conn, rounds, [texts[i] for i in rows.tolist()], k,
                                                           depth, names)
            pk_of.update(zip(ids[ids >= 0].tolist(), pks[ids >= 0].tolist(), strict=True))
            return scores, ids, exhausted

        def lookup(ids: np.ndarray) -> np.ndarray:
            return np.vectorize(lambda x: pk_of.get(int(x), -1), otypes=[np.int64])(ids)

        hits = search_products(searcher, lookup, np.arange(n), top_k=top_k, initial_k=initial, max_k=max_k,
                               min_score=floor, ambiguity_margin=margin)
        return hits, names

    def statement(self, exact: bool, cat: bool, lab: bool) -> sql.Composed:
        """The reference-level k-nearest statement for all pending query rows, exact or through the HNSW index.

        Rows: (query ordinal, reference id, product key, negative inner product, product id, display name). The
        query rows arrive as text and are cast to vectors once (a cast per compared row would cost more than the
        comparison). Exact: the candidates (live references passing the filters) are materialised once, then
        each query compares with all of them (ties by reference id). Approximate: the partial HNSW index's
        expression and predicate, literally, so the planner can use it.
        """
        key = (exact, cat, lab)
        stmt = self._statements.get(key)
        if stmt is None:
            source = ("FROM {embeddings} e JOIN {refs} r ON r.reference_id = e.reference_id "
                      "JOIN {products} p ON p.pk = r.product_pk WHERE e.fingerprint = {fp} "
                      "AND r.deleted_at IS NULL AND p.deleted_at IS NULL" + _filter_sql(cat, lab))
            rows = ("SELECT q.i, x.reference_id, x.product_pk, x.d, x.product_id, x.display_name "
                    "FROM unnest(%(q)s::text[]::vector({dim})[]) WITH ORDINALITY AS q(v, i) CROSS JOIN LATERAL ")
            if exact:
                text = ("WITH c AS MATERIALIZED (SELECT e.reference_id, r.product_pk, p.product_id, p.display_name, "
                        "e.embedding " + source + ") " + rows
                        + "(SELECT c.reference_id, c.product_pk, c.product_id, c.display_name, "
                        "c.embedding <#> q.v AS d FROM c ORDER BY d, c.reference_id LIMIT %(k)s) AS x")
            else:
                text = (rows + "(SELECT e.reference_id, r.product_pk, p.product_id, p.display_name, "
                        "e.embedding::vector({dim}) <#> q.v AS d " + source + " ORDER BY d LIMIT %(k)s) AS x")
            stmt = self._statements[key] = self._schema.q(text)
        return stmt

    def refs_search(self, conn: Conn, rounds: Rounds, texts: list[str], k: int, depth: int,
                    names: Names) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One round, in one round trip: (scores, reference ids, product keys [n, k], padded -inf / -1, best
        first; exhausted [n]); fills `names` (product key -> (product id, display name))."""
        scan_cap = _MAX_SCAN_TUPLES
        if rounds.exact:
            plan: dict[str, object] = dict(_PLAN_INDEX_LOOKUPS if rounds.filtered else _PLAN_SCAN_ALL)
            need = rounds.max_k * (self._schema.dim * 4 + 200)  # the materialised candidates stay in memory
            if need > 4 << 20:
                plan["work_mem"] = f"{min(need * 3 // 2, 256 << 20) >> 10}kB"
        else:  # a deeper round widens the graph walk and lets the iterative scan go further
            scan_cap = min(_MAX_SCAN_TUPLES * 4**depth, 2**31 - 1)
            plan = {**_PLAN_HNSW, "hnsw.iterative_scan": "relaxed_order",
                    "hnsw.ef_search": min(HNSW_MAX_EF_SEARCH, rounds.width * 2**depth),
                    "hnsw.max_scan_tuples": scan_cap, "hnsw.scan_mem_multiplier": min(1000, 2 ** (depth + 1))}
        with conn.pipeline():
            conn.execute("BEGIN READ ONLY")
            _set(conn, plan)
            cur = conn.execute(rounds.query, {**rounds.args, "q": texts, "k": k})
            conn.execute("COMMIT")
        n = len(texts)
        per_row: list[list[tuple[float, int, int]]] = [[] for _ in range(n)]
        for i, rid, pk, d, product_id, display_name in cur.fetchall():
            per_row[int(i) - 1].append((-float(d), int(rid), int(pk)))
            names[int(pk)] = (str(product_id), str(display_name))
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        ids = np.full((n, k), -1, dtype=np.int64)
        pks = np.full((n, k), -1, dtype=np.int64)
        exhausted = np.zeros(n, dtype=bool)
        for j, found in enumerate(per_row):
            found.sort(key=lambda t: (-t[0], t[1]))  # relaxed_order: near-sorted; best first, ties by id
            for c, (s, rid, pk) in enumerate(found[:k]):
                scores[j, c], ids[j, c], pks[j, c] = s, rid, pk
            exhausted[j] = (len(found) < k and (rounds.exact or scan_cap >= rounds.indexed)) or k >= rounds.max_k
        return scores, ids, pks, exhausted


class HnswTuning:
    """Chooses the HNSW search width of `rounds` (measured, or reused from `meta`) and knows its recall."""

    def __init__(self, db: Database, schema: CatalogSchema, settings: CatalogSettings, rounds: RoundSearch) -> None:
        self._db = db
        self._schema = schema
        self._settings = settings
        self._rounds = rounds
        self.recall: float | None = None  # recall@10 at the width, None while searches are exact
        self._lock = threading.Lock()

    def tune(self, *, reuse: bool) -> float | None:
        """Set the width and recall: the stored ones when `reuse` and they were measured with these settings on a
        catalog within 2x this one's size, else measured now and stored; returns the recall (None when exact)."""
        with self._lock:
            t0 = time.perf_counter()
            s, rounds = self._settings, self._rounds
            config = json.dumps({k: getattr(s, k) for k in _TUNING_SETTINGS} | {
                "exact_limit": rounds.exact_limit, "fingerprint": self._schema.fingerprint,
                "dim": self._schema.dim}, sort_keys=True)
            live, stored_config, stored_refs, stored_width, stored_recall = self._db.run(self._schema.stored_tuning,
                                                                                         tx=False)
            if (reuse and rounds.kind(int(live)) == "hnsw" and stored_config == config and stored_refs
                    and stored_refs / 2 <= live <= stored_refs * 2):
                rounds.width, self.recall = int(stored_width), float(stored_recall)
                return self.recall
            width, recall = self._db.run(self._measure, tx=False)
            rounds.width, self.recall = width, recall
            if recall is None:
                return None
            log.info("shared catalog: hnsw.ef_search %d gives recall@10 %.3f over %d references (%.2fs)", width,
                     recall, live, time.perf_counter() - t0)
            try:  # not a catalog write: the version stays
                self._db.run(lambda conn: self._schema.store_tuning(conn, config, int(live), width, recall))
            except CatalogError as exc:
                log.warning("could not store the measured HNSW search width (%s); each replica measures its own",
                            exc)
            return recall

    def _probes(self, conn: Conn, live: int) -> list[str]:
        """The measurement's queries: stored vectors plus noise (cosine about 0.9: another photo of the same
        product), as the embedded index measures its recall (`VectorIndex._recall_probe`)."""
        s, schema = self._settings, self._schema
        n = min(s.recall_queries, live)
        stored = np.stack([parse_vec(r[0]) for r in conn.execute(schema.q(
            "SELECT e.embedding::text FROM {embeddings} e JOIN {refs} r ON r.reference_id = e.reference_id "
            "WHERE e.fingerprint = {fp} AND r.deleted_at IS NULL ORDER BY hashint8(e.reference_id + %s) LIMIT %s"),
            (int(s.seed), n))])
        rng = np.random.default_rng(s.seed + 1)
        noisy = stored + rng.standard_normal(stored.shape).astype(np.float32) * (0.5 / math.sqrt(schema.dim))
        return [vec_text(x) for x in (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).tolist()]

    def _measure(self, conn: Conn) -> tuple[int, float | None]:
        """(width, recall@10): the narrowest width from `hnsw_ef_search` up, doubling, that reaches the target."""
        s, rounds = self._settings, self._rounds
        start = min(s.hnsw_ef_search, max_width(s))
        live, indexed = (int(x) for x in one_row(conn.execute(self._schema.q(
            "SELECT live_refs, indexed_refs FROM {meta}"))))
        if rounds.kind(live) != "hnsw" or live == 0:
            return start, None
        texts = self._probes(conn, live)
        k = min(10, live)
        args: dict[str, Any] = {"cat": "", "labels": Jsonb({})}
        names: Names = {}
        exact = Rounds(rounds.statement(True, False, False), True, False, live, indexed, args, 0)
        _, exact_ids, _, _ = rounds.refs_search(conn, exact, texts, k, 0, names)
        approx = Rounds(rounds.statement(False, False, False), False, False, live, indexed, args, start)
        cap = max_width(s)
        while True:
            _, approx_ids, _, _ = rounds.refs_search(conn, approx, texts, k, 0, names)
            hits = sum(len(np.intersect1d(a[a >= 0], e[e >= 0])) for a, e in zip(approx_ids, exact_ids, strict=True))
            recall = hits / max(1, int(np.count_nonzero(exact_ids >= 0)))
            if recall >= s.recall_target or approx.width >= cap:
                return approx.width, recall
            approx = dataclasses.replace(approx, width=min(cap, approx.width * 2))


__all__ = ["HNSW_MAX_EF_SEARCH", "HnswTuning", "RoundSearch", "Rounds", "max_width"]
