"""Keyword (full-text) search over products, the part both backends share: the query's terms and the checks.

A keyword search ranks products by how well their text — display name, category, label values and description —
matches the query's terms. Each backend ranks with its own engine (embedded: SQLite FTS5 `bm25()`, `store_text`;
shared: PostgreSQL `tsvector` + `ts_rank_cd`, `postgres_text`), both over the same terms: the query split into
words (runs of letters and digits, lower-cased as the backends do; no stemming, no stop words, so product names in
any language match literally), any one of which may match (OR), a product matching more of them (and more often,
in its name rather than its description) ranking higher. Both then re-rank their best `fetch_depth` matches by how
much of the product's display name the query covers (`rerank`): relevance × (1 + c), c the share of the name's words
that are query terms — so "red grapefruit" puts "Red Grapefruit" before "God Morgon Orange Red Grapefruit Juice"
(whose longer name bm25 alone may prefer when the shorter product has a long description).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from skulens.catalog import validation as v
from skulens.catalog.errors import InvalidArgument
from skulens.catalog.models import TextMatch

MAX_QUERY_CHARS = 4096
MAX_TERMS = 64  # words of a query that count (the first ones)
RERANK_DEPTH = 50  # matches a backend ranks by name coverage (at least top_k)
_WORD = re.compile(r"[^\W_]+")


def query_terms(query: str) -> list[str]:
    """The distinct lower-cased words of `query`, in order (at most `MAX_TERMS`); [] when it has none."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(query.lower()):
        seen.setdefault(word, None)
        if len(seen) == MAX_TERMS:
            break
    return list(seen)


def fetch_depth(top_k: int) -> int:
    """How many of the engine's best matches `rerank` re-orders: max(top_k, RERANK_DEPTH)."""
    return max(top_k, RERANK_DEPTH)


def name_coverage(display_name: str, terms: list[str]) -> float:
    """The share (0 to 1) of the name's distinct words that are among `terms` (0 for a name without words)."""
    words = query_terms(display_name)
    if not words:
        return 0.0
    wanted = set(terms)
    return sum(1 for w in words if w in wanted) / len(words)


def rerank(hits: list[TextMatch], terms: list[str], top_k: int) -> list[TextMatch]:
    """The first `top_k` of `hits` by relevance × (1 + name coverage), ties by product id."""
    scored = [TextMatch(h.product_id, h.display_name, h.relevance * (1.0 + name_coverage(h.display_name, terms)))
              for h in hits]
    scored.sort(key=lambda h: (-h.relevance, h.product_id))
    return scored[:top_k]


@dataclass(frozen=True)
class TextQuery:
    """A checked keyword search: its terms, how many products, and the filters (NFC)."""

    terms: list[str]
    top_k: int
    category: str
    labels: dict[str, str]


def text_query(query: object, top_k: int, category: str, labels: Mapping[str, str] | None,
               max_top_k: int) -> TextQuery:
    """Check a keyword search's arguments (InvalidArgument naming the field) and split the query into terms."""
    if not isinstance(query, str):
        raise InvalidArgument(f"query must be a string, got {type(query).__name__}", field="query")
    if not query.strip() or len(query) > MAX_QUERY_CHARS:
        raise InvalidArgument(f"query must be 1-{MAX_QUERY_CHARS} characters, not blank, got {len(query)}",
                              field="query")
    k = v.positive_int(top_k, "top_k", max_top_k)
    return TextQuery(query_terms(query), k, v.category(category), v.labels(labels))
