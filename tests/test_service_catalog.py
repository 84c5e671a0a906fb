"""CatalogService over a real server: CRUD, streamed enrolment with per-image statuses, paging, stats,
restart, and a catalog built by another model (FAILED_PRECONDITION)."""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from PIL import Image
from service_harness import SHARED, RunningServer, make_settings, pattern_image, rpc_error

from skulens.catalog.catalog import Catalog
from skulens.catalog.settings import CatalogSettings
from skulens.client.client import SkulensClient, image_input, search_options
from skulens.v1 import catalog_pb2, common_pb2, recognition_pb2

C = grpc.StatusCode


def req(
    pid: str, content: bytes, source: str = "", region: tuple[int, int, int, int] | None = None
) -> catalog_pb2.AddReferenceImagesRequest:
    r = catalog_pb2.AddReferenceImagesRequest(product_id=pid, content=content, source=source)
    if region is not None:
        r.region.CopyFrom(common_pb2.Box(x=region[0], y=region[1], width=region[2], height=region[3]))
    return r


@pytest.fixture(scope="module")
def engine(clip_model_dir: Path) -> object:
    return SHARED.engine(clip_model_dir)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("catalog") / "data"


@pytest.fixture(scope="module")
def server(engine: object, data_dir: Path) -> Iterator[RunningServer]:
    srv = RunningServer(make_settings(data_dir, enroll_chunk=4), engine)
    yield srv
    srv.stop()


@pytest.fixture()
def client(server: RunningServer) -> Iterator[SkulensClient]:
    with server.client() as c:
        yield c


def test_upsert_creates_then_updates(client: SkulensClient) -> None:
    r = client.upsert_product("milk-1l", display_name="Milk 1 l", category="dairy", labels={"brand": "arla"})
    assert r.created and r.product.product_id == "milk-1l" and r.product.labels["brand"] == "arla"
    r = client.upsert_product("milk-1l", display_name="Milk, 1 litre", category="dairy")
    # no update_mask: only the fields sent (AIP-134), so the labels stay
    assert not r.created and r.product.display_name == "Milk, 1 litre" and r.product.labels["brand"] == "arla"
    r = client.upsert_product("milk-1l", display_name="Milk 1l")
    assert (r.product.display_name, r.product.category) == ("Milk 1l", "dairy")
    assert dict(r.product.labels) == {"brand": "arla"}
    r = client.upsert_product("milk-1l", update_mask=["labels", "category"])  # clearing needs the mask
    assert (r.product.display_name, r.product.category, dict(r.product.labels)) == ("Milk 1l", "", {})
    r = client.upsert_product("milk-1l", "Milk", "dairy", {"brand": "x"}, update_mask=["*"])
    assert (r.product.display_name, r.product.category, dict(r.product.labels)) == ("Milk", "dairy", {"brand": "x"})
    err = rpc_error(client.upsert_product, "milk-1l", "Y", update_mask=["display_name", "sku"])
    assert err.code() is C.INVALID_ARGUMENT and "update_mask.paths[1] is 'sku'" in (err.details() or "")
    assert client.get_product("milk-1l").product.display_name == "Milk"  # type: ignore[union-attr]


def test_etags_refuse_lost_updates_and_stale_deletes(client: SkulensClient) -> None:
    first = client.upsert_product("etag-1", "Oat drink", "drinks").product
    got = client.get_product("etag-1")
    assert got is not None and got.product.etag == first.etag != ""
    listed = next(p for p in client.list_products(category="drinks") if p.product_id == "etag-1")
    assert listed.etag == first.etag
    second = client.upsert_product("etag-1", "Oat drink 1 l", etag=first.etag).product  # nobody wrote meanwhile
    assert second.display_name == "Oat drink 1 l" and second.etag != first.etag
    with pytest.raises(grpc.RpcError) as err:  # a writer still holding the first read loses, and is told so
        client.upsert_product("etag-1", "Stale", etag=first.etag)
    assert err.value.code() == grpc.StatusCode.ABORTED and "changed since it was read" in (err.value.details() or "")
    with pytest.raises(grpc.RpcError) as err:
        client.delete_product("etag-1", etag=first.etag)
    assert err.value.code() == grpc.StatusCode.ABORTED
    after = client.get_product("etag-1")
    assert after is not None and after.product.display_name == "Oat drink 1 l"
    assert client.delete_product("etag-1", etag=second.etag) == 0


