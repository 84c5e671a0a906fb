"""RecognitionService over a real server (port 0, random-weights ViT-B/32, SQLite catalog in tmp)."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image
from service_harness import SHARED, GatedEngine, RunningServer, make_settings, pattern_image, rpc_error

from skulens.client.client import SkulensClient, image_input, search_options
from skulens.v1 import catalog_pb2, common_pb2, recognition_pb2, recognition_pb2_grpc

N = 6
CATEGORY = {f"p{i}": "even" if i % 2 == 0 else "odd" for i in range(N)}
LIMITS = {
    "max_images_per_request": 8,
    "max_regions_per_image": 3,
    "max_texts_per_request": 4,
    "max_text_chars": 50,
    "max_message_mb": 2,
    "max_image_mb": 1.0,
    "max_top_k": 20,
}
C = grpc.StatusCode
INVALID = C.INVALID_ARGUMENT.value[0]


@pytest.fixture(scope="module")
def engine(clip_model_dir: Path) -> GatedEngine:
    return GatedEngine(SHARED.engine(clip_model_dir), SHARED.loop_thread())


@pytest.fixture(scope="module")
def server(engine: GatedEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    srv = RunningServer(make_settings(tmp_path_factory.mktemp("recog") / "data", **LIMITS), engine)
    with srv.client() as c:
        for pid, cat in CATEGORY.items():
            c.upsert_product(pid, display_name=f"Product {pid}", category=cat, labels={"parity": cat})
        reqs = [
            catalog_pb2.AddReferenceImagesRequest(product_id=f"p{i}", content=pattern_image(i, variant=v))
            for i in range(N)
            for v in (0, 1)
        ]
        resp = c.add_references(reqs)
        assert resp.added == 2 * N, resp
    yield srv
    srv.stop()


@pytest.fixture()
def client(server: RunningServer) -> Iterator[SkulensClient]:
    with server.client() as c:
        yield c


def _tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_each_image_top1_is_its_own_product(client: SkulensClient) -> None:
    resp = client.recognize(
        [image_input(pattern_image(i), id=f"img{i}") for i in range(N)], search_options(top_k=3)
    )
    assert resp.random_weights and resp.model_fingerprint.startswith("ViT-B-32/random/512")
    assert [r.id for r in resp.results] == [f"img{i}" for i in range(N)]
    for i, r in enumerate(resp.results):
        assert r.status.code == 0, r.status
        rec = r.recognition
        assert rec.matches[0].product_id == f"p{i}" and rec.matches[0].score > 0.999
        assert rec.matches[0].display_name == f"Product p{i}" and rec.matches[0].reference_id > 0
        assert len(rec.matches) == 3 and rec.verdict != common_pb2.VERDICT_UNSPECIFIED
        assert rec.best_score == pytest.approx(rec.matches[0].score)
        assert r.timings.total_ms >= r.timings.embed_ms > 0 and r.timings.search_ms >= 0


def test_thresholds_can_be_set_per_request(client: SkulensClient) -> None:
    img = [image_input(pattern_image(0, variant=5))]  # near p0 (score < 1), not one of its references

    def verdict(**options: float) -> int:
        opts = common_pb2.SearchOptions(top_k=3, **options)  # type: ignore[arg-type]
        return int(client.recognize(img, opts).results[0].recognition.verdict)

    best = client.recognize(img).results[0].recognition.best_score
    assert best < 1.0
    assert verdict(unknown_threshold=min(1.0, best + 1e-4)) == common_pb2.VERDICT_UNKNOWN
    assert verdict(unknown_threshold=-1.0, ambiguity_margin=0.0) == common_pb2.VERDICT_KNOWN
    assert verdict(unknown_threshold=-1.0, ambiguity_margin=2.0) == common_pb2.VERDICT_AMBIGUOUS  # any runner-up
    for name, value in (("unknown_threshold", 1.5), ("ambiguity_margin", -0.1)):
        with pytest.raises(grpc.RpcError) as err:
            client.recognize(img, common_pb2.SearchOptions(**{name: value}))  # type: ignore[arg-type]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"options.{name}" in (err.value.details() or "")


def test_mixed_batch_bad_images_fail_alone(client: SkulensClient) -> None:
    images = [
        pattern_image(0),
        b"definitely not an image",
        pattern_image(1),
        _tiny_png(),
        b"",
        b"\x89PNG" + bytes(1024 * 1024 + 10),
    ]
    resp = client.recognize([image_input(b, id=str(k)) for k, b in enumerate(images)])
    codes = [r.status.code for r in resp.results]
    assert codes == [0, INVALID, 0, INVALID, INVALID, INVALID]
    assert resp.results[0].recognition.matches[0].product_id == "p0"
    assert resp.results[2].recognition.matches[0].product_id == "p1"
    bad = resp.results[1]
    assert bad.status.field == "images[1].content" and bad.status.message.startswith("images[1].content")
    assert not bad.recognition.matches and bad.recognition.status.code == INVALID
    assert bad.recognition.best_score == -1.0  # nothing was compared: -1, as the contract says (not 0)
    assert all(-1.0 <= m.score <= 1.0 for r in resp.results for m in r.recognition.matches)
    assert "16" in resp.results[3].status.message  # names the minimum side
    assert "1048576" in resp.results[5].status.message  # names the byte limit


def test_regions_one_result_per_box(client: SkulensClient) -> None:
    left, right = Image.open(io.BytesIO(pattern_image(2))), Image.open(io.BytesIO(pattern_image(3)))
    canvas = Image.new("RGB", (192, 96))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (96, 0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    boxes = [(0, 0, 96, 96), (96, 0, 96, 96), (150, 50, 100, 100)]  # the last one sticks out of the image
    resp = client.recognize([image_input(buf.getvalue(), id="shelf", regions=boxes)])
    r = resp.results[0]
    assert r.status.code == 0 and not r.recognition.matches
    assert [g.index for g in r.regions] == [0, 1, 2]
    assert (r.regions[1].box.x, r.regions[1].box.width) == (96, 96)
    assert r.regions[0].recognition.matches[0].product_id == "p2"
    assert r.regions[1].recognition.matches[0].product_id == "p3"
    assert r.regions[2].recognition.status.code == INVALID


def test_all_regions_bad_fails_the_image(client: SkulensClient) -> None:
    resp = client.recognize([image_input(pattern_image(0), id="x", regions=[(500, 500, 10, 10)])])
    assert resp.results[0].status.code == INVALID


def test_category_label_and_min_score_filters(client: SkulensClient) -> None:
    resp = client.recognize([image_input(pattern_image(1))], search_options(top_k=5, category="even"))
    matches = resp.results[0].recognition.matches
    assert matches and all(CATEGORY[m.product_id] == "even" for m in matches)
    resp = client.recognize(
        [image_input(pattern_image(1))], search_options(top_k=5, labels={"parity": "odd"})
    )
    assert {m.product_id for m in resp.results[0].recognition.matches} <= {"p1", "p3", "p5"}
    resp = client.recognize([image_input(pattern_image(4))], search_options(top_k=5, min_score=0.9999))
    assert [m.product_id for m in resp.results[0].recognition.matches] == ["p4"]


def test_stream(client: SkulensClient) -> None:
    def requests() -> Iterator[recognition_pb2.RecognizeStreamRequest]:
        yield recognition_pb2.RecognizeStreamRequest(
            images=[image_input(pattern_image(0), id="a"), image_input(pattern_image(1), id="b")],
            options=search_options(top_k=2),
        )
        yield recognition_pb2.RecognizeStreamRequest(images=[image_input(pattern_image(5), id="c")])
        yield recognition_pb2.RecognizeStreamRequest(images=[image_input(b"junk", id="d")])
        yield recognition_pb2.RecognizeStreamRequest(
            images=[image_input(pattern_image(3), id="e")], options=search_options(top_k=4)
        )

    results = {r.id: r for r in client.recognize_stream(requests())}
    assert set(results) == {"a", "b", "c", "d", "e"}
    assert results["a"].recognition.matches[0].product_id == "p0"
    assert results["c"].recognition.matches[0].product_id == "p5"
    assert len(results["c"].recognition.matches) == 2  # options are sticky
    assert len(results["e"].recognition.matches) == 4
    assert results["d"].status.code == INVALID


def test_a_refused_stream_message_is_answered_in_the_stream(client: SkulensClient) -> None:
    """Too many images, bad options, too many regions: each refused message is answered in the stream, once per
    image (once if it has none), with its error; the images already accepted and later messages are answered;
    a refused message's options are not carried; every answer names its message and image position."""
    msgs = [
        recognition_pb2.RecognizeStreamRequest(
            images=[image_input(pattern_image(0), id="ok-0")], options=search_options(top_k=2)
        ),
        recognition_pb2.RecognizeStreamRequest(images=[image_input(b"x", id=f"many-{k}") for k in range(9)]),
        recognition_pb2.RecognizeStreamRequest(
            images=[image_input(pattern_image(1), id="bad-opt")], options=search_options(top_k=999)
        ),
        recognition_pb2.RecognizeStreamRequest(options=search_options(min_score=5.0)),  # no images
        recognition_pb2.RecognizeStreamRequest(
            images=[image_input(pattern_image(1), id="regions", regions=[(0, 0, 20, 20)] * 4)]
        ),
        recognition_pb2.RecognizeStreamRequest(
            images=[image_input(pattern_image(2), id="ok-5a"), image_input(pattern_image(3), id="ok-5b")]
        ),
    ]
    got = list(client.recognize_stream_responses(msgs, timeout=60))
    by_pos = {(r.message_index, r.image_index): r for r in got}
    assert len(got) == len(by_pos) == 1 + 9 + 1 + 1 + 1 + 2
    assert by_pos[(0, 0)].result.id == "ok-0" and by_pos[(0, 0)].result.status.code == 0
    assert {by_pos[(1, k)].result.id for k in range(9)} == {f"many-{k}" for k in range(9)}
    assert {by_pos[(1, k)].result.status.code for k in range(9)} == {C.RESOURCE_EXHAUSTED.value[0]}
    bad = by_pos[(2, 0)].result
    assert (bad.id, bad.status.code, bad.status.field) == ("bad-opt", INVALID, "options.top_k")
    empty = by_pos[(3, 0)].result
    assert (empty.id, empty.status.code, empty.status.field) == ("", INVALID, "options.min_score")
    assert by_pos[(4, 0)].result.status.code == C.RESOURCE_EXHAUSTED.value[0]
    for k, pid in ((0, "p2"), (1, "p3")):
        res = by_pos[(5, k)].result
        assert res.status.code == 0 and res.recognition.matches[0].product_id == pid
        assert len(res.recognition.matches) == 2  # message 0's options still carried: the refused ones were not


