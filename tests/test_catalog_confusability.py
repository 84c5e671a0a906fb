"""skulens.catalog.confusability: enrolment warnings from search answers, the batch itself and decoded-image facts
(pure; one case against a real embedded catalog's search)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from catalog_helpers import unit

from skulens.catalog.catalog import Catalog
from skulens.catalog.confusability import (
    NEIGHBOUR_PRODUCTS,
    ConfusabilityThresholds,
    ImageFacts,
    Neighbour,
    WarningKind,
    enrolment_warnings,
    products_to_ask,
)
from skulens.catalog.models import Match, NewReference, SearchResult, Verdict
from skulens.catalog.settings import CatalogSettings

T = ConfusabilityThresholds(near_duplicate=0.95, min_side=64, min_luminance_std=8.0)
GOOD = ImageFacts(400, 300, 40.0)


def _answer(*matches: tuple[str, float, int]) -> SearchResult:
    return SearchResult([Match(p, "", s, r) for p, s, r in matches], Verdict.KNOWN, matches[0][1] if matches else -1.0)


def _kinds(ws: list) -> list[WarningKind]:  # type: ignore[type-arg]
    return [w.kind for w in ws]


def test_closer_to_other_product_reports_both_scores() -> None:
    e = unit(np.array([[1.0, 0.0, 0.0]]))
    found = [_answer(("b", 0.9, 7), ("a", 0.8, 3))]
    (ws,) = enrolment_warnings(["a"], e, found, [GOOD], T)
    assert _kinds(ws) == [WarningKind.CLOSER_TO_OTHER_PRODUCT]
    w = ws[0]
    assert w.other == Neighbour("b", pytest.approx(0.9), 7) and w.own_score == pytest.approx(0.8)
    assert "'b'" in w.message and "reference 7" in w.message and "0.900" in w.message and "0.800" in w.message


def test_own_product_nearer_or_tied_is_quiet() -> None:
    e = unit(np.array([[1.0, 0.0, 0.0]]))
    assert enrolment_warnings(["a"], e, [_answer(("a", 0.9, 3), ("b", 0.85, 7))], [GOOD], T) == [[]]
    assert enrolment_warnings(["a"], e, [_answer(("b", 0.9, 7), ("a", 0.9, 3))], [GOOD], T) == [[]]  # not closer


def test_a_product_without_other_references_is_never_closer_elsewhere() -> None:
    e = unit(np.array([[1.0, 0.0, 0.0]]))
    # its product is absent from a short answer: the catalog has none of its references
    assert enrolment_warnings(["new"], e, [_answer(("b", 0.9, 7))], [GOOD], T) == [[]]
    # absent from a full answer, and the catalog says it has none
    full = _answer(*((f"p{k}", 0.9 - k / 100, k + 1) for k in range(NEIGHBOUR_PRODUCTS)))
    assert products_to_ask(["new"], [full], NEIGHBOUR_PRODUCTS) == {"new"}
    assert enrolment_warnings(["new"], e, [full], [GOOD], T, {"new": False}) == [[]]
    # ... or that it has some: they are further than every product of the answer (own score unknown)
    (ws,) = enrolment_warnings(["new"], e, [full], [GOOD], T, {"new": True})
    assert _kinds(ws) == [WarningKind.CLOSER_TO_OTHER_PRODUCT]
    assert ws[0].own_score is None and ws[0].other is not None and ws[0].other.product_id == "p0"
    assert f"not among the {NEIGHBOUR_PRODUCTS} nearest products" in ws[0].message


def test_products_to_ask_only_when_the_answer_cannot_tell() -> None:
    full = _answer(*((f"p{k}", 0.5, k + 1) for k in range(3)))
    assert products_to_ask(["p1", "x", "y"], [full, full, _answer(("p0", 0.5, 1))], 3) == {"x"}


def test_batch_references_count_as_own_and_other() -> None:
    # a (row 0) and a (row 1) far apart, b (row 2) right next to row 0: row 0 is closer to b than to its own
    e = unit(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.99, 0.14, 0.0]]))
    ws = enrolment_warnings(["a", "a", "b"], e, [_answer(), _answer(), _answer()], [GOOD] * 3, T)
    s02 = float(e[0] @ e[2])
    assert _kinds(ws[0]) == [WarningKind.CLOSER_TO_OTHER_PRODUCT, WarningKind.NEAR_DUPLICATE_OF_OTHER_PRODUCT]
    other = ws[0][0].other
    assert other is not None and other.batch_position == 2 and other.reference_id == 0
    assert other.score == pytest.approx(s02) and ws[0][0].own_score == pytest.approx(float(e[0] @ e[1]))
    assert "a reference of this batch" in ws[0][0].message
    # row 2 (b) has no other b reference: near-duplicate of a's row 0, but never "closer to another product"
    assert _kinds(ws[2]) == [WarningKind.NEAR_DUPLICATE_OF_OTHER_PRODUCT]
    assert ws[2][0].other is not None and ws[2][0].other.batch_position == 0
    assert _kinds(ws[1]) == [WarningKind.CLOSER_TO_OTHER_PRODUCT]  # its nearest is b (0.14) vs own row 0 (0.0)


def test_catalog_and_batch_compete_best_wins() -> None:
    e = unit(np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]]))
    # row 0: catalog says own a at 0.5 and b at 0.7; its batch sibling (own, 0.6) does not beat b
    ws = enrolment_warnings(["a", "a"], e, [_answer(("b", 0.7, 9), ("a", 0.5, 4)), _answer()], [GOOD] * 2, T)
    assert ws[0][0].own_score == pytest.approx(0.6) and ws[0][0].other == Neighbour("b", pytest.approx(0.7), 9)
    assert ws[1] == []  # own sibling 0.6, no other product at all


def test_near_duplicate_threshold_inclusive() -> None:
    e = unit(np.array([[1.0, 0.0, 0.0]]))
    (ws,) = enrolment_warnings(["a"], e, [_answer(("a", 0.99, 1), ("b", 0.95, 2))], [GOOD], T)
    assert _kinds(ws) == [WarningKind.NEAR_DUPLICATE_OF_OTHER_PRODUCT]
    assert "0.950 >= 0.950" in ws[0].message
    (ws,) = enrolment_warnings(["a"], e, [_answer(("a", 0.99, 1), ("b", 0.9499, 2))], [GOOD], T)
    assert ws == []


@pytest.mark.parametrize(
    ("facts", "words"),
    [
        (ImageFacts(63, 400, 40.0), ["tiny (63x400 pixels, shortest side under 64)"]),
        (ImageFacts(400, 300, 7.9), ["nearly blank (luminance standard deviation 7.9, under 8)"]),
        (ImageFacts(20, 20, 0.0), ["tiny", "nearly blank"]),
        (ImageFacts(64, 64, 8.0), []),
    ],
)
def test_unusable_image(facts: ImageFacts, words: list[str]) -> None:
    e = unit(np.array([[1.0, 0.0, 0.0]]))
    (ws,) = enrolment_warnings(["a"], e, [_answer()], [facts], T)
    if not words:
        assert ws == []
        return
    assert _kinds(ws) == [WarningKind.UNUSABLE_IMAGE]
    for word in words:
        assert word in ws[0].message
    assert enrolment_warnings(["a"], e, [_answer()], [None], T) == [[]]  # not measured: no opinion


def test_lengths_must_agree() -> None:
    assert enrolment_warnings([], np.zeros((0, 3), dtype=np.float32), [], [], T) == []
    with pytest.raises(ValueError, match="2 product ids"):
        enrolment_warnings(["a", "b"], unit(np.eye(3)[:1]), [_answer()], [None], T)


def test_thresholds_from_settings() -> None:
    t = ConfusabilityThresholds.of(CatalogSettings(near_duplicate_threshold=0.8, unusable_min_side=32,
                                                   unusable_min_luminance_std=2.5))
    assert (t.near_duplicate, t.min_side, t.min_luminance_std) == (0.8, 32, 2.5)
    assert ConfusabilityThresholds.of(CatalogSettings()) == ConfusabilityThresholds()


def test_with_a_real_catalog_search(tmp_path: Path) -> None:
    """Products a, b with known vectors in an embedded catalog; new references searched before being added."""
    dim = 8
    basis = np.eye(dim, dtype=np.float32)
    with Catalog.open(tmp_path / "cat", fingerprint="fp", dim=dim, settings=CatalogSettings(snapshot=False)) as cat:
        for pid in ("a", "b"):
            cat.upsert_product(pid)
        cat.add_references("a", [NewReference(embedding=basis[0], content_sha256="1" * 64)])
        b_refs = cat.add_references("b", [NewReference(embedding=unit(basis[0] + 0.2 * basis[1]),
                                                       content_sha256="2" * 64)])
        new = unit(np.stack([basis[0] + 0.5 * basis[1], basis[0] + 0.01 * basis[2]]))  # both of product a
        found = cat.search(new, top_k=NEIGHBOUR_PRODUCTS)
        ws = enrolment_warnings(["a", "a"], new, found, [GOOD, GOOD], ConfusabilityThresholds(near_duplicate=0.99))
        # row 0 lies nearer b's reference (0.965) than a's one (0.894) and its batch sibling: CLOSER_TO_OTHER_PRODUCT
        assert _kinds(ws[0]) == [WarningKind.CLOSER_TO_OTHER_PRODUCT]
        assert ws[0][0].other is not None and ws[0][0].other.reference_id == b_refs[0].reference_id
        assert ws[0][0].other.score == pytest.approx(float(new[0] @ unit(basis[0] + 0.2 * basis[1])), abs=1e-5)
        assert ws[0][0].own_score == pytest.approx(float(new[0] @ basis[0]), abs=1e-5)
        assert ws[1] == []  # row 1 is a's reference itself, nearly
