"""The shared catalog's side of a model migration (`skulens.catalog.migration_state`): statements run in the
caller's transaction. Every space is rows of `embeddings` keyed by its fingerprint, with its own partial HNSW
index; the state JSON is `meta.migration` beside the serving identity (`meta.fingerprint`, `meta.dim`). Writers
that change the state lock the `meta` row first (`FOR UPDATE`), so state changes, switches and the version bumps
of other writes are ordered.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from skulens.catalog.migration_state import MigrationState, PendingReference, SpaceProgress
from skulens.catalog.models import region_of
from skulens.catalog.postgres_pool import Conn, one_row
from skulens.catalog.postgres_schema import CatalogSchema


def read_state(conn: Conn, schema: CatalogSchema, *, lock: str = "") -> MigrationState:
    """The stored state (`lock`: "FOR UPDATE" / "FOR NO KEY UPDATE" to hold the meta row until the end)."""
    row = one_row(conn.execute(schema.q("SELECT fingerprint, dim, migration FROM {meta} " + lock)))
    return MigrationState.from_json(str(row[0]), int(row[1]), row[2])


def write_state(conn: Conn, schema: CatalogSchema, state: MigrationState) -> None:
    """Store `state` (serving identity and migration JSON); the caller bumps the version."""
    keep = state.phase != "none" or state.serving.model_dir
    conn.execute(schema.q("UPDATE {meta} SET fingerprint = %s, dim = %s, migration = %s"),
                 (state.serving.fingerprint, state.serving.dim, state.to_json() if keep else None))


def pending(conn: Conn, schema: CatalogSchema, space: str, after: int, limit: int) -> list[PendingReference]:
    """Live references with id > `after` and no embedding in `space`, in id order, with their stored image."""
    rows = conn.execute(schema.q(
        "SELECT r.reference_id, r.image, r.region_x, r.region_y, r.region_w, r.region_h FROM {refs} r "
        "WHERE r.deleted_at IS NULL AND r.reference_id > %s "
        "AND NOT EXISTS (SELECT 1 FROM {embeddings} e WHERE e.fingerprint = %s AND e.reference_id = r.reference_id) "
        "ORDER BY r.reference_id LIMIT %s"), (after, space, limit)).fetchall()
    return [PendingReference(int(r[0]), None if r[1] is None else bytes(r[1]), region_of(r[2:6])) for r in rows]


def put(conn: Conn, schema: CatalogSchema, space: str, ids: Sequence[int], texts: Sequence[str]) -> list[int]:
    """Insert `space` vectors (pgvector text) of live references that lack one; the ids written."""
    rows = conn.execute(schema.q(
        "INSERT INTO {embeddings} (reference_id, fingerprint, embedding) "
        "SELECT r.reference_id, %s, v.e::vector FROM unnest(%s::bigint[], %s::text[]) AS v(id, e) "
        "JOIN {refs} r ON r.reference_id = v.id AND r.deleted_at IS NULL "
        "ON CONFLICT (fingerprint, reference_id) DO NOTHING RETURNING reference_id"),
        (space, list(ids), list(texts))).fetchall()
    return sorted(int(r[0]) for r in rows)


def progress(conn: Conn, schema: CatalogSchema, space: str) -> SpaceProgress:
    """How far `space` is filled, over live references."""
    live, embedded = one_row(conn.execute(schema.q(
        "SELECT count(*), count(e.reference_id) FROM {refs} r LEFT JOIN {embeddings} e "
        "ON e.reference_id = r.reference_id AND e.fingerprint = %s WHERE r.deleted_at IS NULL"), (space,)))
    bad = [int(r[0]) for r in conn.execute(schema.q(
        "SELECT r.reference_id FROM {refs} r WHERE r.deleted_at IS NULL AND r.image IS NULL AND NOT EXISTS "
        "(SELECT 1 FROM {embeddings} e WHERE e.fingerprint = %s AND e.reference_id = r.reference_id) "
        "ORDER BY r.reference_id"), (space,))]
    return SpaceProgress(space, int(live), int(embedded), len(bad), tuple(bad[:100]))


def count_vectors(conn: Conn, schema: CatalogSchema, space: str) -> int:
    """Rows of `space` (tombstoned references included: what its HNSW graph holds)."""
    return int(one_row(conn.execute(schema.q("SELECT count(*) FROM {embeddings} WHERE fingerprint = %s"),
                                    (space,)))[0])


def drop_space(conn: Conn, schema: CatalogSchema, space: CatalogSchema) -> None:
    """Delete a space's vectors (its index goes with `drop_index`, outside this transaction)."""
    conn.execute(schema.q("DELETE FROM {embeddings} WHERE fingerprint = %s"), (space.fingerprint,))


def drop_index(conn: Conn, space: CatalogSchema) -> None:
    """Drop a dropped space's partial HNSW index."""
    conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(space.schema, space.index_name())))


def try_lease(conn: Conn, schema: CatalogSchema, what: str) -> bool:
    """Take the session-level advisory lock `what` of this catalog without waiting; True when taken."""
    return bool(one_row(conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                                     (f"{schema.schema}:{what}",)))[0])


def end_lease(conn: Conn, schema: CatalogSchema, what: str) -> None:
    """Release the advisory lock `what`."""
    conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (f"{schema.schema}:{what}",))