def test_search_by_text(client: SkulensClient) -> None:
    resp = client.search_text(["a red bag of paprika chips", "oat drink"], search_options(top_k=3))
    assert [r.text for r in resp.results] == ["a red bag of paprika chips", "oat drink"]
    for r in resp.results:
        assert r.recognition.status.code == 0 and len(r.recognition.matches) == 3
        assert r.recognition.matches[0].product_id in CATEGORY
    assert resp.model_fingerprint.startswith("ViT-B-32")


def test_embed_images_and_texts(client: SkulensClient) -> None:
    resp = client.embed(
        [
            image_input(pattern_image(0), id="i0"),
            image_input(b"bad", id="bad"),
            image_input(pattern_image(1), id="r", regions=[(0, 0, 48, 48), (48, 48, 48, 48)]),
        ],
        texts=["milk"],
    )
    assert resp.dim == 512 and resp.model_fingerprint.startswith("ViT-B-32")
    assert [(e.id, e.region_index, e.has_region) for e in resp.images] == [
        ("i0", 0, False),
        ("bad", 0, False),
        ("r", 0, True),
        ("r", 1, True),
    ]
    good = [np.asarray(e.values) for e in resp.images if e.status.code == 0]
    assert len(good) == 3 and all(v.shape == (512,) and abs(np.linalg.norm(v) - 1) < 1e-3 for v in good)
    assert resp.images[1].status.code == INVALID and not resp.images[1].values
    assert len(resp.texts) == 1 and resp.texts[0].id == "milk" and len(resp.texts[0].values) == 512


