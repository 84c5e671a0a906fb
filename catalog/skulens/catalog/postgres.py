"""`PostgresCatalog`: the shared catalog backend, PostgreSQL + pgvector, for several replicas on one catalog.

Every replica opens the same database (`postgresql://…`, optionally a `schema`) and reads and writes it directly:
there is no in-process copy, so a write committed by one replica is seen by the next call of every other one
(version and search alike). Needs the `postgres` extra (psycopg 3) and pgvector >= 0.8 on the server.

Schema (created idempotently at open, under a database-wide advisory lock; every name qualified by the schema):
- `meta`: one row, the catalog's identity (fingerprint + dim of the model that made the embeddings, as the SQLite
  store's `claim_identity`), its version and live counters (products, references, vectors in the index).
- `catalog_version` (SEQUENCE): every write transaction sets `meta.version` from it, as its last statement, only
  when it changed something; refused writes and all-duplicate enrolments leave the version as it is. The row lock on
  `meta` orders concurrent writers, so versions follow commit order; `version()` reads `meta.version` (MVCC:
  never ahead of the data it stands for). Each bump also sends `NOTIFY skulens_catalog, '<schema>:<version>'`.
- `products`: product ids `COLLATE "C"` (code-point order, keyset pages), labels `jsonb` (GIN, `@>` filters), the
  live reference count, and `deleted_at` (tombstone; a unique index over the live rows lets a deleted id be
  created again as a new product whose old references do not come back).
- `refs`: reference id (from the `reference_ids` sequence: never reused), product, source, content sha256 (unique
  per live product), the image (`bytea`, when kept), an optional region box (x, y, w, h in pixels; nullable,
  not set by `NewReference` yet) and `deleted_at` (tombstone).
- `embeddings`: (fingerprint, reference id) → `vector` (untyped, so several models fit one table), with one partial
  HNSW index per fingerprint: `USING hnsw ((embedding::vector(DIM)) vector_ip_ops) WHERE fingerprint = '…'`.
  Inner product, because embeddings are unit-norm (cosine); pgvector's `<#>` is the NEGATIVE inner product.
  A second model (re-embedding) adds rows and an index, not a table.
Deletes are tombstones: rows stay with `deleted_at` set and every read filters on it (no purge yet).

Search keeps the embedded backend's semantics by reusing its pure parts: `matching.search_products` drives the
rounds (a product scores its best reference; top-k *products*, searching deeper, k x4 a round, until every row has
enough products and a runner-up for the verdict), and `matching.decide` gives the verdict. Each round is one SQL
statement for all pending query rows (`unnest … CROSS JOIN LATERAL (… ORDER BY distance LIMIT k)`), with the
category / label filters inside it and the product names joined, so the answer of the last round is read at one
snapshot; a search costs two round trips (counts, then one per round, pipelined with its settings).
- Exact (`index_kind` "flat"): when the references the call may return (all live ones, or those the filters let
  through) number at most `exact_limit` (default: `settings.filter_exact_limit`, the embedded backend's limit for
  exact filtered search, capped at 5,000: an exact scan costs PostgreSQL about 5 us a 512-d vector, so the embedded
  `approximate_threshold` of 200,000 would mean 1 s searches here), the candidates are materialised once and every
  query is compared with all of them.
- Approximate ("hnsw"): the partial HNSW index with `hnsw.iterative_scan = relaxed_order` (without it a filter
  that removes most neighbours collapses recall: 0.20 measured at 5 % selectivity), rows re-sorted by score here,
  `hnsw.ef_search` = the tuned width, doubled with each deeper round, and `hnsw.max_scan_tuples` x4 a round.
  The width: `recall_queries` stored vectors plus noise (as the embedded index's tuning) are searched exactly and
  through HNSW; the width starts at `hnsw_ef_search` and doubles until recall@10 reaches `recall_target` or
  `min(hnsw_max_ef_search, 1000)` (pgvector's limit); stats report it (`index_search_width`, `recall_at_10`).
  Measured at open (or on `tune()`) and stored in `meta` for the other replicas, which reuse it while the catalog
  stays within 2x the measured size and the settings are the same. Small catalogs (exact) skip the measurement.
- Plans are pinned per transaction (`enable_*` settings), so that they do not depend on table statistics (which a
  freshly filled catalog lacks until autovacuum analyses it; unpinned plans were 2-20x slower then).

Connections: a small pool of our own (autocommit connections, explicit BEGIN / COMMIT). A lost connection (server
down or restarted) raises `CatalogUnavailable` and empties the pool; a call that failed on a stale pooled
connection before anything was committed is retried once on a fresh one, so a server restart costs no error once
it is back. Lock waits are bounded by `busy_timeout_ms` (PostgreSQL `lock_timeout`); deadlocks and serialisation
failures are retried. Messages never carry the URL's password.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from skulens.catalog import validation as v
from skulens.catalog.backend import BackendState
from skulens.catalog.errors import (
    AlreadyExists,
    CatalogClosed,
    CatalogError,
    CatalogUnavailable,
    FingerprintMismatch,
    InvalidArgument,
    NotFound,
)
from skulens.catalog.matching import ProductHit, decide, search_products
from skulens.catalog.models import (
    AddedReference,
    CatalogStats,
    Match,
    NewReference,
    Product,
    ProductDetail,
    ReferenceInfo,
    SearchResult,
)
from skulens.catalog.settings import CatalogSettings

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PGVECTOR_MIN = (0, 8, 0)  # iterative index scans
HNSW_MAX_EF_SEARCH = 1000  # pgvector's upper bound for hnsw.ef_search
HNSW_MAX_DIM = 2000  # pgvector's HNSW indexes `vector` up to 2,000 dimensions
NOTIFY_CHANNEL = "skulens_catalog"
DEFAULT_POOL_SIZE = 8
DEFAULT_EXACT_LIMIT = 5_000  # exact search up to this many candidates unless open(exact_limit=...) says otherwise
CONNECT_TIMEOUT_S = 5
_MAX_SCAN_TUPLES = 20_000  # pgvector's default hnsw.max_scan_tuples, the first round's
_TUNING_SETTINGS = ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "hnsw_max_ef_search", "recall_target",
                    "recall_queries", "seed")
_DDL_LOCK = "skulens.catalog schema"  # advisory lock key (hashed): one installer at a time per database
_TRANSIENT = ("40001", "40P01")  # serialization failure, deadlock: rolled back, run again
_LOST = ("57P01", "57P02", "57P03")  # admin / crash shutdown, cannot connect now
_LOCK_TIMEOUT = "55P03"

T = TypeVar("T")
Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class PostgresStats(CatalogStats):
    """`CatalogStats` of the shared backend, with where it lives and what the index holds."""

    schema: str
    index_tombstones: int  # vectors of deleted references still in the HNSW graph (counted in index_size)
    exact_limit: int  # searches over at most this many references are exact (see PostgresCatalog.open)
    server_version: str
    pgvector_version: str


# ================================================================ URL, messages
_URL_PASSWORD = re.compile(r"(://[^:/@?#]*:)([^@]*)(@)")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact(url: str) -> str:
    """`url` (a URL or a key=value connection string) with its password replaced by ***."""
    return _KV_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***\3", url))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def _parse_url(url: object) -> tuple[str, dict[str, str]]:
    if not isinstance(url, str) or not url.strip():
        raise InvalidArgument("url must be a postgresql:// URL (or a libpq connection string)", field="url")
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise InvalidArgument(f"url {redact(url)!r} is not a valid PostgreSQL connection URL: "
                              f"{redact(_first_line(exc))}", field="url") from None
    return url, {k: str(val) for k, val in params.items() if val is not None}


def _vec_text(row: list[float]) -> str:
    """pgvector's text form of one vector ('[x, y, …]', shortest round-trip decimals of the float32 values)."""
    return str(row)


