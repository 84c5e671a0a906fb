"""`skulens.catalog.postgres_text`: the shared catalog's keyword index — schema 5 upgrade, the generated tsvector,
the query built from the terms, the index used. Real PostgreSQL (tests/pg_fixture.py; skipped where it cannot run)."""

from __future__ import annotations

import psycopg
from pg_fixture import PgServer

from skulens.catalog import CatalogSettings
from skulens.catalog.postgres import PostgresCatalog
from skulens.catalog.postgres_schema import SCHEMA_VERSION
from skulens.catalog.postgres_text import websearch_text

DIM = 8
FP = "pg-text/8:0"


def open_(server: PgServer, schema: str) -> PostgresCatalog:
    return PostgresCatalog.open(server.url(), schema=schema, fingerprint=FP, dim=DIM, settings=CatalogSettings())


def test_a_schema_4_catalog_is_upgraded_and_its_products_searchable(postgres_server: PgServer, schema: str) -> None:
    cat = open_(postgres_server, schema)
    cat.upsert_product("p1", "Oatly Oat Milk", "milk", {"brand": "Oatly"})
    cat.upsert_product("p2", "Red Grapefruit", "fruit", {})
    cat.close()
    with psycopg.connect(postgres_server.url(), autocommit=True) as conn:  # as schema 4 left it
        conn.execute(f'DROP INDEX "{schema}".products_live_text')
        conn.execute(f'ALTER TABLE "{schema}".products DROP COLUMN search_text, DROP COLUMN description')
        conn.execute(f'UPDATE "{schema}".meta SET schema_version = 4')
    cat = open_(postgres_server, schema)
    try:
        assert SCHEMA_VERSION >= 5
        with psycopg.connect(postgres_server.url(), autocommit=True) as conn:
            assert conn.execute(f'SELECT schema_version FROM "{schema}".meta').fetchone() == (SCHEMA_VERSION,)
            assert conn.execute(f'SELECT to_regclass(\'"{schema}".products_live_text\') IS NOT NULL').fetchone() \
                == (True,)
        assert [m.product_id for m in cat.search_text("red grapefruit")] == ["p2"]
        assert [m.product_id for m in cat.search_text("oatly")] == ["p1"]  # a label value
        assert cat.get_product("p1").product.description == ""
    finally:
        cat.close()


def test_the_tsvector_is_simple_weighted_and_follows_writes(postgres_server: PgServer, schema: str) -> None:
    cat = open_(postgres_server, schema)
    try:
        cat.upsert_product("p", "Café Crème", "drinks", {"brand": "Löfbergs", "size": "1"},
                           description="Roasted in Karlstad")
        with psycopg.connect(postgres_server.url(), autocommit=True) as conn:
            (vec,) = conn.execute(f'SELECT search_text::text FROM "{schema}".products').fetchone()  # type: ignore
        # 'simple': lower-cased words as they are (accents kept, no stemming); weights A name, B category and
        # string label values (keys left out), C description (D is shown without a letter)
        lexemes = {(item.rsplit(":", 1)[0].strip("'"), item[-1]) for item in vec.split()}
        assert lexemes == {("café", "A"), ("crème", "A"), ("drinks", "B"), ("1", "B"), ("löfbergs", "B"),
                           ("roasted", "C"), ("in", "C"), ("karlstad", "C")}
        assert [m.product_id for m in cat.search_text("creme")] == []  # literal: accents are kept
        assert [m.product_id for m in cat.search_text("crème")] == ["p"]
        cat.upsert_product("p", description="", update_fields=["description"])
        assert cat.search_text("karlstad") == []
        cat.delete_product("p")  # a tombstone: the row stays, the search filters it
        assert cat.search_text("café") == []
    finally:
        cat.close()


def test_the_search_uses_the_partial_gin_index(postgres_server: PgServer, schema: str) -> None:
    open_(postgres_server, schema).close()
    with psycopg.connect(postgres_server.url(), autocommit=True) as conn:
        conn.execute(f'INSERT INTO "{schema}".products (product_id, display_name, created_at, updated_at) '
                     "SELECT 'p' || i, 'Product ' || i || ' word' || (i % 997), 0, 0 FROM generate_series(1, 20000) i")
        conn.execute(f'ANALYZE "{schema}".products')
        conn.execute("SET enable_seqscan = off")  # the planner scans 20,000 rows itself; above ~100k it takes the index
        plan = " ".join(str(r[0]) for r in conn.execute(
            f'EXPLAIN SELECT product_id FROM "{schema}".products p, '
            "websearch_to_tsquery('simple'::regconfig, '\"word5\"') t(q) "
            "WHERE p.deleted_at IS NULL AND p.search_text @@ t.q"))
    assert "Bitmap Index Scan on products_live_text" in plan, plan


def test_websearch_text_quotes_every_term() -> None:
    assert websearch_text(["oat", "or", "-x", 'a"b']) == '"oat" or "or" or "-x" or "a b"'
