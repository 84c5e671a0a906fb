"""The embedded store's share of catalog-adapted matching (`skulens.catalog.head`): statistics kept in SQLite.

Triggers on `refs` (and `aug_embeddings`) write every added, removed or changed serving embedding into
`head_journal` (whatever the write: enrolment, deletes — a product's cascade included —, re-embedding, a migration's
switch), and `fold` (called by every write transaction before its generation bump) folds the new journal rows into
the small statistics (`head_stats`: count and Σx; `head_products`: per-product count and sum) in the same
transaction. The d×d Gram matrix Σxxᵀ (13 MB at d = 1280) is not rewritten by every write: journal rows stay until
`GRAM_BATCH` of them are pending, then one write folds them into `head_gram`; a reader adds the pending rows'
outer products to it. The statistics are always those of the committed references; nothing is recomputed from
scratch.
"""

from __future__ import annotations

import sqlite3

import numpy as np

from skulens.catalog.head import HeadStats, ProductSums, deltas, gram_with
from skulens.catalog.migration_state import PendingReference
from skulens.catalog.models import region_of

_J = "INSERT INTO head_journal(fingerprint, product_pk, embedding, sign, reference) VALUES "

#: Schema 4 (applied by `store.MIGRATIONS`): the tables, the journal triggers, and the journal seeded with the
#: embeddings already stored (folded at the next open).
MIGRATION: tuple[str, ...] = (
    """CREATE TABLE head_journal (
        fingerprint TEXT NOT NULL,
        product_pk INTEGER NOT NULL,
        embedding BLOB NOT NULL,
        sign INTEGER NOT NULL,
        reference INTEGER NOT NULL DEFAULT 1,
        summed INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE head_stats (
        fingerprint TEXT PRIMARY KEY,
        count INTEGER NOT NULL,
        total BLOB NOT NULL) WITHOUT ROWID""",
    """CREATE TABLE head_gram (
        fingerprint TEXT PRIMARY KEY,
        gram BLOB NOT NULL)""",
    """CREATE TABLE head_products (
        fingerprint TEXT NOT NULL,
        product_pk INTEGER NOT NULL,
        count INTEGER NOT NULL,
        refs INTEGER NOT NULL,
        total BLOB NOT NULL,
        PRIMARY KEY (fingerprint, product_pk)) WITHOUT ROWID""",
    # Augmented views of references (flips, crops) embedded in the background for products with few references:
    # they count in the statistics (never in the nearest-neighbour index) and go with their reference.
    """CREATE TABLE aug_embeddings (
        fingerprint TEXT NOT NULL,
        reference_id INTEGER NOT NULL REFERENCES refs(reference_id) ON DELETE CASCADE,
        product_pk INTEGER NOT NULL,
        k INTEGER NOT NULL,
        embedding BLOB NOT NULL,
        PRIMARY KEY (fingerprint, reference_id, k)) WITHOUT ROWID""",
    "CREATE INDEX aug_embeddings_ref ON aug_embeddings(reference_id)",
    "CREATE INDEX aug_embeddings_product ON aug_embeddings(product_pk)",
    "CREATE TRIGGER aug_head_insert AFTER INSERT ON aug_embeddings BEGIN "
    + _J + "(NEW.fingerprint, NEW.product_pk, NEW.embedding, 1, 0); END",
    "CREATE TRIGGER aug_head_delete AFTER DELETE ON aug_embeddings BEGIN "
    + _J + "(OLD.fingerprint, OLD.product_pk, OLD.embedding, -1, 0); END",
    "CREATE TRIGGER refs_head_insert AFTER INSERT ON refs BEGIN "
    + _J + "(NEW.fingerprint, NEW.product_pk, NEW.embedding, 1, 1); END",
    "CREATE TRIGGER refs_head_delete AFTER DELETE ON refs BEGIN "
    + _J + "(OLD.fingerprint, OLD.product_pk, OLD.embedding, -1, 1); END",
    "CREATE TRIGGER refs_head_update AFTER UPDATE OF embedding, fingerprint, product_pk ON refs BEGIN "
    + _J + "(OLD.fingerprint, OLD.product_pk, OLD.embedding, -1, 1); "
    + _J + "(NEW.fingerprint, NEW.product_pk, NEW.embedding, 1, 1); END",
    "INSERT INTO head_journal(fingerprint, product_pk, embedding, sign, reference) SELECT fingerprint, product_pk, "
    "embedding, 1, 1 FROM refs",
)

_F64 = "<f8"


