"""The shared catalog's keyword search (`skulens.catalog.text_search`): a generated `tsvector` column + GIN index.

`products.search_text` is generated (STORED) from the display name (weight A), category and label values (B) and
description (C) with the 'simple' text-search configuration: words are lower-cased and kept as they are — no
stemming, no stop words, no language — so product names in any language match literally, as in the embedded
backend's FTS5 table. PostgreSQL keeps it in step with every write of the row (inside the write's transaction);
the partial GIN index covers live products. Ranking: `ts_rank_cd` (cover density, default weights) of the query
built by `websearch_to_tsquery('simple', …)` from the query's terms joined by OR, each quoted, times (1 + the share
of the product name's words the query has: `text_search.rerank`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg.types.json import Jsonb

from skulens.catalog.models import TextMatch
from skulens.catalog.postgres_pool import Conn
from skulens.catalog.text_search import TextQuery, fetch_depth, rerank

if TYPE_CHECKING:
    from skulens.catalog.postgres_schema import CatalogSchema

#: Added to the schema's idempotent DDL (schema version 5); a generated column fills itself for existing rows.
DDL: tuple[str, ...] = (
    "ALTER TABLE {products} ADD COLUMN IF NOT EXISTS description text NOT NULL DEFAULT ''",
    """ALTER TABLE {products} ADD COLUMN IF NOT EXISTS search_text tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('simple'::regconfig, display_name), 'A')
        || setweight(to_tsvector('simple'::regconfig, category::text), 'B')
        || setweight(jsonb_to_tsvector('simple'::regconfig, labels, '["string"]'::jsonb), 'B')
        || setweight(to_tsvector('simple'::regconfig, description), 'C')) STORED""",
    "CREATE INDEX IF NOT EXISTS products_live_text ON {products} USING gin (search_text) WHERE deleted_at IS NULL",
)


def websearch_text(terms: list[str]) -> str:
    """The `websearch_to_tsquery` input: any of the terms, each quoted (so "or" or "-" in a word is a word)."""
    return " or ".join('"' + t.replace('"', " ") + '"' for t in terms)


def search(conn: Conn, schema: CatalogSchema, q: TextQuery) -> list[TextMatch]:
    """The `q.top_k` live products whose text best matches `q.terms` (and the filters), best first (ties: id): the
    best `fetch_depth` by ts_rank_cd, re-ranked by name coverage (`text_search.rerank`)."""
    if not q.terms:
        return []
    sql = ("SELECT p.product_id, p.display_name, ts_rank_cd(p.search_text, t.q) AS relevance "
           "FROM {products} p, websearch_to_tsquery('simple'::regconfig, %(text)s) AS t(q) "
           "WHERE p.deleted_at IS NULL AND p.search_text @@ t.q")
    args: dict[str, object] = {"text": websearch_text(q.terms), "n": fetch_depth(q.top_k)}
    if q.category:
        sql += " AND p.category = %(cat)s"
        args["cat"] = q.category
    if q.labels:
        sql += " AND p.labels @> %(labels)s"
        args["labels"] = Jsonb(q.labels)
    sql += " ORDER BY relevance DESC, p.product_id LIMIT %(n)s"
    hits = [TextMatch(str(r[0]), str(r[1]), float(r[2])) for r in conn.execute(schema.q(sql), args)]
    return rerank(hits, q.terms, q.top_k)
