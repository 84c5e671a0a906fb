"""`CatalogSchema`: the shared catalog's tables, their SQL names, the identity claim, versions and stored tuning.

Schema (created idempotently at open, under a database-wide advisory lock; every name qualified by the schema):
- `meta`: one row, the catalog's identity (fingerprint + dim of the model that made the embeddings, as the SQLite
  store's `claim_identity`), its version and live counters (products, references, vectors in the index), and the
  last measured HNSW search width (`tuned_*`: settings, size, width, recall), which the other replicas reuse.
- `catalog_version` (SEQUENCE): every write transaction sets `meta.version` from it, as its last statement, only
  when it changed something (`bump`); refused writes and all-duplicate enrolments leave the version as it is. The
  row lock on `meta` orders concurrent writers, so versions follow commit order; `version()` reads `meta.version`
  (MVCC: never ahead of the data it stands for). Each bump also sends `NOTIFY skulens_catalog,
  '<schema>:<version>'`.
- `products`: product ids `COLLATE "C"` (code-point order, keyset pages), labels `jsonb` (GIN, `@>` filters), the
  live reference count, and `deleted_at` (tombstone; a unique index over the live rows lets a deleted id be
  created again as a new product whose old references do not come back).
- `refs`: reference id (from the `reference_ids` sequence: never reused), product, source, content sha256, the
  image (`bytea`, when kept), an optional region box (x, y, w, h in pixels: the crop the reference is of; NULL: the
  whole image; (sha, region) is unique per live product), the client's enrolment `request_id` (AIP-155; unique
  among live references: a deleted reference forgets it) and `deleted_at` (tombstone).
- `meta.migration`: the model migration's state (`skulens.catalog.migration_state`, JSON; NULL: none).
- `embeddings`: (fingerprint, reference id) → `vector` (untyped, so several models fit one table; enrolments
  write it by binary COPY, `postgres_binary`; STORAGE MAIN keeps it in the row), with one partial HNSW index per
  fingerprint:
  `USING hnsw ((embedding::vector(DIM)) vector_ip_ops) WHERE fingerprint = '…'` (`create_index`).
  Inner product, because embeddings are unit-norm (cosine); pgvector's `<#>` is the NEGATIVE inner product.
  A second model (re-embedding) adds rows and an index, not a table.

A current schema is only read at open: DDL, even IF NOT EXISTS, would take table locks that wait for (and hold
up) other replicas' writes.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from skulens.catalog import postgres_bulk, postgres_feed, postgres_head, postgres_text
from skulens.catalog.errors import CatalogError, InvalidArgument
from skulens.catalog.models import RequestedReference, region_of
from skulens.catalog.postgres_binary import embedding_copy
from skulens.catalog.postgres_pool import Conn, ConnectionPool, first_line, lost, one_row
from skulens.catalog.settings import CatalogSettings

SCHEMA_VERSION = 6  # 2: meta.migration (model migration state); 3: refs.request_id; 4: head statistics;
# 5: products.description + the keyword-search tsvector (`postgres_text`); 6: the change feed (`postgres_feed`)
PGVECTOR_MIN = (0, 8, 0)  # iterative index scans
NOTIFY_CHANNEL = "skulens_catalog"
_DDL_LOCK = "skulens.catalog schema"  # advisory lock key (hashed): one installer at a time per database

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
    # schema 2: the region is part of a reference's duplicate identity (two crops of one photo are two references)
    "DROP INDEX IF EXISTS {S}.refs_live_product_sha",
    "CREATE UNIQUE INDEX IF NOT EXISTS refs_live_product_sha_region ON {refs} (product_pk, content_sha256, "
    "coalesce(region_x, -1), coalesce(region_y, -1), coalesce(region_w, -1), coalesce(region_h, -1)) "
    "WHERE deleted_at IS NULL AND content_sha256 IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS {embeddings} (
        reference_id bigint NOT NULL REFERENCES {refs} (reference_id),
        fingerprint text NOT NULL,
        embedding vector NOT NULL,
        PRIMARY KEY (fingerprint, reference_id))""",
    # vectors stay in the row (a 512-d one is 2 KB, past the 2 KB TOAST threshold: out of line, every read of one
    # was a TOAST index lookup and fetch); MAIN still moves one out of line when a row would not fit a page
    "ALTER TABLE {embeddings} ALTER COLUMN embedding SET STORAGE MAIN",
    "ALTER TABLE {meta} ADD COLUMN IF NOT EXISTS migration text",
    # a product's reference rows, tombstones included: the purge's "no reference left" test and the foreign key's
    # check when a purged product's row goes (`postgres_purge`), without a scan of `refs` per product
    "CREATE INDEX IF NOT EXISTS refs_product ON {refs} (product_pk)",
    *postgres_head.DDL,
    "ALTER TABLE {meta} ADD COLUMN IF NOT EXISTS verdict_thresholds text",  # schema 4: `skulens.catalog.thresholds`
    # schema 3: the enrolment request id (AIP-155) that added a reference, remembered while the reference lives
    "ALTER TABLE {refs} ADD COLUMN IF NOT EXISTS request_id text",
    "CREATE UNIQUE INDEX IF NOT EXISTS refs_live_request_id ON {refs} (request_id) "
    "WHERE deleted_at IS NULL AND request_id IS NOT NULL",
    *postgres_text.DDL,  # schema 5: keyword search
    *postgres_feed.DDL,  # schema 6: the change feed of local copies (`skulens.catalog.mirror`)
)