#: Journal rows folded into the stored Gram matrix at once (a reader adds fewer than this many outer products).
GRAM_BATCH = 1024


def fold(tx: sqlite3.Connection, gram_batch: int = GRAM_BATCH) -> int:
    """Fold the new journal rows into the small statistics, and the whole journal into the Gram matrix once
    `gram_batch` rows are pending (inside the caller's write transaction); how many new rows there were."""
    rows = tx.execute("SELECT fingerprint, product_pk, embedding, sign, reference FROM head_journal "
                      "WHERE summed = 0").fetchall()
    by_fp: dict[str, list[tuple[int, bytes, int, int]]] = {}
    for fp, pk, emb, sign, ref in rows:
        by_fp.setdefault(str(fp), []).append((int(pk), bytes(emb), int(sign), int(ref)))
    for fp, items in by_fp.items():
        vecs = np.stack([np.frombuffer(e, dtype="<f4") for _, e, _, _ in items])
        d = deltas([it[0] for it in items], vecs, [it[2] for it in items], [it[3] for it in items], gram=False)
        dim = vecs.shape[1]
        row = tx.execute("SELECT count, total FROM head_stats WHERE fingerprint = ?", (fp,)).fetchone()
        ok = row is not None and len(row[1]) == 8 * dim
        count = d.count + (int(row[0]) if ok and row is not None else 0)
        total = d.total + (np.frombuffer(row[1], _F64) if ok and row is not None else 0.0)
        tx.execute("INSERT OR REPLACE INTO head_stats(fingerprint, count, total) VALUES (?, ?, ?)",
                   (fp, count, np.asarray(total, dtype=_F64).tobytes()))
        for pk, change in d.products.items():
            prow = tx.execute("SELECT count, refs, total FROM head_products WHERE fingerprint = ? AND product_pk = ?",
                              (fp, pk)).fetchone()
            n = change.count + (int(prow[0]) if prow else 0)
            refs = change.references + (int(prow[1]) if prow else 0)
            s = change.total + (np.frombuffer(prow[2], _F64) if prow and len(prow[2]) == 8 * dim else 0.0)
            if n <= 0:
                tx.execute("DELETE FROM head_products WHERE fingerprint = ? AND product_pk = ?", (fp, pk))
            else:
                tx.execute("INSERT OR REPLACE INTO head_products(fingerprint, product_pk, count, refs, total) "
                           "VALUES (?, ?, ?, ?, ?)", (fp, pk, n, refs, np.asarray(s, dtype=_F64).tobytes()))
    if rows:
        tx.execute("UPDATE head_journal SET summed = 1 WHERE summed = 0")
    if int(tx.execute("SELECT count(*) FROM head_journal").fetchone()[0]) >= gram_batch:
        _fold_gram(tx)
    return len(rows)


def _fold_gram(tx: sqlite3.Connection) -> None:
    """Add every journal row's outer product to the stored Gram matrix, and empty the journal."""
    fps = [str(r[0]) for r in tx.execute("SELECT DISTINCT fingerprint FROM head_journal")]
    for fp in fps:
        left = tx.execute("SELECT count FROM head_stats WHERE fingerprint = ?", (fp,)).fetchone()
        if left is None or int(left[0]) <= 0:  # a space emptied (a switch away from it): nothing to add up
            tx.execute("DELETE FROM head_gram WHERE fingerprint = ?", (fp,))
            continue
        row = tx.execute("SELECT gram FROM head_gram WHERE fingerprint = ?", (fp,)).fetchone()
        gram = _pending_gram(tx, fp, None if row is None else bytes(row[0]))
        if gram is not None:
            tx.execute("INSERT OR REPLACE INTO head_gram(fingerprint, gram) VALUES (?, ?)",
                       (fp, gram.astype(_F64).tobytes()))
    tx.execute("DELETE FROM head_journal")


def _pending_gram(conn: sqlite3.Connection, fingerprint: str, stored: bytes | None) -> np.ndarray | None:
    """The stored Gram matrix plus the outer products of the journal rows of `fingerprint` (None: neither)."""
    rows = conn.execute("SELECT embedding, sign FROM head_journal WHERE fingerprint = ?", (fingerprint,)).fetchall()
    x = np.stack([np.frombuffer(bytes(r[0]), dtype="<f4") for r in rows]) if rows else None
    return gram_with(stored, x, [float(r[1]) for r in rows])