def test_create_only_on_an_existing_product_is_already_exists(client: SkulensClient) -> None:
    assert client.upsert_product("tea-20", display_name="Tea", create_only=True).created
    err = rpc_error(client.upsert_product, "tea-20", display_name="Other tea", create_only=True)
    assert err.code() is C.ALREADY_EXISTS and "tea-20" in err.details()
    assert dict(err.trailing_metadata())["skulens-error-field"] == "product_id"
    assert client.get_product("tea-20").product.display_name == "Tea"


def test_invalid_product_id_names_the_field(client: SkulensClient) -> None:
    err = rpc_error(client.upsert_product, "")
    assert err.code() is C.INVALID_ARGUMENT
    assert "product_id" in err.details()
    assert dict(err.trailing_metadata())["skulens-error-field"] == "product_id"


def test_add_references_per_image_status(client: SkulensClient) -> None:
    client.upsert_product("juice")
    img0, img1 = pattern_image(10), pattern_image(11)
    stream = [
        req("juice", img0, "a.png"),
        req("juice", b"garbage", "b.png"),
        req("nobody", img1, "c.png"),
        req("juice", img1, "d.png"),
        req("juice", pattern_image(12), "e.png", region=(0, 0, 48, 48)),
        req("juice", pattern_image(13), "f.png"),
    ]
    resp = client.add_references(stream)
    assert [r.index for r in resp.results] == list(range(6))
    codes = [r.status.code for r in resp.results]
    assert codes == [0, C.INVALID_ARGUMENT.value[0], C.NOT_FOUND.value[0], 0, 0, 0]
    assert (resp.added, resp.duplicates, resp.failed) == (4, 0, 2)
    assert resp.results[1].status.field == "content"  # relative to the stream message; index 1 beside it
    assert resp.results[0].content_sha256 == hashlib.sha256(img0).hexdigest()
    assert all(r.reference_id > 0 for r in resp.results if r.status.code == 0)
    again = client.add_references([req("juice", img0)])
    assert again.results[0].duplicate and again.results[0].reference_id == resp.results[0].reference_id
    assert (again.added, again.duplicates) == (0, 1)


def test_get_product_lists_references(client: SkulensClient) -> None:
    client.upsert_product("soap", display_name="Soap")
    images = [pattern_image(20), pattern_image(21)]
    client.add_references([req("soap", b, f"s{i}.png") for i, b in enumerate(images)])
    got = client.get_product("soap")
    assert got is not None and got.product.reference_count == 2
    assert [r.source for r in got.references] == ["s0.png", "s1.png"]
    assert {r.content_sha256 for r in got.references} == {hashlib.sha256(b).hexdigest() for b in images}
    assert all(r.has_image for r in got.references)
    assert client.get_product("no-such-product") is None
    err = rpc_error(
        client.catalog.GetProduct, catalog_pb2.GetProductRequest(product_id="no-such"), timeout=10
    )
    assert err.code() is C.NOT_FOUND


def test_list_products_pages(client: SkulensClient) -> None:
    for i in range(5):
        client.upsert_product(f"page-{i}", category="paged")
    page = client.catalog.ListProducts(
        catalog_pb2.ListProductsRequest(page_size=2, category="paged"), timeout=10
    )
    assert [p.product_id for p in page.products] == ["page-0", "page-1"] and page.next_page_token
    everything = list(client.list_products(category="paged", page_size=2))
    assert [p.product_id for p in everything] == [f"page-{i}" for i in range(5)]
    assert {p.product_id for p in client.list_products()} >= {"page-0", "milk-1l"}
    err = rpc_error(
        client.catalog.ListProducts, catalog_pb2.ListProductsRequest(page_token="garbage"), timeout=10
    )
    assert err.code() is C.INVALID_ARGUMENT


def test_delete_reference_and_product(client: SkulensClient) -> None:
    client.upsert_product("gone")
    added = client.add_references([req("gone", pattern_image(30)), req("gone", pattern_image(31))])
    rid = added.results[0].reference_id
    client.delete_reference(rid)
    got = client.get_product("gone")
    assert got is not None and [r.reference_id for r in got.references] == [added.results[1].reference_id]
    err = rpc_error(client.delete_reference, rid)
    assert err.code() is C.NOT_FOUND
    assert client.delete_product("gone") == 1
    assert client.get_product("gone") is None
    assert rpc_error(client.delete_product, "gone").code() is C.NOT_FOUND
    assert client.delete_product("gone", allow_missing=True) == 0  # a retry after a lost response: OK
    client.delete_reference(rid, allow_missing=True)
    resp = client.recognize([image_input(pattern_image(31))])
    assert all(m.product_id != "gone" for m in resp.results[0].recognition.matches)


