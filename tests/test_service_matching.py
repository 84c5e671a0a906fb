"""Adapted matching through a real server (port 0, EfficientNet-Lite0, SQLite catalog in tmp): answers are the head's
re-ranking of the nearest-neighbour candidates, the stats say which catalog version the head reflects, and
GetServerInfo / Evaluate report the thresholds in force and where they come from (settings, the catalog's own,
the request)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from service_harness import SHARED, RunningServer, make_settings, pattern_image

from skulens.catalog.head import HeadModel
from skulens.catalog.thresholds import VerdictThresholds
from skulens.client.client import image_input, search_options
from skulens.v1 import catalog_pb2, common_pb2, recognition_pb2

PRODUCTS = 4


@pytest.fixture(scope="module")
def server(effnet_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    srv = RunningServer(make_settings(tmp_path_factory.mktemp("matching") / "data"), SHARED.engine(effnet_model_dir))
    with srv.client() as c:
        for p in range(PRODUCTS):
            c.upsert_product(f"p{p}")
            resp = c.add_references(catalog_pb2.AddReferenceImagesRequest(
                product_id=f"p{p}", content=pattern_image(p, size=128, variant=v)) for v in range(3))
            assert resp.added == 3
    yield srv
    srv.stop()


def wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_answers_are_the_heads_rerank_and_stats_say_which_version(server: RunningServer) -> None:
    photos = [pattern_image(p, size=128, variant=9) for p in range(PRODUCTS)]
    with server.client() as c:
        version = c.stats().catalog_version
        resp = c.recognize([image_input(p) for p in photos], options=search_options(top_k=3))
        wait_for(lambda: c.stats().head_fitted_version == version)
        st = c.stats()
    assert (st.matching, st.head_products) == ("adapted", PRODUCTS)
    catalog, engine = server.app.runtime.catalog, server.app.runtime.engine
    assert catalog is not None and engine is not None
    model = HeadModel.fit(catalog.head_statistics(), server.app.runtime.matcher.settings)
    assert model.ridge_products == PRODUCTS  # three references each: every product gets the ridge score
    vectors = np.stack([server.lt.run(engine.embed_images([p]))[0] for p in photos])
    for q, r in zip(vectors, resp.results, strict=True):
        plain = catalog.search(q[None, :], top_k=PRODUCTS)[0]
        adapted = dict(zip([m.product_id for m in plain.matches],
                           model.score(q[None, :], [[m.product_id for m in plain.matches]],
                                       [[m.score for m in plain.matches]])[0], strict=True))
        want = sorted(adapted, key=lambda p: -adapted[p])[:3]
        assert [m.product_id for m in r.recognition.matches] == want
        for m in r.recognition.matches:
            assert m.score == pytest.approx(adapted[m.product_id], abs=1e-5)


def test_thresholds_in_force_come_from_settings_then_the_catalog(server: RunningServer) -> None:
    with server.client() as c:
        info = c.server_info().thresholds
        assert (info.source, info.matching) == ("settings", "adapted")
        assert info.unknown_threshold == pytest.approx(server.settings.unknown_threshold)
        catalog = server.app.runtime.catalog
        assert catalog is not None
        catalog.set_verdict_thresholds(VerdictThresholds("adapted", catalog.fingerprint, 0.999, 0.05, "test"))
        wait_for(lambda: c.server_info().thresholds.source == "catalog")
        info = c.server_info().thresholds
        assert info.unknown_threshold == pytest.approx(0.999) and info.ambiguity_margin == pytest.approx(0.05)
        photo = image_input(pattern_image(1, size=128, variant=8))
        [r] = c.recognize([photo]).results
        assert r.recognition.verdict == common_pb2.VERDICT_UNKNOWN  # the catalog's threshold decided
        [r] = c.recognize([photo], options=common_pb2.SearchOptions(unknown_threshold=-1.0)).results
        assert r.recognition.verdict != common_pb2.VERDICT_UNKNOWN  # the request's own wins
        resp = c.evaluate([recognition_pb2.EvaluateRequest(images=[recognition_pb2.LabelledImage(
            image=photo, product_id="p1")])])
        assert (resp.report.thresholds.source, resp.report.thresholds.unknown_threshold) == ("catalog",
                                                                                            pytest.approx(0.999))
        catalog.set_verdict_thresholds(VerdictThresholds("adapted", catalog.fingerprint, 0.0, 0.02, "reset"))
