"""The shared catalog's share of catalog-adapted matching (`skulens.catalog.head`): statistics kept in PostgreSQL.

Triggers journal every embedding that becomes live or stops being live (an `embeddings` or `aug_embeddings` row
inserted, deleted or changed while its reference is live; a reference tombstoned), and `fold` — run by
`CatalogSchema.bump`, so by every write transaction after it has locked the `meta` row — folds the new journal rows
into the small statistics (`head_stats`: count, Σx; `head_products`) in the same transaction; the Gram matrix Σxxᵀ is
folded into `head_gram` once `GRAM_BATCH` rows are pending (a reader adds the pending rows' outer products), as in
the embedded store (`skulens.catalog.store_head`). Concurrent writers are ordered by that lock; the statistics always
match the committed references of every model space (fingerprint), and nothing is recomputed from scratch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from skulens.catalog.head import HeadStats, ProductSums, deltas, gram_with
from skulens.catalog.migration_state import PendingReference
from skulens.catalog.models import region_of
from skulens.catalog.postgres_binary import unpack
from skulens.catalog.postgres_pool import Conn, one_row

if TYPE_CHECKING:
    from skulens.catalog.postgres_schema import CatalogSchema

#: Added to the schema's idempotent DDL (schema version 4).
DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS {head_journal} (
        fingerprint text NOT NULL,
        product_pk bigint NOT NULL,
        embedding vector NOT NULL,
        sign smallint NOT NULL,
        reference smallint NOT NULL DEFAULT 1,
        summed boolean NOT NULL DEFAULT false)""",
    """CREATE TABLE IF NOT EXISTS {head_stats} (
        fingerprint text PRIMARY KEY,
        count bigint NOT NULL,
        total bytea NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS {head_gram} (
        fingerprint text PRIMARY KEY,
        gram bytea NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS {head_products} (
        fingerprint text NOT NULL,
        product_pk bigint NOT NULL,
        count integer NOT NULL,
        refs integer NOT NULL,
        total bytea NOT NULL,
        PRIMARY KEY (fingerprint, product_pk))""",
    # augmented views of references (`skulens.catalog.head`): in the statistics, never in the HNSW index
    """CREATE TABLE IF NOT EXISTS {aug_embeddings} (
        fingerprint text NOT NULL,
        reference_id bigint NOT NULL REFERENCES {refs} (reference_id),
        product_pk bigint NOT NULL,
        k integer NOT NULL,
        embedding vector NOT NULL,
        PRIMARY KEY (fingerprint, reference_id, k))""",
    "CREATE INDEX IF NOT EXISTS aug_embeddings_product ON {aug_embeddings} (product_pk)",
    """CREATE OR REPLACE FUNCTION {S}.skulens_head_aug() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            INSERT INTO {head_journal} (fingerprint, product_pk, embedding, sign, reference)
            SELECT OLD.fingerprint, OLD.product_pk, OLD.embedding, -1, 0 FROM {refs} r
            WHERE r.reference_id = OLD.reference_id AND r.deleted_at IS NULL;
        ELSE
            INSERT INTO {head_journal} (fingerprint, product_pk, embedding, sign, reference)
            VALUES (NEW.fingerprint, NEW.product_pk, NEW.embedding, 1, 0);
        END IF;
        RETURN NULL;
    END $$""",
    "CREATE OR REPLACE TRIGGER skulens_head AFTER INSERT OR DELETE ON {aug_embeddings} "
    "FOR EACH ROW EXECUTE FUNCTION {S}.skulens_head_aug()",
    """CREATE OR REPLACE FUNCTION {S}.skulens_head_embeddings() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('DELETE', 'UPDATE') THEN
            INSERT INTO {head_journal} (fingerprint, product_pk, embedding, sign)
            SELECT OLD.fingerprint, r.product_pk, OLD.embedding, -1 FROM {refs} r
            WHERE r.reference_id = OLD.reference_id AND r.deleted_at IS NULL;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            INSERT INTO {head_journal} (fingerprint, product_pk, embedding, sign)
            SELECT NEW.fingerprint, r.product_pk, NEW.embedding, 1 FROM {refs} r
            WHERE r.reference_id = NEW.reference_id AND r.deleted_at IS NULL;
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE OR REPLACE FUNCTION {S}.skulens_head_refs() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL THEN
            INSERT INTO {head_journal} (fingerprint, product_pk, embedding, sign)
            SELECT e.fingerprint, OLD.product_pk, e.embedding, -1 FROM {embeddings} e
            WHERE e.reference_id = OLD.reference_id;
            INSERT INTO {head_journal} (fingerprint, product_pk, embedding, sign, reference)
            SELECT a.fingerprint, a.product_pk, a.embedding, -1, 0 FROM {aug_embeddings} a
            WHERE a.reference_id = OLD.reference_id;
        END IF;
        RETURN NULL;
    END $$""",
    "CREATE OR REPLACE TRIGGER skulens_head AFTER INSERT OR DELETE OR UPDATE OF embedding ON {embeddings} "
    "FOR EACH ROW EXECUTE FUNCTION {S}.skulens_head_embeddings()",
    "CREATE OR REPLACE TRIGGER skulens_head AFTER UPDATE OF deleted_at ON {refs} "
    "FOR EACH ROW EXECUTE FUNCTION {S}.skulens_head_refs()",
)