def test_stats(client: SkulensClient, engine: object) -> None:
    st = client.stats()
    products = list(client.list_products())
    assert st.product_count == len(products)
    assert st.reference_count == sum(p.reference_count for p in products) > 0
    assert st.dim == 512 and st.model_fingerprint == engine.fingerprint  # type: ignore[attr-defined]
    assert st.index_type == "flat" and st.index_device == "cpu" and st.db_size_bytes > 0
    assert st.references_with_image == st.reference_count
    assert not st.HasField("index_recall_at_10") and st.index_search_width == 0  # exact: nothing to measure


def test_restart_keeps_the_catalog(server: RunningServer, engine: object, data_dir: Path) -> None:
    with server.client() as c:
        c.upsert_product("durable", display_name="Durable")
        c.add_references([req("durable", pattern_image(40))])
        before = c.stats()
    server.stop()
    again = RunningServer(make_settings(data_dir), engine)
    try:
        with again.client() as c:
            after = c.stats()
            assert (after.product_count, after.reference_count) == (
                before.product_count,
                before.reference_count,
            )
            top = c.recognize([image_input(pattern_image(40))]).results[0].recognition.matches[0]
            assert (top.product_id, top.display_name) == ("durable", "Durable")
    finally:
        again.stop()


def test_catalog_of_another_model_is_failed_precondition(engine: object, tmp_path: Path) -> None:
    data = tmp_path / "other"
    Catalog.open(
        data, fingerprint="other-model/x/512:0", dim=512, settings=CatalogSettings(use_gpu="never")
    ).close()
    srv = RunningServer(make_settings(data, allow_model_mismatch=True), engine)
    try:
        with srv.client() as c:
            err = rpc_error(c.recognize, [image_input(pattern_image(0))])
            assert err.code() is C.FAILED_PRECONDITION
            assert "skulens reembed" in err.details()
            err = rpc_error(c.add_references, [req("x", pattern_image(0))])
            assert err.code() is C.FAILED_PRECONDITION
            assert c.stats().model_fingerprint == "other-model/x/512:0"  # reads still work
            assert c.health("skulens.v1.CatalogService") == "SERVING"
            assert c.health("skulens.v1.RecognitionService") == "NOT_SERVING"
    finally:
        srv.stop()


def test_stats_report_the_approximate_index_recall_and_width(engine: object, tmp_path: Path) -> None:
    srv = RunningServer(make_settings(tmp_path / "data", index_approximate_threshold=8, index_kind="ivf"), engine)
    try:
        with srv.client() as c:
            for i in range(12):
                c.upsert_product(f"ivf-{i}")
            c.add_references([req(f"ivf-{i}", pattern_image(300 + i)) for i in range(12)])
            deadline = time.monotonic() + 30
            while (st := c.stats()).index_type != "ivf" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert st.index_type == "ivf" and st.HasField("index_recall_at_10")
            assert 0.0 < st.index_recall_at_10 <= 1.0 and st.index_search_width >= 1
            top = c.recognize([image_input(pattern_image(305))]).results[0].recognition.matches[0]
            assert top.product_id == "ivf-5"
    finally:
        srv.stop()


