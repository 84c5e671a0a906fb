"""SQLite (WAL) store: the catalog's source of truth.

Every write is one `BEGIN IMMEDIATE … COMMIT` transaction that also increments the `generation` counter in
`meta`; a method returns only after COMMIT, so an acknowledged write is durable (see
`CatalogSettings.synchronous` for what that means on power loss). The FAISS index is derived from this store
and stamped with the generation it reflects. Inputs are validated by the caller (`skulens.catalog.validation`).

Durability choice: in WAL mode a commit appends the transaction's frames to the `-wal` file with write(2)
before COMMIT returns, so the data sit in the OS page cache and survive the process being SIGKILLed with
either synchronous level. `synchronous=FULL` (default) also fsyncs the WAL at every commit, so an
acknowledged write survives power loss or a kernel crash too; `NORMAL` only fsyncs at checkpoints (a power
loss may lose the last acknowledged commits, never corrupts). Enrolment writes are rare and batched per call,
so one fsync per commit (about a millisecond on SSD) is a cheap price for "acknowledged means durable".
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skulens.catalog import store_head, store_text
from skulens.catalog.errors import (
    AlreadyExists,
    CatalogClosed,
    CatalogCorrupt,
    CatalogError,
    EtagMismatch,
    NotFound,
    RequestIdReused,
)
from skulens.catalog.head import HeadStats
from skulens.catalog.models import (
    ExportedReference,
    Product,
    ReferenceInfo,
    RequestedReference,
    TextMatch,
    region_of,
)
from skulens.catalog.text_search import TextQuery
from skulens.errors import field_path

SCHEMA_VERSION = 5

# MIGRATIONS[v] upgrades a store at schema v-1 to v; each runs in one transaction with the version bump.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
        """CREATE TABLE products (
            pk INTEGER PRIMARY KEY AUTOINCREMENT,
            product_id TEXT NOT NULL UNIQUE,
            display_name TEXT NOT NULL DEFAULT '',
            category TEXT NOT NULL DEFAULT '',
            labels TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL)""",
        "CREATE INDEX products_category ON products(category, product_id)",
        # AUTOINCREMENT: reference ids are never reused, so a stale id can never name another image and the
        # index (keyed by reference_id) never confuses a deleted vector with a new one.
        """CREATE TABLE refs (
            reference_id INTEGER PRIMARY KEY AUTOINCREMENT,
            product_pk INTEGER NOT NULL REFERENCES products(pk) ON DELETE CASCADE,
            embedding BLOB NOT NULL,
            fingerprint TEXT NOT NULL,
            source TEXT NOT NULL DEFAULT '',
            content_sha256 TEXT,
            has_image INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL)""",
        "CREATE INDEX refs_product ON refs(product_pk)",
        "CREATE UNIQUE INDEX refs_product_sha ON refs(product_pk, content_sha256) "
        "WHERE content_sha256 IS NOT NULL",
        # Images live apart so that scanning embeddings (index rebuild) never pages through image blobs.
        """CREATE TABLE ref_images (
            reference_id INTEGER PRIMARY KEY REFERENCES refs(reference_id) ON DELETE CASCADE,
            image BLOB NOT NULL)""",
        # `reembed` writes new embeddings here, then swaps them in with one transaction.
        """CREATE TABLE reembed_staging (
            reference_id INTEGER PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            embedding BLOB,
            error TEXT)""",
    ),
    # Model migration (`skulens.catalog.migration_state`): embeddings of the space besides the serving one
    # (candidate or previous model), keyed like PostgreSQL's `embeddings`; the state JSON lives in meta.
    2: (
        """CREATE TABLE space_embeddings (
            fingerprint TEXT NOT NULL,
            reference_id INTEGER NOT NULL REFERENCES refs(reference_id) ON DELETE CASCADE,
            embedding BLOB NOT NULL,
            PRIMARY KEY (fingerprint, reference_id)) WITHOUT ROWID""",
        "CREATE INDEX space_embeddings_ref ON space_embeddings(reference_id)",
        # A reference's region (the crop it is of; NULL: the whole image) is stored and part of its duplicate
        # identity: two crops of one photo are two references.
        "ALTER TABLE refs ADD COLUMN region_x INTEGER",
        "ALTER TABLE refs ADD COLUMN region_y INTEGER",
        "ALTER TABLE refs ADD COLUMN region_w INTEGER",
        "ALTER TABLE refs ADD COLUMN region_h INTEGER",
        "DROP INDEX refs_product_sha",
        "CREATE UNIQUE INDEX refs_product_sha_region ON refs(product_pk, content_sha256, ifnull(region_x, -1), "
        "ifnull(region_y, -1), ifnull(region_w, -1), ifnull(region_h, -1)) WHERE content_sha256 IS NOT NULL",
    ),
    # Enrolment request ids (AIP-155): the client's id of the message that added a reference, kept with it (and
    # gone with it), so that a retry answers the original outcome.
    3: (
        "ALTER TABLE refs ADD COLUMN request_id TEXT",
        "CREATE UNIQUE INDEX refs_request_id ON refs(request_id) WHERE request_id IS NOT NULL",
    ),
    # Catalog-adapted matching: normal-equation statistics kept by triggers + a journal (`store_head`).
    4: store_head.MIGRATION,
    # Keyword search: products.description and an FTS5 index kept by triggers (`store_text`).
    5: store_text.MIGRATION,
}


@dataclass(frozen=True)
class ProductRow:
    """A products row as the catalog keeps it in memory."""

    pk: int
    product_id: str
    display_name: str
    category: str
    labels: dict[str, str]
    created_at: float
    updated_at: float
    description: str = ""  # read only where a product is answered (not kept in the in-memory view)

    def to_product(self, reference_count: int) -> Product:
        return Product(self.product_id, self.display_name, self.category, dict(self.labels), reference_count,
                       self.created_at, self.updated_at, self.description)


@dataclass(frozen=True)
class RefRow:
    """A reference to insert (already validated): float32 embedding bytes and optional image."""

    embedding: bytes
    source: str
    content_sha256: str | None
    image: bytes | None
    space_embedding: bytes | None = None  # the other space's vector (model migration), if known
    region: tuple[int, int, int, int] | None = None  # the crop (x, y, width, height); None: the whole image
    request_id: str | None = None  # the client's request id (AIP-155); needs content_sha256


@dataclass(frozen=True)
class Meta:
    """The catalog identity kept in `meta`."""

    schema_version: int
    catalog_uuid: str
    generation: int
    fingerprint: str | None
    dim: int | None


REQUIRED_TABLES = ("meta", "products", "refs", "ref_images", "reembed_staging", "space_embeddings")
REQUIRED_META = ("schema_version", "catalog_uuid", "generation")


def remedy(path: Path) -> str:
    """What to do about a damaged or lost catalog whose store is `path` (said in every refusal)."""
    d = path.parent
    return (f"restore {d} from a backup, or move {d} aside to start with an empty catalog; "
            f"`skulens catalog check --data {d}` reports what is wrong")


def store_error(path: Path, exc: sqlite3.Error) -> CatalogError:
    """The domain error for an SQLite error on the store at `path`: it names the file and what to do."""
    name = str(getattr(exc, "sqlite_errorname", ""))
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return CatalogCorrupt(f"catalog store {path} is damaged ({exc}); {remedy(path)}")
    if name.startswith("SQLITE_READONLY"):
        return CatalogError(f"catalog store {path} is read-only ({exc}): skulens needs write access to the file, "
                            "its -wal and -shm files and its directory; fix the permissions or the mount")
    return CatalogError(f"cannot use catalog store {path} ({exc}): check that it is a database file and that "
                        "it and its directory are readable and writable")


def sqlite_findings(rows: list[str], limit: int = 5) -> str:
    """SQLite check output (integrity_check / quick_check rows) as one line."""
    lines = [ln.strip() for row in rows for ln in row.splitlines() if ln.strip() and not ln.startswith("***")]
    more = f" (+{len(lines) - limit} more)" if len(lines) > limit else ""
    return "; ".join(lines[:limit]) + more


def table_names(conn: sqlite3.Connection) -> set[str]:
    """Names of the tables in the database."""
    return {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _check_file(conn: sqlite3.Connection, path: Path, evidence: Sequence[str]) -> None:
    """Cheap checks before anything is written: `PRAGMA quick_check`, then a schema that is either absent (a
    new store, allowed only without `evidence` that the catalog held data) or has its `meta` rows."""
    try:
        rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
    except sqlite3.DatabaseError as exc:  # some damage stops the check itself
        if str(getattr(exc, "sqlite_errorname", "")).startswith("SQLITE_CORRUPT"):
            rows = [str(exc)]
        else:
            raise
    if rows != ["ok"]:
        raise CatalogCorrupt(f"catalog store {path} failed SQLite's quick_check ({sqlite_findings(rows)}); "
                             f"{remedy(path)}")
    tables = table_names(conn)
    if "meta" not in tables:
        if evidence:
            raise CatalogCorrupt(f"catalog store {path} holds no catalog schema, yet {' and '.join(evidence)}: "
                                 f"the catalog's data are lost; {remedy(path)}")
        if tables - {"sqlite_sequence"}:
            raise CatalogCorrupt(f"{path} is an SQLite database but not a skulens catalog (tables "
                                 f"{sorted(tables)}); use another directory")
        return
    kv = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    missing = [k for k in REQUIRED_META if k not in kv]
    bad = [k for k in ("schema_version", "generation") if k in kv and not str(kv[k]).isdigit()]
    if missing or bad:
        what = ", ".join([f"{k} missing" for k in missing] + [f"{k} is {kv[k]!r}" for k in bad])
        raise CatalogCorrupt(f"catalog store {path} has damaged metadata ({what}); {remedy(path)}")


def _connect(path: Path, synchronous: str, busy_timeout_ms: int,
             evidence: Sequence[str] = ()) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                           timeout=busy_timeout_ms / 1000.0)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        _check_file(conn, path, evidence)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise CatalogError(f"catalog store {path} could not switch to WAL journal mode (got {mode!r})")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        conn.close()
        raise
    return conn


_PRODUCT_COLS = "p.pk, p.product_id, p.display_name, p.category, p.labels, p.created_at, p.updated_at"


def _product_from_row(r: Any, description: str = "") -> ProductRow:
    return ProductRow(int(r[0]), str(r[1]), str(r[2]), str(r[3]), json.loads(r[4]), float(r[5]), float(r[6]),
                      description)


def _labels_json(labels: dict[str, str]) -> str:
    return json.dumps(labels, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


class Store:
    """Thread-safe access to one catalog database file (one connection, one lock).

    Opening runs `PRAGMA quick_check` and checks the schema and metadata: a damaged store raises
    `CatalogCorrupt`, and so does a store without schema when `evidence` (phrases such as "index.snapshot
    exists") says the catalog held data; any other SQLite error names the file (`store_error`).
    """

    def __init__(self, path: Path, synchronous: str = "FULL", busy_timeout_ms: int = 10_000, *,
                 evidence: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        try:
            self._conn = _connect(self.path, synchronous, busy_timeout_ms, evidence)
            self._migrate()
            tables = table_names(self.conn)
            missing = [t for t in REQUIRED_TABLES if t not in tables]
            if missing:
                raise CatalogCorrupt(f"catalog store {self.path} lacks the tables {missing}; {remedy(self.path)}")
        except sqlite3.Error as exc:
            self.close()
            raise store_error(self.path, exc) from exc
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- plumbing
    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise CatalogClosed("catalog store is closed")
        return self._conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE); commits on success, rolls back on any exception."""
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _migrate(self) -> None:
        conn = self.conn
        with self._lock:
            has_meta = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
            current = 0
            if has_meta:
                row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                current = int(row[0]) if row else 0
            if current > SCHEMA_VERSION:
                raise CatalogError(f"catalog store {self.path} has schema version {current}; this skulens "
                                   f"supports up to {SCHEMA_VERSION} (upgrade skulens)")
            for version in range(current + 1, SCHEMA_VERSION + 1):
                with self.transaction() as tx:
                    for stmt in MIGRATIONS[version]:
                        tx.execute(stmt)
                    if version == 4:
                        store_head.fold(tx)  # the statistics of the references stored before schema 4
                    if version == 1:
                        now = repr(time.time())
                        tx.executemany("INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)", [
                            ("catalog_uuid", uuid.uuid4().hex), ("generation", "0"), ("created_at", now)])
                    tx.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                               (str(version),))

    def close(self) -> None:
        """Checkpoint the WAL into the database file and close the connection (idempotent)."""
        with self._lock:
            if self._conn is None:
                return
            try:
                self._conn.execute("PRAGMA optimize")
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass  # another connection may hold a read lock; the checkpoint happens later
            self._conn.close()
            self._conn = None

    @staticmethod
    def _bump(tx: sqlite3.Connection) -> int:
        store_head.fold(tx)  # the head statistics follow the references in the same transaction
        tx.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
        return int(tx.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])

    # ---------------------------------------------------------------- meta
    def meta(self) -> Meta:
        with self._lock:
            kv = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
        return Meta(int(kv["schema_version"]), kv["catalog_uuid"], int(kv["generation"]),
                    kv.get("fingerprint"), int(kv["dim"]) if "dim" in kv else None)

    def generation(self) -> int:
        with self._lock:
            return int(self.conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])

    def meta_value(self, key: str) -> str | None:
        """One `meta` value (None when unset)."""
        with self._lock:
            row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta_value(self, key: str, value: str) -> int:
        """Set one `meta` value in a write transaction; the new generation."""
        with self.transaction() as tx:
            tx.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))
            return self._bump(tx)

    def head_stats(self, fingerprint: str, dim: int) -> HeadStats:
        """The catalog-adapted matching statistics of a model space, with the generation they belong to."""
        with self._lock:
            conn = self.conn
            gen = int(conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])
            return store_head.read(conn, fingerprint, dim, gen)

    def claim_identity(self, fingerprint: str, dim: int) -> Meta:
        """Record the model fingerprint and dimension unless the store has them; return the stored ones."""
        with self.transaction() as tx:
            if tx.execute("SELECT 1 FROM meta WHERE key='fingerprint'").fetchone() is None:
                tx.executemany("INSERT INTO meta(key, value) VALUES (?, ?)",
                               [("fingerprint", fingerprint), ("dim", str(int(dim)))])
                self._bump(tx)
        return self.meta()

    # ---------------------------------------------------------------- products
    def upsert_product(self, product_id: str, display_name: str, category: str, labels: dict[str, str],
                       create_only: bool = False, fields: frozenset[str] | None = None,
                       expected_etag: str | None = None,
                       description: str = "") -> tuple[ProductRow, bool, int, int]:
        """Create or update a product; returns (row as stored, created, reference count, generation).

        An existing product gets the `fields` given (None: display_name, category, labels and description all);
        with `create_only` it raises `AlreadyExists` and nothing is written.
        """
        now = time.time()
        lj = _labels_json(labels)
        with self.transaction() as tx:
            if expected_etag is not None:
                self._check_etag(tx, product_id, expected_etag)
            row = tx.execute("SELECT pk, created_at FROM products WHERE product_id = ?",
                             (product_id,)).fetchone()
            if row is None:
                cur = tx.execute(
                    "INSERT INTO products(product_id, display_name, category, labels, created_at, "
                    "updated_at, description) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (product_id, display_name, category, lj, now, now, description))
                pk, created_at, created = int(cur.lastrowid or 0), now, True
            elif create_only:
                raise AlreadyExists(f"product {product_id!r} exists already (create_only)", field="product_id")
            else:
                pk, created_at, created = int(row[0]), float(row[1]), False
                values = {"display_name": display_name, "category": category, "labels": lj,
                          "description": description}
                chosen = [c for c in values if fields is None or c in fields]
                tx.execute(f"UPDATE products SET {''.join(f'{c}=?, ' for c in chosen)}updated_at=? WHERE pk=?",
                           (*(values[c] for c in chosen), now, pk))
                display_name, category, stored, description = tx.execute(
                    "SELECT display_name, category, labels, description FROM products WHERE pk = ?",
                    (pk,)).fetchone()
                labels = json.loads(stored)
            count = int(tx.execute("SELECT COUNT(*) FROM refs WHERE product_pk = ?", (pk,)).fetchone()[0])
            gen = self._bump(tx)
        row_ = ProductRow(pk, product_id, display_name, category, dict(labels), created_at, now, description)
        return row_, created, count, gen

    def _product_pk(self, tx: sqlite3.Connection, product_id: str) -> int:
        row = tx.execute("SELECT pk FROM products WHERE product_id = ?", (product_id,)).fetchone()
        if row is None:
            raise NotFound(f"product {product_id!r} does not exist", field="product_id")
        return int(row[0])

    def _check_etag(self, tx: sqlite3.Connection, product_id: str, expected: str) -> None:
        """NotFound / EtagMismatch unless the stored product has etag `expected` (inside the caller's write)."""
        row = tx.execute(f"SELECT {_PRODUCT_COLS} FROM products p WHERE p.product_id = ?", (product_id,)).fetchone()
        if row is None:
            raise NotFound(f"product {product_id!r} does not exist (the request names its etag)", field="product_id")
        etag = _product_from_row(row).to_product(0).etag
        if etag != expected:
            raise EtagMismatch.between(product_id, expected, etag)

    def delete_product(self, product_id: str, expected_etag: str | None = None) -> tuple[int, list[int], int]:
        """Delete a product and its references; returns (product pk, removed reference ids, generation)."""
        with self.transaction() as tx:
            if expected_etag is not None:
                self._check_etag(tx, product_id, expected_etag)
            pk = self._product_pk(tx, product_id)
            ids = [int(r[0]) for r in tx.execute(
                "SELECT reference_id FROM refs WHERE product_pk = ? ORDER BY reference_id", (pk,))]
            tx.execute("DELETE FROM products WHERE pk = ?", (pk,))  # cascades to refs and ref_images
            gen = self._bump(tx)
        return pk, ids, gen

    def get_product(self, product_id: str) -> tuple[ProductRow, list[ReferenceInfo]]:
        with self._lock:
            row = self.conn.execute(f"SELECT {_PRODUCT_COLS}, p.description FROM products p WHERE p.product_id = ?",
                                    (product_id,)).fetchone()
            if row is None:
                raise NotFound(f"product {product_id!r} does not exist", field="product_id")
            refs = self.conn.execute(
                "SELECT reference_id, source, content_sha256, has_image, created_at, region_x, region_y, region_w, "
                "region_h FROM refs WHERE product_pk = ? ORDER BY reference_id", (int(row[0]),)).fetchall()
        return _product_from_row(row, str(row[7])), [
            ReferenceInfo(int(r[0]), str(r[1]), r[2], bool(r[3]), float(r[4]), region_of(r[5:9])) for r in refs]

    def list_products(self, after: str, limit: int, category: str) -> list[tuple[ProductRow, int]]:
        """Products with product_id > `after` in product_id order (of one category if given) + ref counts."""
        sql = (f"SELECT {_PRODUCT_COLS}, (SELECT COUNT(*) FROM refs r WHERE r.product_pk = p.pk), p.description "
               "FROM products p WHERE p.product_id > ?")
        args: list[object] = [after]
        if category:
            sql += " AND p.category = ?"
            args.append(category)
        sql += " ORDER BY p.product_id LIMIT ?"
        args.append(int(limit))
        with self._lock:
            rows = self.conn.execute(sql, args).fetchall()
        return [(_product_from_row(r, str(r[8])), int(r[7])) for r in rows]

    def search_text(self, query: TextQuery) -> list[TextMatch]:
        """Keyword search over the products' text (`store_text`), under the store's lock."""
        with self._lock:
            return store_text.search(self.conn, query)

    # ---------------------------------------------------------------- references
    def add_references(self, product_id: str, items: Sequence[RefRow], fingerprint: str,
                       space: str | None = None) -> tuple[int, list[tuple[int, bool, bool]], int]:
        """Insert references for one product in one transaction (with their `space_embedding` in the
        non-serving space `space` of a migration, when given).

        Returns (product pk, [(reference_id, duplicate, replayed)] in input order, generation). A reference whose
        request_id added a live reference before (this product, content and region) is not written and returns
        that id with replayed=True (duplicate False: the original outcome); the same request id with another
        product, content or region raises RequestIdReused naming ``references[k].request_id``. A reference whose
        content_sha256 matches an existing one of the same product (or an earlier one of the same call) is
        not written and returns the existing id with duplicate=True. NotFound if the product does not exist.
        """
        now = time.time()
        out: list[tuple[int, bool, bool]] = []
        with self.transaction() as tx:
            pk = self._product_pk(tx, product_id)
            seen: dict[tuple[str, tuple[int, int, int, int] | None], int] = {}
            wrote = False
            for k, it in enumerate(items):
                key = (it.content_sha256 or "", it.region)
                box = it.region or (None, None, None, None)
                if it.request_id is not None:
                    before = self._requested(tx, [it.request_id]).get(it.request_id)
                    if before is not None:
                        if (before.product_id, before.content_sha256, before.region) != (
                                product_id, it.content_sha256, it.region):
                            raise RequestIdReused.naming(before, field_path("references", k, "request_id"))
                        out.append((before.reference_id, False, True))
                        continue
                if it.content_sha256 is not None:
                    if key in seen:
                        out.append((seen[key], True, False))
                        continue
                    row = tx.execute("SELECT reference_id FROM refs WHERE product_pk = ? AND content_sha256 = ? "
                                     "AND region_x IS ? AND region_y IS ? AND region_w IS ? AND region_h IS ?",
                                     (pk, it.content_sha256, *box)).fetchone()
                    if row is not None:
                        seen[key] = int(row[0])
                        out.append((int(row[0]), True, False))
                        continue
                cur = tx.execute(
                    "INSERT INTO refs(product_pk, embedding, fingerprint, source, content_sha256, has_image, "
                    "created_at, region_x, region_y, region_w, region_h, request_id) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (pk, it.embedding, fingerprint, it.source, it.content_sha256, int(it.image is not None),
                     now, *box, it.request_id))
                rid = int(cur.lastrowid or 0)
                if it.image is not None:
                    tx.execute("INSERT INTO ref_images(reference_id, image) VALUES (?, ?)", (rid, it.image))
                if space is not None and it.space_embedding is not None:
                    tx.execute("INSERT INTO space_embeddings(fingerprint, reference_id, embedding) VALUES (?, ?, ?)",
                               (space, rid, it.space_embedding))
                if it.content_sha256 is not None:
                    seen[key] = rid
                out.append((rid, False, False))
                wrote = True
            gen = self._bump(tx) if wrote else int(
                tx.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])
        return pk, out, gen

    def requested_references(self, request_ids: Sequence[str]) -> dict[str, RequestedReference]:
        """The live references that the given enrolment request ids added: {request_id: what it added}."""
        with self._lock:
            return self._requested(self.conn, request_ids)

    @staticmethod
    def _requested(conn: sqlite3.Connection, request_ids: Sequence[str]) -> dict[str, RequestedReference]:
        wanted = list(dict.fromkeys(request_ids))
        out: dict[str, RequestedReference] = {}
        for at in range(0, len(wanted), 500):  # stay under SQLite's bound-parameter limit
            part = wanted[at:at + 500]
            rows = conn.execute(
                "SELECT r.request_id, r.reference_id, p.product_id, r.content_sha256, r.region_x, r.region_y, "
                "r.region_w, r.region_h FROM refs r JOIN products p ON p.pk = r.product_pk "
                f"WHERE r.request_id IN ({','.join('?' * len(part))})", part).fetchall()
            out.update((str(r[0]), RequestedReference(str(r[0]), int(r[1]), str(r[2]), str(r[3]), region_of(r[4:8])))
                       for r in rows)
        return out

    def existing_hashes(self, product_id: str, shas: Sequence[str]) -> dict[str, int]:
        """{content_sha256: reference_id} of the given hashes that the product holds already.

        Whole-image references only (a region's crop is another reference of the same bytes). Uses the unique
        index refs_product_sha_region (product_pk, content_sha256, region). NotFound if the product does
        not exist.
        """
        wanted = list(dict.fromkeys(shas))
        out: dict[str, int] = {}
        with self._lock:
            pk = self._product_pk(self.conn, product_id)
            for at in range(0, len(wanted), 500):  # stay under SQLite's bound-parameter limit
                part = wanted[at:at + 500]
                marks = ",".join("?" * len(part))
                rows = self.conn.execute(
                    f"SELECT content_sha256, reference_id FROM refs WHERE product_pk = ? "
                    f"AND content_sha256 IN ({marks}) AND region_x IS NULL", (pk, *part)).fetchall()
                out.update((str(r[0]), int(r[1])) for r in rows)
        return out

    def delete_reference(self, reference_id: int) -> tuple[int, int]:
        """Delete one reference; returns (product pk, generation). NotFound if absent."""
        with self.transaction() as tx:
            row = tx.execute("SELECT product_pk FROM refs WHERE reference_id = ?", (reference_id,)).fetchone()
            if row is None:
                raise NotFound(f"reference {reference_id} does not exist", field="reference_id")
            tx.execute("DELETE FROM refs WHERE reference_id = ?", (reference_id,))
            gen = self._bump(tx)
        return int(row[0]), gen

    def reference_vectors(self, reference_ids: Sequence[int], dim: int) -> np.ndarray:
        """Embeddings of the given references, in the given order (missing ones raise NotFound)."""
        out = np.empty((len(reference_ids), dim), dtype=np.float32)
        with self._lock:
            for i, rid in enumerate(reference_ids):
                row = self.conn.execute("SELECT embedding FROM refs WHERE reference_id = ?",
                                        (int(rid),)).fetchone()
                if row is None:
                    raise NotFound(f"reference {rid} does not exist", field="reference_id")
                out[i] = np.frombuffer(row[0], dtype="<f4")
        return out

    def export_references(self, after: int, limit: int) -> list[ExportedReference]:
        """Up to `limit` references with id > `after`, in id order, with product id, image and embedding."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT r.reference_id, p.product_id, r.source, r.content_sha256, i.image, r.embedding, r.region_x, "
                "r.region_y, r.region_w, r.region_h, r.request_id FROM refs r JOIN products p ON p.pk = r.product_pk "
                "LEFT JOIN ref_images i ON i.reference_id = r.reference_id "
                "WHERE r.reference_id > ? ORDER BY r.reference_id LIMIT ?", (int(after), int(limit))).fetchall()
        return [ExportedReference(int(r[0]), str(r[1]), str(r[2]), r[3], None if r[4] is None else bytes(r[4]),
                                  np.frombuffer(r[5], dtype="<f4").astype(np.float32), region_of(r[6:10]), r[10])
                for r in rows]

    def sample_embeddings(self, limit: int) -> list[np.ndarray]:
        """Embeddings of up to `limit` references drawn at random (the draw reads reference ids only)."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT embedding FROM refs WHERE reference_id IN "
                "(SELECT reference_id FROM refs ORDER BY random() LIMIT ?)", (int(limit),)).fetchall()
        return [np.frombuffer(r[0], dtype="<f4").astype(np.float32) for r in rows]

    def counts(self) -> tuple[int, int, int]:
        """(products, references, references with a stored image)."""
        with self._lock:
            p = self.conn.execute("SELECT COUNT(*) FROM products").fetchone()[0]
            r, i = self.conn.execute("SELECT COUNT(*), COALESCE(SUM(has_image), 0) FROM refs").fetchone()
        return int(p), int(r), int(i)

    def size_bytes(self) -> int:
        """Database file plus its WAL."""
        total = 0
        for suffix in ("", "-wal"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                total += p.stat().st_size
        return total

    def read_snapshot(self) -> StoreSnapshot:
        """A consistent read-only view on a fresh connection (for index builds beside ongoing writes)."""
        return StoreSnapshot(self.path, self._busy_timeout_ms)

    # ---------------------------------------------------------------- reembed
    def staging_prepare(self, fingerprint: str) -> int:
        """Drop staged rows of other target fingerprints; return how many usable rows remain for this one."""
        with self.transaction() as tx:
            tx.execute("DELETE FROM reembed_staging WHERE fingerprint != ?", (fingerprint,))
            n = tx.execute("SELECT COUNT(*) FROM reembed_staging WHERE embedding IS NOT NULL").fetchone()[0]
        return int(n)

    def images_to_reembed(self, fingerprint: str, limit: int
                          ) -> list[tuple[int, bytes, tuple[int, int, int, int] | None]]:
        """Next references with a stored image and no staged result for `fingerprint`: (id, image, region)."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT r.reference_id, i.image, r.region_x, r.region_y, r.region_w, r.region_h FROM refs r "
                "JOIN ref_images i ON i.reference_id = r.reference_id "
                "WHERE NOT EXISTS (SELECT 1 FROM reembed_staging s WHERE s.reference_id = r.reference_id "
                "AND s.fingerprint = ?) ORDER BY r.reference_id LIMIT ?",
                (fingerprint, int(limit))).fetchall()
        return [(int(r[0]), bytes(r[1]), region_of(r[2:6])) for r in rows]

    def staging_put(self, fingerprint: str, rows: Sequence[tuple[int, bytes | None, str | None]]) -> None:
        """Stage (reference_id, embedding bytes or None, error or None) rows in one transaction."""
        with self.transaction() as tx:
            tx.executemany("INSERT OR REPLACE INTO reembed_staging(reference_id, fingerprint, embedding, "
                           "error) VALUES (?, ?, ?, ?)",
                           [(rid, fingerprint, emb, err) for rid, emb, err in rows])

    def reembed_swap(self, fingerprint: str, dim: int) -> tuple[list[tuple[int, str, str]], int, int]:
        """Switch the whole catalog to the staged embeddings in one transaction.

        References without a staged embedding are deleted (their vectors belong to the old model's space).
        Returns (dropped [(reference_id, product_id, reason)], re-embedded count, generation).
        """
        with self.transaction() as tx:
            dropped = [(int(r[0]), str(r[1]), str(r[2])) for r in tx.execute(
                "SELECT r.reference_id, p.product_id, CASE WHEN s.error IS NOT NULL THEN s.error "
                "WHEN r.has_image THEN 'added while reembed ran; enrol it again' ELSE 'no stored image' END "
                "FROM refs r JOIN products p ON p.pk = r.product_pk LEFT JOIN reembed_staging s "
                "ON s.reference_id = r.reference_id AND s.fingerprint = ? "
                "WHERE s.embedding IS NULL ORDER BY r.reference_id", (fingerprint,))]
            tx.executemany("DELETE FROM refs WHERE reference_id = ?", [(d[0],) for d in dropped])
            cur = tx.execute(
                "UPDATE refs SET fingerprint = ?, embedding = (SELECT s.embedding FROM reembed_staging s "
                "WHERE s.reference_id = refs.reference_id)", (fingerprint,))
            n = int(cur.rowcount)
            tx.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('fingerprint', ?)", (fingerprint,))
            tx.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('dim', ?)", (str(int(dim)),))
            tx.execute("DELETE FROM reembed_staging")
            gen = self._bump(tx)
        return dropped, n, gen


class StoreSnapshot:
    """A read transaction on its own connection: every read sees the store at one generation."""

    def __init__(self, path: Path, busy_timeout_ms: int) -> None:
        self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                     check_same_thread=False, timeout=busy_timeout_ms / 1000.0)
        self._conn.execute("BEGIN")
        kv = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())  # starts the read snapshot
        self.generation = int(kv["generation"])
        self.catalog_uuid = str(kv["catalog_uuid"])
        self.fingerprint = kv.get("fingerprint")
        self.dim = int(kv["dim"]) if "dim" in kv else None
        self.migration: str | None = kv.get("migration")  # MigrationState JSON (None: no migration)

    def __enter__(self) -> StoreSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._conn.execute("COMMIT")
        finally:
            self._conn.close()

    def products(self) -> dict[int, ProductRow]:
        """Every product keyed by pk (kept in memory for search answers and filters)."""
        rows = self._conn.execute(f"SELECT {_PRODUCT_COLS} FROM products p").fetchall()
        return {int(r[0]): _product_from_row(r) for r in rows}

    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM refs").fetchone()[0])

    def reference_map(self) -> tuple[np.ndarray, np.ndarray]:
        """(reference ids, product pks) of every reference, as int64 arrays."""
        rows = self._conn.execute(
            "SELECT reference_id, product_pk FROM refs ORDER BY reference_id").fetchall()
        arr = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
        return arr[:, 0].copy(), arr[:, 1].copy()

    def embeddings(self, dim: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """(reference ids int64 [n], embeddings float32 [n, dim]) of every reference, read `chunk` rows at a time."""
        n = self.count()
        ids = np.empty(n, dtype=np.int64)
        vectors = np.empty((n, dim), dtype=np.float32)
        at = 0
        for chunk_ids, part in self.iter_embeddings(dim, chunk):
            ids[at:at + len(chunk_ids)] = chunk_ids
            vectors[at:at + len(chunk_ids)] = part
            at += len(chunk_ids)
        return ids[:at], vectors[:at]

    def iter_embeddings(self, dim: int, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (reference ids int64 [n], embeddings float32 [n, dim]) in reference_id order."""
        cur = self._conn.execute("SELECT reference_id, embedding FROM refs ORDER BY reference_id")
        while True:
            rows = cur.fetchmany(chunk)
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            blob = b"".join(r[1] for r in rows)
            if len(blob) != len(rows) * dim * 4:
                bad = next(r[0] for r in rows if len(r[1]) != dim * 4)
                raise CatalogError(f"reference {bad} has an embedding of the wrong size "
                                   f"(expected {dim} float32)")
            yield ids, np.frombuffer(blob, dtype="<f4").reshape(len(rows), dim).astype(np.float32, copy=False)

    def space_embeddings(self, fingerprint: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(reference ids, embeddings float32 [n, dim]) of a non-serving space (`space_embeddings` rows)."""
        rows = self._conn.execute("SELECT reference_id, embedding FROM space_embeddings WHERE fingerprint = ? "
                                  "ORDER BY reference_id", (fingerprint,)).fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        blob = b"".join(r[1] for r in rows)
        if len(blob) != len(rows) * dim * 4:
            raise CatalogError(f"space {fingerprint!r} holds an embedding of the wrong size (expected {dim} float32)")
        return ids, np.frombuffer(blob, dtype="<f4").reshape(len(rows), dim).astype(np.float32, copy=False)
