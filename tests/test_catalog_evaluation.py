"""skulens.catalog.evaluation: every figure of a small labelled set, computed by hand below."""

from __future__ import annotations

import math

import pytest

from skulens.catalog.evaluation import (
    ConfusedPair,
    Query,
    TopK,
    VerdictRow,
    auroc,
    evaluate,
    held_out_scores,
    query_from_result,
)
from skulens.catalog.models import Match, SearchResult, Verdict

K, U, A = Verdict.KNOWN, Verdict.UNKNOWN, Verdict.AMBIGUOUS


def q(truth: str | None, ranked: str, scores: tuple[float, ...], verdict: Verdict, group: str = "") -> Query:
    margin = scores[0] - scores[1] if len(scores) > 1 else math.inf
    return Query(truth, tuple(ranked), scores, verdict, scores[0], margin, group, id=f"{truth}:{ranked}")


# Catalog products A, B, C. Four photos of catalog products (groups g1, g2) and three of products outside it.
SET = [
    q("A", "AB", (0.9, 0.5), K, "g1"),  # 1 right, margin 0.4
    q("A", "BA", (0.8, 0.75), A, "g1"),  # 2 wrong (A taken for B), A second: in top 5; margin 0.05
    q("B", "BC", (0.7, 0.3), K, "g2"),  # 3 right
    q("C", "AB", (0.6, 0.55), U, "g2"),  # 4 wrong (C taken for A), C not ranked at all
    q(None, "AC", (0.75, 0.2), K),  # 5 out of catalog, accepted by the server
    q(None, "CB", (0.4, 0.35), U),  # 6 out of catalog
    q(None, "BA", (0.65, 0.3), K),  # 7 out of catalog, accepted by the server
]


def test_accuracy_groups_verdicts_and_pairs() -> None:
    r = evaluate(SET, target_false_accept=0.2)
    assert (r.queries, r.in_catalog, r.out_of_catalog) == (7, 4, 3)
    assert r.overall == TopK(4, 2 / 4, 3 / 4)  # right: 1 and 3; in the top 5: 1, 2 and 3
    assert r.groups == {"g1": TopK(2, 1 / 2, 2 / 2), "g2": TopK(2, 1 / 2, 1 / 2)}
    assert r.verdicts == [
        VerdictRow(K, right=2, wrong=0, out_of_catalog=2),
        VerdictRow(U, right=0, wrong=1, out_of_catalog=1),
        VerdictRow(A, right=0, wrong=1, out_of_catalog=0),
    ]
    assert r.confused == [ConfusedPair("A", "B", 1), ConfusedPair("C", "A", 1)]
    assert r.notes == []
    d = r.to_dict()
    assert d["verdicts"][0]["verdict"] == "KNOWN" and d["overall"]["top1"] == 0.5


def test_auroc_curves_and_the_operating_point() -> None:
    r = evaluate(SET, target_false_accept=0.2)
    # in-catalog best 0.9 0.8 0.7 0.6 against out-of-catalog 0.75 0.4 0.65: 3 + 3 + 2 + 1 of 12 pairs
    assert r.auroc == pytest.approx(9 / 12)
    # one curve point per observed best score, highest first
    assert [p.threshold for p in r.curve] == pytest.approx([0.9, 0.8, 0.75, 0.7, 0.65, 0.6, 0.4])
    at_07 = r.curve[3]  # accepted: 1, 2, 5, 3
    assert at_07.coverage == pytest.approx(4 / 7)
    assert at_07.accuracy == pytest.approx(2 / 4)
    assert at_07.false_accept == pytest.approx(1 / 3)
    assert at_07.false_reject == pytest.approx(1 / 4)
    assert at_07.accepted_correct == pytest.approx(2 / 4)
    everything = r.curve[-1]
    assert (everything.coverage, everything.false_accept, everything.false_reject) == (1.0, 1.0, 0.0)
    assert everything.accuracy == pytest.approx(2 / 7)
    # target 20 % of 3 out-of-catalog photos: none may pass; the highest (0.75) is cut half-way to the next
    # observed score above it (0.8)
    op = r.operating
    assert op.unknown_threshold == pytest.approx(0.775)
    assert r.accepted_correct_at_target == pytest.approx(1 / 4)  # accepted 1 (right) and 2 (wrong)
    # 20 % of 4 in-catalog photos: no accepted wrong answer may stay KNOWN; photo 2's margin 0.05 is cut half-way
    # to the next accepted margin above it (photo 1's 0.4)
    assert op.ambiguity_margin == pytest.approx(0.225)
    assert op.false_accept == 0.0 and op.misidentified == 0.0
    assert op.false_reject == pytest.approx(3 / 4) and op.accepted_correct == pytest.approx(1 / 4)
    assert op.coverage == pytest.approx(1 / 7)


