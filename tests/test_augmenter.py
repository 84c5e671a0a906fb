"""The background augmenter on a real server (port 0, EfficientNet-Lite0, SQLite catalog in tmp): the references of
small products get their 21 augmented views once the catalog is quiet, the views join the head statistics (never the
reference count), products that grow are pruned, unusable stored images are left alone, and nothing runs while
enrolments keep the catalog busy."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from service_harness import SHARED, RunningServer, make_settings, pattern_image

from skulens.catalog.models import NewReference
from skulens.client.client import image_input
from skulens.imaging.augment import augmented_views
from skulens.v1 import catalog_pb2

VIEWS = len(augmented_views(Image.new("RGB", (10, 10))))


def wait_for(predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.1)


@pytest.fixture()
def server(effnet_model_dir: Path, tmp_path: Path) -> Iterator[RunningServer]:
    settings = make_settings(tmp_path / "data", augment_references=True, augment_quiet_seconds=0.3)
    srv = RunningServer(settings, SHARED.engine(effnet_model_dir))
    yield srv
    srv.stop()


def enrol(srv: RunningServer, pid: str, images: list[bytes]) -> None:
    with srv.client() as c:
        c.upsert_product(pid)
        resp = c.add_references(catalog_pb2.AddReferenceImagesRequest(product_id=pid, content=img) for img in images)
        assert resp.added == len(images), resp


def stats(srv: RunningServer) -> catalog_pb2.GetCatalogStatsResponse:
    with srv.client() as c:
        return c.stats()


def test_small_products_get_augmented_views_in_the_head_statistics(server: RunningServer) -> None:
    assert VIEWS == 21
    enrol(server, "solo", [pattern_image(1, size=160)])
    enrol(server, "crowd", [pattern_image(2, size=160, variant=v) for v in range(3)])
    wait_for(lambda: stats(server).augmented_references == 1)
    st = stats(server)
    assert (st.augmentation_pending, st.augmented_references, st.reference_count) == (0, 1, 4)
    catalog = server.app.runtime.catalog
    assert catalog is not None
    head = catalog.head_statistics()
    assert (head.products["solo"].count, head.products["solo"].references) == (1 + VIEWS, 1)
    assert (head.products["crowd"].count, head.products["crowd"].references) == (3, 3)
    augmenter = server.app.runtime.augmenter
    assert augmenter is not None and augmenter.stats.references == 1 and augmenter.stats.views == VIEWS
    # the views make the product's centroid: its own photo is still found, with a score under 1 (not its NN score)
    with server.client() as c:
        [r] = c.recognize([image_input(pattern_image(1, size=160))]).results
    assert r.recognition.matches[0].product_id == "solo"
    assert 0.0 < r.recognition.matches[0].score < 1.0
    # the product grows to --head-min-references: its views are pruned, its references suffice
    enrol(server, "solo", [pattern_image(1, size=160, variant=v) for v in (2, 3)])
    wait_for(lambda: catalog.head_statistics().products["solo"].count == 3)
    assert stats(server).augmented_references == 0 and augmenter.stats.pruned == VIEWS


def test_unusable_stored_images_are_left_alone(server: RunningServer) -> None:
    catalog = server.app.runtime.catalog
    assert catalog is not None
    catalog.upsert_product("broken")
    vec = np.zeros(catalog.dim, dtype=np.float32)
    vec[0] = 1.0
    catalog.add_references("broken", [NewReference(vec, image=b"not an image at all")])
    enrol(server, "fine", [pattern_image(5, size=160)])
    augmenter = server.app.runtime.augmenter
    assert augmenter is not None
    wait_for(lambda: augmenter.stats.references == 1 and augmenter.stats.failed == 1)
    time.sleep(1.5)  # later passes do not retry it
    assert augmenter.stats.failed == 1 and stats(server).augmentation_pending == 0


def test_nothing_is_augmented_while_the_catalog_is_busy(effnet_model_dir: Path, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", augment_references=True, augment_quiet_seconds=3600.0)
    srv = RunningServer(settings, SHARED.engine(effnet_model_dir))
    try:
        enrol(srv, "solo", [pattern_image(7, size=160)])
        time.sleep(2.5)  # two polls: the catalog was written less than an hour ago
        st = stats(srv)
        assert (st.augmentation_pending, st.augmented_references) == (1, 0)
    finally:
        srv.stop()


def test_off_when_matching_is_nearest(effnet_model_dir: Path, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", augment_references=True, matching="nearest")
    srv = RunningServer(settings, SHARED.engine(effnet_model_dir))
    try:
        assert srv.app.runtime.augmenter is None
        st = stats(srv)
        assert (st.matching, st.augmentation_pending) == ("nearest", 0)
    finally:
        srv.stop()
