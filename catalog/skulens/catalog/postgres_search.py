"""`RoundSearch` and `HnswTuning`: nearest-product search in the shared catalog, and its HNSW search width.

Search keeps the embedded backend's semantics by reusing its pure parts: `matching.search_products` drives the
rounds (a product scores its best reference; top-k *products*, searching deeper, k x4 a round, until every row has
enough products and a runner-up for the verdict), and `matching.decide` gives the verdict. Each round is one SQL
statement for all pending query rows (`unnest … CROSS JOIN LATERAL (… ORDER BY distance LIMIT k)`), with the
category / label filters inside it and the product names joined, so the answer of the last round is read at one
snapshot. Query vectors travel in pgvector's binary form (`postgres_binary`: no text to format or parse).
- Round trips: usually one a search. Its pipeline reads the counts (meta; with a filter, the products it lets
  through and their live reference counts, `products.reference_count`, up to the exact limit of products) and, at
  the same snapshot, runs the first round shaped as the last search with the same filter was (exact or not, k);
  only when the counts call for another shape is the first round sent again. Deeper rounds are one trip each.
- Exact (`index_kind` "flat"): when the references the call may return (all live ones, or those the filters let
  through) number at most `exact_limit` (see `PostgresCatalog.open`), every query is compared with all of them:
  one query directly (products by the filter's index, their references and vectors by primary key, a top-k sort),
  several over the candidates materialised once.
- Approximate ("hnsw"): the partial HNSW index with `hnsw.iterative_scan = relaxed_order` (without it a filter
  that removes most neighbours collapses recall: 0.20 measured at 5 % selectivity), rows re-sorted by score here,
  `hnsw.ef_search` = the tuned width, doubled with each deeper round and never below the round's k (pgvector
  resumes a finished graph walk for each row past `ef_search`, which doubled a search's time), and
  `hnsw.max_scan_tuples` x4 a round; behind a filter at least 40 tuples for each row the round reads over the
  share the filter lets through (the iterative scan visits that many per row it returns; with pgvector's default
  cap of 20,000 a filter letting 5 % of 100,000 references through got product recall@10 0.837, with 80,000 0.953).
- Plans are pinned per transaction (`enable_*` settings), so that they do not depend on table statistics (which a
  freshly filled catalog lacks until autovacuum analyses it; unpinned plans were 2-20x slower then).

The width (`HnswTuning`): `recall_queries` stored vectors plus noise (as the embedded index's tuning) are searched
for their top-10 *products*, exactly (every live vector read once, for all of them, and compared in this process:
`_exact`) and through HNSW (the same rounds a search runs); the width starts at
`hnsw_ef_search` and doubles until that product recall@10 reaches `recall_target` or `min(hnsw_max_ef_search,
1000)` (pgvector's limit); stats report it (`index_search_width`, `recall_at_10`). Product recall, not the
reference recall@10 of the index, because a top-10 product search reads some 100 references (10 products x
references a product x 2) and needs them all: measured on 100,000 references of five a product, width 96 gave
reference recall@10 0.967 but product recall@10 0.872; 384 gives 0.962. Measured at open (or on `tune()`, and after
a `bulk_load`) and stored in `meta` for the other replicas, which reuse it while the catalog stays within 2x the
measured size and the settings are the same. Small catalogs (exact) skip the measurement.
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
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from skulens.catalog.errors import CatalogError
from skulens.catalog.exact_top import BestReferences, exact_products, product_recall
from skulens.catalog.matching import ProductHit, decide, first_round_k, search_products
from skulens.catalog.models import Match, SearchResult
from skulens.catalog.postgres_binary import Vector, VectorParams, unpack
from skulens.catalog.postgres_pool import Conn, Database, one_row
from skulens.catalog.postgres_schema import CatalogSchema
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
# Tuples an iterative HNSW scan visits per row it returns (measured: 100,000 references, a category filter letting
# 5 % through, first rounds of 100 rows: product recall@10 0.837 with pgvector's default cap of 20,000 visits, 0.953
# with 80,000, bench_shared's vectors); the first filtered round's cap is at least this x k / the filter's share.
_VISITS_PER_ROW = 40
_MAX_SHAPES = 256  # filters whose last search shape a RoundSearch remembers
_EXACT_CHUNK = 16_384  # vectors a step of the width measurement's exact search reads and compares
_MEASURED = "products@10"  # what the stored recall is of (a width measured otherwise is measured again)

#: product key -> (product id, display name), filled by the rounds of one search.
Names = dict[int, tuple[str, str]]


def max_width(settings: CatalogSettings) -> int:
    """The widest `hnsw.ef_search` the settings (and pgvector) allow."""
    return max(1, min(settings.hnsw_max_ef_search, HNSW_MAX_EF_SEARCH))


def _plan(shape: Mapping[str, str]) -> dict[str, object]:
    """Every planner switch the shapes above use: on, except those `shape` turns off (so that the switches of an
    earlier statement of the same transaction do not carry over)."""
    out: dict[str, object] = {k: "on" for k in _PLAN_HNSW}
    out.update(shape)
    return out


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
class Shape:
    """What the counts say about a search: exact or not, how deep a round may go, candidates per product."""

    exact: bool
    per_product: float  # candidate references per product that has one
    max_k: int  # references a round may return at most (the candidates, or every live one)
    indexed: int  # vectors in the HNSW index (deleted ones included)
    share: float = 1.0  # the share of the live references the filter lets through (at least; 1 without one)


@dataclass(frozen=True)
class Round:
    """What every round of one search shares: the statement, exact or not, and what bounds the rounds."""

    query: sql.Composed
    exact: bool
    filtered: bool  # a category / label filter applies
    max_k: int  # references a round may return at most (the candidates, or every live one)
    indexed: int  # vectors in the HNSW index (deleted ones included)
    args: dict[str, Any]  # the statement's filter parameters
    width: int  # the first round's hnsw.ef_search
    initial: int  # the first round's k
    share: float = 1.0  # the share of the live references the filter lets through (at least; 1 without one)


class RoundSearch:
    """The search rounds of one catalog (`schema`); searches are exact up to `exact_limit` candidates. `width` is
    the first round's `hnsw.ef_search`, which `HnswTuning` sets. Query vectors travel in binary (`vectors`).
    Thread-safe."""

    def __init__(self, db: Database, schema: CatalogSchema, settings: CatalogSettings, exact_limit: int,
                 vectors: VectorParams) -> None:
        self._db = db
        self._schema = schema
        self.exact_limit = exact_limit
        self.width = min(settings.hnsw_ef_search, max_width(settings))
        self.vectors = vectors
        self._statements: dict[tuple[bool, bool, bool, bool], sql.Composed] = {}
        self._shapes: dict[str, Shape] = {}  # filter key -> the shape its last search had
        self._shapes_lock = threading.Lock()

    def kind(self, live: int) -> str:
        """"flat" (exact) or "hnsw": how a search over `live` references runs."""
        return "flat" if live <= self.exact_limit else "hnsw"

    def search(self, queries: np.ndarray, top_k: int, floor: float | None, cat: str, lab: dict[str, str],
               threshold: float, margin: float) -> list[SearchResult]:
        """Top-k products per query (float32 unit rows), best first, with a verdict each (`Catalog.search`)."""
        qs = [Vector(row) for row in queries]
        hits, names = self._db.run(lambda conn: self._search_rounds(conn, qs, top_k, floor, cat, lab, margin),
                                   tx=False)
        out = []
        for row in hits:
            verdict, confusable = decide(row, threshold, margin)
            matches = [Match(*names[h.product_pk], h.score, h.reference_id)
                       for h in row[:top_k] if floor is None or h.score >= floor]
            best = row[0].score if row else -1.0
            out.append(SearchResult(matches, verdict, best, [names[h.product_pk][0] for h in confusable]))
        return out

    def _first_trip(self, conn: Conn, qs: list[Vector], cat: str, lab: dict[str, str], args: dict[str, Any],
                    guess: Round | None) -> tuple[tuple[int, int, int, int], list[tuple[Any, ...]] | None]:
        """((live references, products, indexed vectors, candidates), the rows of `guess` or None), in one round
        trip and one snapshot. The candidates and products are those the filter lets through (from the products'
        live reference counts, up to the exact limit of products), or all live ones without a filter."""
        filtered = bool(cat or lab)
        round_cur = None
        with conn.pipeline():
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            if filtered:
                _set(conn, _plan(_PLAN_INDEX_LOOKUPS))
            meta_cur = conn.execute(self._schema.q("SELECT live_refs, live_products, indexed_refs FROM {meta}"))
            count_cur = conn.execute(self._schema.q(
                "SELECT count(*) FILTER (WHERE s.n > 0), coalesce(sum(s.n), 0), count(*) FROM (SELECT "
                "p.reference_count AS n FROM {products} p WHERE p.deleted_at IS NULL"
                + _filter_sql(bool(cat), bool(lab)) + " LIMIT %(lim)s) s"), args) if filtered else None
            if guess is not None:
                round_cur = self._send(conn, guess, qs, 0)
            conn.execute("COMMIT")
        live, products, indexed = (int(x) for x in one_row(meta_cur))
        candidates = live
        if count_cur is not None:
            products, candidates, seen = (int(x) for x in one_row(count_cur))
            if seen >= args["lim"]:  # more products than the exact limit: more candidates than that too, or none
                candidates = max(candidates, self.exact_limit + 1)
        return (live, products, indexed, candidates), None if round_cur is None else round_cur.fetchall()

    def _search_rounds(self, conn: Conn, qs: list[Vector], top_k: int, floor: float | None, cat: str,
                       lab: dict[str, str], margin: float) -> tuple[list[list[ProductHit]], Names]:
        """Product hits per query row (`matching.search_products`), and (product_id, display_name) by product key.

        Round trips: usually one. The first carries the counts (meta, and how many references the filter lets
        through) and, at the same snapshot, the first round shaped as the last search with this filter was (exact
        or not, candidates per product); only when the counts call for another shape is the first round sent
        again. Each deeper round is one more (one statement, complete in itself: the last round's answer is read
        at one snapshot, names included).
        """
        n = len(qs)
        filtered = bool(cat or lab)
        args: dict[str, Any] = {"cat": cat, "labels": Jsonb(lab), "lim": self.exact_limit + 1}
        key = json.dumps([cat, lab], sort_keys=True) if filtered else ""
        with self._shapes_lock:
            last = self._shapes.get(key)
        guess = None if last is None else self._round(last, n, top_k, filtered, args)
        counts, first = self._first_trip(conn, qs, cat, lab, args, guess)
        live, products, indexed, candidates = counts
        if candidates == 0:
            return [[] for _ in range(n)], {}
        exact = candidates <= self.exact_limit
        shape = Shape(exact, max(1.0, candidates / max(1, products)), candidates if exact else live, indexed,
                      min(1.0, candidates / max(1, live)))
        with self._shapes_lock:
            if len(self._shapes) >= _MAX_SHAPES:
                self._shapes.clear()
            self._shapes[key] = shape
        rounds = self._round(shape, n, top_k, filtered, args)
        if guess is None or guess.exact != exact:
            first = None
        elif first is not None:
            rounds = dataclasses.replace(rounds, initial=guess.initial)  # the first round was sent with its k
        names: Names = {}
        return self.hits(conn, rounds, qs, top_k, floor, margin, names, first), names

    def hits(self, conn: Conn, rounds: Round, qs: list[Vector], top_k: int, floor: float | None, margin: float,
             names: Names, first: list[tuple[Any, ...]] | None = None) -> list[list[ProductHit]]:
        """Product hits per query row through `rounds` (`matching.search_products`); fills `names`. `first`: the
        rows of the first round, fetched already (with k = `rounds.initial`)."""
        pk_of: dict[int, int] = {}

        def searcher(rows: np.ndarray, k: int, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            nonlocal first
            sent = [qs[i] for i in rows.tolist()]
            if first is not None and depth == 0:  # the first trip's rows (k <= the k they were sent with)
                got, first = first, None
            else:
                got = self._fetch(conn, rounds, sent, k, depth)
            scores, ids, pks, exhausted = self._shape(rounds, got, len(sent), k, depth, names)
            pk_of.update(zip(ids[ids >= 0].tolist(), pks[ids >= 0].tolist(), strict=True))
            return scores, ids, exhausted

        def lookup(ids: np.ndarray) -> np.ndarray:
            return np.vectorize(lambda x: pk_of.get(int(x), -1), otypes=[np.int64])(ids)

        return search_products(searcher, lookup, np.arange(len(qs)), top_k=top_k, initial_k=rounds.initial,
                               max_k=rounds.max_k, min_score=floor, ambiguity_margin=margin)

    def _round(self, shape: Shape, n: int, top_k: int, filtered: bool, args: dict[str, Any]) -> Round:
        """The rounds of a search of `n` queries over a catalog of this shape."""
        initial = first_round_k(top_k, shape.per_product, shape.max_k)
        return Round(self.statement(shape.exact, bool(args["cat"]), bool(args["labels"].obj), n == 1),
                     shape.exact, filtered, shape.max_k, shape.indexed, args, self.width, initial, shape.share)

    def statement(self, exact: bool, cat: bool, lab: bool, single: bool = False) -> sql.Composed:
        """The reference-level k-nearest statement for all pending query rows, exact or through the HNSW index.

        Rows: (query ordinal, reference id, product key, negative inner product, product id, display name). The
        query rows arrive as one `vector[]` parameter in binary (`%(q)b`, `postgres_binary.Vector`). Exact:
        the candidates (live references passing the filters) compared with the query, ties by reference id;
        for several queries (not `single`) the candidates are materialised once and each query compares with all
        of them. Approximate: the partial HNSW index's expression and predicate, literally, so the planner can
        use it.
        """
        key = (exact, cat, lab, single and exact)
        stmt = self._statements.get(key)
        if stmt is None:
            source = ("FROM {embeddings} e JOIN {refs} r ON r.reference_id = e.reference_id "
                      "JOIN {products} p ON p.pk = r.product_pk WHERE e.fingerprint = {fp} "
                      "AND r.deleted_at IS NULL AND p.deleted_at IS NULL" + _filter_sql(cat, lab))
            rows = ("SELECT q.i, x.reference_id, x.product_pk, x.d, x.product_id, x.display_name "
                    "FROM unnest(%(q)b::vector({dim})[]) WITH ORDINALITY AS q(v, i) CROSS JOIN LATERAL ")
            if exact and single and (cat or lab):
                # the filter's live reference ids, sorted, in one array: their vectors are then read in one index
                # scan (= ANY walks the primary key's leaf pages once) instead of one index descent per reference
                # and only the k best rows are joined for their product and names (100,000 references, a filter
                # keeping 5,000: 26.6 -> 15.5 ms p50, docs/BENCHMARKS.md)
                text = ("WITH ids AS MATERIALIZED (SELECT array_agg(r.reference_id ORDER BY r.reference_id) AS a "
                        "FROM {products} p JOIN {refs} r ON r.product_pk = p.pk AND r.deleted_at IS NULL "
                        "WHERE p.deleted_at IS NULL" + _filter_sql(cat, lab) + ") " + rows
                        + "(SELECT t.reference_id, r.product_pk, p.product_id, p.display_name, t.d FROM "
                        "(SELECT e.reference_id, e.embedding <#> q.v AS d FROM ids, {embeddings} e "
                        "WHERE e.fingerprint = {fp} AND e.reference_id = ANY(ids.a) "
                        "ORDER BY d, e.reference_id LIMIT %(k)s) AS t "
                        "JOIN {refs} r ON r.reference_id = t.reference_id JOIN {products} p ON p.pk = r.product_pk "
                        "ORDER BY t.d, t.reference_id) AS x")
            elif exact and single:
                text = (rows + "(SELECT e.reference_id, r.product_pk, p.product_id, p.display_name, "
                        "e.embedding <#> q.v AS d " + source + " ORDER BY d, e.reference_id LIMIT %(k)s) AS x")
            elif exact:
                text = ("WITH c AS MATERIALIZED (SELECT e.reference_id, r.product_pk, p.product_id, p.display_name, "
                        "e.embedding " + source + ") " + rows
                        + "(SELECT c.reference_id, c.product_pk, c.product_id, c.display_name, "
                        "c.embedding <#> q.v AS d FROM c ORDER BY d, c.reference_id LIMIT %(k)s) AS x")
            else:
                text = (rows + "(SELECT e.reference_id, r.product_pk, p.product_id, p.display_name, "
                        "e.embedding::vector({dim}) <#> q.v AS d " + source + " ORDER BY d LIMIT %(k)s) AS x")
            stmt = self._statements[key] = self._schema.q(text)
        return stmt

    def _settings(self, rounds: Round, depth: int, k: int) -> tuple[dict[str, object], int]:
        """(the SET LOCAL settings of a round of `k` rows: the plan's shape, widths; the iterative scan's tuple
        cap). The graph walk's width is at least `k`: pgvector finds the first `hnsw.ef_search` rows in one walk
        and each further one by resuming it, which cost twice the time (measured: k = 100 rows at width 96 took
        4.4-4.9 ms at 10,000 references, 9.7-15.0 ms at 100,000; at width 100, 2.1 and 4.5-5.0 ms)."""
        if rounds.exact:
            plan = _plan(_PLAN_INDEX_LOOKUPS if rounds.filtered else _PLAN_SCAN_ALL)
            need = rounds.max_k * (self._schema.dim * 4 + 200)  # the materialised candidates stay in memory
            if need > 4 << 20:
                plan["work_mem"] = f"{min(need * 3 // 2, 256 << 20) >> 10}kB"
            return plan, _MAX_SCAN_TUPLES
        # a deeper round widens the graph walk and lets the iterative scan go further; behind a filter the scan
        # visits about _VISITS_PER_ROW tuples per row it returns, over the share of rows the filter lets through
        scan_cap = _MAX_SCAN_TUPLES * 4**depth
        if rounds.filtered:
            scan_cap = max(scan_cap, math.ceil(_VISITS_PER_ROW * k / max(rounds.share, 1e-6)))
        scan_cap = min(scan_cap, 2**31 - 1)
        return {**_plan(_PLAN_HNSW), "hnsw.iterative_scan": "relaxed_order",
                "hnsw.ef_search": min(HNSW_MAX_EF_SEARCH, max(rounds.width * 2**depth, k)),
                "hnsw.max_scan_tuples": scan_cap, "hnsw.scan_mem_multiplier": min(1000, 2 ** (depth + 1))}, scan_cap

    def _send(self, conn: Conn, rounds: Round, qs: list[Vector], depth: int, k: int | None = None
              ) -> psycopg.Cursor[Any]:
        """Queue a round's settings and statement on `conn` (inside a transaction); its cursor."""
        k = rounds.initial if k is None else k
        plan, _ = self._settings(rounds, depth, k)
        _set(conn, plan)
        cur = self.vectors.cursor(conn)
        cur.execute(rounds.query, {**rounds.args, "q": qs, "k": k})
        return cur

    def _fetch(self, conn: Conn, rounds: Round, qs: list[Vector], k: int, depth: int) -> list[tuple[Any, ...]]:
        """One round in one round trip: its rows."""
        with conn.pipeline():
            conn.execute("BEGIN READ ONLY")
            cur = self._send(conn, rounds, qs, depth, k)
            conn.execute("COMMIT")
        return cur.fetchall()

    def _shape(self, rounds: Round, got: list[tuple[Any, ...]], n: int, k: int, depth: int,
               names: Names) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A round's rows as (scores, reference ids, product keys [n, k], padded -inf / -1, best first; exhausted
        [n]); fills `names` (product key -> (product id, display name))."""
        _, scan_cap = self._settings(rounds, depth, k)
        per_row: list[list[tuple[float, int, int]]] = [[] for _ in range(n)]
        for i, rid, pk, d, product_id, display_name in got:
            per_row[int(i) - 1].append((-float(d), int(rid), int(pk)))
            names[int(pk)] = (str(product_id), str(display_name))
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        ids = np.full((n, k), -1, dtype=np.int64)
        pks = np.full((n, k), -1, dtype=np.int64)
        exhausted = np.zeros(n, dtype=bool)
        for j, found in enumerate(per_row):
            found.sort(key=lambda t: (-t[0], t[1]))  # relaxed_order: near-sorted; best first, ties by id
            found = found[:k]
            for c, (s, rid, pk) in enumerate(found):
                scores[j, c], ids[j, c], pks[j, c] = s, rid, pk
            exhausted[j] = (len(found) < k and (rounds.exact or scan_cap >= rounds.indexed)) or k >= rounds.max_k
        return scores, ids, pks, exhausted

    def refs_search(self, conn: Conn, rounds: Round, qs: list[Vector], k: int, depth: int,
                    names: Names) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One round, in one round trip: (scores, reference ids, product keys [n, k], padded -inf / -1, best
        first; exhausted [n]); fills `names` (product key -> (product id, display name))."""
        return self._shape(rounds, self._fetch(conn, rounds, qs, k, depth), len(qs), k, depth, names)


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
                "dim": self._schema.dim, "measured": _MEASURED}, sort_keys=True)
            live, stored_config, stored_refs, stored_width, stored_recall = self._db.run(self._schema.stored_tuning,
                                                                                         tx=False)
            if (reuse and rounds.kind(int(live)) == "hnsw" and stored_config == config and stored_refs
                    and stored_refs / 2 <= live <= stored_refs * 2):
                rounds.width, self.recall = int(stored_width), float(stored_recall)
                self._warn_low_recall()
                return self.recall
            width, recall = self._db.run(self._measure, tx=False)
            rounds.width, self.recall = width, recall
            if recall is None:
                return None
            log.info("shared catalog: hnsw.ef_search %d gives recall@10 %.3f over %d references (%.2fs)", width,
                     recall, live, time.perf_counter() - t0)
            self._warn_low_recall()
            try:  # not a catalog write: the version stays
                self._db.run(lambda conn: self._schema.store_tuning(conn, config, int(live), width, recall))
            except CatalogError as exc:
                log.warning("could not store the measured HNSW search width (%s); each replica measures its own",
                            exc)
            return recall

    def _warn_low_recall(self) -> None:
        """A WARNING when the widest search allowed stays below the recall target (searches still run, less
        accurately than configured; stats report the recall)."""
        s = self._settings
        if self.recall is not None and self.recall < s.recall_target:
            log.warning("shared catalog: HNSW product recall@10 %.3f stays below the target %.3f at the widest "
                        "search allowed (hnsw.ef_search %d): the graph (hnsw_m / hnsw_ef_construction, fixed when "
                        "the index is built) is too sparse for this catalog; where recall matters, answer from a "
                        "local copy (--catalog-cache faiss)", self.recall, s.recall_target, self._rounds.width)

    def _probes(self, conn: Conn, live: int) -> np.ndarray:
        """The measurement's queries: stored vectors plus noise (cosine about 0.9: another photo of the same
        product), as the embedded index measures its recall (`VectorIndex._probe_queries`)."""
        s, schema = self._settings, self._schema
        n = min(s.recall_queries, live)
        stored = unpack([r[0] for r in conn.cursor(binary=True).execute(schema.q(
            "SELECT e.embedding FROM {embeddings} e JOIN {refs} r ON r.reference_id = e.reference_id "
            "WHERE e.fingerprint = {fp} AND r.deleted_at IS NULL ORDER BY hashint8(e.reference_id + %s) LIMIT %s"),
            (int(s.seed), n))], schema.dim)
        rng = np.random.default_rng(s.seed + 1)
        noisy = stored + rng.standard_normal(stored.shape).astype(np.float32) * (0.5 / math.sqrt(schema.dim))
        return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)

    def _measure(self, conn: Conn) -> tuple[int, float | None]:
        """(width, recall@10): the narrowest width from `hnsw_ef_search` up, doubling, at which the product search
        (top-10 products, in its rounds, as `RoundSearch.search` runs them) finds `recall_target` of the products
        the exact search finds."""
        s, rounds = self._settings, self._rounds
        start = min(s.hnsw_ef_search, max_width(s))
        live, products, indexed = (int(x) for x in one_row(conn.execute(self._schema.q(
            "SELECT live_refs, live_products, indexed_refs FROM {meta}"))))
        if rounds.kind(live) != "hnsw" or live == 0:
            return start, None
        vectors = self._probes(conn, live)
        probes = [Vector(x) for x in vectors]
        top = min(10, max(1, products))
        args: dict[str, Any] = {"cat": "", "labels": Jsonb({})}
        per_product = max(1.0, live / max(1, products))
        wanted = self._exact(conn, vectors, top, per_product)
        approx = rounds._round(Shape(False, per_product, live, indexed), len(probes), top, False, args)
        approx = dataclasses.replace(approx, width=start)
        cap = max_width(s)
        while True:
            got = rounds.hits(conn, approx, probes, top, None, 0.0, {})
            recall = product_recall(wanted, [[h.product_pk for h in row[:top]] for row in got])
            if recall >= s.recall_target or approx.width >= cap:
                return approx.width, recall
            approx = dataclasses.replace(approx, width=min(cap, approx.width * 2))

    def _exact(self, conn: Conn, probes: np.ndarray, top: int, per_product: float) -> list[set[int]]:
        """Each probe's `top` best products (keys), exactly (`exact_top.exact_products`): every live vector of the
        model read once a pass, for all probes, and compared here. The exact search rounds in SQL compared each
        probe with a materialised copy of every vector, which spilled to disk past about 100,000 references and
        was read again per probe."""
        return exact_products(probes, top, per_product, lambda best: self._read_vectors(conn, best))

    def _read_vectors(self, conn: Conn, best: BestReferences) -> None:
        """Every live vector of the model, with its product key, into `best`: one statement (one snapshot) through a
        server-side cursor, `_EXACT_CHUNK` rows (binary) a fetch."""
        with conn.transaction(), conn.cursor(name="skulens_exact_recall", binary=True) as cur:
            _set(conn, _plan(_PLAN_SCAN_ALL))
            cur.execute(self._schema.q(
                "SELECT r.product_pk, vector_send(e.embedding) FROM {embeddings} e JOIN {refs} r "
                "ON r.reference_id = e.reference_id WHERE e.fingerprint = {fp} AND r.deleted_at IS NULL"))
            while chunk := cur.fetchmany(_EXACT_CHUNK):
                best.add(unpack([bytes(r[1]) for r in chunk], self._schema.dim),
                         np.asarray([int(r[0]) for r in chunk], dtype=np.int64))


__all__ = ["HNSW_MAX_EF_SEARCH", "HnswTuning", "Round", "RoundSearch", "Shape", "max_width"]