@pytest.mark.parametrize(
    ("call", "code", "needle"),
    [
        (lambda c: c.recognize([image_input(b"x")] * 9), C.RESOURCE_EXHAUSTED, "the limit is 8 per request"),
        (
            lambda c: c.recognize([image_input(b"x", regions=[(0, 0, 1, 1)] * 4)]),
            C.RESOURCE_EXHAUSTED,
            "images[0].regions",
        ),
        (
            lambda c: c.recognize([image_input(b"x")], search_options(top_k=21)),
            C.INVALID_ARGUMENT,
            "options.top_k must be <= 20, got 21",
        ),
        (
            lambda c: c.recognize([image_input(b"x")], search_options(min_score=2.0)),
            C.INVALID_ARGUMENT,
            "options.min_score",
        ),
        (lambda c: c.search_text(["a"] * 5), C.RESOURCE_EXHAUSTED, "limit is 4"),
        (
            lambda c: c.search_text(["x" * 51]),
            C.INVALID_ARGUMENT,
            "texts[0] has 51 characters; the limit is 50",
        ),
        (lambda c: c.search_text([" "]), C.INVALID_ARGUMENT, "texts[0] is empty"),
        (lambda c: c.recognize([]), C.INVALID_ARGUMENT, "images is empty: send 1 to 8 images"),
        (lambda c: c.search_text([]), C.INVALID_ARGUMENT, "texts is empty: send 1 to 4 texts"),
        (lambda c: c.embed([]), C.INVALID_ARGUMENT, "images and texts are both empty"),
        (lambda c: c.recognize([image_input(bytes(3 * 1024 * 1024))]), C.RESOURCE_EXHAUSTED, ""),
    ],
)
def test_request_limits(client: SkulensClient, call: Any, code: grpc.StatusCode, needle: str) -> None:
    err = rpc_error(call, client)
    assert err.code() is code, err
    assert needle in (err.details() or "")


