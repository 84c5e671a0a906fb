"""skulens.service.enrolment_warnings: one search per batch on both catalog backends, then the pure warnings, then
the protobuf form on the results that were added (batch neighbours resolved to their reference ids)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from catalog_helpers import unit
from test_catalog_backend_contract import BACKENDS

from skulens.catalog.backend import CatalogBackend
from skulens.catalog.models import NewReference
from skulens.catalog.settings import CatalogSettings
from skulens.imaging.quality import ImageQuality
from skulens.service.enrolment_warnings import NewRow, attach, check_batch
from skulens.v1 import catalog_pb2

DIM = 16
FP = "warnings-model/random/16:0123456789abcdef"
GOOD = ImageQuality(400, 300, 40.0)
E = np.eye(DIM, dtype=np.float32)


@pytest.fixture(params=list(BACKENDS), ids=list(BACKENDS))
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CatalogBackend]:
    with BACKENDS[request.param](tmp_path) as open_:
        backend = open_(DIM, FP, {"near_duplicate_threshold": 0.99})
        try:
            yield backend
        finally:
            backend.close()


def test_check_batch_on_each_backend(catalog: CatalogBackend) -> None:
    for pid in ("a", "b", "new"):
        catalog.upsert_product(pid)
    (a_ref,) = catalog.add_references("a", [NewReference(embedding=E[0], content_sha256="a" * 64)])
    (b_ref,) = catalog.add_references("b", [NewReference(embedding=unit(E[0] + 0.3 * E[1]), content_sha256="b" * 64)])
    rows = [
        NewRow(5, "a", unit(E[0] + 0.6 * E[1]), GOOD),  # nearer b's reference (0.98) than a's (0.86)
        NewRow(6, "b", E[5], ImageQuality(30, 500, 40.0)),  # far from everything (ties at 0: not closer), tiny
        NewRow(9, "new", E[0], GOOD),  # a's reference again, under a new product: near-duplicate (1.0)
    ]
    got = check_batch(catalog, FP, rows)
    assert sorted(got) == [5, 6, 9]
    closer = got[5][0]
    assert closer.kind.value == "CLOSER_TO_OTHER_PRODUCT" and closer.other is not None
    assert (closer.other.product_id, closer.other.reference_id) == ("b", b_ref.reference_id)
    assert closer.own_score == pytest.approx(float(rows[0].embedding @ E[0]), abs=1e-5)
    assert [w.kind.value for w in got[6]] == ["UNUSABLE_IMAGE"]
    assert [w.kind.value for w in got[9]] == ["NEAR_DUPLICATE_OF_OTHER_PRODUCT"]
    dup = got[9][0]
    assert dup.other is not None and (dup.other.product_id, dup.other.reference_id) == ("a", a_ref.reference_id)
    assert check_batch(catalog, FP, []) == {}


def test_a_product_missing_from_a_full_answer_is_looked_up(catalog: CatalogBackend) -> None:
    """Eleven other products nearer than 'far''s own reference: its own score is unknown, the warning stands."""
    for k in range(11):
        catalog.upsert_product(f"p{k}")
        catalog.add_references(f"p{k}", [NewReference(embedding=unit(E[0] + (0.2 + k / 100) * E[k % 4 + 2]),
                                                      content_sha256=f"{k:064x}")])
    catalog.upsert_product("far")
    catalog.add_references("far", [NewReference(embedding=E[15], content_sha256="f" * 64)])
    catalog.upsert_product("empty")
    got = check_batch(catalog, FP, [NewRow(0, "far", E[0], GOOD), NewRow(1, "empty", unit(E[0] + E[14]), GOOD)])
    (w,) = got[0]
    assert w.kind.value == "CLOSER_TO_OTHER_PRODUCT" and w.own_score is None
    assert 1 not in got  # "empty" has no reference at all: nothing to be closer than


def test_attach_to_added_results_only_and_resolve_batch_neighbours(catalog: CatalogBackend) -> None:
    for pid in ("c", "d"):
        catalog.upsert_product(pid)
    rows = [NewRow(0, "c", E[3], GOOD), NewRow(1, "d", E[3], GOOD), NewRow(2, "c", E[7], GOOD)]
    warned = check_batch(catalog, FP, rows)
    assert sorted(warned) == [0, 1]  # row 2: its sibling and d's photo both at cosine 0: not closer
    results = {i: catalog_pb2.AddedReference(index=i, reference_id=100 + i) for i in range(3)}
    results[1].duplicate = True  # a duplicate gets no warning (its id still names it as a neighbour)
    attach(results, warned)
    closer, w0 = results[0].warnings  # c's sibling (row 2) is at cosine 0, d's photo at 1
    assert closer.kind == catalog_pb2.ENROLMENT_WARNING_KIND_CLOSER_TO_OTHER_PRODUCT
    assert closer.own_score == pytest.approx(0.0, abs=1e-6) and closer.other_reference_id == 101
    assert w0.kind == catalog_pb2.ENROLMENT_WARNING_KIND_NEAR_DUPLICATE_OF_OTHER_PRODUCT
    assert (w0.other_product_id, w0.other_reference_id) == ("d", 101) and w0.other_score == pytest.approx(1.0)
    assert "reference 101" in w0.message
    assert list(results[1].warnings) == [] and list(results[2].warnings) == []
    results[1].status.code = 3  # a neighbour that failed after all: its id is 0
    del results[0].warnings[:]
    attach(results, warned)
    assert [w.other_reference_id for w in results[0].warnings] == [0, 0]
    assert "a reference of this batch" in results[0].warnings[1].message


def test_a_failing_check_costs_the_warnings_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with BACKENDS["embedded"](tmp_path) as open_:
        backend = open_(DIM, FP, {})
        backend.close()
        with caplog.at_level(logging.WARNING, logger="skulens.service.enrolment_warnings"):
            assert check_batch(backend, FP, [NewRow(0, "x", E[0], GOOD)]) == {}
        assert "could not be computed" in caplog.text


def test_settings_thresholds_reach_the_check(tmp_path: Path) -> None:
    with BACKENDS["embedded"](tmp_path) as open_:
        backend = open_(DIM, FP, {"unusable_min_side": 500})
        try:
            assert isinstance(backend.settings, CatalogSettings) and backend.settings.unusable_min_side == 500
            got = check_batch(backend, FP, [NewRow(0, "x", E[0], GOOD)])
            assert [w.kind.value for w in got[0]] == ["UNUSABLE_IMAGE"] and "under 500" in got[0][0].message
        finally:
            backend.close()
