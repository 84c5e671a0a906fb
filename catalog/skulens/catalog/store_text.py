"""The embedded store's keyword search (`skulens.catalog.text_search`): an SQLite FTS5 index over the products.

`products_fts` holds, per product (rowid = `products.pk`), its display name, category, label values and description,
tokenised by `unicode61` without removing diacritics (words match literally, case folded). Triggers on `products`
keep it in step inside every write transaction (insert, update of those columns, delete — a product's delete
included); schema 5 adds it and fills it from the products already stored. Ranking: `bm25()` with the name
weighted 10, category and labels 2, description 1; a product's relevance is -bm25 (higher is better), times
(1 + the share of its name's words the query has: `text_search.rerank`).
"""

from __future__ import annotations

import sqlite3

from skulens.catalog.models import TextMatch
from skulens.catalog.text_search import TextQuery, fetch_depth, rerank

_LABEL_TEXT = "(SELECT ifnull(group_concat(value, ' '), '') FROM json_each({row}.labels))"
_COLUMNS = "display_name, category, labels, description"
_VALUES = f"{{row}}.display_name, {{row}}.category, {_LABEL_TEXT}, {{row}}.description"

#: Schema 5 (applied by `store.MIGRATIONS`): the description column, the FTS5 table and its triggers, and the
#: table filled from the products already stored.
MIGRATION: tuple[str, ...] = (
    "ALTER TABLE products ADD COLUMN description TEXT NOT NULL DEFAULT ''",
    f"CREATE VIRTUAL TABLE products_fts USING fts5({_COLUMNS}, tokenize = 'unicode61 remove_diacritics 0')",
    f"""CREATE TRIGGER products_fts_insert AFTER INSERT ON products BEGIN
        INSERT INTO products_fts(rowid, {_COLUMNS}) VALUES (new.pk, {_VALUES.format(row="new")});
    END""",
    f"""CREATE TRIGGER products_fts_update AFTER UPDATE OF {_COLUMNS} ON products BEGIN
        DELETE FROM products_fts WHERE rowid = old.pk;
        INSERT INTO products_fts(rowid, {_COLUMNS}) VALUES (new.pk, {_VALUES.format(row="new")});
    END""",
    """CREATE TRIGGER products_fts_delete AFTER DELETE ON products BEGIN
        DELETE FROM products_fts WHERE rowid = old.pk;
    END""",
    f"INSERT INTO products_fts(rowid, {_COLUMNS}) SELECT p.pk, {_VALUES.format(row='p')} FROM products p",
)

_WEIGHTS = "10.0, 2.0, 2.0, 1.0"  # display_name, category, labels, description


def match_expression(terms: list[str]) -> str:
    """The FTS5 query: any of the terms, each quoted (so no word is read as an operator)."""
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


def search(conn: sqlite3.Connection, q: TextQuery) -> list[TextMatch]:
    """The `q.top_k` products whose text best matches `q.terms` (and the filters), best first (ties: product id):
    the FTS5 index's best `fetch_depth` by bm25, re-ranked by name coverage (`text_search.rerank`)."""
    if not q.terms:
        return []
    sql = (f"SELECT p.product_id, p.display_name, -bm25(products_fts, {_WEIGHTS}) AS relevance "
           "FROM products_fts JOIN products p ON p.pk = products_fts.rowid WHERE products_fts MATCH ?")
    args: list[object] = [match_expression(q.terms)]
    if q.category:
        sql += " AND p.category = ?"
        args.append(q.category)
    for key, value in sorted(q.labels.items()):
        sql += " AND EXISTS (SELECT 1 FROM json_each(p.labels) WHERE json_each.key = ? AND json_each.value = ?)"
        args += [key, value]
    sql += " ORDER BY relevance DESC, p.product_id LIMIT ?"
    args.append(fetch_depth(q.top_k))
    return rerank([TextMatch(str(r[0]), str(r[1]), float(r[2])) for r in conn.execute(sql, args)], q.terms, q.top_k)