def test_request_id_round_trip(server: RunningServer) -> None:
    with grpc.insecure_channel(server.addr) as ch:
        stub = recognition_pb2_grpc.RecognitionServiceStub(ch)
        req = recognition_pb2.RecognizeRequest(images=[image_input(pattern_image(0))])
        _, call = stub.Recognize.with_call(req, metadata=[("x-request-id", "client-chosen-42")], timeout=30)
        assert dict(call.trailing_metadata())["x-request-id"] == "client-chosen-42"
        _, call = stub.Recognize.with_call(req, timeout=30)
        assert re.fullmatch(r"[0-9a-f]{32}", dict(call.trailing_metadata())["x-request-id"])


def test_deadline_reaches_the_engine(client: SkulensClient, engine: GatedEngine) -> None:
    engine.deadlines.clear()
    before = time.monotonic()
    client.recognize([image_input(pattern_image(0))], timeout=7.0)
    deadline = engine.deadlines[-1]
    assert deadline is not None and before + 5.0 < deadline < time.monotonic() + 7.0


def test_deadline_exceeded_while_queued(client: SkulensClient, engine: GatedEngine) -> None:
    engine.close_gate()
    try:
        err = rpc_error(client.recognize, [image_input(pattern_image(0))], timeout=0.5)
        assert err.code() is C.DEADLINE_EXCEEDED
    finally:
        engine.open()


def test_server_info_says_what_the_server_is_and_accepts(client: SkulensClient, server: RunningServer) -> None:
    """GetServerInfo: model (name, fingerprint, dim, modalities, random weights), the limits in force (the same
    ones requests are refused by), thresholds, catalog backend and version, server version."""
    info = client.server_info()
    s = server.settings
    assert info.model.fingerprint == server.app.runtime.engine.fingerprint  # type: ignore[union-attr]
    assert (info.model.name, info.model.dim) == ("ViT-B-32", 512)
    assert list(info.model.modalities) == ["image", "text"] and info.model.random_weights
    lim = info.limits
    assert (lim.max_images_per_request, lim.max_texts_per_request, lim.max_text_chars, lim.max_top_k) == (8, 4, 50, 20)
    assert lim.max_image_bytes == int(s.max_image_mb * 1024 * 1024) and lim.default_top_k == s.default_top_k
    assert (lim.max_image_pixels, lim.min_image_side) == (40_000_000, 16)
    assert info.thresholds.unknown_threshold == pytest.approx(s.unknown_threshold)
    assert info.thresholds.text_unknown_threshold == pytest.approx(s.text_unknown_threshold)
    assert info.catalog_backend == "sqlite+faiss" and info.catalog_version == client.stats().catalog_version
    assert info.server_version  # the installed distribution's version
    too_many = [image_input(pattern_image(0))] * (lim.max_images_per_request + 1)
    assert rpc_error(client.recognize, too_many).code() is C.RESOURCE_EXHAUSTED  # the limit it announced


def test_call_errors_carry_google_rpc_status_details(client: SkulensClient) -> None:
    """Any gRPC library reads the standard trailer: grpc_status.rpc_status.from_call gives a google.rpc.Status
    whose code and message match the call's, with ErrorInfo and BadRequest naming the field."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    err = rpc_error(client.recognize, [image_input(b"x")], search_options(top_k=999))
    st = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert st is not None and st.code == C.INVALID_ARGUMENT.value[0] and st.message == err.details()
    bad = error_details_pb2.BadRequest()
    info = error_details_pb2.ErrorInfo()
    assert any(a.Unpack(bad) for a in st.details if a.Is(bad.DESCRIPTOR))
    assert any(a.Unpack(info) for a in st.details if a.Is(info.DESCRIPTOR))
    assert bad.field_violations[0].field == "options.top_k" and info.reason == "BAD_REQUEST"
