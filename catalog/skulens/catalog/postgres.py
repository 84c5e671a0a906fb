"""`PostgresCatalog`: the shared catalog backend, PostgreSQL + pgvector, for several replicas on one catalog.

Every replica opens the same database (`postgresql://…`, optionally a `schema`) and reads and writes it directly:
there is no in-process copy, so a write committed by one replica is seen by the next call of every other one
(version and search alike). Needs the `postgres` extra (psycopg 3) and pgvector >= 0.8 on the server.

`PostgresCatalog` is the facade (the `CatalogBackend`): it validates each call and runs it as one transaction,
through collaborators that are each handed what they need:
- `postgres_pool`: the `ConnectionPool` and the `Database` that runs a call on it (BEGIN / COMMIT, one retry on a
  fresh connection after a lost one, deadlock and serialisation retries, `busy_timeout_ms` as PostgreSQL's
  `lock_timeout`) and maps database errors to the catalog's (`CatalogUnavailable` when the server is gone);
  messages never carry the URL's password (`redact`).
- `postgres_schema`: the `CatalogSchema` — tables (`meta`, `products`, `refs`, `embeddings`), their SQL names,
  the idempotent install under a database-wide advisory lock, the identity claim (fingerprint + dim, as the SQLite
  store's `claim_identity`), one partial HNSW index per fingerprint, and the statements several calls share (the
  version bump, reference inserts by binary COPY, the counts of `stats`, the stored tuning).
- `postgres_search`: the `RoundSearch` (top-k *products* per query, in rounds of one statement each, exact up to
  `exact_limit` candidates, else through the HNSW index) and the `HnswTuning` of its `hnsw.ef_search` width.
- `postgres_binary`: vectors in pgvector's binary form (COPY rows, query parameters, fetched rows).
- `postgres_bulk`: the bulk load's HNSW index, dropped before and built after a large load (`bulk_load`).

Enrolment: `add_references` is `add_references_many` for one product; the latter writes several products'
references in one transaction (one version bump, one head-statistics fold). Most of an enrolment's time is
pgvector inserting each vector into the HNSW graph (about 3 ms a 512-d vector on the 2-core test machine); a bulk
load (`bulk_load`, used by `skulens catalog copy`) builds the graph once after the rows instead.

Writes: every write transaction locks what it changes (a product's row first: writers of one product take
turns) and, only when it changed something, ends by bumping the catalog version (`CatalogSchema.bump`: a
sequence, ordered by the row lock on `meta`, so versions follow commit order, and a NOTIFY); refused writes and
all-duplicate enrolments leave the version as it is. Deletes are tombstones: rows stay with `deleted_at` set and
every read filters on it, until `purge_deleted` (`postgres_purge`) removes those older than a grace period.
Reads run their statements outside an explicit transaction, or (search) in read-only ones of their own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from psycopg.types.json import Jsonb

from skulens.catalog import postgres_bulk, postgres_feed, postgres_head, postgres_purge, postgres_text, thresholds
from skulens.catalog import postgres_spaces as spaces
from skulens.catalog import validation as v
from skulens.catalog.backend import BackendState
from skulens.catalog.errors import (
    AlreadyExists,
    CatalogUnavailable,
    EtagMismatch,
    FingerprintMismatch,
    InvalidArgument,
    MigrationError,
    NotFound,
    RequestIdReused,
)
from skulens.catalog.head import HeadStats
from skulens.catalog.migration_state import (
    MigrationState,
    ModelSpace,
    PendingReference,
    SpaceProgress,
    refuse_incomplete,
)
from skulens.catalog.models import (
    AddedReference,
    CacheState,
    CatalogStats,
    ExportedReference,
    NewReference,
    Product,
    ProductDetail,
    ReferenceInfo,
    RequestedReference,
    SearchResult,
    TextMatch,
    product_etag,
    region_of,
)
from skulens.catalog.postgres_binary import VectorParams, unpack
from skulens.catalog.postgres_pool import Conn, ConnectionPool, Database, one_row, parse_url, redact
from skulens.catalog.postgres_schema import CatalogSchema, RefRow, current_schema, vec_text
from skulens.catalog.postgres_search import HnswTuning, RoundSearch
from skulens.catalog.purge import DEFAULT_BATCH, DEFAULT_OLDER_THAN_SECONDS, PurgeReport, check_args
from skulens.catalog.settings import CatalogSettings
from skulens.catalog.text_search import text_query
from skulens.catalog.thresholds import VerdictThresholds
from skulens.errors import field_path

if TYPE_CHECKING:
    from skulens.catalog.mirror import CatalogMirror

log = logging.getLogger(__name__)

HNSW_MAX_DIM = 2000  # pgvector's HNSW indexes `vector` up to 2,000 dimensions
DEFAULT_POOL_SIZE = 8
DEFAULT_EXACT_LIMIT = 5_000  # exact search up to this many candidates unless open(exact_limit=...) says otherwise
MANY_LIMIT = 4096  # products an `add_references_many` call may name


@dataclass(frozen=True)
class PostgresStats(CatalogStats):
    """`CatalogStats` of the shared backend, with where it lives and what the index holds."""

    schema: str
    index_tombstones: int  # vectors of deleted references still in the HNSW graph (counted in index_size)
    exact_limit: int  # searches over at most this many references are exact (see PostgresCatalog.open)
    server_version: str
    pgvector_version: str


class PostgresCatalog(BackendState):
    """Products, their reference embeddings and nearest-product search in PostgreSQL + pgvector. Thread-safe."""

    def __init__(self, db: Database, schema: CatalogSchema, settings: CatalogSettings, *,
                 requested_fingerprint: str, requested_dim: int, exact_limit: int,
                 versions: tuple[str, str], vectors: VectorParams) -> None:
        """Use `PostgresCatalog.open`."""
        self.settings = settings
        self.schema = schema.schema
        self.exact_limit = exact_limit
        self._db = db
        self._schema = schema
        self._fingerprint = schema.fingerprint
        self._dim = schema.dim
        self._requested = (requested_fingerprint, requested_dim)
        self._closed = False
        self._versions = versions  # server, pgvector
        self._vectors = vectors  # how query vectors travel (binary)
        self._rounds = RoundSearch(db, schema, settings, exact_limit, vectors)
        self._tuning = HnswTuning(db, schema, settings, self._rounds)
        self._migration = MigrationState(ModelSpace(schema.fingerprint, schema.dim))
        self._space_rounds: dict[str, RoundSearch] = {}  # a migration's other model space, by fingerprint
        self._sync_lock = threading.Lock()

    # ================================================================ lifecycle
    @classmethod
    def open(cls, url: str, *, fingerprint: str, dim: int, settings: CatalogSettings | None = None,
             allow_fingerprint_mismatch: bool = False, schema: str | None = None,
             pool_size: int = DEFAULT_POOL_SIZE, exact_limit: int | None = None) -> PostgresCatalog:
        """Open (creating if new) the catalog in the database at `url` for the model `fingerprint` / `dim`.

        `schema`: the PostgreSQL schema holding the catalog's tables (created if absent); default the connection's
        current schema (normally `public`). The pgvector extension is created when absent (this needs the right
        to create it); the schema must be reachable with the extension's schema on the search path.
        A catalog made by another model raises `FingerprintMismatch`, unless `allow_fingerprint_mismatch`, in
        which case only reads and deletes are allowed. An unreachable server raises `CatalogUnavailable`.
        `pool_size`: connections used at once at most (more concurrent calls wait up to `busy_timeout_ms`).
        `exact_limit`: searches whose candidates (all live references, or those the filters let through) number at
        most this many are exact, others go through the HNSW index; default `min(settings.filter_exact_limit,
        DEFAULT_EXACT_LIMIT)`: an exact search costs PostgreSQL about 3-4 us a 512-d candidate (16-20 ms for
        5,000 of 100,000 references on the 2-core test machine), a tuned HNSW search 4-30 ms, so exactness stops
        paying past a few thousand references (the embedded `approximate_threshold` of 200,000 would mean 1 s
        searches here).
        At open, the HNSW search width is the one stored by the last measurement when it was made with the same
        settings on a catalog of within 2x the size; otherwise it is measured (`tune`) and stored.
        """
        settings = settings or CatalogSettings()
        fingerprint = v.fingerprint(fingerprint)
        dim = v.dim(dim)
        if dim > HNSW_MAX_DIM:
            raise InvalidArgument(f"dim must be at most {HNSW_MAX_DIM} for the PostgreSQL catalog (pgvector's HNSW "
                                  f"index limit), got {dim}", field="dim")
        size = v.positive_int(pool_size, "pool_size", 1024)
        if exact_limit is None:
            exact_limit = min(settings.filter_exact_limit, DEFAULT_EXACT_LIMIT)
        elif isinstance(exact_limit, bool) or not isinstance(exact_limit, int) or exact_limit < 0:
            raise InvalidArgument(f"exact_limit must be an integer >= 0, got {exact_limit!r}", field="exact_limit")
        if schema is not None and (not isinstance(schema, str) or not 1 <= len(schema.encode()) <= 63):
            raise InvalidArgument(f"schema must be a name of 1-63 bytes, got {schema!r}", field="schema")
        conninfo, params = parse_url(url)
        pool = ConnectionPool(conninfo, params, size, settings.busy_timeout_ms / 1000.0, settings.busy_timeout_ms,
                              redact(url), params.get("password"))
        try:
            if schema is None:
                schema = current_schema(pool)
            db = Database(pool, schema)
            stored_fp, stored_dim, versions = db.run(CatalogSchema(schema, fingerprint, dim).install)
            state = db.run(lambda conn: spaces.read_state(conn, CatalogSchema(schema, stored_fp, stored_dim)),
                           tx=False)
            other = state.other
            if other is not None and (other.fingerprint, other.dim) == (fingerprint, dim):
                fingerprint, dim = stored_fp, stored_dim  # a migration's other model: serve the stored one
            if (stored_fp, stored_dim) != (fingerprint, dim) and not allow_fingerprint_mismatch:
                raise FingerprintMismatch.between(stored_fp, stored_dim, fingerprint, dim)
            tables = CatalogSchema(schema, stored_fp, stored_dim)
            cat = cls(db, tables, settings, requested_fingerprint=fingerprint, requested_dim=dim,
                      exact_limit=exact_limit, versions=versions,
                      vectors=db.run(VectorParams.read, tx=False))
            db.run(lambda conn: tables.create_index(conn, settings))
            cat._migration = state
            if cat._mismatch() is None:
                cat._tuning.tune(reuse=True)
        except BaseException:
            pool.close()
            raise
        return cat

    def index_name(self) -> str:
        """Name of the partial HNSW index of this catalog's fingerprint and dimension."""
        return self._schema.index_name()

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the model that made the stored embeddings."""
        return self._fingerprint

    @property
    def dim(self) -> int:
        """Values per stored embedding."""
        return self._dim

    @property
    def backend(self) -> str:
        """"postgresql+pgvector": the shared backend."""
        return "postgresql+pgvector"

    def close(self) -> None:
        """Close the pooled connections (idempotent); later calls raise `CatalogClosed`."""
        if self._closed:
            return
        self._closed = True
        self._db.close()

    def _stored_identity(self) -> tuple[str, int]:
        return (self._fingerprint, self._dim)

    # ================================================================ writes
    def upsert_product(self, product_id: str, display_name: str = "", category: str = "",
                       labels: Mapping[str, str] | None = None, *, create_only: bool = False,
                       update_fields: Sequence[str] | frozenset[str] | None = None,
                       expected_etag: str | None = None, description: str = "") -> tuple[Product, bool]:
        """Create a product, or replace its display name, category, labels and description (all, or only
        `update_fields`); returns (product, created).

        `create_only`: an existing product is left as it is and `AlreadyExists` is raised. `expected_etag`: write
        only if the stored product's `etag` is this one (EtagMismatch / NotFound otherwise; row-locked check).
        """
        self._check_open()
        pid = v.product_id(product_id)
        name, cat, lab = v.display_name(display_name), v.category(category), v.labels(labels)
        text = v.description(description)
        fields = v.update_fields(update_fields)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in v.PRODUCT_FIELDS if fields is None or c in fields)

        def tx(conn: Conn) -> tuple[Product, bool]:
            if expected_etag is not None:
                self._check_etag(conn, pid, expected_etag)
            now = time.time()
            args = {"pid": pid, "name": name, "cat": cat, "labels": Jsonb(lab), "now": now, "text": text}
            insert = ("INSERT INTO {products} (product_id, display_name, category, labels, created_at, updated_at, "
                      "description) VALUES (%(pid)s, %(name)s, %(cat)s, %(labels)s, %(now)s, %(now)s, %(text)s) "
                      "ON CONFLICT (product_id) WHERE deleted_at IS NULL ")
            if create_only:
                row = conn.execute(self._schema.q(insert + "DO NOTHING RETURNING created_at, reference_count, "
                                                  "true, display_name, category, labels, description"),
                                   args).fetchone()
                if row is None:
                    raise AlreadyExists(f"product {pid!r} exists already (create_only)", field="product_id")
            else:
                row = conn.execute(self._schema.q(
                    insert + "DO UPDATE SET " + (updates + ", " if updates else "") + "updated_at = "
                    "EXCLUDED.updated_at RETURNING created_at, reference_count, (xmax = 0), display_name, category, "
                    "labels, description"), args).fetchone()
            assert row is not None
            created = bool(row[2])
            self._schema.bump(conn, products=1 if created else 0)
            return Product(pid, str(row[3]), str(row[4]), dict(row[5]), int(row[1]), float(row[0]), now,
                           str(row[6])), created

        return self._db.run(tx)

    def add_references(self, product_id: str, refs: Sequence[NewReference], *,
                       store_images: bool | None = None) -> list[AddedReference]:
        """Enrol references of an existing product in one transaction (all or nothing).

        A reference with the same content_sha256 as one the product already has (or an earlier one of the same
        call) is not written: its existing id comes back with duplicate=True. A reference whose request_id added a
        live reference (this product, content and region) is not written either: that id comes back with
        replayed=True; the same request id for anything else raises RequestIdReused. `store_images` overrides
        `settings.store_images`.
        """
        return self._add([(product_id, refs)], store_images, many=False)[0]

    def add_references_many(self, items: Sequence[tuple[str, Sequence[NewReference]]], *,
                            store_images: bool | None = None) -> list[list[AddedReference]]:
        """`add_references` for several products in one transaction (all or nothing), one list of results per
        item: one version bump, one head-statistics fold, the rows written by binary COPY. The bulk path
        (`bulk_load`, `skulens catalog copy`); a request id names one reference across the whole call. Each
        product at most once, at most `max_references_per_call` references an item and `MANY_LIMIT` items."""
        if not isinstance(items, Sequence) or not 1 <= len(items) <= MANY_LIMIT:
            got = len(items) if isinstance(items, Sequence) else type(items).__name__
            raise InvalidArgument(f"items must hold 1-{MANY_LIMIT} (product_id, references) pairs, got {got}",
                                  field="items")
        return self._add(items, store_images, many=True)

    def _add(self, items: Sequence[tuple[str, Sequence[NewReference]]], store_images: bool | None,
             many: bool) -> list[list[AddedReference]]:
        self._check_open(searchable=True)
        keep_images = self.settings.store_images if store_images is None else bool(store_images)
        batch: list[tuple[str, list[RefRow], Sequence[NewReference]]] = []
        for j, item in enumerate(items):
            try:
                if not isinstance(item, tuple) or len(item) != 2:
                    raise InvalidArgument("an item must be a (product_id, references) pair", field="")
                pid = v.product_id(item[0])
                batch.append((pid, _reference_rows(item[1], self._dim, self.settings, keep_images), item[1]))
            except InvalidArgument as exc:
                if not many:
                    raise
                raise InvalidArgument(f"items[{j}]: {exc}", field=field_path("items", j, exc.field or "")) from None
        pids = [pid for pid, _, _ in batch]
        if len(set(pids)) != len(pids):
            raise InvalidArgument("items name a product more than once", field="items")
        schema = self._schema

        def tx(conn: Conn) -> list[list[AddedReference]]:
            pks = self._lock_products(conn, pids, many)  # writers of one product take turns
            other = spaces.read_state(conn, schema).other
            migrating = other is not None and other.fingerprint != schema.fingerprint
            shas = [r.sha for _, rows, _ in batch for r in rows if r.sha is not None]
            known: dict[int, dict[tuple[str, tuple[int, int, int, int] | None], int]] = {}
            if shas:
                for r in conn.execute(schema.q(
                        "SELECT product_pk, content_sha256, region_x, region_y, region_w, region_h, reference_id "
                        "FROM {refs} WHERE product_pk = ANY(%s) AND deleted_at IS NULL AND content_sha256 = ANY(%s)"),
                        (list(pks.values()), shas)).fetchall():
                    known.setdefault(int(r[0]), {})[(str(r[1]), region_of(r[2:6]))] = int(r[6])
            requested = schema.requested(conn, [r.request_id for _, rows, _ in batch for r in rows
                                                if r.request_id is not None], lock=True)
            new: list[tuple[int, RefRow]] = []
            new_extra: list[np.ndarray | None] = []
            fresh_requests: dict[str, tuple[str, _Key, int]] = {}
            plans = []
            for pid, rows, refs in batch:
                pk = pks[pid]
                before = len(new)
                plan = _plan_references(rows, known.get(pk, {}), requested, pid, pk, new, fresh_requests)
                if migrating and other is not None:
                    extra = v.space_vectors(refs, other.fingerprint, other.dim, self.settings.norm_tolerance)
                    new_extra += [extra[k] for k, (_, pos, dup, again) in enumerate(plan)
                                  if pos is not None and pos >= before and not dup and not again]
                plans.append(plan)
            ids: list[int] = []
            covered = {schema.fingerprint}
            if new:
                ids = schema.insert_references(conn, new)
                if other is not None and migrating:
                    given = [(rid, vec) for rid, vec in zip(ids, new_extra, strict=True) if vec is not None]
                    spaces.put(conn, schema, other.fingerprint, [rid for rid, _ in given],
                               [vec_text(vec.tolist()) for _, vec in given])
                    if len(given) == len(ids):
                        covered.add(other.fingerprint)
                schema.bump(conn, refs=len(new), indexed=len(new))
                serving = str(one_row(conn.execute(schema.q("SELECT fingerprint FROM {meta}")))[0])
                if serving not in covered:  # a switch committed while this ran: its vectors are of the old model
                    raise CatalogUnavailable(f"the catalog switched to model {serving!r} during this enrolment; "
                                             "nothing was written; retry")
            return [[AddedReference(ids[pos] if rid is None and pos is not None else int(rid or 0), pid, dup, again)
                     for rid, pos, dup, again in plan] for (pid, _, _), plan in zip(batch, plans, strict=True)]

        return self._db.run(tx)

    @contextmanager
    def bulk_load(self, expected: int = 0, *, defer_index: bool | None = None) -> Iterator[bool]:
        """Around a bulk load of about `expected` references (written inside, best with `add_references_many`):
        the serving model's HNSW index is dropped first and built once at the end when `defer_index`, by default
        when the load at least doubles what the index holds; the search width is then measured again
        (`postgres_bulk`). Yields whether the index was deferred. Meant for a catalog being filled (a copy, a
        first load): while the index is missing searches scan every vector, and its build holds writers up."""
        self._check_open(searchable=True)
        defer = defer_index
        if defer is None:
            indexed = int(self._db.run(lambda conn: one_row(conn.execute(self._schema.q(
                "SELECT indexed_refs FROM {meta}"))), tx=False)[0])
            defer = postgres_bulk.should_defer(indexed, v.positive_int(expected, "expected", 1 << 40)
                                               if expected else 0)
        with postgres_bulk.deferred_index(self._db, self._schema, self.settings, bool(defer)) as deferred:
            yield deferred
        if deferred and self._mismatch() is None:
            self._tuning.tune(reuse=False)

    def _lock_products(self, conn: Conn, pids: Sequence[str], many: bool) -> dict[str, int]:
        """{product id: key} of live products, their rows locked until the transaction ends, in product id order
        (so that writers of several products never deadlock); NotFound names the first one absent (`many`: as
        ``items[i].product_id``)."""
        rows = conn.execute(self._schema.q(
            "SELECT product_id, pk FROM {products} WHERE product_id = ANY(%s) AND deleted_at IS NULL "
            "ORDER BY product_id FOR NO KEY UPDATE"), (list(pids),)).fetchall()
        pks = {str(r[0]): int(r[1]) for r in rows}
        for j, pid in enumerate(pids):
            if pid not in pks:
                raise NotFound(f"product {pid!r} does not exist",
                               field=field_path("items", j, "product_id") if many else "product_id")
        return pks

    def requested_references(self, request_ids: Sequence[str]) -> dict[str, RequestedReference]:
        """The live references that enrolment request ids (AIP-155) added: {request_id: what it added}; ids
        that added nothing (or whose reference was deleted) are absent."""
        self._check_open()
        ids = v.request_ids(request_ids)
        if not ids:
            return {}
        return self._db.run(lambda conn: self._schema.requested(conn, ids), tx=False)

    def existing_hashes(self, product_id: str, content_sha256s: Sequence[str]) -> dict[str, int]:
        """{content_sha256: reference_id} of the given image hashes the product already has a reference for."""
        self._check_open()
        pid = v.product_id(product_id)
        shas = list(dict.fromkeys(v.sha256_hex(s, field_path("content_sha256s", i))
                                  for i, s in enumerate(content_sha256s)))

        def tx(conn: Conn) -> dict[str, int]:
            rows = conn.execute(self._schema.q(
                "SELECT r.content_sha256, r.reference_id FROM {products} p LEFT JOIN {refs} r ON r.product_pk = p.pk "
                "AND r.deleted_at IS NULL AND r.content_sha256 = ANY(%s) AND r.region_x IS NULL "
                "WHERE p.product_id = %s "
                "AND p.deleted_at IS NULL"), (shas, pid)).fetchall()
            if not rows:
                raise NotFound(f"product {pid!r} does not exist", field="product_id")
            return {str(sha): int(rid) for sha, rid in rows if sha is not None}

        return self._db.run(tx, tx=False)

    def _check_etag(self, conn: Conn, pid: str, expected: str) -> None:
        """NotFound / EtagMismatch unless the live product has etag `expected`; its row stays locked."""
        row = conn.execute(self._schema.q(
            "SELECT display_name, category, labels, updated_at FROM {products} WHERE product_id = %s "
            "AND deleted_at IS NULL FOR NO KEY UPDATE"), (pid,)).fetchone()
        if row is None:
            raise NotFound(f"product {pid!r} does not exist (the request names its etag)", field="product_id")
        etag = product_etag(pid, str(row[0]), str(row[1]), dict(row[2]), float(row[3]))
        if etag != expected:
            raise EtagMismatch.between(pid, expected, etag)

    def delete_product(self, product_id: str, expected_etag: str | None = None) -> int:
        """Delete (tombstone) a product and all its references; returns how many references were removed
        (`expected_etag`: as `upsert_product`)."""
        self._check_open()
        pid = v.product_id(product_id)

        def tx(conn: Conn) -> int:
            if expected_etag is not None:
                self._check_etag(conn, pid, expected_etag)
            now = time.time()
            row = conn.execute(self._schema.q(
                "UPDATE {products} SET deleted_at = %s, reference_count = 0 WHERE product_id = %s "
                "AND deleted_at IS NULL RETURNING pk"), (now, pid)).fetchone()
            if row is None:
                raise NotFound(f"product {pid!r} does not exist", field="product_id")
            n = conn.execute(self._schema.q(
                "UPDATE {refs} SET deleted_at = %s WHERE product_pk = %s AND deleted_at IS NULL"),
                (now, int(row[0]))).rowcount
            self._schema.bump(conn, products=-1, refs=-n)
            return int(n)

        return self._db.run(tx)

    def delete_reference(self, reference_id: int) -> None:
        """Delete (tombstone) one reference; its product stays, possibly with no references."""
        self._check_open()
        rid = v.reference_id(reference_id)

        def tx(conn: Conn) -> None:
            row = conn.execute(self._schema.q(
                "SELECT product_pk FROM {refs} WHERE reference_id = %s AND deleted_at IS NULL"), (rid,)).fetchone()
            done = 0
            if row is not None:  # lock the product first, as every other write does (no lock-order deadlock)
                conn.execute(self._schema.q("SELECT 1 FROM {products} WHERE pk = %s FOR NO KEY UPDATE"), (row[0],))
                done = conn.execute(self._schema.q(
                    "UPDATE {refs} SET deleted_at = %s WHERE reference_id = %s AND deleted_at IS NULL"),
                    (time.time(), rid)).rowcount
            if row is None or not done:
                raise NotFound(f"reference {rid} does not exist", field="reference_id")
            conn.execute(self._schema.q("UPDATE {products} SET reference_count = reference_count - 1 WHERE pk = %s"),
                         (row[0],))
            self._schema.bump(conn, refs=-1)

        self._db.run(tx)

    # ================================================================ reads
    def get_product(self, product_id: str) -> ProductDetail:
        """A product with its references (id, source, content_sha256, has_image, created_at)."""
        self._check_open()
        pid = v.product_id(product_id)

        def tx(conn: Conn) -> ProductDetail:
            rows = conn.execute(self._schema.q(
                "SELECT p.product_id, p.display_name, p.category, p.labels, p.created_at, p.updated_at, "
                "r.reference_id, r.source, r.content_sha256, r.image IS NOT NULL, r.created_at, r.region_x, "
                "r.region_y, r.region_w, r.region_h, p.description FROM {products} p "
                "LEFT JOIN {refs} r ON r.product_pk = p.pk AND r.deleted_at IS NULL "
                "WHERE p.product_id = %s AND p.deleted_at IS NULL ORDER BY r.reference_id"), (pid,)).fetchall()
            if not rows:
                raise NotFound(f"product {pid!r} does not exist", field="product_id")
            refs = [ReferenceInfo(int(r[6]), str(r[7]), r[8], bool(r[9]), float(r[10]), region_of(r[11:15]))
                    for r in rows if r[6] is not None]
            p = rows[0]
            return ProductDetail(Product(str(p[0]), str(p[1]), str(p[2]), dict(p[3]), len(refs), float(p[4]),
                                         float(p[5]), str(p[15])), refs)

        return self._db.run(tx, tx=False)

    def export_references(self, after: int = 0, limit: int = 256) -> list[ExportedReference]:
        """Up to `limit` live references with id > `after`, in id order (embedding, image, hash, source, product)."""
        self._check_open()
        start = v.reference_id(after) if after else 0
        n = v.positive_int(limit, "limit", 65536)

        def tx(conn: Conn) -> list[ExportedReference]:
            rows = conn.cursor(binary=True).execute(self._schema.q(
                "SELECT r.reference_id, p.product_id, r.source, r.content_sha256, r.image, e.embedding, "
                "r.region_x, r.region_y, r.region_w, r.region_h, r.request_id "
                "FROM {refs} r JOIN {products} p ON p.pk = r.product_pk "
                "JOIN {embeddings} e ON e.reference_id = r.reference_id AND e.fingerprint = {fp} "
                "WHERE r.deleted_at IS NULL AND r.reference_id > %s ORDER BY r.reference_id LIMIT %s"),
                (start, n)).fetchall()
            vecs = unpack([bytes(r[5]) for r in rows], self._dim)
            return [ExportedReference(int(r[0]), str(r[1]), str(r[2]), r[3], None if r[4] is None else bytes(r[4]),
                                      vec, region_of(r[6:10]), r[10]) for r, vec in zip(rows, vecs, strict=True)]

        return self._db.run(tx, tx=False)

    def sample_embeddings(self, limit: int = 4096) -> np.ndarray:
        """Embeddings of up to `limit` live references drawn at random, float32 [m, dim] (no images read)."""
        self._check_open()
        n = v.positive_int(limit, "limit", 1 << 20)

        def tx(conn: Conn) -> np.ndarray:
            rows = conn.cursor(binary=True).execute(self._schema.q(
                "SELECT e.embedding FROM {embeddings} e WHERE e.fingerprint = {fp} AND e.reference_id IN "
                "(SELECT reference_id FROM {refs} WHERE deleted_at IS NULL ORDER BY random() LIMIT %s)"),
                (n,)).fetchall()
            return unpack([bytes(r[0]) for r in rows], self._dim)

        return self._db.run(tx, tx=False)

    def list_products(self, page_size: int = 100, page_token: str = "",
                      category: str = "") -> tuple[list[Product], str]:
        """One page of products ordered by product_id (code points); (products, next token or "" at the end)."""
        self._check_open()
        size = 100 if page_size == 0 else v.positive_int(page_size, "page_size", self.settings.max_page_size)
        cat = v.category(category)
        after = v.decode_page_token(page_token, cat)
        query = ("SELECT product_id, display_name, category, labels, reference_count, created_at, updated_at, "
                 "description FROM {products} WHERE deleted_at IS NULL AND product_id > %(after)s"
                 + (" AND category = %(cat)s" if cat else "") + " ORDER BY product_id LIMIT %(n)s")

        def tx(conn: Conn) -> list[Product]:
            rows = conn.execute(self._schema.q(query), {"after": after, "cat": cat, "n": size + 1})
            return [Product(str(r[0]), str(r[1]), str(r[2]), dict(r[3]), int(r[4]), float(r[5]), float(r[6]),
                            str(r[7])) for r in rows]

        rows = self._db.run(tx, tx=False)
        more = len(rows) > size
        rows = rows[:size]
        token = v.encode_page_token(rows[-1].product_id, cat) if more and rows else ""
        return rows, token

    def version(self) -> int:
        """The catalog version: bumped by every committed write of any replica. Notices a model switch made by
        another replica (the identity comes with the version)."""
        self._check_open()
        query = self._schema.q("SELECT version, fingerprint, dim FROM {meta}")
        version, fp, dim = self._db.run(lambda conn: one_row(conn.execute(query)), tx=False)
        if (str(fp), int(dim)) != (self._fingerprint, self._dim):
            self.migration_state()
        return int(version)

    def verdict_thresholds(self) -> list[VerdictThresholds]:
        """The verdict thresholds stored for this catalog (per matching mode and model; `skulens calibrate`)."""
        self._check_open()
        row = self._db.run(lambda conn: one_row(conn.execute(self._schema.q(
            "SELECT verdict_thresholds FROM {meta}"))), tx=False)
        return thresholds.decode(row[0])

    def set_verdict_thresholds(self, entry: VerdictThresholds) -> list[VerdictThresholds]:
        """Store `entry` (replacing the one of the same matching mode and model); every entry now."""
        self._check_open()

        def tx(conn: Conn) -> list[VerdictThresholds]:
            row = one_row(conn.execute(self._schema.q("SELECT verdict_thresholds FROM {meta} FOR UPDATE")))
            entries = thresholds.replace(thresholds.decode(row[0]), entry)
            conn.execute(self._schema.q("UPDATE {meta} SET verdict_thresholds = %s"), (thresholds.encode(entries),))
            self._schema.bump(conn)
            return entries

        return self._db.run(tx)

    # ---------------------------------------------------------------- augmented views (catalog-adapted matching)
    def augmentation_pending(self, below: int, after: int = 0, limit: int = 16) -> list[PendingReference]:
        """References with a stored image in products with fewer than `below` references and no augmented views
        yet (id > `after`, id order)."""
        self._check_open()
        below, limit = v.positive_int(below, "below", 1_000_000), v.positive_int(limit, "limit", 65536)
        start = v.reference_id(after) if after else 0
        return self._db.run(lambda conn: postgres_head.augmentation_pending(
            conn, self._schema, self._fingerprint, below, start, limit), tx=False)

    def augmentation_counts(self, below: int) -> tuple[int, int]:
        """(references waiting for augmented views, references that have them)."""
        self._check_open()
        below = v.positive_int(below, "below", 1_000_000)
        return self._db.run(lambda conn: postgres_head.augmentation_counts(
            conn, self._schema, self._fingerprint, below), tx=False)

    def put_augmentations(self, reference_id: int, vectors: np.ndarray) -> int:
        """Store augmented views (unit rows of this model) of a reference; skipped when it is gone or has them
        already. How many were written."""
        self._check_open()
        _, vecs = v.space_rows([reference_id] * len(np.atleast_2d(vectors)), vectors, self._dim,
                               self.settings.norm_tolerance)
        texts = [vec_text(row.tolist()) for row in vecs]

        def tx(conn: Conn) -> int:
            n = postgres_head.put_augmentations(conn, self._schema, self._fingerprint, int(reference_id), texts)
            if n:
                self._schema.bump(conn)
            return n

        return self._db.run(tx)

    def prune_augmentations(self, below: int) -> int:
        """Drop augmented views of products that reached `below` references; how many went."""
        self._check_open()
        below = v.positive_int(below, "below", 1_000_000)

        def tx(conn: Conn) -> int:
            n = postgres_head.prune_augmentations(conn, self._schema, below)
            if n:
                self._schema.bump(conn)
            return n

        return self._db.run(tx)

    def head_statistics(self) -> HeadStats:
        """The catalog-adapted matching statistics of the serving model, read in one transaction with the version."""
        self._check_open()

        def tx(conn: Conn) -> HeadStats:
            version, fp, dim = one_row(conn.execute(self._schema.q("SELECT version, fingerprint, dim FROM {meta}")))
            return postgres_head.read(conn, self._schema, str(fp), int(dim), int(version))

        return self._db.run(tx)

    # ================================================================ model migration
    def migration_state(self) -> MigrationState:
        """Which model spaces the catalog holds, read from the database (follows a switch by any replica)."""
        self._check_open()
        state = self._db.run(lambda conn: spaces.read_state(conn, self._schema), tx=False)
        self._adopt(state)
        return state

    def _adopt(self, state: MigrationState) -> None:
        """Take `state` as the current one: serve its serving space (after another replica's switch)."""
        with self._sync_lock:
            serving = state.serving
            if (serving.fingerprint, serving.dim) != (self._fingerprint, self._dim):
                tables = CatalogSchema(self.schema, serving.fingerprint, serving.dim)
                rounds = RoundSearch(self._db, tables, self.settings, self.exact_limit, self._vectors)
                rounds.width = self._rounds.width
                self._schema, self._rounds = tables, rounds
                self._tuning = HnswTuning(self._db, tables, self.settings, rounds)
                self._fingerprint, self._dim = serving.fingerprint, serving.dim
                self._requested = (serving.fingerprint, serving.dim)
                log.info("shared catalog %s now serves model %s", self.schema, serving.fingerprint)
            keep = {s.fingerprint for s in (state.candidate, state.previous) if s is not None}
            self._space_rounds = {fp: r for fp, r in self._space_rounds.items() if fp in keep}
            self._migration = state

    def _change_state(self, change: Callable[[MigrationState], tuple[MigrationState, ModelSpace | None]],
                      complete: str | None = None) -> MigrationState:
        """Apply `change` to the stored state in one transaction (meta row locked), dropping the space it names;
        `complete`: refuse unless that space holds every live reference (a switch)."""
        def tx(conn: Conn) -> tuple[MigrationState, ModelSpace | None, bool]:
            state = spaces.read_state(conn, self._schema, lock="FOR UPDATE")
            new, drop = change(state)
            if new == state:
                return state, None, False
            if complete is not None:
                refuse_incomplete(spaces.progress(conn, self._schema, complete))
            if drop is not None:
                spaces.drop_space(conn, self._schema, CatalogSchema(self.schema, drop.fingerprint, drop.dim))
            spaces.write_state(conn, self._schema, new)
            if new.serving != state.serving:
                indexed = spaces.count_vectors(conn, self._schema, new.serving.fingerprint)
                live = int(one_row(conn.execute(self._schema.q(
                    "SELECT count(*) FROM {refs} WHERE deleted_at IS NULL")))[0])
                conn.execute(self._schema.q("UPDATE {meta} SET indexed_refs = %s, live_refs = %s"), (indexed, live))
            self._schema.bump(conn)
            return new, drop, True

        self._check_open()
        new, drop, changed = self._db.run(tx)
        if drop is not None:
            dropped = CatalogSchema(self.schema, drop.fingerprint, drop.dim)
            self._db.run(lambda conn: spaces.drop_index(conn, dropped))
        for s in (new.candidate, new.previous):
            if changed and s is not None:
                self._create_space_index(CatalogSchema(self.schema, s.fingerprint, s.dim))
        self._adopt(new)
        return new

    def _create_space_index(self, tables: CatalogSchema) -> None:
        self._db.run(lambda conn: tables.create_index(conn, self.settings))

    def start_migration(self, candidate: ModelSpace, shadow_share: float = 0.0,
                        serving_model_dir: str = "") -> MigrationState:
        """Add `candidate`'s space (empty, with its own partial HNSW index) and start sending enrolments to both
        spaces; the same candidate again only updates the shadow share (see `Catalog.start_migration`)."""
        if candidate.dim > HNSW_MAX_DIM:
            raise InvalidArgument(f"dim must be at most {HNSW_MAX_DIM} for the PostgreSQL catalog, got "
                                  f"{candidate.dim}", field="dim")

        self._check_open(searchable=True)
        return self._change_state(lambda state: (state.start(candidate, shadow_share, serving_model_dir), None))

    def pending_references(self, space: str, after: int = 0, limit: int = 64) -> list[PendingReference]:
        """Live references with id > `after` that lack an embedding in `space` (id order, with stored image)."""
        self._check_open()
        self._other_space(space)
        start, n = (v.reference_id(after) if after else 0), v.positive_int(limit, "limit", 65536)
        return self._db.run(lambda conn: spaces.pending(conn, self._schema, space, start, n), tx=False)

    def put_space_embeddings(self, space: str, reference_ids: Sequence[int], vectors: np.ndarray) -> int:
        """Store embeddings of `space` for these references (deleted or filled ones are skipped); how many."""
        self._check_open()
        held = self._other_space(space)
        ids, vecs = v.space_rows(reference_ids, vectors, held.dim, self.settings.norm_tolerance)
        texts = [vec_text(row) for row in vecs.tolist()]

        def tx(conn: Conn) -> int:
            state = spaces.read_state(conn, self._schema, lock="FOR NO KEY UPDATE")
            if state.other is None or state.other.fingerprint != space:
                raise MigrationError(f"model {space!r} is no longer the candidate or previous model", field="space")
            written = spaces.put(conn, self._schema, space, ids, texts)
            if written:
                self._schema.bump(conn)
            return len(written)

        return self._db.run(tx)

    def space_progress(self, space: str) -> SpaceProgress:
        """How far `space` is filled (the serving space is complete)."""
        self._check_open()
        return self._db.run(lambda conn: spaces.progress(conn, self._schema, space), tx=False)

    def switch_model(self, fingerprint: str) -> MigrationState:
        """Serve `fingerprint` (candidate, or previous to undo) from now on, atomically for every replica (they
        follow at their next version read); MigrationError while a live reference lacks an embedding in it."""
        new = self._change_state(lambda state: (state.switch(fingerprint), None), complete=fingerprint)
        if self._mismatch() is None:
            self._tuning.tune(reuse=True)
        return new

    def finish_migration(self) -> MigrationState:
        """Drop the previous model's space after a switch (no undo from here); idempotent."""
        return self._change_state(lambda state: state.finish())

    def abort_migration(self) -> MigrationState:
        """Drop the candidate's space before a switch; idempotent."""
        return self._change_state(lambda state: state.abort())

    def backfill_lease(self) -> AbstractContextManager[bool]:
        """True inside when this replica may back-fill now: one replica at a time (a session advisory lock,
        released when the replica's connection goes, e.g. when it dies)."""
        return self._lease("backfill")

    @contextmanager
    def _lease(self, what: str) -> Iterator[bool]:
        """True inside when this process holds the catalog's session advisory lock `what` (taken without waiting)."""
        self._check_open()
        conn, _ = self._db.pool.acquire()
        got, reuse = False, False
        try:
            got = spaces.try_lease(conn, self._schema, what)
            reuse = True
            yield got
        finally:
            try:
                if got:
                    spaces.end_lease(conn, self._schema, what)
            except Exception:
                reuse = False
            self._db.pool.release(conn, reuse=reuse)

    def purge_deleted(self, older_than_seconds: float = DEFAULT_OLDER_THAN_SECONDS, limit: int = DEFAULT_BATCH, *,
                      vacuum: bool = False, max_seconds: float | None = None) -> PurgeReport:
        """Remove for good the products and references deleted more than `older_than_seconds` ago (rows, vectors,
        augmented views), `limit` references or products per transaction; the version and the head statistics
        stay. One purger per catalog at a time (an advisory lease: a second one reports `skipped`). `vacuum`: run
        VACUUM on the tables afterwards (cleans the HNSW graphs now rather than at the next autovacuum).
        `max_seconds`: start no batch after this long. See `skulens.catalog.postgres_purge`."""
        grace, n = check_args(older_than_seconds, limit)
        cutoff = time.time() - grace
        with self._lease(postgres_purge.LEASE) as got:
            if not got:
                return PurgeReport(cutoff=cutoff, skipped=True)
            report = postgres_purge.purge(self._db, self._schema, cutoff, n, vacuum_after=vacuum,
                                          max_seconds=max_seconds)
            fed = self._db.run(lambda conn: postgres_feed.prune(conn, self._schema, cutoff))
        if fed:
            log.info("shared catalog %s: %d change-feed rows older than the grace period dropped", self.schema, fed)
        if report.rows:
            log.info("shared catalog %s: %s", self.schema, report.format())
        return report

    def mirror(self, poll_seconds: float) -> CatalogMirror:
        """A local FAISS copy of this catalog (not started; `MirroredCatalog` serves searches from it)."""
        from skulens.catalog.mirror import CatalogMirror

        self._check_open(searchable=True)
        return CatalogMirror(self._db.pool, self._schema, self.settings, poll_seconds=poll_seconds)

    def cache_state(self) -> CacheState | None:
        """None: every call reads the database (no local copy)."""
        return None

    def _other_space(self, space: str) -> ModelSpace:
        other = self._migration.other
        if other is None or other.fingerprint != space:
            other = self.migration_state().other
        if other is None or other.fingerprint != space:
            raise MigrationError(f"model {space!r} is not the candidate or previous model of this catalog",
                                 field="space")
        return other

    def stats(self) -> PostgresStats:
        """Counts, identity, version, index kind / size / tuned width / recall, and the tables' size on disk."""
        self._check_open()
        counts = self._db.run(self._schema.counts, tx=False)
        version, live, indexed, products, references, with_image, storage = counts
        kind = self._kind(int(live))
        hnsw = kind == "hnsw"
        return PostgresStats(
            backend=self.backend, products=int(products), references=int(references),
            references_with_image=int(with_image), dim=self._dim, fingerprint=self._fingerprint,
            version=int(version), index_kind=kind, index_device="postgres",
            index_size=int(indexed) if hnsw else (int(live) if kind == "flat" else 0),
            recall_at_10=self._tuning.recall if hnsw else None, index_search_width=self._rounds.width if hnsw else 0,
            rebuild_in_progress=False, storage_bytes=int(storage), schema=self.schema,
            index_tombstones=int(indexed) - int(live) if hnsw else 0,
            exact_limit=self.exact_limit, server_version=self._versions[0],
            pgvector_version=self._versions[1])

    def _kind(self, live: int) -> str:
        if self._mismatch() is not None:
            return "none"
        return self._rounds.kind(live)

    # ================================================================ search
    def search(self, queries: np.ndarray, *, top_k: int = 5, min_score: float | None = None,
               category: str = "", labels: Mapping[str, str] | None = None,
               unknown_threshold: float | None = None,
               ambiguity_margin: float | None = None, trusted: bool = False,
               space: str = "") -> list[SearchResult]:
        """Top-k products per query embedding (float32 [N, D], unit-norm), best first, with a verdict each.

        The embedded backend's semantics (`Catalog.search`): a product scores its best reference (whose id is
        returned); `category` / `labels` (all pairs) filter inside the search; thresholds default to the settings.
        `space`: the fingerprint of the model that made the queries ("": the serving one).
        """
        rounds, dim = self._rounds, self._dim
        if space and space != self._fingerprint:
            self._check_open()
            held = self._other_space(space)
            rounds, dim = self._space_search(held), held.dim
        else:
            self._check_open(searchable=True)
        r = v.search_request(
            queries, dim, tolerance=self.settings.norm_tolerance, max_top_k=self.settings.max_top_k,
            default_threshold=self.settings.unknown_threshold, default_margin=self.settings.ambiguity_margin,
            top_k=top_k, min_score=min_score, category_=category, labels_=labels,
            unknown_threshold=unknown_threshold, ambiguity_margin=ambiguity_margin, trusted=trusted)
        if not len(r.queries):
            return []
        return rounds.search(r.queries, r.top_k, r.min_score, r.category, r.labels, r.unknown_threshold,
                             r.ambiguity_margin)

    def search_text(self, query: str, *, top_k: int = 5, category: str = "",
                    labels: Mapping[str, str] | None = None) -> list[TextMatch]:
        """Keyword search: the `top_k` live products whose text (name, category, label values, description) best
        matches the query's words (`skulens.catalog.text_search`), best first, filtered like `search`; ranked by
        `ts_rank_cd` over the generated `tsvector` (`postgres_text`)."""
        self._check_open()
        q = text_query(query, top_k, category, labels, self.settings.max_top_k)
        return self._db.run(lambda conn: postgres_text.search(conn, self._schema, q), tx=False)

    def _space_search(self, space: ModelSpace) -> RoundSearch:
        rounds = self._space_rounds.get(space.fingerprint)
        if rounds is None:
            rounds = RoundSearch(self._db, CatalogSchema(self.schema, space.fingerprint, space.dim), self.settings,
                                 self.exact_limit, self._vectors)
            rounds.width = self._rounds.width
            self._space_rounds[space.fingerprint] = rounds
        return rounds

    def tune(self) -> float | None:
        """Measure recall@10 of the HNSW search against exact search, choose `hnsw.ef_search` (see
        `postgres_search`) and store them for the other replicas; returns the recall, or None while searches are
        exact."""
        self._check_open(searchable=True)
        return self._tuning.tune(reuse=False)


# ================================================================ helpers
def _reference_rows(refs: Sequence[NewReference], dim: int, settings: CatalogSettings,
                    keep_images: bool) -> list[RefRow]:
    """Validate references to enrol (the same checks as every backend: `validation.references`)."""
    checked = v.references(refs, dim, max_items=settings.max_references_per_call, tolerance=settings.norm_tolerance,
                           max_image_bytes=settings.max_image_bytes, keep_images=keep_images)
    return [RefRow(c.embedding, c.source, c.content_sha256, c.image, c.region, c.request_id) for c in checked]


_Key = tuple[str, tuple[int, int, int, int] | None]  # (content_sha256, region): a reference's duplicate identity
_Plan = tuple[int | None, int | None, bool, bool]  # existing id or None, position among new rows or None, dup, replayed


def _plan_references(rows: list[RefRow], known: dict[_Key, int], requested: dict[str, RequestedReference],
                     product_id: str, pk: int, new: list[tuple[int, RefRow]],
                     fresh_requests: dict[str, tuple[str, _Key, int]]) -> list[_Plan]:
    """Per input of one product: (existing reference id, None) or (None, position among the new rows), duplicate,
    replayed; appends the rows to write to `new` as (pk, row). An input whose request id added a live reference
    (`requested`), or an earlier input of the call (`fresh_requests`: request id -> product, key, position, over
    every product of the call), replays it (RequestIdReused when product, content or region differ); an input
    whose (content_sha256, region) the product has (`known`: key -> id), or an earlier input has, is a duplicate;
    neither is written."""
    fresh: dict[_Key, int] = {}  # key -> position among the new rows
    plan: list[_Plan] = []
    for k, r in enumerate(rows):
        key = (r.sha or "", r.region)
        before = requested.get(r.request_id) if r.request_id is not None else None
        if before is not None:
            if (before.product_id, before.content_sha256, before.region) != (product_id, r.sha, r.region):
                raise RequestIdReused.naming(before, field_path("references", k, "request_id"))
            plan.append((before.reference_id, None, False, True))
        elif r.request_id is not None and r.request_id in fresh_requests:
            first_pid, first_key, pos = fresh_requests[r.request_id]
            if (first_pid, first_key) != (product_id, key):
                raise RequestIdReused(f"request id {r.request_id} names another image earlier in this call",
                                      field=field_path("references", k, "request_id"))
            plan.append((None, pos, False, True))
        elif r.sha is not None and key in known:
            plan.append((known[key], None, True, False))
        elif r.sha is not None and key in fresh:  # a repeat within this call
            plan.append((None, fresh[key], True, False))
        else:
            if r.sha is not None:
                fresh[key] = len(new)
            if r.request_id is not None:
                fresh_requests[r.request_id] = (product_id, key, len(new))
            plan.append((None, len(new), False, False))
            new.append((pk, r))
    return plan


__all__ = ["PostgresCatalog", "PostgresStats", "redact"]
