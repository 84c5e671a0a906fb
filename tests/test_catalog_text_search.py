"""`skulens.catalog.text_search`: a keyword query's terms and argument checks (shared by both backends)."""

from __future__ import annotations

import pytest

from skulens.catalog import InvalidArgument
from skulens.catalog.models import TextMatch
from skulens.catalog.text_search import (
    MAX_QUERY_CHARS,
    MAX_TERMS,
    RERANK_DEPTH,
    fetch_depth,
    name_coverage,
    query_terms,
    rerank,
    text_query,
)


def test_terms_are_distinct_lowercased_words_in_order() -> None:
    assert query_terms("Oatly OAT-milk, oat_drink  oatly!") == ["oatly", "oat", "milk", "drink"]
    assert query_terms("Müsli Straße 1,5l") == ["müsli", "straße", "1", "5l"]  # lower(), as both indexes; accents kept
    assert query_terms("緑茶 ペットボトル") == ["緑茶", "ペットボトル"]
    assert query_terms('"or" -not *') == ["or", "not"]  # operators are words (each is quoted by the backends)
    assert query_terms("!!! ...") == []
    many = " ".join(f"w{i}" for i in range(MAX_TERMS + 10))
    assert query_terms(many) == [f"w{i}" for i in range(MAX_TERMS)]


def test_text_query_checks_its_arguments_and_normalises_filters() -> None:
    q = text_query("Red grapefruit", 3, "Cafe\u0301", {"brand": "Zo\u00eb"}, max_top_k=10)
    assert (q.terms, q.top_k, q.category, q.labels) == (["red", "grapefruit"], 3, "Café", {"brand": "Zoë"})
    for bad in ("", "   ", "x" * (MAX_QUERY_CHARS + 1)):
        with pytest.raises(InvalidArgument) as err:
            text_query(bad, 3, "", None, max_top_k=10)
        assert err.value.field == "query"
    with pytest.raises(InvalidArgument) as err:
        text_query(b"milk", 3, "", None, max_top_k=10)  # type: ignore[arg-type]
    assert err.value.field == "query"
    for k in (0, 11, True):
        with pytest.raises(InvalidArgument) as err:
            text_query("milk", k, "", None, max_top_k=10)
        assert err.value.field == "top_k"
    with pytest.raises(InvalidArgument) as err:
        text_query("milk", 3, " bad", None, max_top_k=10)
    assert err.value.field == "category"


def test_name_coverage_and_rerank() -> None:
    terms = query_terms("red grapefruit")
    assert name_coverage("Red Grapefruit", terms) == 1.0
    assert name_coverage("God Morgon Orange Red Grapefruit Juice", terms) == 2 / 6
    assert name_coverage("", terms) == 0.0 and name_coverage("Apple", terms) == 0.0
    hits = [TextMatch("juice", "God Morgon Orange Red Grapefruit Juice", 9.78),
            TextMatch("fruit", "Red Grapefruit", 9.72), TextMatch("b", "Apple", 3.0), TextMatch("a", "Pear", 3.0)]
    got = rerank(hits, terms, top_k=3)
    assert [h.product_id for h in got] == ["fruit", "juice", "a"]  # ties (a, b): product id
    assert [h.relevance for h in got] == [9.72 * 2, 9.78 * (1 + 2 / 6), 3.0]
    assert fetch_depth(5) == RERANK_DEPTH and fetch_depth(RERANK_DEPTH + 7) == RERANK_DEPTH + 7
