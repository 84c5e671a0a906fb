"""The SQLite side of catalog-adapted matching: a store made before schema 4 gets its statistics at upgrade (from the
references it holds), the journal is empty after every write, and a product delete (a cascade) reaches the
statistics through the triggers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
from catalog_helpers import product_refs

from skulens.catalog import Catalog, CatalogSettings, NewReference
from skulens.catalog.head import HeadStats

DIM = 16
FP = "store-head-test/16:00aa"


def open_catalog(path: Path) -> Catalog:
    return Catalog.open(path, fingerprint=FP, dim=DIM, settings=CatalogSettings(synchronous="NORMAL", use_gpu="never"))


def test_a_store_from_before_schema_4_gets_its_statistics_at_upgrade(tmp_path: Path) -> None:
    _, refs = product_refs(3, 4, DIM, seed=2)
    c = open_catalog(tmp_path / "cat")
    for p in range(3):
        c.upsert_product(f"p{p}")
        c.add_references(f"p{p}", [NewReference(v) for v in refs[p]])
    c.close()
    # make it look like schema 3: no head tables, no triggers
    db = sqlite3.connect(tmp_path / "cat" / "catalog.db")
    for trig in ("refs_head_insert", "refs_head_delete", "refs_head_update", "aug_head_insert", "aug_head_delete"):
        db.execute(f"DROP TRIGGER {trig}")
    for table in ("head_journal", "head_stats", "head_gram", "head_products", "aug_embeddings"):
        db.execute(f"DROP TABLE {table}")
    for trig in ("products_fts_insert", "products_fts_update", "products_fts_delete"):  # and without schema 5
        db.execute(f"DROP TRIGGER {trig}")
    db.execute("DROP TABLE products_fts")
    db.execute("ALTER TABLE products DROP COLUMN description")
    db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    c = open_catalog(tmp_path / "cat")
    try:
        got = c.head_statistics()
        want = HeadStats.from_embeddings(FP, [f"p{p}" for p in range(3) for _ in range(4)], refs.reshape(-1, DIM))
        assert got.count == 12
        np.testing.assert_allclose(got.gram, want.gram, atol=1e-9)
        np.testing.assert_allclose(got.products["p1"].total, want.products["p1"].total, atol=1e-9)
        assert c._store.meta_value("schema_version") == "5"  # the upgrade goes on to the latest schema
        with c._store._lock:  # every row summed; fewer than GRAM_BATCH rows still owe the Gram matrix
            assert c._store.conn.execute("SELECT count(*), sum(summed) FROM head_journal").fetchone() == (12, 12)
        c.delete_product("p0")  # the cascade to refs fires the journal trigger
        assert sorted(c.head_statistics().products) == ["p1", "p2"] and c.head_statistics().count == 8
    finally:
        c.close()


def test_the_gram_matrix_is_folded_in_batches_and_read_with_the_pending_rows(tmp_path: Path) -> None:
    from skulens.catalog import store_head

    _, refs = product_refs(2, 5, DIM, seed=8)
    c = open_catalog(tmp_path / "cat")
    try:
        c.upsert_product("a")
        c.add_references("a", [NewReference(v) for v in refs[0]])
        conn = c._store.conn
        with c._store._lock:
            assert conn.execute("SELECT count(*) FROM head_gram").fetchone()[0] == 0  # 5 rows < GRAM_BATCH
        with c._store.transaction() as tx:  # the next write with a batch of 4: the journal is folded
            tx.execute("UPDATE products SET display_name = 'A' WHERE product_id = 'a'")
            store_head.fold(tx, gram_batch=4)
        with c._store._lock:
            assert conn.execute("SELECT count(*) FROM head_journal").fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM head_gram").fetchone()[0] == 1
        c.upsert_product("b")
        c.add_references("b", [NewReference(v) for v in refs[1]])  # pending again, on top of the stored matrix
        got = c.head_statistics()
        want = HeadStats.from_embeddings(FP, ["a"] * 5 + ["b"] * 5, refs.reshape(-1, DIM))
        np.testing.assert_allclose(got.gram, want.gram, atol=1e-9)
        np.testing.assert_allclose(got.total, want.total, atol=1e-9)
    finally:
        c.close()
