"""service convert: domain results → messages (scores kept inside [-1, 1], -1 for failed items)."""

from __future__ import annotations

from skulens.catalog.models import Match, SearchResult, Verdict
from skulens.imaging.errors import InvalidImage
from skulens.service.convert import failed_recognition, recognition_pb
from skulens.v1 import common_pb2


def test_scores_are_clamped_to_the_cosine_range() -> None:
    result = SearchResult(
        [Match("a", "A", 1.0000001, 7), Match("b", "", -1.0000002, 8)], Verdict.KNOWN, 1.0000001, []
    )
    rec = recognition_pb(result)
    assert [m.score for m in rec.matches] == [1.0, -1.0]
    assert rec.best_score == 1.0 and rec.verdict == common_pb2.VERDICT_KNOWN and rec.status.code == 0
    assert [m.reference_id for m in rec.matches] == [7, 8]


def test_a_failed_item_has_best_score_minus_one_and_its_status() -> None:
    rec = failed_recognition(InvalidImage("not an image", "images[2].content"))
    assert rec.best_score == -1.0 and not rec.matches
    assert (rec.status.code, rec.status.field) == (3, "images[2].content")
    assert rec.verdict == common_pb2.VERDICT_UNSPECIFIED
