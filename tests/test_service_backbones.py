"""The other backbones served end to end: a real server (port 0) loads CLIP RN50 and DINOv2 ViT-S/14 from their
model dirs (manifest + preprocess.json alone), enrols, recognises; text search only where there is a text tower."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from service_harness import RunningServer, make_settings, pattern_image, rpc_error

from skulens.client.client import image_input, search_options
from skulens.model.manifest import Manifest, load_manifest
from skulens.v1 import catalog_pb2, recognition_pb2

pytestmark = pytest.mark.slow
N = 4


@pytest.fixture(scope="module", params=["clip_rn50_model_dir", "dinov2_model_dir"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, Manifest]]:
    """A server that loads the model itself from `--model DIR` (no shared engine), with N products enrolled."""
    model_dir: Path = request.getfixturevalue(request.param)
    data = tmp_path_factory.mktemp(request.param) / "data"
    # nearest-neighbour scores: the same photo must score its own reference's cosine (adapted matching re-scores)
    srv = RunningServer(make_settings(data, model_dir=model_dir, matching="nearest"), None)
    with srv.client() as c:
        for i in range(N):
            c.upsert_product(f"p{i}", display_name=f"Product {i}")
        reqs = [
            catalog_pb2.AddReferenceImagesRequest(product_id=f"p{i}", content=pattern_image(i, variant=v))
            for i in range(N)
            for v in (0, 1)
        ]
        assert c.add_references(reqs).added == 2 * N
    yield srv, load_manifest(model_dir)
    srv.stop()


def test_recognises_with_the_models_own_embedding(served: tuple[RunningServer, Manifest]) -> None:
    srv, manifest = served
    with srv.client() as c:
        info = c.server_info().model
        assert (info.name, info.fingerprint, info.dim) == (
            manifest.model_name,
            manifest.fingerprint,
            manifest.embedding_dim,
        )
        assert list(info.modalities) == (["image", "text"] if manifest.has_text else ["image"])
        resp = c.recognize(
            [image_input(pattern_image(i), id=f"q{i}") for i in range(N)], search_options(top_k=2)
        )
        assert resp.model_fingerprint == manifest.fingerprint and resp.random_weights
        for i, r in enumerate(resp.results):
            assert r.status.code == 0, r.status
            best, second = r.recognition.matches
            # the query is enrolled as is (score 1); random RN50 weights put other images only ~4e-5 lower
            assert best.product_id == f"p{i}" and best.score >= 0.99999 > second.score, r.recognition
        emb = c.embed([image_input(pattern_image(0), id="e")])
        assert emb.dim == manifest.embedding_dim and len(emb.images[0].values) == manifest.embedding_dim


def test_text_search_only_with_a_text_tower(served: tuple[RunningServer, Manifest]) -> None:
    srv, manifest = served
    with srv.client() as c:
        if manifest.has_text:
            resp = c.search_text(["a carton of oat milk"], search_options(top_k=2))
            assert resp.model_fingerprint == manifest.fingerprint
            matches = resp.results[0].recognition.matches
            assert len(matches) == 2 and {m.product_id for m in matches} <= {f"p{i}" for i in range(N)}
            return
        err = rpc_error(c.search_text, ["a carton of oat milk"], search_options(top_k=2),
                        mode=recognition_pb2.TEXT_SEARCH_MODE_VECTOR)  # the default, KEYWORD, works here
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED
    assert f"model {manifest.model_name} has no text tower" in (err.details() or "")