#: The `refs` columns `insert_references` copies, in order (binary COPY needs their types).
_REF_TYPES = ("int8", "int8", "text", "text", "bytea", "float8", "int4", "int4", "int4", "int4", "text")


@dataclass(frozen=True)
class RefRow:
    """A validated reference to enrol, as it is written."""

    embedding: np.ndarray  # float32 [dim] (written in pgvector's binary form)
    source: str
    sha: str | None
    image: bytes | None
    region: tuple[int, int, int, int] | None = None
    request_id: str | None = None


def vec_text(row: list[float]) -> str:
    """pgvector's text form of one vector ('[x, y, …]', shortest round-trip decimals of the float32 values)."""
    return str(row)


def parse_vec(text: str) -> np.ndarray:
    """A vector from pgvector's text form."""
    return np.asarray(text.strip()[1:-1].split(","), dtype=np.float32)


def _check_pgvector(version: str) -> str:
    """`version` when it is recent enough, else CatalogError."""
    if tuple(int(x) for x in re.findall(r"\d+", version)[:3]) < PGVECTOR_MIN:
        raise CatalogError(f"pgvector {version} is too old: the shared catalog needs pgvector >= "
                           f"{'.'.join(map(str, PGVECTOR_MIN))} (iterative index scans); "
                           "run `ALTER EXTENSION vector UPDATE` after upgrading it")
    return version


def current_schema(pool: ConnectionPool) -> str:
    """The connection's current schema (where the catalog lives when `open` is given none)."""
    conn, _ = pool.acquire()
    reuse = False
    try:
        row = conn.execute("SELECT current_schema()").fetchone()
        reuse = True
    except psycopg.Error as exc:
        raise (pool.unavailable(exc) if lost(conn, exc) else CatalogError(
            f"shared catalog at {pool.describe}: {pool.scrub(first_line(exc))}")) from None
    finally:
        pool.release(conn, reuse=reuse)
    if row is None or not row[0]:
        raise InvalidArgument("the connection has no current schema (empty search_path): pass schema=…",
                              field="schema")
    return str(row[0])