# ------------------------------------------------------------------ enrolment robustness, ids (issue 10)
@pytest.fixture(scope="module")
def enrol_server(engine: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server of its own (the module's `server` is restarted by test_restart_keeps_the_catalog)."""
    srv = RunningServer(make_settings(tmp_path_factory.mktemp("enrol") / "data", enroll_chunk=4), engine)
    yield srv
    srv.stop()


@pytest.fixture()
def enrol(enrol_server: RunningServer) -> Iterator[SkulensClient]:
    with enrol_server.client() as c:
        yield c


def embedded(engine: object) -> int:
    """Images the shared engine has embedded so far."""
    return int(engine.stats().images_embedded)  # type: ignore[attr-defined]


def test_a_bad_item_fails_alone_and_names_the_request_field(enrol: SkulensClient) -> None:
    enrol.upsert_product("bulk")
    images = [pattern_image(500 + i) for i in range(5)]
    stream = [req("bulk", b, f"good{i}.png") for i, b in enumerate(images)]
    stream.insert(2, req("bulk", pattern_image(505), "x" * 1025))  # chunk of 4: shares a chunk with 3 good ones
    resp = enrol.add_references(stream)
    assert (resp.added, resp.duplicates, resp.failed) == (5, 0, 1)
    bad = resp.results[2]
    assert bad.status.code == C.INVALID_ARGUMENT.value[0] and bad.reference_id == 0
    assert bad.status.field == "source" and bad.index == 2
    assert bad.status.message.startswith("message 2: source") and "1024" in bad.status.message
    assert "references[" not in bad.status.message
    got = enrol.get_product("bulk")
    assert got is not None and sorted(r.source for r in got.references) == [f"good{i}.png" for i in range(5)]


def test_each_bad_field_is_named_as_sent(enrol: SkulensClient) -> None:
    enrol.upsert_product("fields")
    stream = [
        req("fields", pattern_image(510)),
        req("fie\u202elds", pattern_image(511)),  # forbidden code point in the id
        req("fields", pattern_image(512), region=(0, 0, 0, 10)),  # malformed box: refused before decoding
        req("fields", pattern_image(513), region=(50, 50, 80, 80)),  # outside the 96x96 image: found at decode
        req("fields", b""),
        req("fields", b"not an image"),
        req("no-such-product", pattern_image(514)),
        req("fields", pattern_image(515)),
    ]
    resp = enrol.add_references(stream)
    fields = [r.status.field for r in resp.results]
    assert fields == ["", "product_id", "region", "region", "content", "content", "product_id", ""]
    assert all(r.status.message.startswith(f"message {r.index}: {r.status.field}") for r in resp.results[1:7])
    codes = [C.INVALID_ARGUMENT.value[0]] * 5 + [C.NOT_FOUND.value[0]]
    assert [r.status.code for r in resp.results[1:7]] == codes
    assert "U+202E" in resp.results[1].status.message
    assert (resp.added, resp.failed) == (2, 6)


def test_copies_of_one_photo_are_embedded_once(enrol: SkulensClient, engine: object) -> None:
    enrol.upsert_product("copies")
    enrol.upsert_product("copies-2")
    photo = pattern_image(520)
    stream = [req("copies", photo, f"c{i}.png") for i in range(40)] + [req("copies-2", photo)]
    before = embedded(engine)
    resp = enrol.add_references(stream)
    assert embedded(engine) - before == 2  # once per product: the identity is (product, content sha256)
    assert (resp.added, resp.duplicates, resp.failed) == (2, 39, 0)
    first = resp.results[0].reference_id
    assert not resp.results[0].duplicate and first > 0
    assert all(r.duplicate and r.reference_id == first and r.status.code == 0 for r in resp.results[1:40])
    assert not resp.results[40].duplicate and resp.results[40].reference_id not in (0, first)
    got = enrol.get_product("copies")
    assert got is not None and [r.reference_id for r in got.references] == [first]


def test_an_enrolled_photo_sent_again_is_a_duplicate_without_embedding(
    enrol: SkulensClient, engine: object
) -> None:
    enrol.upsert_product("again")
    photo = pattern_image(530)
    (ref,) = enrol.add_references([req("again", photo)]).results
    before = embedded(engine)
    resp = enrol.add_references([req("again", photo), req("again", photo, "again.png")])
    assert embedded(engine) == before
    assert [(r.duplicate, r.reference_id, r.status.code) for r in resp.results] == [(True, ref.reference_id, 0)] * 2
    assert (resp.added, resp.duplicates) == (0, 2)


def test_crops_of_one_photo_are_references_of_their_own(enrol: SkulensClient, engine: object) -> None:
    enrol.upsert_product("shelf")
    photo = pattern_image(531)
    (whole,) = enrol.add_references([req("shelf", photo)]).results
    before = embedded(engine)
    resp = enrol.add_references([req("shelf", photo, region=(0, 0, 48, 48)), req("shelf", photo)])
    assert embedded(engine) == before + 1  # the crop is new; the whole photo is known without embedding it
    assert [(r.duplicate, r.status.code) for r in resp.results] == [(False, 0), (True, 0)]
    assert resp.results[1].reference_id == whole.reference_id
    again = enrol.add_references([req("shelf", photo, region=(0, 0, 48, 48))]).results[0]
    assert again.duplicate and again.reference_id == resp.results[0].reference_id
    got = enrol.get_product("shelf")
    assert got is not None
    assert [(r.HasField("region"), r.region.width) for r in got.references] == [(False, 0), (True, 48)]


def test_a_failed_first_copy_does_not_hide_a_good_one(enrol: SkulensClient, engine: object) -> None:
    enrol.upsert_product("crop")
    photo = pattern_image(540)
    stream = [req("crop", photo, region=(90, 90, 40, 40)), req("crop", photo, region=(90, 90, 40, 40)),
              req("crop", photo, region=(0, 0, 48, 48))]
    resp = enrol.add_references(stream)
    assert [r.status.field for r in resp.results] == ["region", "region", ""]
    assert resp.results[1].status.message.startswith("message 1: region")
    assert (resp.added, resp.failed) == (1, 2)


def _stream_index(status: common_pb2.ItemStatus) -> str:
    from google.rpc import error_details_pb2

    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info.metadata["stream_index"]


RID = [f"{k:08x}-1d2a-4b3c-8d9e-0a1b2c3d4e5f" for k in range(8)]


def test_request_ids_make_enrolment_retries_safe(enrol: SkulensClient, engine: object) -> None:
    """AIP-155 through the server: a retried message answers its original outcome (same reference, duplicate
    false) before anything is decoded or embedded; the same id for another image is refused (ALREADY_EXISTS,
    field `request_id`) alone; malformed ids are INVALID_ARGUMENT; both enrolment calls behave alike."""
    enrol.upsert_product("retry")
    a, b, c, d = (pattern_image(560 + k) for k in range(4))

    def with_id(r: catalog_pb2.AddReferenceImagesRequest, rid: str) -> catalog_pb2.AddReferenceImagesRequest:
        r.request_id = rid
        return r

    first = enrol.add_references([with_id(req("retry", a, "a.png"), RID[0].upper()),
                                  with_id(req("retry", b, "b.png", region=(0, 0, 48, 48)), RID[1])])
    assert (first.added, first.duplicates, first.failed) == (2, 0, 0)
    before, version = embedded(engine), first.catalog_version
    again = enrol.add_references([
        with_id(req("retry", a, "a.png"), RID[0]),  # the retry: its original outcome
        with_id(req("retry", b, "b.png", region=(0, 0, 48, 48)), RID[1]),
        with_id(req("retry", c, "c.png"), RID[2]),  # new work
        with_id(req("retry", d, "d.png"), RID[0]),  # the id message 0 named, for another image: refused alone
        with_id(req("retry", b, "b.png"), RID[1]),  # the crop's id for the whole photo: refused too
        with_id(req("retry", d, "d.png"), "not-a-uuid"),
    ])
    assert embedded(engine) == before + 1  # only c: retries are neither decoded nor embedded
    got = [(r.index, r.status.code, r.reference_id, r.duplicate, r.status.field) for r in again.results]
    assert got[:3] == [(0, 0, first.results[0].reference_id, False, ""),
                       (1, 0, first.results[1].reference_id, False, ""), (2, 0, got[2][2], False, "")]
    assert got[2][2] not in {r.reference_id for r in first.results}
    assert [g[1:] for g in got[3:5]] == [(C.ALREADY_EXISTS.value[0], 0, False, "request_id")] * 2
    assert got[5][1:] == (C.INVALID_ARGUMENT.value[0], 0, False, "request_id")
    assert [_stream_index(again.results[k].status) for k in (3, 4, 5)] == ["3", "4", "5"]
    assert again.results[3].status.message.startswith(f"message 3: request_id: request id {RID[0]} was named by "
                                                      "message 0 of this call")
    lone = enrol.add_references([with_id(req("retry", d, "d.png"), RID[0])]).results[0]  # found in the catalog
    assert (lone.status.code, lone.status.field) == (C.ALREADY_EXISTS.value[0], "request_id")
    assert f"added reference {first.results[0].reference_id} (product 'retry'" in lone.status.message
    assert (again.added, again.duplicates, again.failed) == (3, 0, 3)  # replays count as the adds they were
    assert len(enrol.get_product("retry").references) == 3  # type: ignore[union-attr]
    assert again.catalog_version > version  # c was written; nothing else
    # the same id twice in one call: one reference; for two images: the later one is refused
    twice = enrol.add_references([with_id(req("retry", d, "d.png"), RID[3]), with_id(req("retry", d, "d.png"), RID[3]),
                                  with_id(req("retry", pattern_image(570), "e.png"), RID[4]),
                                  with_id(req("retry", pattern_image(571), "f.png"), RID[4])])
    assert [(r.status.code, r.duplicate) for r in twice.results] == [(0, False), (0, False), (0, False),
                                                                      (C.ALREADY_EXISTS.value[0], False)]
    assert twice.results[1].reference_id == twice.results[0].reference_id
    # EnrollReferenceImages: the same answers, batch by batch
    acks = list(enrol.enroll_stream([with_id(req("retry", a, "a.png"), RID[0]),
                                     with_id(req("retry", c, "c.png"), RID[2])]))
    results = [r for ack in acks for r in ack.results]
    assert [(r.reference_id, r.duplicate) for r in results] == [
        (first.results[0].reference_id, False), (again.results[2].reference_id, False)]
    assert len(enrol.get_product("retry").references) == 5  # type: ignore[union-attr]


def test_nfc_and_nfd_spellings_are_one_product(enrol: SkulensClient) -> None:
    nfc, nfd = "caf\u00e9-cr\u00e8me", "cafe\u0301-cre\u0300me"
    cat_nfc, cat_nfd = "boissons-\u00e9t\u00e9", "boissons-e\u0301te\u0301"
    assert enrol.upsert_product(nfc, category=cat_nfc, labels={"r\u00e9gion": "\u00eele"}).created
    again = enrol.upsert_product(nfd, category=cat_nfd, labels={"re\u0301gion": "i\u0302le"})
    assert not again.created and again.product.product_id == nfc
    photo = pattern_image(550)
    added = enrol.add_references([req(nfd, photo)])
    assert added.results[0].status.code == 0 and added.results[0].product_id == nfd  # echoes the request
    assert enrol.add_references([req(nfc, photo)]).results[0].duplicate
    got = enrol.get_product(nfd)
    assert got is not None and got.product.product_id == nfc and got.product.reference_count == 1
    assert [p.product_id for p in enrol.list_products(category=cat_nfd)] == [nfc]
    options = common_pb2.SearchOptions(category=cat_nfd, labels={"re\u0301gion": "i\u0302le"})
    top = enrol.recognize([image_input(photo)], options).results[0].recognition.matches[0]
    assert top.product_id == nfc
    assert enrol.delete_product(nfd) == 1 and enrol.get_product(nfc) is None


@pytest.mark.parametrize(
    ("pid", "code_point", "name"),
    [
        ("a\u202eb", "U+202E", "RIGHT-TO-LEFT OVERRIDE"),
        ("a\u200bb", "U+200B", "ZERO WIDTH SPACE"),
        ("\ufeffab", "U+FEFF", "ZERO WIDTH NO-BREAK SPACE"),
        ("a\u2028b", "U+2028", "LINE SEPARATOR"),
        ("a\u2029b", "U+2029", "PARAGRAPH SEPARATOR"),
        ("a\x1bb", "U+001B", ""),
        ("a\u0378b", "U+0378", ""),  # unassigned
        (" ab", "U+0020", "SPACE"),
        ("ab\u00a0", "U+00A0", "NO-BREAK SPACE"),
    ],
)
def test_forbidden_code_points_in_ids_are_refused(
    enrol: SkulensClient, pid: str, code_point: str, name: str
) -> None:
    err = rpc_error(enrol.upsert_product, pid)
    assert err.code() is C.INVALID_ARGUMENT
    assert dict(err.trailing_metadata())["skulens-error-field"] == "product_id"
    assert code_point in err.details() and name in err.details() and "position" in err.details()


def test_whitespace_only_ids_are_refused(enrol: SkulensClient) -> None:
    for pid in (" ", "\u3000\u3000", "\u00a0"):
        err = rpc_error(enrol.upsert_product, pid)
        assert err.code() is C.INVALID_ARGUMENT and "whitespace only" in err.details()
    assert enrol.upsert_product("milk 1 l").created  # inner spaces are fine


def test_every_answer_carries_the_catalog_version(engine: object, tmp_path: Path) -> None:
    """Writes answer the version they produced (strictly growing); reads and searches answer the version they
    reflect; a read asking for a version this server has not reached waits, then answers UNAVAILABLE with a
    retry hint (never a stale answer); asking for a reached version answers at once."""
    srv = RunningServer(make_settings(tmp_path / "data", catalog_wait_ms=300), engine)
    try:
        with srv.client() as c:
            v0 = c.stats().catalog_version
            assert c.stats().backend == "sqlite+faiss"
            up = c.catalog.UpsertProduct(catalog_pb2.UpsertProductRequest(product_id="ver"), timeout=30)
            added = c.add_references([req("ver", pattern_image(70)), req("ver", pattern_image(71))])
            dup = c.add_references([req("ver", pattern_image(70))])  # nothing written: no new version
            versions = [v0, up.catalog_version, added.catalog_version]
            assert versions == sorted(set(versions)) and dup.catalog_version == added.catalog_version
            got = c.get_product("ver", min_catalog_version=added.catalog_version)
            assert got is not None and got.catalog_version == added.catalog_version
            rec = c.recognize(
                [image_input(pattern_image(70))], search_options(min_catalog_version=added.catalog_version)
            )
            assert rec.catalog_version == added.catalog_version
            assert rec.results[0].recognition.matches[0].product_id == "ver"
            t0 = time.monotonic()
            err = rpc_error(c.get_product, "ver", min_catalog_version=added.catalog_version + 5)
            waited = time.monotonic() - t0
            assert err.code() is C.UNAVAILABLE and "behind" in err.details()
            assert 0.25 <= waited < 5, waited
            trailers = dict(err.trailing_metadata() or ())  # type: ignore[attr-defined]
            assert trailers.get("grpc-retry-pushback-ms") == "100"
            assert trailers.get("skulens-error-field") == "min_catalog_version"
            err = rpc_error(
                c.recognize,
                [image_input(pattern_image(70))],
                search_options(min_catalog_version=added.catalog_version + 5),
            )
            assert err.code() is C.UNAVAILABLE
            stream = [  # a stream waits once for its version, then answers each image at or above it
                recognition_pb2.RecognizeStreamRequest(
                    images=[image_input(pattern_image(70), id=f"s{k}") for k in range(3)],
                    options=search_options(min_catalog_version=added.catalog_version),
                ),
                recognition_pb2.RecognizeStreamRequest(
                    images=[image_input(pattern_image(71), id="behind")],
                    options=search_options(min_catalog_version=added.catalog_version + 5),
                ),
            ]
            answers = {r.result.id: r for r in c.recognize_stream_responses(stream, timeout=30)}
            assert all(answers[f"s{k}"].result.status.code == 0 for k in range(3))
            assert all(answers[f"s{k}"].catalog_version >= added.catalog_version for k in range(3))
            assert answers["behind"].result.status.code == C.UNAVAILABLE.value[0]
            deleted = c.catalog.DeleteReferenceImage(
                catalog_pb2.DeleteReferenceImageRequest(reference_id=added.results[0].reference_id), timeout=30
            )
            gone = c.catalog.DeleteProduct(catalog_pb2.DeleteProductRequest(product_id="ver"), timeout=30)
            assert added.catalog_version < deleted.catalog_version < gone.catalog_version
            assert c.stats().catalog_version == gone.catalog_version
    finally:
        srv.stop()


def test_enroll_stream_acknowledges_each_committed_batch(engine: object, tmp_path: Path) -> None:
    """EnrollReferenceImages (enroll_chunk 4 here): 10 messages → acknowledgements of 4, 4 and 2 results, each
    with its messages' stream positions and a growing catalog version; what a batch acknowledged is stored at
    that version; a bad message fails alone inside its batch."""
    srv = RunningServer(make_settings(tmp_path / "data", enroll_chunk=4), engine)
    try:
        with srv.client() as client:
            client.upsert_product("acked")
            msgs = [req("acked", pattern_image(500 + k)) for k in range(10)]
            msgs[6] = req("acked", b"not an image")
            acks = list(client.enroll_stream(msgs))
            assert [len(a.results) for a in acks] == [4, 4, 2]
            assert [r.index for a in acks for r in a.results] == list(range(10))
            versions = [a.catalog_version for a in acks]
            assert versions == sorted(versions) and len(set(versions)) == 3
            bad = acks[1].results[2]
            assert bad.index == 6 and bad.status.code == C.INVALID_ARGUMENT.value[0]
            assert bad.status.field == "content"
            got = client.get_product("acked", min_catalog_version=versions[0])
            assert got is not None
            assert {a.reference_id for a in acks[0].results} <= {r.reference_id for r in got.references}
            assert len(client.get_product("acked").references) == 9  # type: ignore[union-attr]
    finally:
        srv.stop()


def _kinds(result: catalog_pb2.AddedReference) -> list[str]:
    return [catalog_pb2.EnrolmentWarningKind.Name(w.kind).removeprefix("ENROLMENT_WARNING_KIND_")
            for w in result.warnings]


def test_enrolment_warnings_flag_without_refusing(engine: object, tmp_path: Path) -> None:
    """Known by construction: the same bytes under two products (cosine 1) and blank / tiny images."""
    srv = RunningServer(make_settings(tmp_path / "data", enroll_chunk=4, near_duplicate_threshold=0.9999), engine)
    try:
        with srv.client() as c:
            for pid in ("a", "b", "c", "d"):
                c.upsert_product(pid)
            (a0,) = c.add_references([req("a", pattern_image(600))]).results
            (b0,) = c.add_references([req("b", pattern_image(601))]).results
            assert _kinds(a0) == [] and _kinds(b0) == []  # b0: b has no other reference, so never "closer"
            # a gets b's photo: cosine 1 to b's reference, lower to its own one
            (a1,) = c.add_references([req("a", pattern_image(601))]).results
            assert a1.status.code == 0 and not a1.duplicate and a1.reference_id > 0  # added all the same
            assert _kinds(a1) == ["CLOSER_TO_OTHER_PRODUCT", "NEAR_DUPLICATE_OF_OTHER_PRODUCT"]
            closer, dup = a1.warnings
            assert (closer.other_product_id, closer.other_reference_id) == ("b", b0.reference_id)
            assert closer.other_score == pytest.approx(1.0, abs=1e-5) and closer.HasField("own_score")
            assert closer.own_score < 0.9999 and "'b'" in closer.message
            assert f"reference {b0.reference_id}" in closer.message
            assert dup.other_reference_id == b0.reference_id and not dup.HasField("own_score")
            # within one call: c and d get one photo each; each is the other's near-duplicate (ids resolved)
            resp = c.add_references([req("c", pattern_image(610)), req("d", pattern_image(610)),
                                     req("a", pattern_image(601))])  # a duplicate: no warnings
            rc, rd, again = resp.results
            assert _kinds(rc) == _kinds(rd) == ["NEAR_DUPLICATE_OF_OTHER_PRODUCT"]
            assert (rc.warnings[0].other_product_id, rc.warnings[0].other_reference_id) == ("d", rd.reference_id)
            assert (rd.warnings[0].other_product_id, rd.warnings[0].other_reference_id) == ("c", rc.reference_id)
            assert again.duplicate and list(again.warnings) == []
            # unusable: nearly blank (a flat grey photo, JPEG) and tiny (20 x 20 pixels)
            grey = io.BytesIO()
            Image.new("RGB", (300, 200), (120, 120, 120)).save(grey, "JPEG")
            blank, tiny = c.add_references([req("a", grey.getvalue()), req("a", pattern_image(620, size=20))]).results
            assert "UNUSABLE_IMAGE" in _kinds(blank) and "UNUSABLE_IMAGE" in _kinds(tiny)
            assert "nearly blank" in blank.warnings[-1].message and "tiny (20x20 pixels" in tiny.warnings[-1].message
            assert blank.status.code == tiny.status.code == 0
        kind = {"kind": "NEAR_DUPLICATE_OF_OTHER_PRODUCT"}
        assert srv.registry.get_sample_value("skulens_enrolment_warnings_total", kind) == 3.0
    finally:
        srv.stop()


def test_enrolment_warnings_can_be_switched_off(engine: object, tmp_path: Path) -> None:
    srv = RunningServer(make_settings(tmp_path / "data", enrolment_warnings=False), engine)
    try:
        with srv.client() as c:
            c.upsert_product("a")
            c.upsert_product("b")
            c.add_references([req("a", pattern_image(700))])
            (same,) = c.add_references([req("b", pattern_image(700))]).results
            assert same.status.code == 0 and list(same.warnings) == []
    finally:
        srv.stop()
