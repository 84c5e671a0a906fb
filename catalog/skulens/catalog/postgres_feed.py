"""The shared catalog's change feed: what changed at which catalog version, for local copies (`skulens.catalog.mirror`).

Triggers note every change a search depends on in `changes` (schema 6) — a product created, renamed, moved to another
category, relabelled or deleted (`product_pk`, no reference), a reference tombstoned, a serving-model embedding
written or removed (`product_pk`, `reference_id`) — with no version yet. `stamp`, run by `CatalogSchema.bump` under
the `meta` row lock, gives the rows of its transaction the version it commits: versions follow commit order, so once
a reader sees `meta.version = V`, every change of a version <= V is committed and stamped. A copy at version `mine`
reads the touched keys of versions (mine, V] and then their current rows, in one REPEATABLE READ snapshot together
with V (`read_delta`): applying the current state of every touched key brings it to exactly V, whatever order the
changes came in. Rows older than the purge's grace period go (`prune`); `meta.changes_floor` says up to which
version, and a copy behind it reads everything again (`read_full`), as after a model switch or a reconnect.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from skulens.catalog.postgres_binary import unpack
from skulens.catalog.postgres_pool import Conn, one_row
from skulens.catalog.store import ProductRow

if TYPE_CHECKING:
    from skulens.catalog.postgres_schema import CatalogSchema

#: Added to the schema's idempotent DDL (schema version 6).
DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS {changes} (
        version bigint,
        product_pk bigint NOT NULL,
        reference_id bigint,
        at double precision NOT NULL DEFAULT extract(epoch FROM clock_timestamp()))""",
    "CREATE INDEX IF NOT EXISTS changes_version ON {changes} (version)",
    "CREATE INDEX IF NOT EXISTS changes_unstamped ON {changes} (product_pk) WHERE version IS NULL",
    "ALTER TABLE {meta} ADD COLUMN IF NOT EXISTS changes_floor bigint NOT NULL DEFAULT 0",
    """CREATE OR REPLACE FUNCTION {S}.skulens_feed_product() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO {changes} (product_pk) VALUES (NEW.pk);
        RETURN NULL;
    END $$""",
    "CREATE OR REPLACE TRIGGER skulens_feed_insert AFTER INSERT ON {products} "
    "FOR EACH ROW EXECUTE FUNCTION {S}.skulens_feed_product()",
    "CREATE OR REPLACE TRIGGER skulens_feed_update AFTER UPDATE ON {products} FOR EACH ROW WHEN ("
    "OLD.product_id IS DISTINCT FROM NEW.product_id OR OLD.display_name IS DISTINCT FROM NEW.display_name "
    "OR OLD.category IS DISTINCT FROM NEW.category OR OLD.labels IS DISTINCT FROM NEW.labels "
    "OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at) EXECUTE FUNCTION {S}.skulens_feed_product()",
    """CREATE OR REPLACE FUNCTION {S}.skulens_feed_reference() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO {changes} (product_pk, reference_id) VALUES (NEW.product_pk, NEW.reference_id);
        RETURN NULL;
    END $$""",
    "CREATE OR REPLACE TRIGGER skulens_feed_tombstone AFTER UPDATE ON {refs} FOR EACH ROW "
    "WHEN (OLD.deleted_at IS DISTINCT FROM NEW.deleted_at) EXECUTE FUNCTION {S}.skulens_feed_reference()",
    # embeddings: statement-level (one INSERT ... SELECT per enrolment, not one per vector), serving model only
    """CREATE OR REPLACE FUNCTION {S}.skulens_feed_embeddings() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO {changes} (product_pk, reference_id)
        SELECT r.product_pk, c.reference_id FROM changed c JOIN {refs} r ON r.reference_id = c.reference_id
        WHERE r.deleted_at IS NULL AND c.fingerprint = (SELECT m.fingerprint FROM {meta} m);
        RETURN NULL;
    END $$""",
    "CREATE OR REPLACE TRIGGER skulens_feed_insert AFTER INSERT ON {embeddings} REFERENCING NEW TABLE AS changed "
    "FOR EACH STATEMENT EXECUTE FUNCTION {S}.skulens_feed_embeddings()",
    "CREATE OR REPLACE TRIGGER skulens_feed_delete AFTER DELETE ON {embeddings} REFERENCING OLD TABLE AS changed "
    "FOR EACH STATEMENT EXECUTE FUNCTION {S}.skulens_feed_embeddings()",
)


def stamp(conn: Conn, schema: CatalogSchema, version: int) -> None:
    """Give this transaction's unstamped changes `version` (run under the `meta` row lock, in the bump)."""
    conn.execute(schema.q("UPDATE {changes} SET version = %s WHERE version IS NULL"), (version,))


def prune(conn: Conn, schema: CatalogSchema, cutoff: float) -> int:
    """Drop the changes of the versions whose every row is older than `cutoff` (epoch seconds) and raise
    `meta.changes_floor` to the highest version dropped; how many rows went."""
    row = one_row(conn.execute(schema.q(
        "WITH top AS (SELECT max(version) AS v FROM {changes} WHERE version IS NOT NULL AND at < %s), "
        "gone AS (DELETE FROM {changes} WHERE version <= (SELECT v FROM top) RETURNING 1) "
        "SELECT (SELECT v FROM top), (SELECT count(*) FROM gone)"), (cutoff,)))
    if row[0] is not None:
        conn.execute(schema.q("UPDATE {meta} SET changes_floor = GREATEST(changes_floor, %s)"), (int(row[0]),))
    return int(row[1])


