"""skulens.catalog.store: SQLite WAL store, transactions, generation counter, migrations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from skulens.catalog.errors import CatalogClosed, CatalogError, NotFound
from skulens.catalog.store import SCHEMA_VERSION, RefRow, Store


def _row(seed: int, sha: str | None = None, image: bytes | None = None, dim: int = 4) -> RefRow:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return RefRow((v / np.linalg.norm(v)).astype("<f4").tobytes(), f"src{seed}", sha, image)


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "c.db", "FULL")
    s.claim_identity("model-a", 4)
    yield s
    s.close()


def test_wal_synchronous_and_schema(tmp_path: Path) -> None:
    for level, code in (("FULL", 2), ("NORMAL", 1)):
        s = Store(tmp_path / f"{level}.db", level)
        assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.conn.execute("PRAGMA synchronous").fetchone()[0] == code
        assert s.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        meta = s.meta()
        assert meta.schema_version == SCHEMA_VERSION and meta.generation == 0 and meta.fingerprint is None
        s.close()
        s.close()  # idempotent
    with pytest.raises(CatalogClosed):
        s.counts()


def test_reopen_keeps_identity_and_refuses_newer_schema(tmp_path: Path) -> None:
    s = Store(tmp_path / "c.db")
    m1 = s.claim_identity("fp", 8)
    s.close()
    s = Store(tmp_path / "c.db")
    m2 = s.claim_identity("other", 16)  # an existing identity is never overwritten
    assert (m2.fingerprint, m2.dim, m2.catalog_uuid) == ("fp", 8, m1.catalog_uuid)
    with s.transaction() as tx:
        tx.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    s.close()
    with pytest.raises(CatalogError, match="schema version"):
        Store(tmp_path / "c.db")


def test_generation_counts_every_write(store: Store) -> None:
    g0 = store.generation()
    _, created, count, g1 = store.upsert_product("p1", "P one", "food", {"brand": "x"})
    assert created and count == 0 and g1 == g0 + 1
    _, created, _, g2 = store.upsert_product("p1", "P one!", "food", {})
    assert not created and g2 == g1 + 1
    _, res, g3 = store.add_references("p1", [_row(1, "a" * 64), _row(2)], "model-a")
    assert [d for _, d, _ in res] == [False, False] and g3 == g2 + 1
    _, res2, g4 = store.add_references("p1", [_row(3, "a" * 64)], "model-a")  # duplicate only: no write
    assert res2 == [(res[0][0], True, False)] and g4 == g3
    _, g5 = store.delete_reference(res[1][0])
    assert g5 == g4 + 1
    _, ids, g6 = store.delete_product("p1")
    assert ids == [res[0][0]] and g6 == g5 + 1


def test_add_references_is_one_transaction(store: Store) -> None:
    store.upsert_product("p1", "", "", {})
    with pytest.raises(NotFound):
        store.add_references("missing", [_row(1)], "model-a")
    # the second row breaks a constraint mid-transaction: the first one must not stay behind
    broken = RefRow(None, "s", None, None)  # type: ignore[arg-type]
    g = store.generation()
    with pytest.raises(sqlite3.IntegrityError):
        store.add_references("p1", [_row(1, image=b"x"), broken], "model-a")
    assert store.generation() == g and store.counts() == (1, 0, 0)
    assert store.conn.execute("SELECT COUNT(*) FROM ref_images").fetchone()[0] == 0


def test_duplicates_within_one_call_and_cascade(store: Store) -> None:
    store.upsert_product("p1", "", "", {})
    store.upsert_product("p2", "", "", {})
    _, res, _ = store.add_references("p1", [_row(1, "b" * 64, b"img"), _row(2, "b" * 64, b"img")], "model-a")
    assert res[1] == (res[0][0], True, False)
    # the same content for another product is a different reference
    _, res2, _ = store.add_references("p2", [_row(1, "b" * 64, b"img")], "model-a")
    assert not res2[0][1] and res2[0][0] != res[0][0]
    assert store.counts() == (2, 2, 2)
    store.delete_product("p1")
    assert store.counts() == (1, 1, 1)
    n_images = store.conn.execute("SELECT COUNT(*) FROM ref_images").fetchone()[0]
    assert n_images == 1
    with pytest.raises(NotFound, match="p1"):
        store.get_product("p1")
    with pytest.raises(NotFound):
        store.delete_reference(res[0][0])


def test_snapshot_is_isolated_from_later_writes(store: Store) -> None:
    store.upsert_product("p1", "", "", {})
    store.add_references("p1", [_row(1), _row(2)], "model-a")
    with store.read_snapshot() as snap:
        gen = snap.generation
        store.add_references("p1", [_row(3)], "model-a")
        ids, pks = snap.reference_map()
        chunks = list(snap.iter_embeddings(4, chunk=1))
        assert len(ids) == 2 and snap.count() == 2 and len(chunks) == 2
        assert chunks[0][1].shape == (1, 4) and chunks[0][1].dtype == np.float32
    assert store.generation() == gen + 1
    assert len(set(pks.tolist())) == 1


def test_list_products_order_and_category(store: Store) -> None:
    for pid in ["b", "a", "c", "ä", "B"]:
        store.upsert_product(pid, pid.upper(), "x" if pid in "ab" else "y", {"k": pid})
    rows = store.list_products("", 10, "")
    assert [r.product_id for r, _ in rows] == sorted(["b", "a", "c", "ä", "B"])
    assert [r.product_id for r, _ in store.list_products("a", 10, "x")] == ["b"]
    row, refs = store.get_product("ä")
    assert row.labels == {"k": "ä"} and refs == []


def test_existing_hashes_uses_the_hash_index(store: Store) -> None:
    store.upsert_product("p1", "", "", {})
    store.upsert_product("p2", "", "", {})
    _, res, _ = store.add_references("p1", [_row(1, "a" * 64), _row(2, "b" * 64), _row(3)], "model-a")
    store.add_references("p2", [_row(4, "c" * 64)], "model-a")
    many = ["a" * 64, "c" * 64, "d" * 64] + [f"{i:064x}" for i in range(1200)]  # more than one IN (...) batch
    assert store.existing_hashes("p1", many) == {"a" * 64: res[0][0]}
    assert store.existing_hashes("p1", ["b" * 64, "b" * 64]) == {"b" * 64: res[1][0]}
    assert store.existing_hashes("p2", ["a" * 64, "c" * 64]) == {"c" * 64: res[0][0] + 3}
    assert store.existing_hashes("p1", []) == {}
    with pytest.raises(NotFound):
        store.existing_hashes("missing", ["a" * 64])
    plan = " ".join(str(r[-1]) for r in store.conn.execute(
        "EXPLAIN QUERY PLAN SELECT content_sha256, reference_id FROM refs WHERE product_pk = ? "
        "AND content_sha256 IN (?, ?)", (1, "a" * 64, "b" * 64)))
    assert "refs_product_sha" in plan


def test_a_schema_2_store_is_upgraded_in_place_and_remembers_request_ids(tmp_path: Path) -> None:
    """Schema 3 adds refs.request_id (AIP-155): a store written at schema 2 keeps its references and takes
    request ids after the upgrade; a request id names one live reference and goes with it."""
    from skulens.catalog.store import MIGRATIONS

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for version in (1, 2):
        for stmt in MIGRATIONS[version]:
            conn.execute(stmt)
    conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)",
                     [("schema_version", "2"), ("catalog_uuid", "u-1"), ("generation", "2"),
                      ("fingerprint", "model-a"), ("dim", "4")])
    conn.execute("INSERT INTO products(product_id, created_at, updated_at) VALUES ('p1', 0, 0)")
    conn.execute("INSERT INTO refs(product_pk, embedding, fingerprint, content_sha256, created_at) "
                 "VALUES (1, ?, 'model-a', ?, 0)", (_row(1).embedding, "a" * 64))
    conn.commit()
    conn.close()
    s = Store(path)
    try:
        assert s.meta().schema_version == SCHEMA_VERSION and s.counts()[1] == 1
        rid = "0f8e2b4c-1d2a-4b3c-8d9e-0a1b2c3d4e5f"
        row = RefRow(_row(2).embedding, "s", "b" * 64, None, request_id=rid)
        _, res, _ = s.add_references("p1", [row], "model-a")
        assert res[0][1:] == (False, False)
        got = s.requested_references([rid, "1f8e2b4c-1d2a-4b3c-8d9e-0a1b2c3d4e5f"])
        assert list(got) == [rid] and (got[rid].reference_id, got[rid].product_id) == (res[0][0], "p1")
        _, again, _ = s.add_references("p1", [row], "model-a")
        assert again == [(res[0][0], False, True)]  # the original outcome, replayed
        with pytest.raises(sqlite3.IntegrityError), s.transaction() as tx:  # one reference per request id
            tx.execute("UPDATE refs SET request_id = ? WHERE reference_id != ?", (rid, res[0][0]))
        s.delete_reference(res[0][0])
        assert s.requested_references([rid]) == {}
    finally:
        s.close()
