"""Purging the shared catalog's tombstones: deleted products and references, their vectors and augmented views.

Deletes are tombstones (`deleted_at` set on `products` / `refs`; every read filters them out), so the rows, and the
vectors in each fingerprint's HNSW graph, stay until purged here. `purge` removes those whose tombstone is older
than a cutoff (now minus the grace period) in short transactions of at most `limit` references (or products) each:
1. once, without locks: the candidate ids (`refs` and `products` with `deleted_at < cutoff`);
2. per batch of references: lock them (`FOR UPDATE SKIP LOCKED`: rows another purger holds are skipped, not
   waited for), delete their `embeddings` (every model space) and `aug_embeddings` rows, then the `refs` rows, and
   lower `meta.indexed_refs` (what `stats().index_tombstones` counts) by the serving space's vectors removed;
3. per batch of products: lock and delete those with no reference row left (a product's references go first).
Nothing else changes: the catalog version is not bumped (no live row changed, so no answer at any version
changes), and the head statistics stay as they are — their triggers (`postgres_head`) journal an `embeddings` or
`aug_embeddings` DELETE only while the reference is live, and the tombstone itself already journalled the vectors
out when it was written. `head_journal` rows are copies (no foreign key) and are left to `fold`.

Why the grace period makes this safe for replicas: a tombstoned row is in no answer of any version after the
delete's, so removing it changes no answer a replica gives or a `min_catalog_version` wait returns (the version
stays). What could notice a row vanish is work that read the row while it was live and touches it again later:
a running statement or transaction keeps its MVCC snapshot (PostgreSQL keeps every row version a running snapshot
may see; VACUUM reclaims only what none can), and a later write by id (back-fill `put`, `put_augmentations`,
`delete_reference`) re-checks liveness in its own statement and finds the tombstone. A write that raced the purge
would take a key-share lock on the `refs` row for its foreign key, which the purge's row lock excludes. With a
grace period far longer than any transaction (they are bounded by `lock_timeout` and the call deadlines: seconds),
no transaction that saw the row live is still running when it goes. Tombstones also keep, for that long, the
evidence of what was deleted when (and a change feed reading tombstones must be no further behind than that).
Clock skew between replicas (`deleted_at` is the deleting replica's clock) only shifts the grace period by it.

The HNSW graphs: deleting `embeddings` rows leaves their entries in the index (pgvector resolves index entries
through the heap, so dead ones are skipped at search time, but still traversed) until VACUUM of `embeddings` runs
pgvector's bulk delete, which marks them deleted in the graph, repairs their neighbours' links and frees the
slots for reuse (the index file does not shrink). Autovacuum does this on its own once enough rows changed
(`autovacuum_vacuum_scale_factor`, 20 % of the table by default); `vacuum` runs it at once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import psycopg

from skulens.catalog.errors import CatalogUnavailable, NotFound
from skulens.catalog.postgres_pool import Conn, Database, first_line, one_row, parse_url, redact
from skulens.catalog.postgres_schema import CatalogSchema
from skulens.catalog.purge import PurgeReport

LEASE = "purge"  # the advisory lock (see `postgres_spaces.try_lease`) held by the one purger of a catalog


def candidates(conn: Conn, schema: CatalogSchema, cutoff: float) -> tuple[list[int], list[int]]:
    """(reference ids, product keys) whose tombstone is older than `cutoff`, in id order."""
    refs = [int(r[0]) for r in conn.execute(schema.q(
        "SELECT reference_id FROM {refs} WHERE deleted_at < %s ORDER BY reference_id"), (cutoff,)).fetchall()]
    products = [int(r[0]) for r in conn.execute(schema.q(
        "SELECT pk FROM {products} WHERE deleted_at < %s ORDER BY pk"), (cutoff,)).fetchall()]
    return refs, products


def purge_references(conn: Conn, schema: CatalogSchema, ids: Sequence[int], cutoff: float) -> tuple[int, int, int]:
    """Delete these tombstoned references (older than `cutoff`; those another transaction holds are skipped) with
    their vectors and augmented views, in the caller's transaction; (references, vectors, augmented views)."""
    locked = [int(r[0]) for r in conn.execute(schema.q(
        "SELECT reference_id FROM {refs} WHERE reference_id = ANY(%s) AND deleted_at < %s ORDER BY reference_id "
        "FOR UPDATE SKIP LOCKED"), (list(ids), cutoff)).fetchall()]
    if not locked:
        return 0, 0, 0
    vectors = conn.execute(schema.q(
        "DELETE FROM {embeddings} WHERE reference_id = ANY(%s) RETURNING fingerprint"), (locked,)).fetchall()
    augmented = conn.execute(schema.q("DELETE FROM {aug_embeddings} WHERE reference_id = ANY(%s)"),
                             (locked,)).rowcount
    refs = conn.execute(schema.q("DELETE FROM {refs} WHERE reference_id = ANY(%s)"), (locked,)).rowcount
    by_fp: dict[str, int] = {}
    for (fp,) in vectors:
        by_fp[str(fp)] = by_fp.get(str(fp), 0) + 1
    if by_fp:  # the serving space's graph holds fewer tombstones now (not a catalog write: the version stays)
        conn.execute(schema.q(
            "UPDATE {meta} SET indexed_refs = indexed_refs - coalesce((SELECT d.n FROM unnest(%s::text[], "
            "%s::bigint[]) AS d(fp, n) WHERE d.fp = fingerprint), 0)"), (list(by_fp), list(by_fp.values())))
    return int(refs), len(vectors), int(augmented)