def _parse_vec(text: str) -> np.ndarray:
    return np.asarray(text.strip()[1:-1].split(","), dtype=np.float32)


def _check_pgvector(version: str) -> str:
    """`version` when it is recent enough, else CatalogError."""
    if tuple(int(x) for x in re.findall(r"\d+", version)[:3]) < PGVECTOR_MIN:
        raise CatalogError(f"pgvector {version} is too old: the shared catalog needs pgvector >= "
                           f"{'.'.join(map(str, PGVECTOR_MIN))} (iterative index scans); "
                           "run `ALTER EXTENSION vector UPDATE` after upgrading it")
    return version


# ================================================================ connection pool
class _Pool:
    """At most `size` connections in use at once; idle ones are kept for the next call. Thread-safe."""

    def __init__(self, conninfo: str, params: Mapping[str, str], size: int, wait_s: float, lock_timeout_ms: int,
                 describe: str, secret: str | None) -> None:
        self._conninfo = conninfo
        self._extra: dict[str, Any] = {}
        if "connect_timeout" not in params:
            self._extra["connect_timeout"] = CONNECT_TIMEOUT_S
        if "application_name" not in params:
            self._extra["application_name"] = "skulens"
        self._size = size
        self._wait_s = wait_s
        self._lock_timeout = f"{int(lock_timeout_ms)}ms"
        self.describe = describe
        self._secret = secret
        self._idle: list[Conn] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(size)
        self._closed = False

    def scrub(self, text: str) -> str:
        if self._secret:
            text = text.replace(self._secret, "***")
        return redact(text)

    def unavailable(self, exc: BaseException, what: str = "cannot be reached") -> CatalogUnavailable:
        return CatalogUnavailable(f"the shared catalog at {self.describe} {what} "
                                  f"({self.scrub(_first_line(exc))}); retry")

    def acquire(self) -> tuple[Conn, bool]:
        """(connection, fresh): an idle connection, or a new one; CatalogUnavailable if none can be had."""
        if not self._slots.acquire(timeout=self._wait_s):
            raise CatalogUnavailable(f"no free connection to the shared catalog at {self.describe} within "
                                     f"{self._wait_s:g} s (all {self._size} busy); retry")
        try:
            with self._lock:
                if self._closed:
                    raise CatalogClosed()
                conn = self._idle.pop() if self._idle else None
            if conn is not None and not conn.closed:
                return conn, False
            return self._connect(), True
        except BaseException:
            self._slots.release()
            raise

    def _connect(self) -> Conn:
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True, **self._extra)
        except psycopg.Error as exc:
            raise self.unavailable(exc) from None
        try:
            conn.execute("SELECT set_config('lock_timeout', %s, false), set_config('jit', 'off', false)",
                         (self._lock_timeout,))
        except psycopg.Error as exc:
            conn.close()
            raise self.unavailable(exc) from None
        return conn

    def release(self, conn: Conn, *, reuse: bool) -> None:
        try:
            ok = (reuse and not conn.closed and not conn.broken
                  and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE)
            with self._lock:
                if ok and not self._closed:
                    self._idle.append(conn)
                    return
            conn.close()
        finally:
            self._slots.release()

    def flush(self) -> None:
        """Close the idle connections (after a connection was lost: the others are likely stale too)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.flush()


def _lost(conn: Conn, exc: psycopg.Error) -> bool:
    """True when `exc` means the connection is gone (server down, restarted, network)."""
    if conn.closed or conn.broken:
        return True
    state = exc.sqlstate or ""
    return state.startswith("08") or state in _LOST or (not state and isinstance(exc, psycopg.OperationalError))


# ================================================================ the backend
class PostgresCatalog(BackendState):
    """Products, their reference embeddings and nearest-product search in PostgreSQL + pgvector. Thread-safe."""

    def __init__(self, pool: _Pool, schema: str, settings: CatalogSettings, *, fingerprint: str, dim: int,
                 requested_fingerprint: str, requested_dim: int, exact_limit: int) -> None:
        """Use `PostgresCatalog.open`."""
        self.settings = settings
        self.schema = schema
        self.exact_limit = exact_limit
        self._pool = pool
        self._fingerprint = fingerprint
        self._dim = dim
        self._requested = (requested_fingerprint, requested_dim)
        self._closed = False
        self._width = min(settings.hnsw_ef_search, self._max_width())
        self._recall: float | None = None
        self._tune_lock = threading.Lock()
        self._versions = ("", "")  # server, pgvector
        lit = sql.Literal
        qualified = ".".join('"' + part.replace('"', '""') + '"' for part in (schema,))
        self._names: dict[str, sql.Composable] = {
            "S": sql.Identifier(schema),
            "meta": sql.Identifier(schema, "meta"),
            "products": sql.Identifier(schema, "products"),
            "refs": sql.Identifier(schema, "refs"),
            "embeddings": sql.Identifier(schema, "embeddings"),
            "version_seq": lit(f"{qualified}.catalog_version"),
            "ref_seq": lit(f"{qualified}.reference_ids"),
            "fp": lit(fingerprint),
            "dim": sql.SQL(str(int(dim))),
            "channel": lit(NOTIFY_CHANNEL),
            "schema_lit": lit(schema),
        }
        self._search_sql: dict[tuple[bool, bool, bool], sql.Composed] = {}

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(**self._names)

    def _max_width(self) -> int:
        return max(1, min(self.settings.hnsw_max_ef_search, HNSW_MAX_EF_SEARCH))

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
        DEFAULT_EXACT_LIMIT)`: an exact scan costs PostgreSQL about 5 us a 512-d vector (25 ms p50 for 5,000), a
        tuned HNSW search 3-13 ms, so exactness stops paying past a few thousand references.
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
        conninfo, params = _parse_url(url)
        secret = params.get("password")
        pool = _Pool(conninfo, params, size, settings.busy_timeout_ms / 1000.0, settings.busy_timeout_ms,
                     redact(url), secret)
        try:
            if schema is None:
                schema = cls._current_schema(pool)
            probe = cls(pool, schema, settings, fingerprint=fingerprint, dim=dim,
                        requested_fingerprint=fingerprint, requested_dim=dim, exact_limit=exact_limit)
            stored_fp, stored_dim, versions = probe._run(probe._install)
            if (stored_fp, stored_dim) != (fingerprint, dim) and not allow_fingerprint_mismatch:
                raise FingerprintMismatch.between(stored_fp, stored_dim, fingerprint, dim)
            cat = cls(pool, schema, settings, fingerprint=stored_fp, dim=stored_dim,
                      requested_fingerprint=fingerprint, requested_dim=dim, exact_limit=exact_limit)
            cat._versions = versions
            cat._run(cat._create_index)
            if cat._mismatch() is None:
                cat._tune(reuse=True)
        except BaseException:
            pool.close()
            raise
        return cat

    @staticmethod
    def _current_schema(pool: _Pool) -> str:
        conn, _ = pool.acquire()
        reuse = False
        try:
            row = conn.execute("SELECT current_schema()").fetchone()
            reuse = True
        except psycopg.Error as exc:
            raise (pool.unavailable(exc) if _lost(conn, exc) else CatalogError(
                f"shared catalog at {pool.describe}: {pool.scrub(_first_line(exc))}")) from None
        finally:
            pool.release(conn, reuse=reuse)
        if row is None or not row[0]:
            raise InvalidArgument("the connection has no current schema (empty search_path): pass schema=…",
                                  field="schema")
        return str(row[0])

    def _install(self, conn: Conn) -> tuple[str, int, tuple[str, str]]:
        """Create what is missing (extension, schema, tables, indexes), claim the identity; (fingerprint, dim,
        (server version, pgvector version)). A current schema is only read: DDL, even IF NOT EXISTS, would take
        table locks that wait for (and hold up) other replicas' writes."""
        if _row(conn.execute("SELECT to_regclass(%s) IS NOT NULL", (self._regclass("meta"),)))[0]:
            meta = conn.execute(self._q("SELECT schema_version, fingerprint, dim FROM {meta}")).fetchone()
            ext = conn.execute("SELECT extversion, current_setting('server_version') FROM pg_extension "
                               "WHERE extname = 'vector'").fetchone()
            if meta is not None and int(meta[0]) == SCHEMA_VERSION and ext is not None:
                return str(meta[1]), int(meta[2]), (str(ext[1]), _check_pgvector(str(ext[0])))
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_DDL_LOCK,))
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except psycopg.errors.InsufficientPrivilege:
            raise CatalogError("the pgvector extension is not installed in this database and this user may not "
                               "install it: run `CREATE EXTENSION vector` as a database owner or superuser") from None
        except (psycopg.errors.UndefinedFile, psycopg.errors.FeatureNotSupported, psycopg.errors.UndefinedObject):
            raise CatalogError("the PostgreSQL server has no pgvector extension: install pgvector >= 0.8 on it") \
                from None
        row = conn.execute("SELECT extversion, current_setting('server_version') FROM pg_extension "
                           "WHERE extname = 'vector'").fetchone()
        assert row is not None
        versions = (str(row[1]), _check_pgvector(str(row[0])))
        for stmt in _DDL:
            conn.execute(self._q(stmt))
        meta = conn.execute(self._q("SELECT schema_version, fingerprint, dim FROM {meta}")).fetchone()
        if meta is None:
            conn.execute(self._q(
                "INSERT INTO {meta} (schema_version, catalog_uuid, fingerprint, dim, created_at) "
                "VALUES (%s, %s, %s, %s, %s)"), (SCHEMA_VERSION, uuid.uuid4().hex, self._fingerprint, self._dim,
                                                time.time()))
            self._bump(conn)
            return self._fingerprint, self._dim, versions
        if int(meta[0]) > SCHEMA_VERSION:
            raise CatalogError(f"the shared catalog in schema {self.schema!r} has schema version {meta[0]}; this "
                               f"skulens supports up to {SCHEMA_VERSION} (upgrade skulens)")
        return str(meta[1]), int(meta[2]), versions

    def index_name(self) -> str:
        """Name of the partial HNSW index of this catalog's fingerprint and dimension."""
        digest = hashlib.sha256(f"{self._fingerprint}\0{self._dim}".encode()).hexdigest()[:16]
        return f"embeddings_hnsw_{digest}"

    def _create_index(self, conn: Conn) -> None:
        if _row(conn.execute("SELECT to_regclass(%s) IS NOT NULL", (self._regclass(self.index_name()),)))[0]:
            return
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_DDL_LOCK,))
        m = int(self.settings.hnsw_m)
        conn.execute(sql.SQL(
            "CREATE INDEX IF NOT EXISTS {index} ON {embeddings} USING hnsw ((embedding::vector({dim})) "
            "vector_ip_ops) WITH (m = {m}, ef_construction = {efc}) WHERE fingerprint = {fp}").format(
                index=sql.Identifier(self.index_name()), m=sql.Literal(m),
                efc=sql.Literal(max(int(self.settings.hnsw_ef_construction), 2 * m)), **self._names))

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
        self._pool.close()

    def _stored_identity(self) -> tuple[str, int]:
        return (self._fingerprint, self._dim)

    # ================================================================ transactions
    def _run(self, fn: Callable[[Conn], T], *, tx: bool = True) -> T:
        """Run `fn(conn)` in one transaction (committed when it returns, rolled back when it raises); with
        `tx=False` `fn` runs its statements as they are (single statements, or pipelined transactions of its own).

        A lost connection raises `CatalogUnavailable`, after one retry on a fresh connection when the lost one
        came from the pool and nothing was being committed; deadlocks and serialization failures run again.
        """
        if self._closed:
            raise CatalogClosed()
        attempt = 0
        while True:
            attempt += 1
            conn, fresh = self._pool.acquire()
            reuse = committing = False
            try:
                if tx:
                    conn.execute("BEGIN")
                out = fn(conn)
                committing = tx
                if tx:
                    conn.execute("COMMIT")
                reuse = True
                return out
            except CatalogError:
                reuse = _rollback(conn)
                raise
            except psycopg.Error as exc:
                if _lost(conn, exc):
                    self._pool.flush()
                    if not fresh and not committing and attempt == 1:
                        log.info("shared catalog connection lost (%s); retrying on a new one",
                                 self._pool.scrub(_first_line(exc)))
                        continue
                    if committing:
                        raise self._pool.unavailable(
                            exc, "was lost while committing a write, whose outcome is unknown "
                                 "(compare version() before retrying)") from None
                    raise self._pool.unavailable(exc) from None
                reuse = _rollback(conn)
                if exc.sqlstate in _TRANSIENT and attempt < 4:
                    continue
                raise self._error(exc) from exc
            finally:
                self._pool.release(conn, reuse=reuse)

    def _error(self, exc: psycopg.Error) -> CatalogError:
        """The domain error for a database error that is not a lost connection."""
        text = self._pool.scrub(_first_line(exc))
        if exc.sqlstate == _LOCK_TIMEOUT:
            return CatalogUnavailable(f"the shared catalog is busy: a lock was not granted within "
                                      f"{self.settings.busy_timeout_ms} ms ({text}); retry")
        if isinstance(exc, psycopg.errors.UniqueViolation):
            return AlreadyExists(f"the shared catalog refused a duplicate ({text})")
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            return CatalogError(f"the shared catalog's database user lacks a privilege ({text})")
        if isinstance(exc, (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn)):
            return CatalogError(f"the shared catalog's schema {self.schema!r} is damaged or was changed ({text}); "
                                "restore it from a backup")
        return CatalogError(f"shared catalog error ({exc.sqlstate or 'client'}): {text}")

    def _bump(self, conn: Conn, *, products: int = 0, refs: int = 0, indexed: int = 0) -> int:
        """Set the next catalog version (the last statement of a write that changed something) and NOTIFY it."""
        row = conn.execute(self._q(
            "WITH b AS (UPDATE {meta} SET version = GREATEST(nextval({version_seq}), version + 1), "
            "live_products = live_products + %(p)s, live_refs = live_refs + %(r)s, "
            "indexed_refs = indexed_refs + %(i)s RETURNING version) "
            "SELECT version, pg_notify({channel}, {schema_lit} || ':' || version) FROM b"),
            {"p": products, "r": refs, "i": indexed}).fetchone()
        assert row is not None
        return int(row[0])

    def _lock_product(self, conn: Conn, product_id: str) -> int:
        """The live product's key, its row locked until the transaction ends; NotFound when absent."""
        row = conn.execute(self._q(
            "SELECT pk FROM {products} WHERE product_id = %s AND deleted_at IS NULL FOR NO KEY UPDATE"),
            (product_id,)).fetchone()
        if row is None:
            raise NotFound(f"product {product_id!r} does not exist", field="product_id")
        return int(row[0])

    # ================================================================ writes
    def upsert_product(self, product_id: str, display_name: str = "", category: str = "",
                       labels: Mapping[str, str] | None = None, *, create_only: bool = False,
                       update_fields: Sequence[str] | frozenset[str] | None = None) -> tuple[Product, bool]:
        """Create a product, or replace its display name, category and labels; returns (product, created).

        `create_only`: an existing product is left as it is and `AlreadyExists` is raised.
        """
        self._check_open()
        pid = v.product_id(product_id)
        name, cat, lab = v.display_name(display_name), v.category(category), v.labels(labels)
        fields = v.update_fields(update_fields)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in v.PRODUCT_FIELDS if fields is None or c in fields)

        def tx(conn: Conn) -> tuple[Product, bool]:
            now = time.time()
            args = {"pid": pid, "name": name, "cat": cat, "labels": Jsonb(lab), "now": now}
            insert = ("INSERT INTO {products} (product_id, display_name, category, labels, created_at, updated_at) "
                      "VALUES (%(pid)s, %(name)s, %(cat)s, %(labels)s, %(now)s, %(now)s) "
                      "ON CONFLICT (product_id) WHERE deleted_at IS NULL ")
            if create_only:
                row = conn.execute(self._q(insert + "DO NOTHING RETURNING created_at, reference_count, true, "
                                                    "display_name, category, labels"), args).fetchone()
                if row is None:
                    raise AlreadyExists(f"product {pid!r} exists already (create_only)", field="product_id")
            else:
                row = conn.execute(self._q(
                    insert + "DO UPDATE SET " + (updates + ", " if updates else "") + "updated_at = "
                    "EXCLUDED.updated_at RETURNING created_at, reference_count, (xmax = 0), display_name, category, "
                    "labels"), args).fetchone()
            assert row is not None
            created = bool(row[2])
            self._bump(conn, products=1 if created else 0)
            return Product(pid, str(row[3]), str(row[4]), dict(row[5]), int(row[1]), float(row[0]), now), created

        return self._run(tx)

    def add_references(self, product_id: str, refs: Sequence[NewReference], *,
                       store_images: bool | None = None) -> list[AddedReference]:
        """Enrol references of an existing product in one transaction (all or nothing).

        A reference with the same content_sha256 as one the product already has (or an earlier one of the same
        call) is not written: its existing id comes back with duplicate=True. `store_images` overrides
        `settings.store_images`.
        """
        self._check_open(searchable=True)
        pid = v.product_id(product_id)
        keep_images = self.settings.store_images if store_images is None else bool(store_images)
        rows = _reference_rows(refs, self._dim, self.settings, keep_images)

        def tx(conn: Conn) -> list[AddedReference]:
            pk = self._lock_product(conn, pid)  # writers of one product take turns
            shas = [r.sha for r in rows if r.sha is not None]
            known: dict[str, int] = {}
            if shas:
                known = {str(s): int(i) for s, i in conn.execute(self._q(
                    "SELECT content_sha256, reference_id FROM {refs} WHERE product_pk = %s "
                    "AND deleted_at IS NULL AND content_sha256 = ANY(%s)"), (pk, shas)).fetchall()}
            fresh: dict[str, int] = {}  # sha -> position among the new rows
            # per input: (existing reference id, None) or (None, position among the new rows), and duplicate
            plan: list[tuple[int | None, int | None, bool]] = []
            new: list[_RefRow] = []
            for r in rows:
                if r.sha is not None and r.sha in known:
                    plan.append((known[r.sha], None, True))
                elif r.sha is not None and r.sha in fresh:  # a repeat within this call
                    plan.append((None, fresh[r.sha], True))
                else:
                    if r.sha is not None:
                        fresh[r.sha] = len(new)
                    plan.append((None, len(new), False))
                    new.append(r)
            ids: list[int] = []
            if new:
                ids = sorted(int(x[0]) for x in conn.execute(self._q(
                    "SELECT nextval({ref_seq}) FROM generate_series(1, %s)"), (len(new),)).fetchall())
                now = time.time()
                with conn.cursor() as cur:
                    cur.executemany(self._q(
                        "INSERT INTO {refs} (reference_id, product_pk, source, content_sha256, image, created_at) "
                        "VALUES (%s, %s, %s, %s, %s, %s)"),
                        [(rid, pk, r.source, r.sha, r.image, now) for rid, r in zip(ids, new, strict=True)])
                    cur.executemany(self._q(
                        "INSERT INTO {embeddings} (reference_id, fingerprint, embedding) VALUES (%s, {fp}, %s)"),
                        [(rid, r.embedding) for rid, r in zip(ids, new, strict=True)])
                conn.execute(self._q("UPDATE {products} SET reference_count = reference_count + %s WHERE pk = %s"),
                             (len(new), pk))
                self._bump(conn, refs=len(new), indexed=len(new))
            return [AddedReference(ids[pos] if rid is None and pos is not None else int(rid or 0), pid, dup)
                    for rid, pos, dup in plan]

        return self._run(tx)

    def existing_hashes(self, product_id: str, content_sha256s: Sequence[str]) -> dict[str, int]:
        """{content_sha256: reference_id} of the given image hashes the product already has a reference for."""
        self._check_open()
        pid = v.product_id(product_id)
        shas = list(dict.fromkeys(v.sha256_hex(s, f"content_sha256s[{i}]") for i, s in enumerate(content_sha256s)))

        def tx(conn: Conn) -> dict[str, int]:
            rows = conn.execute(self._q(
                "SELECT r.content_sha256, r.reference_id FROM {products} p LEFT JOIN {refs} r ON r.product_pk = p.pk "
                "AND r.deleted_at IS NULL AND r.content_sha256 = ANY(%s) WHERE p.product_id = %s "
                "AND p.deleted_at IS NULL"), (shas, pid)).fetchall()
            if not rows:
                raise NotFound(f"product {pid!r} does not exist", field="product_id")
            return {str(sha): int(rid) for sha, rid in rows if sha is not None}

        return self._run(tx, tx=False)

    def delete_product(self, product_id: str) -> int:
        """Delete (tombstone) a product and all its references; returns how many references were removed."""
        self._check_open()
        pid = v.product_id(product_id)

        def tx(conn: Conn) -> int:
            now = time.time()
            row = conn.execute(self._q(
                "UPDATE {products} SET deleted_at = %s, reference_count = 0 WHERE product_id = %s "
                "AND deleted_at IS NULL RETURNING pk"), (now, pid)).fetchone()
            if row is None:
                raise NotFound(f"product {pid!r} does not exist", field="product_id")
            n = conn.execute(self._q(
                "UPDATE {refs} SET deleted_at = %s WHERE product_pk = %s AND deleted_at IS NULL"),
                (now, int(row[0]))).rowcount
            self._bump(conn, products=-1, refs=-n)
            return int(n)

        return self._run(tx)

    def delete_reference(self, reference_id: int) -> None:
        """Delete (tombstone) one reference; its product stays, possibly with no references."""
        self._check_open()
        rid = v.reference_id(reference_id)

        def tx(conn: Conn) -> None:
            row = conn.execute(self._q(
                "SELECT product_pk FROM {refs} WHERE reference_id = %s AND deleted_at IS NULL"), (rid,)).fetchone()
            done = 0
            if row is not None:  # lock the product first, as every other write does (no lock-order deadlock)
                conn.execute(self._q("SELECT 1 FROM {products} WHERE pk = %s FOR NO KEY UPDATE"), (row[0],))
                done = conn.execute(self._q(
                    "UPDATE {refs} SET deleted_at = %s WHERE reference_id = %s AND deleted_at IS NULL"),
                    (time.time(), rid)).rowcount
            if row is None or not done:
                raise NotFound(f"reference {rid} does not exist", field="reference_id")
            conn.execute(self._q("UPDATE {products} SET reference_count = reference_count - 1 WHERE pk = %s"),
                         (row[0],))
            self._bump(conn, refs=-1)

        self._run(tx)

    # ================================================================ reads
    def get_product(self, product_id: str) -> ProductDetail:
        """A product with its references (id, source, content_sha256, has_image, created_at)."""
        self._check_open()
        pid = v.product_id(product_id)

        def tx(conn: Conn) -> ProductDetail:
            rows = conn.execute(self._q(
                "SELECT p.product_id, p.display_name, p.category, p.labels, p.created_at, p.updated_at, "
                "r.reference_id, r.source, r.content_sha256, r.image IS NOT NULL, r.created_at FROM {products} p "
                "LEFT JOIN {refs} r ON r.product_pk = p.pk AND r.deleted_at IS NULL "
                "WHERE p.product_id = %s AND p.deleted_at IS NULL ORDER BY r.reference_id"), (pid,)).fetchall()
            if not rows:
                raise NotFound(f"product {pid!r} does not exist", field="product_id")
            refs = [ReferenceInfo(int(r[6]), str(r[7]), r[8], bool(r[9]), float(r[10]))
                    for r in rows if r[6] is not None]
            p = rows[0]
            return ProductDetail(Product(str(p[0]), str(p[1]), str(p[2]), dict(p[3]), len(refs), float(p[4]),
                                         float(p[5])), refs)

        return self._run(tx, tx=False)

    def list_products(self, page_size: int = 100, page_token: str = "",
                      category: str = "") -> tuple[list[Product], str]:
        """One page of products ordered by product_id (code points); (products, next token or "" at the end)."""
        self._check_open()
        size = 100 if page_size == 0 else v.positive_int(page_size, "page_size", self.settings.max_page_size)
        cat = v.category(category)
        after = v.decode_page_token(page_token, cat)
        query = ("SELECT product_id, display_name, category, labels, reference_count, created_at, updated_at "
                 "FROM {products} WHERE deleted_at IS NULL AND product_id > %(after)s"
                 + (" AND category = %(cat)s" if cat else "") + " ORDER BY product_id LIMIT %(n)s")

        def tx(conn: Conn) -> list[Product]:
            return [Product(str(r[0]), str(r[1]), str(r[2]), dict(r[3]), int(r[4]), float(r[5]), float(r[6]))
                    for r in conn.execute(self._q(query), {"after": after, "cat": cat, "n": size + 1})]

        rows = self._run(tx, tx=False)
        more = len(rows) > size
        rows = rows[:size]
        token = v.encode_page_token(rows[-1].product_id, cat) if more and rows else ""
        return rows, token

    def version(self) -> int:
        """The catalog version: bumped by every committed write of any replica."""
        self._check_open()
        return self._run(lambda conn: int(_row(conn.execute(self._q("SELECT version FROM {meta}")))[0]), tx=False)

    def stats(self) -> PostgresStats:
        """Counts, identity, version, index kind / size / tuned width / recall, and the tables' size on disk."""
        self._check_open()

        def tx(conn: Conn) -> tuple[Any, ...]:
            sizes = " + ".join(f"pg_total_relation_size(%(t{i})s::regclass)" for i in range(4))
            row = conn.execute(self._q(
                "SELECT m.version, m.live_refs, m.indexed_refs, "
                "(SELECT count(*) FROM {products} WHERE deleted_at IS NULL), "
                "(SELECT count(*) FROM {refs} WHERE deleted_at IS NULL), "
                "(SELECT count(*) FROM {refs} WHERE deleted_at IS NULL AND image IS NOT NULL), " + sizes
                + " FROM {meta} m"), {f"t{i}": self._regclass(t)
                                       for i, t in enumerate(("meta", "products", "refs", "embeddings"))}).fetchone()
            assert row is not None
            return tuple(row)

        version, live, indexed, products, references, with_image, storage = self._run(tx, tx=False)
        kind = self._kind(int(live))
        hnsw = kind == "hnsw"
        return PostgresStats(
            backend=self.backend, products=int(products), references=int(references),
            references_with_image=int(with_image), dim=self._dim, fingerprint=self._fingerprint,
            version=int(version), index_kind=kind, index_device="postgres",
            index_size=int(indexed) if hnsw else (int(live) if kind == "flat" else 0),
            recall_at_10=self._recall if hnsw else None, index_search_width=self._width if hnsw else 0,
            rebuild_in_progress=False, storage_bytes=int(storage), schema=self.schema,
            index_tombstones=int(indexed) - int(live) if hnsw else 0,
            exact_limit=self.exact_limit, server_version=self._versions[0],
            pgvector_version=self._versions[1])

    def _regclass(self, table: str) -> str:
        return ".".join('"' + p.replace('"', '""') + '"' for p in (self.schema, table))

    def _kind(self, live: int) -> str:
        if self._mismatch() is not None:
            return "none"
        return "flat" if live <= self.exact_limit else "hnsw"

    # ================================================================ search
    def search(self, queries: np.ndarray, *, top_k: int = 5, min_score: float | None = None,
               category: str = "", labels: Mapping[str, str] | None = None,
               unknown_threshold: float | None = None,
               ambiguity_margin: float | None = None, trusted: bool = False) -> list[SearchResult]:
        """Top-k products per query embedding (float32 [N, D], unit-norm), best first, with a verdict each.

        The embedded backend's semantics (`Catalog.search`): a product scores its best reference (whose id is
        returned); `category` / `labels` (all pairs) filter inside the search; thresholds default to the settings.
        """
        self._check_open(searchable=True)
        r = v.search_request(
            queries, self._dim, tolerance=self.settings.norm_tolerance, max_top_k=self.settings.max_top_k,
            default_threshold=self.settings.unknown_threshold, default_margin=self.settings.ambiguity_margin,
            top_k=top_k, min_score=min_score, category_=category, labels_=labels,
            unknown_threshold=unknown_threshold, ambiguity_margin=ambiguity_margin, trusted=trusted)
        q, k, floor, cat, lab = r.queries, r.top_k, r.min_score, r.category, r.labels
        threshold, margin = r.unknown_threshold, r.ambiguity_margin
        if not len(q):
            return []
        texts = [_vec_text(row) for row in q.tolist()]
        hits, names = self._run(lambda conn: self._search_rounds(conn, texts, k, floor, cat, lab, margin),
                                tx=False)
        out = []
        for row in hits:
            verdict, confusable = decide(row, threshold, margin)
            matches = [Match(*names[h.product_pk], h.score, h.reference_id)
                       for h in row[:k] if floor is None or h.score >= floor]
            best = row[0].score if row else -1.0
            out.append(SearchResult(matches, verdict, best, [names[h.product_pk][0] for h in confusable]))
        return out

    def _search_rounds(self, conn: Conn, texts: list[str], top_k: int, floor: float | None, cat: str,
                       lab: dict[str, str], margin: float
                       ) -> tuple[list[list[ProductHit]], dict[int, tuple[str, str]]]:
        """Product hits per query row (`matching.search_products`), and (product_id, display_name) by product key.

        Round trips: one for the counts (meta, and how many references the filter lets through, up to the exact
        limit), one per round (each round is one statement, complete in itself: the last round's answer is read
        at one snapshot, names included).
        """
        n = len(texts)
        filtered = bool(cat or lab)
        limit = self.exact_limit
        args: dict[str, Any] = {"cat": cat, "labels": Jsonb(lab), "lim": limit + 1}
        with conn.pipeline():
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            if filtered:
                _set(conn, _PLAN_INDEX_LOOKUPS)
            meta_cur = conn.execute(self._q("SELECT live_refs, live_products, indexed_refs FROM {meta}"))
            count_cur = conn.execute(self._q(
                "SELECT count(*), count(DISTINCT product_pk) FROM (SELECT r.product_pk FROM {products} p "
                "JOIN {refs} r ON r.product_pk = p.pk AND r.deleted_at IS NULL WHERE p.deleted_at IS NULL"
                + _filter_sql(bool(cat), bool(lab)) + " LIMIT %(lim)s) s"), args) if filtered else None
            conn.execute("COMMIT")
        live, products, indexed = (int(x) for x in _row(meta_cur))
        candidates = live
        if count_cur is not None:
            candidates, products = (int(x) for x in _row(count_cur))
        if candidates == 0:
            return [[] for _ in range(n)], {}
        exact = candidates <= limit
        per_product = max(1.0, candidates / max(1, products))
        max_k = candidates if exact else live
        initial = max(16, min(math.ceil(max(top_k, 2) * per_product * 2), max_k))
        query = self._search_statement(exact, bool(cat), bool(lab))
        pk_of: dict[int, int] = {}
        names: dict[int, tuple[str, str]] = {}
        width = self._width

        def searcher(rows: np.ndarray, k: int, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            scores, ids, pks, exhausted = self._refs_search(
                conn, query, [texts[i] for i in rows.tolist()], k, depth, exact=exact, filtered=filtered,
                max_k=max_k, indexed=indexed, args=args, width=width, names=names)
            pk_of.update(zip(ids[ids >= 0].tolist(), pks[ids >= 0].tolist(), strict=True))
            return scores, ids, exhausted

        def lookup(ids: np.ndarray) -> np.ndarray:
            return np.vectorize(lambda x: pk_of.get(int(x), -1), otypes=[np.int64])(ids)

        hits = search_products(searcher, lookup, np.arange(n), top_k=top_k, initial_k=initial, max_k=max_k,
                               min_score=floor, ambiguity_margin=margin)
        return hits, names

    def _search_statement(self, exact: bool, cat: bool, lab: bool) -> sql.Composed:
        """The reference-level k-nearest statement for all pending query rows, exact or through the HNSW index.

        Rows: (query ordinal, reference id, product key, negative inner product, product id, display name). The
        query rows arrive as text and are cast to vectors once (a cast per compared row would cost more than the
        comparison). Exact: the candidates (live references passing the filters) are materialised once, then
        each query compares with all of them (ties by reference id). Approximate: the partial HNSW index's
        expression and predicate, literally, so the planner can use it.
        """
        key = (exact, cat, lab)
        stmt = self._search_sql.get(key)
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
            stmt = self._search_sql[key] = self._q(text)
        return stmt

    def _refs_search(self, conn: Conn, query: sql.Composed, texts: list[str], k: int, depth: int, *,
                     exact: bool, filtered: bool, max_k: int, indexed: int, args: dict[str, Any], width: int,
                     names: dict[int, tuple[str, str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One round, in one round trip: (scores, reference ids, product keys [n, k], padded -inf / -1, best
        first; exhausted [n]); fills `names` (product key -> (product id, display name))."""
        scan_cap = _MAX_SCAN_TUPLES
        if exact:
            plan: dict[str, object] = dict(_PLAN_INDEX_LOOKUPS if filtered else _PLAN_SCAN_ALL)
            need = max_k * (self._dim * 4 + 200)  # the materialised candidates stay in memory
            if need > 4 << 20:
                plan["work_mem"] = f"{min(need * 3 // 2, 256 << 20) >> 10}kB"
        else:  # a deeper round widens the graph walk and lets the iterative scan go further
            scan_cap = min(_MAX_SCAN_TUPLES * 4**depth, 2**31 - 1)
            plan = {**_PLAN_HNSW, "hnsw.iterative_scan": "relaxed_order",
                    "hnsw.ef_search": min(HNSW_MAX_EF_SEARCH, width * 2**depth), "hnsw.max_scan_tuples": scan_cap,
                    "hnsw.scan_mem_multiplier": min(1000, 2 ** (depth + 1))}
        with conn.pipeline():
            conn.execute("BEGIN READ ONLY")
            _set(conn, plan)
            cur = conn.execute(query, {**args, "q": texts, "k": k})
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
            exhausted[j] = (len(found) < k and (exact or scan_cap >= indexed)) or k >= max_k
        return scores, ids, pks, exhausted

    # ================================================================ recall tuning
    def tune(self) -> float | None:
        """Measure recall@10 of the HNSW search against exact search, choose `hnsw.ef_search` (see the module
        docstring) and store them for the other replicas; returns the recall, or None while searches are exact."""
        self._check_open(searchable=True)
        return self._tune(reuse=False)

    def _tune(self, *, reuse: bool) -> float | None:
        with self._tune_lock:
            t0 = time.perf_counter()
            config = json.dumps({k: getattr(self.settings, k) for k in _TUNING_SETTINGS} | {
                "exact_limit": self.exact_limit, "fingerprint": self._fingerprint, "dim": self._dim}, sort_keys=True)
            row = self._run(lambda conn: _row(conn.execute(self._q(
                "SELECT live_refs, tuned_config, tuned_refs, tuned_width, tuned_recall FROM {meta}"))), tx=False)
            live, stored_config, stored_refs, stored_width, stored_recall = row
            if (reuse and self._kind(int(live)) == "hnsw" and stored_config == config and stored_refs
                    and stored_refs / 2 <= live <= stored_refs * 2):
                self._width, self._recall = int(stored_width), float(stored_recall)
                return self._recall
            width, recall = self._run(self._measure, tx=False)
            self._width, self._recall = width, recall
            if recall is None:
                return None
            log.info("shared catalog: hnsw.ef_search %d gives recall@10 %.3f over %d references (%.2fs)", width,
                     recall, live, time.perf_counter() - t0)
            try:  # not a catalog write: the version stays
                self._run(lambda conn: conn.execute(self._q(
                    "UPDATE {meta} SET tuned_config = %s, tuned_refs = %s, tuned_width = %s, tuned_recall = %s"),
                    (config, int(live), width, recall)))
            except CatalogError as exc:
                log.warning("could not store the measured HNSW search width (%s); each replica measures its own",
                            exc)
            return recall

    def _measure(self, conn: Conn) -> tuple[int, float | None]:
        s = self.settings
        start = min(s.hnsw_ef_search, self._max_width())
        live, indexed = (int(x) for x in _row(conn.execute(self._q("SELECT live_refs, indexed_refs FROM {meta}"))))
        if self._kind(live) != "hnsw" or live == 0:
            return start, None
        n = min(s.recall_queries, live)
        stored = np.stack([_parse_vec(r[0]) for r in conn.execute(self._q(
            "SELECT e.embedding::text FROM {embeddings} e JOIN {refs} r ON r.reference_id = e.reference_id "
            "WHERE e.fingerprint = {fp} AND r.deleted_at IS NULL ORDER BY hashint8(e.reference_id + %s) LIMIT %s"),
            (int(s.seed), n))])
        # queries: stored vectors plus noise (cosine about 0.9: another photo of the same product), as the
        # embedded index measures its recall (`VectorIndex._recall_probe`)
        rng = np.random.default_rng(s.seed + 1)
        noisy = stored + rng.standard_normal(stored.shape).astype(np.float32) * (0.5 / math.sqrt(self._dim))
        texts = [_vec_text(x) for x in (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).tolist()]
        k = min(10, live)
        args: dict[str, Any] = {"cat": "", "labels": Jsonb({})}
        names: dict[int, tuple[str, str]] = {}
        _, exact_ids, _, _ = self._refs_search(conn, self._search_statement(True, False, False), texts, k, 0,
                                               exact=True, filtered=False, max_k=live, indexed=indexed, args=args,
                                               width=0, names=names)
        approx_sql = self._search_statement(False, False, False)
        width, cap = start, self._max_width()
        while True:
            _, approx_ids, _, _ = self._refs_search(conn, approx_sql, texts, k, 0, exact=False, filtered=False,
                                                    max_k=live, indexed=indexed, args=args, width=width,
                                                    names=names)
            hits = sum(len(np.intersect1d(a[a >= 0], e[e >= 0])) for a, e in zip(approx_ids, exact_ids, strict=True))
            recall = hits / max(1, int(np.count_nonzero(exact_ids >= 0)))
            if recall >= s.recall_target or width >= cap:
                return width, recall
            width = min(cap, width * 2)


# ================================================================ helpers
_DDL = (
    "CREATE SCHEMA IF NOT EXISTS {S}",
    "CREATE SEQUENCE IF NOT EXISTS {S}.catalog_version",
    "CREATE SEQUENCE IF NOT EXISTS {S}.reference_ids",
    """CREATE TABLE IF NOT EXISTS {meta} (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        schema_version integer NOT NULL,
        catalog_uuid text NOT NULL,
        fingerprint text NOT NULL,
        dim integer NOT NULL CHECK (dim > 0),
        version bigint NOT NULL DEFAULT 0,
        live_products bigint NOT NULL DEFAULT 0,
        live_refs bigint NOT NULL DEFAULT 0,
        indexed_refs bigint NOT NULL DEFAULT 0,
        tuned_config text,
        tuned_refs bigint,
        tuned_width integer,
        tuned_recall double precision,
        created_at double precision NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS {products} (
        pk bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        product_id text COLLATE "C" NOT NULL,
        display_name text NOT NULL DEFAULT '',
        category text COLLATE "C" NOT NULL DEFAULT '',
        labels jsonb NOT NULL DEFAULT '{{}}'::jsonb,
        reference_count integer NOT NULL DEFAULT 0,
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL,
        deleted_at double precision)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS products_live_id ON {products} (product_id) WHERE deleted_at IS NULL",
    "CREATE INDEX IF NOT EXISTS products_live_category ON {products} (category, product_id) WHERE deleted_at IS NULL",
    "CREATE INDEX IF NOT EXISTS products_live_labels ON {products} USING gin (labels jsonb_path_ops) "
    "WHERE deleted_at IS NULL",
    """CREATE TABLE IF NOT EXISTS {refs} (
        reference_id bigint PRIMARY KEY,
        product_pk bigint NOT NULL REFERENCES {products} (pk),
        source text NOT NULL DEFAULT '',
        content_sha256 text,
        image bytea,
        region_x integer,
        region_y integer,
        region_w integer,
        region_h integer,
        created_at double precision NOT NULL,
        deleted_at double precision,
        CONSTRAINT refs_region_box CHECK (
            num_nulls(region_x, region_y, region_w, region_h) = 4
            OR (num_nulls(region_x, region_y, region_w, region_h) = 0
                AND region_x >= 0 AND region_y >= 0 AND region_w >= 1 AND region_h >= 1)))""",
    "CREATE INDEX IF NOT EXISTS refs_live_product ON {refs} (product_pk, reference_id) WHERE deleted_at IS NULL",
    "CREATE UNIQUE INDEX IF NOT EXISTS refs_live_product_sha ON {refs} (product_pk, content_sha256) "
    "WHERE deleted_at IS NULL AND content_sha256 IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS {embeddings} (
        reference_id bigint NOT NULL REFERENCES {refs} (reference_id),
        fingerprint text NOT NULL,
        embedding vector NOT NULL,
        PRIMARY KEY (fingerprint, reference_id))""",
)


# Plan shapes, pinned per transaction (SET LOCAL) so that they do not depend on table statistics (a freshly
# filled catalog has none until autovacuum analyses it, and the planner then picks nested loops over scans that
# cost 10-20x). HNSW: the index scan drives nested loops of primary-key lookups, never a sort (which would mean
# no index) nor a re-scanned materialisation. Exact with a filter: products by the filter's index, then their
# references and vectors by index. Exact without one: one pass over the vectors, hash-joined with live references.
_PLAN_HNSW = {"enable_sort": "off", "enable_seqscan": "off", "enable_bitmapscan": "off", "enable_material": "off",
              "enable_memoize": "off", "enable_hashjoin": "off", "enable_mergejoin": "off", "enable_nestloop": "on"}
_PLAN_INDEX_LOOKUPS = {"enable_hashjoin": "off", "enable_mergejoin": "off", "enable_material": "off"}
_PLAN_SCAN_ALL = {"enable_nestloop": "off", "enable_mergejoin": "off"}


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


def _rollback(conn: Conn) -> bool:
    """Roll back the open transaction, if any; True when the connection can be used again."""
    try:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
        return True
    except psycopg.Error:
        return False


def _row(cur: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    row = cur.fetchone()
    assert row is not None
    return tuple(row)


@dataclass(frozen=True)
class _RefRow:
    embedding: str  # pgvector text form
    source: str
    sha: str | None
    image: bytes | None


def _reference_rows(refs: Sequence[NewReference], dim: int, settings: CatalogSettings,
                    keep_images: bool) -> list[_RefRow]:
    """Validate references to enrol (the same checks as every backend: `validation.references`)."""
    checked = v.references(refs, dim, max_items=settings.max_references_per_call, tolerance=settings.norm_tolerance,
                           max_image_bytes=settings.max_image_bytes, keep_images=keep_images)
    return [_RefRow(_vec_text(c.embedding.tolist()), c.source, c.content_sha256, c.image) for c in checked]


__all__ = ["PostgresCatalog", "PostgresStats", "redact"]
