"""`skulens.service.text_fusion`: KEYWORD scores and verdicts, HYBRID reciprocal-rank fusion (pure functions)."""

from __future__ import annotations

import pytest

from skulens.catalog.models import Match, SearchResult, TextMatch, Verdict
from skulens.service.text_fusion import RRF_K, candidate_depth, fuse, keyword_result, keyword_score


def hit(pid: str, relevance: float) -> TextMatch:
    return TextMatch(pid, f"name {pid}", relevance)


def vector(*pids: str, verdict: Verdict = Verdict.UNKNOWN, confusable: list[str] | None = None) -> SearchResult:
    matches = [Match(p, f"name {p}", 0.3 - 0.01 * i, 100 + i) for i, p in enumerate(pids)]
    return SearchResult(matches, verdict, matches[0].score if matches else -1.0, confusable or [])


def test_keyword_score_is_monotone_in_0_1() -> None:
    assert keyword_score(0.0) == 0.0
    assert keyword_score(1.0) == 0.5
    assert keyword_score(3.0) == 0.75
    assert keyword_score(-2.0) == 0.0  # a negative relevance counts as none
    assert 0.0 < keyword_score(1e-6) < keyword_score(1e-3) < keyword_score(1e3) < 1.0


def test_keyword_result_known_on_a_hit_unknown_without() -> None:
    r = keyword_result([hit("a", 3.0), hit("b", 1.0), hit("c", 0.25)], top_k=2)
    assert [(m.product_id, m.score, m.reference_id) for m in r.matches] == [("a", 0.75, 0), ("b", 0.5, 0)]
    assert (r.verdict, r.best_score, r.confusable) == (Verdict.KNOWN, 0.75, [])
    none = keyword_result([], top_k=5)
    assert (none.matches, none.verdict, none.best_score) == ([], Verdict.UNKNOWN, -1.0)


def test_keyword_result_min_score_drops_matches_but_keeps_the_best_score() -> None:
    r = keyword_result([hit("a", 3.0), hit("b", 1.0)], top_k=5, min_score=0.6)
    assert [m.product_id for m in r.matches] == ["a"] and r.best_score == 0.75
    r = keyword_result([hit("a", 1.0)], top_k=5, min_score=0.9)
    assert r.matches == [] and (r.verdict, r.best_score) == (Verdict.KNOWN, 0.5)


def test_fusion_sums_reciprocal_ranks_over_both_lists() -> None:
    r = fuse(vector("x", "a", "y"), [hit("a", 5.0), hit("z", 1.0)], top_k=5)
    top = 2 / (RRF_K + 1)
    expected = {
        "a": (1 / (RRF_K + 2) + 1 / (RRF_K + 1)) / top,  # second by vector, first by keyword
        "x": (1 / (RRF_K + 1)) / top,
        "z": (1 / (RRF_K + 2)) / top,  # second by keyword only
        "y": (1 / (RRF_K + 3)) / top,
    }
    assert [m.product_id for m in r.matches] == ["a", "x", "z", "y"]
    for m in r.matches:
        assert m.score == pytest.approx(expected[m.product_id])
    refs = {m.product_id: m.reference_id for m in r.matches}
    assert refs == {"a": 101, "x": 100, "y": 102, "z": 0}  # a keyword-only product has no reference
    assert r.verdict == Verdict.KNOWN and r.best_score == pytest.approx(expected["a"])


def test_first_in_both_lists_scores_one_first_in_one_half() -> None:
    r = fuse(vector("a", "b"), [hit("a", 2.0)], top_k=2)
    assert [m.product_id for m in r.matches] == ["a", "b"]
    assert r.matches[0].score == pytest.approx(1.0)
    assert r.matches[1].score == pytest.approx((1 / (RRF_K + 2)) / (2 / (RRF_K + 1)))
    only = fuse(vector(), [hit("k", 2.0)], top_k=2)
    assert [(m.product_id, m.score) for m in only.matches] == [("k", pytest.approx(0.5))]


def test_ties_go_to_the_better_vector_rank_then_the_product_id() -> None:
    # b is 2nd by vector, c is 2nd by keyword: equal fused values; b has a vector rank, c none
    r = fuse(vector("a", "b"), [hit("a", 2.0), hit("c", 1.0)], top_k=3)
    assert [m.product_id for m in r.matches] == ["a", "b", "c"]
    r = fuse(vector(), [hit("d", 1.0), hit("c", 1.0)], top_k=3)
    assert [m.product_id for m in r.matches] == ["d", "c"]  # keyword order decides distinct ranks


def test_fusion_verdict_is_known_with_a_keyword_hit_else_the_vector_verdict() -> None:
    assert fuse(vector("a", verdict=Verdict.UNKNOWN), [hit("b", 1.0)], top_k=2).verdict == Verdict.KNOWN
    amb = fuse(vector("a", "b", verdict=Verdict.AMBIGUOUS, confusable=["a", "b"]), [], top_k=2)
    assert (amb.verdict, amb.confusable) == (Verdict.AMBIGUOUS, ["a", "b"])
    assert fuse(vector("a", verdict=Verdict.KNOWN), [], top_k=2).verdict == Verdict.KNOWN
    empty = fuse(vector(), [], top_k=2)
    assert (empty.matches, empty.verdict, empty.best_score) == ([], Verdict.UNKNOWN, -1.0)


def test_fusion_cuts_to_top_k_and_applies_min_score() -> None:
    r = fuse(vector("a", "b", "c", "d"), [hit("d", 1.0)], top_k=2, min_score=0.6)
    assert [m.product_id for m in r.matches] == ["d"]  # a scores exactly 0.5, d 4th + 1st
    assert r.best_score == pytest.approx((1 / (RRF_K + 4) + 1 / (RRF_K + 1)) / (2 / (RRF_K + 1)))


def test_candidate_depth() -> None:
    assert candidate_depth(5, 100) == 20
    assert candidate_depth(15, 100) == 30
    assert candidate_depth(80, 100) == 100
    assert candidate_depth(5, 8) == 8
    assert candidate_depth(10, 10) == 10
