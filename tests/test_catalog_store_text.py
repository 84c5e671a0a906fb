"""`skulens.catalog.store_text`: the embedded store's FTS5 index — schema 5 upgrade, triggers, bm25 ranking."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from skulens.catalog.store import MIGRATIONS, SCHEMA_VERSION, Store
from skulens.catalog.store_text import match_expression
from skulens.catalog.text_search import text_query


def search(s: Store, text: str, k: int = 10, category: str = "", labels: dict[str, str] | None = None) -> list[str]:
    return [m.product_id for m in s.search_text(text_query(text, k, category, labels, max_top_k=100))]


def fts_rows(s: Store) -> list[tuple[object, ...]]:
    with s.transaction() as tx:
        return [tuple(r) for r in tx.execute("SELECT rowid, * FROM products_fts ORDER BY rowid")]


def test_a_schema_4_store_is_upgraded_and_its_products_indexed(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for version in range(1, 5):
        for stmt in MIGRATIONS[version]:
            conn.execute(stmt)
    conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)",
                     [("schema_version", "4"), ("catalog_uuid", "u-1"), ("generation", "3")])
    conn.executemany(
        "INSERT INTO products(product_id, display_name, category, labels, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, 0, 0)",
        [("p1", "Oatly Oat Milk", "milk", json.dumps({"brand": "Oatly"})),
         ("p2", "Red Grapefruit", "fruit", "{}"),
         ("p3", "Arla Milk", "milk", json.dumps({"brand": "Arla", "size": "1l"}))])
    conn.commit()
    conn.close()
    s = Store(path)
    try:
        assert s.meta().schema_version == SCHEMA_VERSION == 5
        assert fts_rows(s) == [(1, "Oatly Oat Milk", "milk", "Oatly", ""), (2, "Red Grapefruit", "fruit", "", ""),
                               (3, "Arla Milk", "milk", "Arla 1l", "")]
        assert search(s, "red grapefruit") == ["p2"]
        assert search(s, "arla") == ["p3"]  # a label value
        assert search(s, "fruit") == ["p2"]  # the category
        assert s.get_product("p1")[0].description == ""  # the new column's default
    finally:
        s.close()


def test_triggers_keep_the_index_in_step_with_every_write(tmp_path: Path) -> None:
    s = Store(tmp_path / "s.db")
    try:
        s.upsert_product("p1", "Oat Milk", "milk", {"brand": "Oatly"}, description="From Sweden.\nVegan.")
        s.upsert_product("p2", "Oat Flakes", "cereal", {})
        assert search(s, "sweden") == ["p1"]
        s.upsert_product("p1", "Oat Milk", "milk", {}, fields=frozenset({"description"}), description="From Malmö")
        assert search(s, "sweden") == [] and search(s, "malmö") == ["p1"]
        assert search(s, "oatly") == ["p1"]  # labels were not in the update's fields
        s.upsert_product("p1", "Barista", "milk", {}, fields=frozenset({"display_name", "labels"}))
        assert search(s, "oatly") == [] and search(s, "barista") == ["p1"]
        s.delete_product("p1")
        assert search(s, "barista") == [] and search(s, "oat") == ["p2"]
        assert [r[0] for r in fts_rows(s)] == [2]
    finally:
        s.close()


def test_ranking_weights_the_name_and_filters_apply(tmp_path: Path) -> None:
    s = Store(tmp_path / "s.db")
    try:
        s.upsert_product("desc", "Juice", "drinks", {}, description="not milk but juice with grapefruit")
        s.upsert_product("name", "Grapefruit", "fruit", {"origin": "Spain"})
        s.upsert_product("none", "Apple", "fruit", {})
        assert search(s, "grapefruit") == ["name", "desc"]  # a name hit outranks a description hit
        assert search(s, "grapefruit", k=1) == ["name"]
        assert search(s, "grapefruit", category="drinks") == ["desc"]
        assert search(s, "grapefruit", labels={"origin": "Spain"}) == ["name"]
        assert search(s, "grapefruit", labels={"origin": "Italy"}) == []
        assert sorted(search(s, "apple juice")) == ["desc", "none"]
        assert search(s, "?!") == []  # no words: nothing matches
        assert search(s, 'NEAR "or" AND') == []  # operators are quoted words, not syntax
    finally:
        s.close()


def test_match_expression_quotes_every_term() -> None:
    assert match_expression(["oat", "or", 'a"b']) == '"oat" OR "or" OR "a""b"'