def read(conn: sqlite3.Connection, fingerprint: str, dim: int, version: int) -> HeadStats:
    """The statistics of `fingerprint` as committed (call inside one read transaction for a consistent view)."""
    stats = HeadStats(fingerprint, dim, version=version)
    row = conn.execute("SELECT count, total FROM head_stats WHERE fingerprint = ?", (fingerprint,)).fetchone()
    if row is None or len(row[1]) != 8 * dim or int(row[0]) <= 0:
        return stats
    stats.count = int(row[0])
    stats.total = np.frombuffer(row[1], _F64).copy()
    g = conn.execute("SELECT gram FROM head_gram WHERE fingerprint = ?", (fingerprint,)).fetchone()
    gram = _pending_gram(conn, fingerprint, None if g is None else bytes(g[0]))
    if gram is not None and gram.shape == (dim, dim):
        stats.gram = gram
    for pid, n, refs, total in conn.execute(
            "SELECT p.product_id, h.count, h.refs, h.total FROM head_products h JOIN products p ON p.pk = h.product_pk "
            "WHERE h.fingerprint = ?", (fingerprint,)):
        stats.products[str(pid)] = ProductSums(int(n), np.frombuffer(total, _F64).copy(), int(refs))
    return stats


# ---------------------------------------------------------------- augmented views
def augmentation_pending(conn: sqlite3.Connection, fingerprint: str, below: int, after: int,
                         limit: int) -> list[PendingReference]:
    """References (id > `after`, id order) of `fingerprint`'s space with a stored image, in products with fewer
    than `below` references, that have no augmented views yet."""
    rows = conn.execute(
        "SELECT r.reference_id, i.image, r.region_x, r.region_y, r.region_w, r.region_h FROM refs r "
        "JOIN ref_images i ON i.reference_id = r.reference_id "
        "WHERE r.reference_id > ? AND r.fingerprint = ? "
        "AND (SELECT count(*) FROM refs o WHERE o.product_pk = r.product_pk) < ? "
        "AND NOT EXISTS (SELECT 1 FROM aug_embeddings a WHERE a.fingerprint = ? AND a.reference_id = r.reference_id) "
        "ORDER BY r.reference_id LIMIT ?", (int(after), fingerprint, int(below), fingerprint, int(limit))).fetchall()
    return [PendingReference(int(r[0]), bytes(r[1]), region_of(r[2:6])) for r in rows]


def augmentation_counts(conn: sqlite3.Connection, fingerprint: str, below: int) -> tuple[int, int]:
    """(references waiting for augmented views, references that have them) in `fingerprint`'s space."""
    waiting = conn.execute(
        "SELECT count(*) FROM refs r JOIN ref_images i ON i.reference_id = r.reference_id WHERE r.fingerprint = ? "
        "AND (SELECT count(*) FROM refs o WHERE o.product_pk = r.product_pk) < ? AND NOT EXISTS "
        "(SELECT 1 FROM aug_embeddings a WHERE a.fingerprint = ? AND a.reference_id = r.reference_id)",
        (fingerprint, int(below), fingerprint)).fetchone()[0]
    done = conn.execute("SELECT count(DISTINCT reference_id) FROM aug_embeddings WHERE fingerprint = ?",
                        (fingerprint,)).fetchone()[0]
    return int(waiting), int(done)


def put_augmentations(tx: sqlite3.Connection, fingerprint: str, reference_id: int, blobs: list[bytes]) -> int:
    """Store a reference's augmented views (skipped when it is gone or has them already); how many rows."""
    row = tx.execute("SELECT product_pk FROM refs WHERE reference_id = ? AND fingerprint = ?",
                     (int(reference_id), fingerprint)).fetchone()
    if row is None or tx.execute("SELECT 1 FROM aug_embeddings WHERE fingerprint = ? AND reference_id = ? LIMIT 1",
                                 (fingerprint, int(reference_id))).fetchone():
        return 0
    tx.executemany("INSERT INTO aug_embeddings(fingerprint, reference_id, product_pk, k, embedding) "
                   "VALUES (?, ?, ?, ?, ?)", [(fingerprint, int(reference_id), int(row[0]), k, b)
                                              for k, b in enumerate(blobs)])
    return len(blobs)


def prune_augmentations(tx: sqlite3.Connection, below: int) -> int:
    """Drop the augmented views of products that have `below` references or more now (their own references
    suffice); how many rows went."""
    return int(tx.execute(
        "DELETE FROM aug_embeddings WHERE product_pk IN (SELECT product_pk FROM refs GROUP BY product_pk "
        "HAVING count(*) >= ?)", (int(below),)).rowcount)