def test_a_looser_target_accepts_more() -> None:
    r = evaluate(SET, target_false_accept=0.34)  # one of three out-of-catalog photos may pass
    assert r.operating.unknown_threshold == pytest.approx((0.65 + 0.7) / 2)
    assert r.accepted_correct_at_target == pytest.approx(2 / 4)
    assert r.operating.ambiguity_margin == 0.0  # one of four in-catalog photos may be wrong: photo 2 may stay
    assert r.operating.false_accept == pytest.approx(1 / 3)


def test_without_out_of_catalog_photos_it_says_what_it_cannot_measure() -> None:
    inside = [x for x in SET if x.in_catalog]
    r = evaluate(inside, target_false_accept=0.2, current_unknown_threshold=0.65)
    assert r.auroc is None and r.operating.unknown_threshold is None and r.accepted_correct_at_target is None
    assert r.operating.false_accept is None and all(p.false_accept is None for p in r.curve)
    assert any("no out-of-catalog queries" in n for n in r.notes)
    # the margin is fitted under the current threshold 0.65: accepted 1, 2, 3; photo 2 (wrong) must go
    assert r.operating.ambiguity_margin == pytest.approx((0.05 + 0.4) / 2)
    outside = evaluate([x for x in SET if not x.in_catalog])
    assert outside.overall == TopK(0, 0.0, 0.0) and outside.groups == {} and outside.operating.false_reject is None
    assert any("no in-catalog queries" in n for n in outside.notes)


def test_a_wrong_answer_without_a_runner_up_cannot_be_caught_by_a_margin() -> None:
    r = evaluate([q("A", "B", (0.9,), K), q("A", "A", (0.8,), K)], target_false_accept=0.2)
    assert r.operating.ambiguity_margin is None and any("no ambiguity margin" in n for n in r.notes)


def test_auroc_ties_and_bad_target() -> None:
    assert auroc([0.5], [0.5]) == 0.5
    assert auroc([0.2, 0.9], [0.1, 0.5]) == pytest.approx(3 / 4)
    assert auroc([0.3], []) is None
    with pytest.raises(ValueError, match="target_false_accept"):
        evaluate(SET, target_false_accept=0.0)


def test_curve_is_thinned_to_the_points_asked() -> None:
    many = [q("A", "AB", (0.5 + i / 1000, 0.1), K) for i in range(300)]
    r = evaluate(many, curve_points=11)
    assert len(r.curve) == 11 and r.curve[0].threshold == pytest.approx(0.799) and r.curve[-1].coverage == 1.0


def test_query_from_a_search_result_and_held_out_scores() -> None:
    res = SearchResult([Match("A", "", 0.9, 1), Match("B", "", 0.7, 2)], Verdict.KNOWN, 0.9)
    got = query_from_result(res, "B", group="g", id="x")
    assert got.ranked == ("A", "B") and got.margin == pytest.approx(0.2) and not got.correct and got.in_top(5)
    one = query_from_result(SearchResult([Match("A", "", 0.9, 1)], Verdict.KNOWN, 0.9), "A")
    assert one.margin == math.inf and one.correct
    own, other, out = held_out_scores(SET)
    assert own.tolist() == [0.9, 0.75, 0.7, -1.0]  # photo 4's product is not ranked
    assert other.tolist() == [0.5, 0.8, 0.3, 0.6]
    assert out.tolist() == [0.75, 0.4, 0.65]