@dataclass
class FeedState:
    """What one snapshot of the catalog says to a local copy.

    `full`: `products` and `ids` / `pks` / `vectors` are the whole catalog (the copy starts over); otherwise they
    are the current rows of the keys touched since the copy's version: `products` the live ones of the touched
    products, `dropped_products` the touched ones that are gone, `ids` / `pks` / `vectors` the touched references
    that are live with an embedding of the serving model, `dropped_refs` those that are not."""

    version: int
    fingerprint: str
    dim: int
    thresholds: str | None
    full: bool
    products: list[ProductRow] = field(default_factory=list)
    dropped_products: list[int] = field(default_factory=list)
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    pks: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    dropped_refs: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def changes(self) -> int:
        """Touched keys (products and references) in a delta; everything in a full read."""
        return len(self.products) + len(self.dropped_products) + len(self.ids) + len(self.dropped_refs)


def _product(row: Sequence[Any]) -> ProductRow:
    labels = row[4] if isinstance(row[4], dict) else json.loads(row[4] or "{}")
    return ProductRow(int(row[0]), str(row[1]), str(row[2]), str(row[3]), {str(k): str(v) for k, v in labels.items()},
                      float(row[5]), float(row[6]))


_PRODUCT_COLUMNS = "pk, product_id, display_name, category, labels, created_at, updated_at"


def read(conn: Conn, catalog: CatalogSchema, since: int | None, fingerprint: str) -> FeedState:
    """One snapshot of `catalog`'s schema for a copy at version `since` of model `fingerprint` (None: it holds
    nothing): a delta when the feed still holds every change after `since` and that model still serves, otherwise
    everything. Runs its own REPEATABLE READ, read-only transaction on `conn` (an autocommit connection)."""
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        version, fp, dim, floor, thresholds = one_row(conn.execute(catalog.q(
            "SELECT version, fingerprint, dim, changes_floor, verdict_thresholds FROM {meta}")))
        schema = type(catalog)(catalog.schema, str(fp), int(dim))
        full = since is None or since < int(floor) or str(fp) != fingerprint
        state = FeedState(int(version), str(fp), int(dim), thresholds, full=full)
        if state.full:
            _read_all(conn, schema, state)
        elif since is not None and state.version > since:
            _read_delta(conn, schema, state, since)
        conn.execute("COMMIT")
        return state
    except BaseException:
        if not conn.closed and not conn.broken:
            conn.execute("ROLLBACK")
        raise


def _read_all(conn: Conn, schema: CatalogSchema, state: FeedState) -> None:
    state.products = [_product(r) for r in conn.execute(schema.q(
        f"SELECT {_PRODUCT_COLUMNS} FROM {{products}} WHERE deleted_at IS NULL")).fetchall()]
    with conn.cursor(binary=True) as cur:
        rows = cur.execute(schema.q(
            "SELECT r.reference_id, r.product_pk, vector_send(e.embedding) FROM {embeddings} e "
            "JOIN {refs} r ON r.reference_id = e.reference_id "
            "WHERE e.fingerprint = {fp} AND r.deleted_at IS NULL ORDER BY r.reference_id")).fetchall()
    _set_refs(state, rows)


def _read_delta(conn: Conn, schema: CatalogSchema, state: FeedState, since: int) -> None:
    touched = conn.execute(schema.q(
        "SELECT DISTINCT product_pk, reference_id FROM {changes} WHERE version > %s AND version <= %s"),
        (since, state.version)).fetchall()
    pks = sorted({int(r[0]) for r in touched if r[1] is None})
    ids = sorted({int(r[1]) for r in touched if r[1] is not None})
    if pks:
        live = [_product(r) for r in conn.execute(schema.q(
            f"SELECT {_PRODUCT_COLUMNS} FROM {{products}} WHERE pk = ANY(%s) AND deleted_at IS NULL"),
            (pks,)).fetchall()]
        state.products = live
        state.dropped_products = sorted(set(pks) - {p.pk for p in live})
    if ids:
        with conn.cursor(binary=True) as cur:
            rows = cur.execute(schema.q(
                "SELECT r.reference_id, r.product_pk, vector_send(e.embedding) FROM {refs} r "
                "JOIN {embeddings} e ON e.reference_id = r.reference_id AND e.fingerprint = {fp} "
                "WHERE r.reference_id = ANY(%s) AND r.deleted_at IS NULL ORDER BY r.reference_id"),
                (ids,)).fetchall()
        _set_refs(state, rows)
        state.dropped_refs = np.asarray(sorted(set(ids) - set(state.ids.tolist())), dtype=np.int64)


def _set_refs(state: FeedState, rows: Sequence[Sequence[Any]]) -> None:
    state.ids = np.asarray([int(r[0]) for r in rows], dtype=np.int64)
    state.pks = np.asarray([int(r[1]) for r in rows], dtype=np.int64)
    state.vectors = unpack([bytes(r[2]) for r in rows], state.dim)


__all__ = ["DDL", "FeedState", "prune", "read", "stamp"]