class CatalogSchema:
    """The catalog in `schema` for the model `fingerprint` / `dim`: its SQL names, the statements that create and
    claim it, and those several calls share (version bump, reference inserts, counts, stored tuning). Immutable;
    its methods take the connection (and run in the caller's transaction)."""

    def __init__(self, schema: str, fingerprint: str, dim: int) -> None:
        self.schema = schema
        self.fingerprint = fingerprint
        self.dim = dim
        lit = sql.Literal
        qualified = ".".join('"' + part.replace('"', '""') + '"' for part in (schema,))
        self._names: dict[str, sql.Composable] = {
            "S": sql.Identifier(schema),
            "meta": sql.Identifier(schema, "meta"),
            "products": sql.Identifier(schema, "products"),
            "refs": sql.Identifier(schema, "refs"),
            "embeddings": sql.Identifier(schema, "embeddings"),
            "head_journal": sql.Identifier(schema, "head_journal"),
            "head_stats": sql.Identifier(schema, "head_stats"),
            "head_gram": sql.Identifier(schema, "head_gram"),
            "head_products": sql.Identifier(schema, "head_products"),
            "aug_embeddings": sql.Identifier(schema, "aug_embeddings"),
            "changes": sql.Identifier(schema, "changes"),
            "version_seq": lit(f"{qualified}.catalog_version"),
            "ref_seq": lit(f"{qualified}.reference_ids"),
            "fp": lit(fingerprint),
            "dim": sql.SQL(str(int(dim))),
            "channel": lit(NOTIFY_CHANNEL),
            "schema_lit": lit(schema),
        }

    def q(self, text: str) -> sql.Composed:
        """`text` with its `{name}` fields (tables, sequences, fp, dim, …) filled in."""
        return sql.SQL(text).format(**self._names)

    def regclass(self, table: str) -> str:
        """The schema-qualified, quoted name of `table` (for `to_regclass`, `::regclass`)."""
        return ".".join('"' + p.replace('"', '""') + '"' for p in (self.schema, table))

    def index_name(self) -> str:
        """Name of the partial HNSW index of this catalog's fingerprint and dimension."""
        digest = hashlib.sha256(f"{self.fingerprint}\0{self.dim}".encode()).hexdigest()[:16]
        return f"embeddings_hnsw_{digest}"

    # ================================================================ install, claim
    def install(self, conn: Conn) -> tuple[str, int, tuple[str, str]]:
        """Create what is missing (extension, schema, tables, indexes), claim the identity; (fingerprint, dim,
        (server version, pgvector version)) of the catalog. A current schema is only read."""
        if one_row(conn.execute("SELECT to_regclass(%s) IS NOT NULL", (self.regclass("meta"),)))[0]:
            meta = conn.execute(self.q("SELECT schema_version, fingerprint, dim FROM {meta}")).fetchone()
            ext = conn.execute("SELECT extversion, current_setting('server_version') FROM pg_extension "
                               "WHERE extname = 'vector'").fetchone()
            if meta is not None and int(meta[0]) == SCHEMA_VERSION and ext is not None:
                return str(meta[1]), int(meta[2]), (str(ext[1]), _check_pgvector(str(ext[0])))
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_DDL_LOCK,))
        versions = _create_extension(conn)
        for stmt in _DDL:
            conn.execute(self.q(stmt))
        meta = conn.execute(self.q("SELECT schema_version, fingerprint, dim FROM {meta}")).fetchone()
        if meta is None:
            conn.execute(self.q(
                "INSERT INTO {meta} (schema_version, catalog_uuid, fingerprint, dim, created_at) "
                "VALUES (%s, %s, %s, %s, %s)"), (SCHEMA_VERSION, uuid.uuid4().hex, self.fingerprint, self.dim,
                                                time.time()))
            self.bump(conn)
            return self.fingerprint, self.dim, versions
        if int(meta[0]) > SCHEMA_VERSION:
            raise CatalogError(f"the shared catalog in schema {self.schema!r} has schema version {meta[0]}; this "
                               f"skulens supports up to {SCHEMA_VERSION} (upgrade skulens)")
        if int(meta[0]) < SCHEMA_VERSION:  # the DDL above added what the newer schema has
            if int(meta[0]) < 4:  # the head statistics of the embeddings stored before schema 4
                conn.execute(self.q(postgres_head.SEED))
                postgres_head.fold(conn, self)
            conn.execute(self.q("UPDATE {meta} SET schema_version = %s"), (SCHEMA_VERSION,))
        return str(meta[1]), int(meta[2]), versions

    def create_index(self, conn: Conn, settings: CatalogSettings) -> None:
        """Create the partial HNSW index of this fingerprint unless it exists (`hnsw_m`, `hnsw_ef_construction`)."""
        if one_row(conn.execute("SELECT to_regclass(%s) IS NOT NULL", (self.regclass(self.index_name()),)))[0]:
            return
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_DDL_LOCK,))
        m = int(settings.hnsw_m)
        # pgvector builds the graph in maintenance_work_mem (64 MB by default: about 20,000 512-d vectors), far
        # slower once it no longer fits; raised for this build to what the rows need (postgres_bulk.build_memory)
        rows = int(one_row(conn.execute(self.q("SELECT count(*) FROM {embeddings} WHERE fingerprint = {fp}")))[0])
        conn.execute("SELECT set_config('maintenance_work_mem', greatest(pg_size_bytes(current_setting("
                     "'maintenance_work_mem')) / 1024, %s)::text || 'kB', true)",
                     (postgres_bulk.build_memory(rows, self.dim, m, settings.index_build_memory_mb << 20) // 1024,))
        conn.execute(sql.SQL(
            "CREATE INDEX IF NOT EXISTS {index} ON {embeddings} USING hnsw ((embedding::vector({dim})) "
            "vector_ip_ops) WITH (m = {m}, ef_construction = {efc}) WHERE fingerprint = {fp}").format(
                index=sql.Identifier(self.index_name()), m=sql.Literal(m),
                efc=sql.Literal(max(int(settings.hnsw_ef_construction), 2 * m)), **self._names))

    # ================================================================ meta
    def bump(self, conn: Conn, *, products: int = 0, refs: int = 0, indexed: int = 0) -> int:
        """Set the next catalog version (the last statement of a write that changed something) and NOTIFY it;
        the live counters change by `products`, `refs` and `indexed`."""
        row = conn.execute(self.q(
            "WITH b AS (UPDATE {meta} SET version = GREATEST(nextval({version_seq}), version + 1), "
            "live_products = live_products + %(p)s, live_refs = live_refs + %(r)s, "
            "indexed_refs = indexed_refs + %(i)s RETURNING version) "
            "SELECT version, pg_notify({channel}, {schema_lit} || ':' || version) FROM b"),
            {"p": products, "r": refs, "i": indexed}).fetchone()
        assert row is not None
        postgres_feed.stamp(conn, self, int(row[0]))  # the change feed: this transaction's changes get the version
        postgres_head.fold(conn, self)  # the head statistics follow the write, under the meta row lock
        return int(row[0])

    def insert_references(self, conn: Conn, new: Sequence[tuple[int, RefRow]]) -> list[int]:
        """Write new references, (product pk, row) each: rows and vectors by binary COPY (`postgres_binary`), and
        the products' reference counts; their ids, in order."""
        ids = sorted(int(x[0]) for x in conn.execute(self.q(
            "SELECT nextval({ref_seq}) FROM generate_series(1, %s)"), (len(new),)).fetchall())
        now = time.time()
        with conn.cursor() as cur:
            with cur.copy(self.q(
                    "COPY {refs} (reference_id, product_pk, source, content_sha256, image, created_at, region_x, "
                    "region_y, region_w, region_h, request_id) FROM STDIN (FORMAT BINARY)")) as copy:
                copy.set_types(_REF_TYPES)
                for rid, (pk, r) in zip(ids, new, strict=True):
                    copy.write_row((rid, pk, r.source, r.sha, r.image, now, *(r.region or (None,) * 4), r.request_id))
            with cur.copy(self.q(
                    "COPY {embeddings} (reference_id, fingerprint, embedding) FROM STDIN (FORMAT BINARY)")) as copy:
                copy.write(embedding_copy(ids, self.fingerprint, np.stack([r.embedding for _, r in new])))
        counts: dict[int, int] = {}
        for pk, _ in new:
            counts[pk] = counts.get(pk, 0) + 1
        conn.execute(self.q(
            "UPDATE {products} p SET reference_count = p.reference_count + x.n "
            "FROM unnest(%s::bigint[], %s::integer[]) AS x(pk, n) WHERE p.pk = x.pk"),
            (list(counts), list(counts.values())))
        return ids

    def requested(self, conn: Conn, request_ids: Sequence[str], *, lock: bool = False
                  ) -> dict[str, RequestedReference]:
        """The live references these enrolment request ids added, by request id. `lock`: first take a transaction
        lock on each id (writers naming one id take turns; the product row lock already orders one product's)."""
        if not request_ids:
            return {}
        ids = sorted(set(request_ids))
        if lock:
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('skulens.request_id:' || x, 0)) "
                         "FROM unnest(%s::text[]) AS x ORDER BY x", (ids,))
        rows = conn.execute(self.q(
            "SELECT r.request_id, r.reference_id, p.product_id, r.content_sha256, r.region_x, r.region_y, r.region_w, "
            "r.region_h FROM {refs} r JOIN {products} p ON p.pk = r.product_pk "
            "WHERE r.deleted_at IS NULL AND r.request_id = ANY(%s)"), (ids,)).fetchall()
        return {str(r[0]): RequestedReference(str(r[0]), int(r[1]), str(r[2]), str(r[3]), region_of(r[4:8]))
                for r in rows}

    def counts(self, conn: Conn) -> tuple[Any, ...]:
        """(version, live references, indexed vectors, and counted: live products, live references, those with an
        image, the tables' total size on disk in bytes)."""
        sizes = " + ".join(f"pg_total_relation_size(%(t{i})s::regclass)" for i in range(4))
        row = conn.execute(self.q(
            "SELECT m.version, m.live_refs, m.indexed_refs, "
            "(SELECT count(*) FROM {products} WHERE deleted_at IS NULL), "
            "(SELECT count(*) FROM {refs} WHERE deleted_at IS NULL), "
            "(SELECT count(*) FROM {refs} WHERE deleted_at IS NULL AND image IS NOT NULL), " + sizes
            + " FROM {meta} m"), {f"t{i}": self.regclass(t)
                                   for i, t in enumerate(("meta", "products", "refs", "embeddings"))}).fetchone()
        assert row is not None
        return tuple(row)

    def stored_tuning(self, conn: Conn) -> tuple[Any, ...]:
        """(live references, and the last measurement's settings, references, width and recall; None if none)."""
        return one_row(conn.execute(self.q(
            "SELECT live_refs, tuned_config, tuned_refs, tuned_width, tuned_recall FROM {meta}")))

    def store_tuning(self, conn: Conn, config: str, refs: int, width: int, recall: float) -> None:
        """Store a measurement for the other replicas (not a catalog write: the version stays)."""
        conn.execute(self.q(
            "UPDATE {meta} SET tuned_config = %s, tuned_refs = %s, tuned_width = %s, tuned_recall = %s"),
            (config, refs, width, recall))


def _create_extension(conn: Conn) -> tuple[str, str]:
    """Create pgvector when absent (CatalogError when it cannot be); (server version, pgvector version)."""
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
    return str(row[1]), _check_pgvector(str(row[0]))


__all__ = ["NOTIFY_CHANNEL", "SCHEMA_VERSION", "CatalogSchema", "RefRow", "current_schema", "parse_vec", "vec_text"]