def purge_products(conn: Conn, schema: CatalogSchema, pks: Sequence[int], cutoff: float) -> int:
    """Delete these tombstoned products (older than `cutoff`) that have no reference row left (those another
    transaction holds are skipped), in the caller's transaction; how many."""
    locked = [int(r[0]) for r in conn.execute(schema.q(
        "SELECT p.pk FROM {products} p WHERE p.pk = ANY(%s) AND p.deleted_at < %s "
        "AND NOT EXISTS (SELECT 1 FROM {refs} r WHERE r.product_pk = p.pk) ORDER BY p.pk FOR UPDATE SKIP LOCKED"),
        (list(pks), cutoff)).fetchall()]
    if not locked:
        return 0
    return int(conn.execute(schema.q("DELETE FROM {products} WHERE pk = ANY(%s)"), (locked,)).rowcount)


def vacuum(db: Database, schema: CatalogSchema) -> None:
    """VACUUM (ANALYZE) the purged tables: frees their dead rows and cleans the HNSW graphs (outside a
    transaction; it takes no lock that reads or writes wait for)."""
    db.run(lambda conn: conn.execute(schema.q("VACUUM (ANALYZE) {embeddings}, {aug_embeddings}, {refs}, {products}")),
           tx=False)


def stored_identity(url: str) -> tuple[str, int]:
    """(fingerprint, dim) of the catalog in the current schema of the database at `url`, read without opening it
    (a maintenance tool then opens it as it is); NotFound when there is none, CatalogUnavailable when unreachable."""
    conninfo, params = parse_url(url)
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
            schema = one_row(conn.execute("SELECT current_schema()"))[0]
            table = CatalogSchema(str(schema or "public"), "", 1)
            if not one_row(conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table.regclass("meta"),)))[0]:
                raise NotFound(f"no skulens catalog in schema {schema!r} of {redact(url)}", field="catalog")
            fp, dim = one_row(conn.execute(table.q("SELECT fingerprint, dim FROM {meta}")))
    except psycopg.Error as exc:
        secret = params.get("password")
        text = first_line(exc).replace(secret, "***") if secret else first_line(exc)
        raise CatalogUnavailable(f"the shared catalog at {redact(url)} cannot be reached ({redact(text)})") from None
    return str(fp), int(dim)


def ensure_index(db: Database, schema: CatalogSchema) -> None:
    """Build `refs_product` (see `postgres_schema`) on a catalog created before it was part of the schema:
    CONCURRENTLY, so writes go on meanwhile; an invalid one left by an interrupted build is built again."""
    name = schema.regclass("refs_product")

    def valid(conn: Conn) -> bool | None:
        row = conn.execute("SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)",
                           (name,)).fetchone()
        return None if row is None else bool(row[0])

    state = db.run(valid, tx=False)
    if state:
        return
    if state is False:
        db.run(lambda conn: conn.execute(schema.q("DROP INDEX CONCURRENTLY IF EXISTS {S}.refs_product")), tx=False)
    db.run(lambda conn: conn.execute(schema.q(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS refs_product ON {refs} (product_pk)")), tx=False)


def purge(db: Database, schema: CatalogSchema, cutoff: float, limit: int, *, vacuum_after: bool = False,
          max_seconds: float | None = None) -> PurgeReport:
    """Purge every tombstone older than `cutoff` (Unix time), `limit` rows per transaction (module doc);
    `max_seconds`: stop starting batches after this long (the rest goes next time)."""
    t0 = time.perf_counter()
    ensure_index(db, schema)
    ref_ids, pks = db.run(lambda conn: candidates(conn, schema, cutoff), tx=False)
    refs = vectors = augmented = products = batches = 0

    def late() -> bool:
        return max_seconds is not None and time.perf_counter() - t0 > max_seconds

    for at in range(0, len(ref_ids), limit):
        if late():
            break
        chunk = ref_ids[at:at + limit]
        r, v, a = db.run(lambda conn, c=chunk: purge_references(conn, schema, c, cutoff))  # type: ignore[misc]
        refs, vectors, augmented, batches = refs + r, vectors + v, augmented + a, batches + 1
    for at in range(0, len(pks), limit):
        if late():
            break
        chunk = pks[at:at + limit]
        products += db.run(lambda conn, c=chunk: purge_products(conn, schema, c, cutoff))  # type: ignore[misc]
        batches += 1
    vacuumed = False
    if vacuum_after and (refs or products) and not late():
        vacuum(db, schema)
        vacuumed = True
    return PurgeReport(products=products, references=refs, embeddings=vectors, augmented=augmented, batches=batches,
                       seconds=time.perf_counter() - t0, cutoff=cutoff, vacuumed=vacuumed)


__all__ = ["LEASE", "candidates", "ensure_index", "purge", "purge_products", "purge_references", "stored_identity",
           "vacuum"]