#: Run once when a catalog older than schema 4 is upgraded: journal the embeddings already stored.
SEED = ("INSERT INTO {head_journal} (fingerprint, product_pk, embedding, sign) SELECT e.fingerprint, r.product_pk, "
        "e.embedding, 1 FROM {embeddings} e JOIN {refs} r ON r.reference_id = e.reference_id "
        "WHERE r.deleted_at IS NULL")


def _f64(buf: bytes | memoryview, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(bytes(buf), dtype="<f8").reshape(shape)


#: Journal rows folded into the stored Gram matrix at once (a reader adds fewer than this many outer products).
GRAM_BATCH = 1024


def _vectors(payloads: list[bytes]) -> np.ndarray:
    """float64 rows from pgvector's binary form (the float32 values pgvector holds; `postgres_binary`)."""
    return unpack(payloads).astype(np.float64)


def fold(conn: Conn, schema: CatalogSchema, gram_batch: int = GRAM_BATCH) -> int:
    """Fold the new journal rows into the small statistics, and the whole journal into the Gram matrix once
    `gram_batch` rows are pending (in the caller's transaction, after the `meta` row lock); how many new rows."""
    rows = conn.cursor(binary=True).execute(schema.q(
        "UPDATE {head_journal} SET summed = true WHERE NOT summed "
        "RETURNING fingerprint, product_pk, embedding, sign, reference")).fetchall()
    by_fp: dict[str, list[tuple[int, bytes, int, int]]] = {}
    for fp, pk, emb, sign, ref in rows:
        by_fp.setdefault(str(fp), []).append((int(pk), bytes(emb), int(sign), int(ref)))
    for fp, items in by_fp.items():
        vecs = _vectors([it[1] for it in items])
        d = deltas([it[0] for it in items], vecs, [it[2] for it in items], [it[3] for it in items], gram=False)
        dim = vecs.shape[1]
        row = conn.execute(schema.q("SELECT count, total FROM {head_stats} WHERE fingerprint = %s FOR UPDATE"),
                           (fp,)).fetchone()
        ok = row is not None and len(row[1]) == 8 * dim
        count = d.count + (int(row[0]) if ok and row is not None else 0)
        total = d.total + (_f64(row[1], (dim,)) if ok and row is not None else 0.0)
        conn.execute(schema.q(
            "INSERT INTO {head_stats} (fingerprint, count, total) VALUES (%s, %s, %s) ON CONFLICT (fingerprint) "
            "DO UPDATE SET count = EXCLUDED.count, total = EXCLUDED.total"),
            (fp, count, np.asarray(total, "<f8").tobytes()))
        pks = sorted(d.products)
        have = {int(r[0]): (int(r[1]), int(r[2]), bytes(r[3])) for r in conn.execute(schema.q(
            "SELECT product_pk, count, refs, total FROM {head_products} WHERE fingerprint = %s "
            "AND product_pk = ANY(%s) FOR UPDATE"), (fp, pks)).fetchall()}
        gone: list[tuple[str, int, int, int, bytes]] = []
        kept: list[tuple[str, int, int, int, bytes]] = []
        for pk in pks:
            change = d.products[pk]
            n0, r0, s0 = have.get(pk, (0, 0, b""))
            n = n0 + change.count
            s = change.total + (_f64(s0, (dim,)) if len(s0) == 8 * dim else 0.0)
            (gone if n <= 0 else kept).append((fp, pk, n, r0 + change.references, np.asarray(s, "<f8").tobytes()))
        with conn.cursor() as cur:
            if gone:
                cur.executemany(schema.q("DELETE FROM {head_products} WHERE fingerprint = %s AND product_pk = %s"),
                                [(g[0], g[1]) for g in gone])
            if kept:
                cur.executemany(schema.q(
                    "INSERT INTO {head_products} (fingerprint, product_pk, count, refs, total) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (fingerprint, product_pk) DO UPDATE SET "
                    "count = EXCLUDED.count, refs = EXCLUDED.refs, total = EXCLUDED.total"), kept)
    if int(one_row(conn.execute(schema.q("SELECT count(*) FROM {head_journal}")))[0]) >= gram_batch:
        for (fp,) in conn.execute(schema.q("SELECT DISTINCT fingerprint FROM {head_journal}")).fetchall():
            # the rows folded are exactly the rows deleted (one statement: none committed meanwhile is lost)
            taken = conn.cursor(binary=True).execute(schema.q(
                "DELETE FROM {head_journal} WHERE fingerprint = %s RETURNING embedding, sign"), (fp,)).fetchall()
            left = conn.execute(schema.q("SELECT count FROM {head_stats} WHERE fingerprint = %s"), (fp,)).fetchone()
            if left is None or int(left[0]) <= 0:  # a space emptied (a migration's finish or abort): nothing to add
                conn.execute(schema.q("DELETE FROM {head_gram} WHERE fingerprint = %s"), (fp,))
                continue
            stored = conn.execute(schema.q("SELECT gram FROM {head_gram} WHERE fingerprint = %s FOR UPDATE"),
                                  (fp,)).fetchone()
            gram = _add_outer(None if stored is None else bytes(stored[0]), taken)
            if gram is not None:
                conn.execute(schema.q(
                    "INSERT INTO {head_gram} (fingerprint, gram) VALUES (%s, %s) ON CONFLICT (fingerprint) "
                    "DO UPDATE SET gram = EXCLUDED.gram"), (str(fp), np.asarray(gram, "<f8").tobytes()))
    return len(rows)


def _add_outer(stored: bytes | None, rows: list[tuple[bytes, int]]) -> np.ndarray | None:
    """A stored Gram matrix plus the signed outer products of journal rows (embedding in binary, sign); None:
    neither."""
    return gram_with(stored, _vectors([bytes(r[0]) for r in rows]) if rows else None, [float(r[1]) for r in rows])


def _current_gram(conn: Conn, schema: CatalogSchema, fingerprint: str) -> np.ndarray | None:
    """The stored Gram matrix of `fingerprint` plus the outer products of its journal rows (None: neither)."""
    row = conn.execute(schema.q("SELECT gram FROM {head_gram} WHERE fingerprint = %s"), (fingerprint,)).fetchone()
    pending = conn.cursor(binary=True).execute(schema.q(
        "SELECT embedding, sign FROM {head_journal} WHERE fingerprint = %s"), (fingerprint,)).fetchall()
    return _add_outer(None if row is None else bytes(row[0]), [(bytes(r[0]), int(r[1])) for r in pending])


def read(conn: Conn, schema: CatalogSchema, fingerprint: str, dim: int, version: int) -> HeadStats:
    """The statistics of `fingerprint` as committed (call inside one transaction for a consistent view)."""
    stats = HeadStats(fingerprint, dim, version=version)
    row = conn.execute(schema.q("SELECT count, total FROM {head_stats} WHERE fingerprint = %s"),
                       (fingerprint,)).fetchone()
    if row is None or len(row[1]) != 8 * dim or int(row[0]) <= 0:
        return stats
    stats.count = int(row[0])
    stats.total = _f64(row[1], (dim,)).copy()
    gram = _current_gram(conn, schema, fingerprint)
    if gram is not None and gram.shape == (dim, dim):
        stats.gram = gram
    for pid, n, refs, total in conn.execute(schema.q(
            "SELECT p.product_id, h.count, h.refs, h.total FROM {head_products} h JOIN {products} p "
            "ON p.pk = h.product_pk WHERE h.fingerprint = %s AND p.deleted_at IS NULL"), (fingerprint,)).fetchall():
        stats.products[str(pid)] = ProductSums(int(n), _f64(total, (dim,)).copy(), int(refs))
    return stats


# ---------------------------------------------------------------- augmented views
_SMALL = ("(SELECT count(*) FROM {refs} o WHERE o.product_pk = r.product_pk AND o.deleted_at IS NULL) < %(below)s "
          "AND NOT EXISTS (SELECT 1 FROM {aug_embeddings} a WHERE a.fingerprint = %(fp)s "
          "AND a.reference_id = r.reference_id)")


def augmentation_pending(conn: Conn, schema: CatalogSchema, fingerprint: str, below: int, after: int,
                         limit: int) -> list[PendingReference]:
    """Live references (id > `after`, id order) with a stored image and an embedding of `fingerprint`, in products
    with fewer than `below` live references, without augmented views yet."""
    rows = conn.execute(schema.q(
        "SELECT r.reference_id, r.image, r.region_x, r.region_y, r.region_w, r.region_h FROM {refs} r "
        "WHERE r.deleted_at IS NULL AND r.image IS NOT NULL AND r.reference_id > %(after)s AND EXISTS "
        "(SELECT 1 FROM {embeddings} e WHERE e.fingerprint = %(fp)s AND e.reference_id = r.reference_id) AND "
        + _SMALL + " ORDER BY r.reference_id LIMIT %(limit)s"),
        {"after": after, "fp": fingerprint, "below": below, "limit": limit}).fetchall()
    return [PendingReference(int(r[0]), bytes(r[1]), region_of(r[2:6])) for r in rows]


def augmentation_counts(conn: Conn, schema: CatalogSchema, fingerprint: str, below: int) -> tuple[int, int]:
    """(references waiting for augmented views, references that have them)."""
    waiting = one_row(conn.execute(schema.q(
        "SELECT count(*) FROM {refs} r WHERE r.deleted_at IS NULL AND r.image IS NOT NULL AND EXISTS "
        "(SELECT 1 FROM {embeddings} e WHERE e.fingerprint = %(fp)s AND e.reference_id = r.reference_id) AND "
        + _SMALL), {"fp": fingerprint, "below": below}))[0]
    done = one_row(conn.execute(schema.q(
        "SELECT count(DISTINCT a.reference_id) FROM {aug_embeddings} a JOIN {refs} r "
        "ON r.reference_id = a.reference_id AND r.deleted_at IS NULL WHERE a.fingerprint = %s"), (fingerprint,)))[0]
    return int(waiting), int(done)


def put_augmentations(conn: Conn, schema: CatalogSchema, fingerprint: str, reference_id: int,
                      texts: list[str]) -> int:
    """Store a live reference's augmented views (pgvector text), unless it has them; how many rows."""
    row = conn.execute(schema.q("SELECT product_pk FROM {refs} WHERE reference_id = %s AND deleted_at IS NULL "
                                "FOR SHARE"), (reference_id,)).fetchone()
    if row is None:
        return 0
    rows = conn.execute(schema.q(
        "INSERT INTO {aug_embeddings} (fingerprint, reference_id, product_pk, k, embedding) "
        "SELECT %s, %s, %s, v.k - 1, v.e::vector FROM unnest(%s::text[]) WITH ORDINALITY AS v(e, k) "
        "ON CONFLICT DO NOTHING RETURNING k"), (fingerprint, reference_id, int(row[0]), texts)).fetchall()
    return len(rows)


def prune_augmentations(conn: Conn, schema: CatalogSchema, below: int) -> int:
    """Drop the augmented views of products with `below` live references or more; how many rows went."""
    return int(conn.execute(schema.q(
        "DELETE FROM {aug_embeddings} a WHERE a.product_pk IN (SELECT product_pk FROM {refs} WHERE deleted_at IS NULL "
        "GROUP BY product_pk HAVING count(*) >= %s)"), (below,)).rowcount)
