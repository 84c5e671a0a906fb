"""SearchByText modes through a real server (port 0): VECTOR (text tower), KEYWORD (the catalog's full-text index),
HYBRID (reciprocal-rank fusion) with the random-weights CLIP model; KEYWORD alone with EfficientNet-Lite0 (image
only: VECTOR and HYBRID are UNIMPLEMENTED there). Product descriptions travel through UpsertProduct."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from service_harness import SHARED, RunningServer, make_settings, pattern_image, rpc_error

from skulens.client.client import SkulensClient, search_options
from skulens.service.text_fusion import RRF_K
from skulens.v1 import catalog_pb2, common_pb2
from skulens.v1 import recognition_pb2 as rpb

VECTOR, KEYWORD, HYBRID = rpb.TEXT_SEARCH_MODE_VECTOR, rpb.TEXT_SEARCH_MODE_KEYWORD, rpb.TEXT_SEARCH_MODE_HYBRID
PRODUCTS = [  # id, name, category, labels, description, enrolled images
    ("oatly", "Oatly Oat Milk", "milk", {"brand": "Oatly"}, "Oat drink from Sweden.\nVegan.", 2),
    ("arla", "Arla Standard Milk", "milk", {"brand": "Arla"}, "", 2),
    ("grape", "Red Grapefruit", "fruit", {}, "Juicy citrus, slightly bitter", 1),
    ("lady", "Pink Lady", "fruit", {"variety": "Cripps Pink"}, "A crisp apple", 1),
    ("bare", "Yoghurt Natural", "yoghurt", {}, "Enrolled without a photo yet", 0),
]


def populate(c: SkulensClient) -> int:
    """The products above, each with its images; the catalog version after the last write."""
    version = 0
    for i, (pid, name, cat, labels, text, n) in enumerate(PRODUCTS):
        resp = c.upsert_product(pid, name, cat, labels, description=text)
        assert resp.product.description == text
        version = resp.catalog_version
        if n:
            reqs = [catalog_pb2.AddReferenceImagesRequest(product_id=pid, content=pattern_image(10 + i, variant=v))
                    for v in range(n)]
            added = c.add_references(reqs)
            assert added.added == n
            version = added.catalog_version
    return version


def serve(model_dir: Path, tmp: Path) -> Iterator[RunningServer]:
    srv = RunningServer(make_settings(tmp / "data"), SHARED.engine(model_dir))
    with srv.client() as c:
        populate(c)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def clip(clip_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from serve(clip_model_dir, tmp_path_factory.mktemp("text-clip"))


@pytest.fixture(scope="module")
def effnet(effnet_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from serve(effnet_model_dir, tmp_path_factory.mktemp("text-effnet"))


def ids(rec: rpb.Recognition) -> list[str]:
    return [m.product_id for m in rec.matches]


# ------------------------------------------------------------------------------------------ model with text tower
def test_server_info_lists_every_mode_with_a_text_tower(clip: RunningServer) -> None:
    with clip.client() as c:
        info = c.server_info()
    assert list(info.text_search_modes) == [VECTOR, KEYWORD, HYBRID]
    assert list(info.model.modalities) == ["image", "text"]


def test_default_is_hybrid_the_rank_fusion_of_both_lists(clip: RunningServer) -> None:
    texts = ["Oatly oat milk", "red grapefruit"]
    with clip.client() as c:
        resp = c.search_text(texts, search_options(top_k=3))
        # each list of a HYBRID search reaches max(2 x top_k, 20) products
        vec = c.search_text(texts, search_options(top_k=20), mode=VECTOR).results
        kw = c.search_text(texts, search_options(top_k=20), mode=KEYWORD).results
    assert resp.mode == HYBRID
    for res, v, k in zip(resp.results, vec, kw, strict=True):
        rec = res.recognition
        fused: dict[str, float] = {}
        for lst in (v.recognition.matches, k.recognition.matches):
            for rank, m in enumerate(lst, start=1):
                fused[m.product_id] = fused.get(m.product_id, 0.0) + 1 / (RRF_K + rank)
        vrank = {m.product_id: i for i, m in enumerate(v.recognition.matches)}
        want = sorted(fused, key=lambda p: (-fused[p], vrank.get(p, 99), p))[:3]
        assert ids(rec) == want and rec.status.code == 0
        for m in rec.matches:
            assert m.score == pytest.approx(fused[m.product_id] / (2 / (RRF_K + 1)), rel=1e-5)
        assert rec.verdict == common_pb2.VERDICT_KNOWN  # the keyword list has a hit
        assert rec.best_score == pytest.approx(rec.matches[0].score)
    oat, grape = (r.recognition for r in resp.results)
    assert ids(grape)[0] == "grape"  # the only keyword hit, and in the vector list too: first whatever its rank
    # "milk" names arla too; with random weights the text tower's order decides between the two
    assert "oatly" in ids(oat)[:2] and {m.product_id: m.reference_id > 0 for m in oat.matches}["oatly"]


def test_keyword_mode_scores_and_verdicts(clip: RunningServer) -> None:
    with clip.client() as c:
        resp = c.search_text(["SWEDEN", "no such words", "milk"], search_options(top_k=5), mode=KEYWORD)
    assert resp.mode == KEYWORD and resp.catalog_version > 0
    sweden, none, milk = (r.recognition for r in resp.results)
    assert ids(sweden) == ["oatly"] and sweden.verdict == common_pb2.VERDICT_KNOWN
    m = sweden.matches[0]
    assert 0.0 < m.score < 1.0 and m.reference_id == 0 and m.display_name == "Oatly Oat Milk"
    assert (ids(none), none.verdict, none.best_score) == ([], common_pb2.VERDICT_UNKNOWN, -1.0)
    assert set(ids(milk)) == {"oatly", "arla"} and milk.matches[0].score >= milk.matches[1].score


def test_a_product_without_images_is_found_by_keyword_and_hybrid(clip: RunningServer) -> None:
    with clip.client() as c:
        kw = c.search_text(["yoghurt"], search_options(top_k=2), mode=KEYWORD).results[0].recognition
        hy = c.search_text(["yoghurt"], search_options(top_k=2), mode=HYBRID).results[0].recognition
        vec = c.search_text(["yoghurt"], search_options(top_k=10), mode=VECTOR).results[0].recognition
    assert ids(kw) == ["bare"] and "bare" in ids(hy)
    bare = hy.matches[ids(hy).index("bare")]
    assert bare.reference_id == 0 and bare.score == pytest.approx(0.5)  # first in the keyword list only
    assert "bare" not in ids(vec)  # the text tower searches reference images only


def test_vector_mode_is_the_text_tower_search(clip: RunningServer) -> None:
    with clip.client() as c:
        resp = c.search_text(["a carton of oat milk"], search_options(top_k=3), mode=VECTOR)
    rec = resp.results[0].recognition
    assert resp.mode == VECTOR and len(rec.matches) == 3
    assert all(m.reference_id > 0 and -1.0 <= m.score <= 1.0 for m in rec.matches)


def test_filters_apply_in_every_mode(clip: RunningServer) -> None:
    with clip.client() as c:
        for mode in (VECTOR, KEYWORD, HYBRID):
            rec = c.search_text(["milk grapefruit apple"], search_options(top_k=5, category="fruit"),
                                mode=mode).results[0].recognition
            assert set(ids(rec)) <= {"grape", "lady"} and ids(rec), mode
            rec = c.search_text(["milk"], search_options(top_k=5, labels={"brand": "Arla"}),
                                mode=mode).results[0].recognition
            assert ids(rec) == ["arla"], mode


def test_min_score_applies_to_the_modes_score(clip: RunningServer) -> None:
    with clip.client() as c:
        rec = c.search_text(["milk"], search_options(top_k=5, min_score=0.99), mode=KEYWORD).results[0].recognition
        assert ids(rec) == [] and rec.verdict == common_pb2.VERDICT_KNOWN and 0 < rec.best_score < 0.99
        every = c.search_text(["oatly oat milk"], search_options(top_k=5), mode=HYBRID).results[0].recognition
        rec = c.search_text(["oatly oat milk"], search_options(top_k=5, min_score=0.75),
                            mode=HYBRID).results[0].recognition
        assert ids(rec) == [m.product_id for m in every.matches if m.score >= 0.75] != ids(every)
        assert ids(rec) and rec.best_score == every.best_score


def test_descriptions_round_trip_and_take_the_update_mask(clip: RunningServer) -> None:
    with clip.client() as c:
        c.upsert_product("tmp", "Temp", description="first text")
        assert c.upsert_product("tmp", "Temp 2").product.description == "first text"  # not populated: kept
        resp = c.upsert_product("tmp", description="second text")
        assert (resp.product.display_name, resp.product.description) == ("Temp 2", "second text")
        resp = c.upsert_product("tmp", update_mask=["description"])
        assert resp.product.description == "" and resp.product.display_name == "Temp 2"
        got = c.catalog.GetProduct(catalog_pb2.GetProductRequest(product_id="tmp")).product
        assert got.description == ""
        err = rpc_error(c.upsert_product, "tmp", description="x" * 4097)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "description" in (err.details() or "")
        err = rpc_error(c.upsert_product, "tmp", update_mask=["descr"])
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "description" in (err.details() or "")
        c.delete_product("tmp")


def test_an_unknown_mode_is_invalid(clip: RunningServer) -> None:
    with clip.client() as c:
        err = rpc_error(c.search_text, ["milk"], None, mode=9)  # type: ignore[arg-type]
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "mode" in (err.details() or "")


# ------------------------------------------------------------------------------------------ image-only model
def test_image_only_model_offers_keyword_search_only(effnet: RunningServer) -> None:
    with effnet.client() as c:
        info = c.server_info()
        assert list(info.text_search_modes) == [KEYWORD] and list(info.model.modalities) == ["image"]
        resp = c.search_text(["Oatly oat milk", "red grapefruit", "crisp apple"], search_options(top_k=3))
        assert resp.mode == KEYWORD
        assert [ids(r.recognition)[0] for r in resp.results] == ["oatly", "grape", "lady"]
        assert all(r.recognition.verdict == common_pb2.VERDICT_KNOWN for r in resp.results)
        assert c.search_text(["milk"], mode=KEYWORD).results[0].recognition.matches
        for mode in (VECTOR, HYBRID):
            err = rpc_error(c.search_text, ["milk"], None, mode=mode)
            assert err.code() == grpc.StatusCode.UNIMPLEMENTED, mode
            assert "has no text tower" in (err.details() or "") and "KEYWORD" in (err.details() or "")
