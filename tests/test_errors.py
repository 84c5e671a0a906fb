"""skulens.errors: the error base and the one grammar of request field paths (AIP-193 paths, AIP-161 map keys).

The helper and the grammar on their own, then every path real calls produce (item statuses, BadRequest field
violations, ErrorInfo metadata, the skulens-error-field trailer) through a real server: each matches the grammar
and leads to a real field of the request message (of the stream message, in a streaming call), and a few are
checked exactly (a map key, a nested repeated region, stream messages with their positions)."""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import grpc
import pytest
from google.protobuf.descriptor import Descriptor
from google.rpc import error_details_pb2, status_pb2
from service_harness import SHARED, RunningServer, make_settings, pattern_image

from skulens.errors import FIELD_PATH, Key, SkulensError, field_path, is_field_path, key_segment
from skulens.imaging.errors import InvalidRegion
from skulens.inference.errors import Overloaded
from skulens.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, recognition_pb2, recognition_pb2_grpc

C = grpc.StatusCode
rpb, cpb = recognition_pb2, catalog_pb2


# ---------------------------------------------------------------------------------------------- the helper
def test_field_path_joins_names_indexes_and_keys() -> None:
    assert field_path("images", 3, "content") == "images[3].content"
    assert field_path("images", 0, "regions", 2) == "images[0].regions[2]"
    assert field_path("options.search", "top_k") == "options.search.top_k"  # a prefix that is a path already
    assert field_path("", "content") == "content"  # an empty prefix: a path relative to a stream message
    assert field_path("options", "labels", Key("brand")) == "options.labels.brand"
    assert field_path("labels", Key("brand name")) == "labels.`brand name`"
    assert field_path("labels", Key("2024")) == "labels.`2024`"  # not an identifier: quoted
    assert field_path("labels", Key("caf\u00e9")) == "labels.`caf\u00e9`"
    assert field_path("labels", Key("a`b\\c")) == "labels.`a\\`b\\\\c`"  # backtick and backslash escaped
    assert key_segment("_ok9") == "_ok9" and key_segment("a.b") == "`a.b`"
    for bad in (("images", -1), (3,), ("Images",), ("images", "content x"), ("a..b",), (Key("k"),),
                ("labels", Key(""))):
        with pytest.raises(ValueError):
            field_path(*bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        field_path("images", 1.5)  # type: ignore[arg-type]


def test_the_grammar() -> None:
    good = ["product_id", "images[0]", "images[12].regions[3]", "options.labels.brand", "labels.`brand name`",
            "labels.`a\\`b`", "update_mask.paths[1]", "options.search.min_catalog_version"]
    bad = ["", "labels key", "labels['k']", "images[01]", "images[-1]", "Images", "a..b", "images.", ".images",
           "labels.`a`b`", "labels.``", "images[0]x", "requests[22] .content"]
    assert [p for p in good if not is_field_path(p)] == []
    assert [p for p in bad if is_field_path(p)] == []
    assert FIELD_PATH.pattern.endswith(r"\Z")


def test_in_stream_and_with_field_keep_the_error() -> None:
    class Odd(SkulensError):
        extra = "class"

    err = Odd("not an image", "content")
    err.extra = "kept"  # type: ignore[misc]
    moved = err.with_field("region").in_stream(4)
    assert type(moved) is Odd and moved.extra == "kept" and moved.message == "not an image"
    assert (moved.field, moved.stream_index) == ("region", 4) and (err.field, err.stream_index) == ("content", None)
    assert moved.with_field("source").stream_index == 4
    assert str(moved) == "region: not an image"


def test_errors_survive_pickling_with_their_class_field_and_attributes() -> None:
    """A decode worker process sends its image errors back pickled: class, message, field, position and the
    attributes a subclass's own constructor sets all arrive."""
    shed = Overloaded("queue full", "images", retry_after_s=0.25).in_stream(2)
    back = pickle.loads(pickle.dumps(shed))
    assert type(back) is Overloaded and back.retry_after_s == 0.25 and back.stream_index == 2
    assert (back.message, back.field, str(back)) == ("queue full", "images", "images: queue full")
    bad = pickle.loads(pickle.dumps(InvalidRegion("region is 0x0 pixels", "images[1].regions[0]")))
    assert type(bad) is InvalidRegion and bad.field == "images[1].regions[0]" and bad.args == ("region is 0x0 pixels",)


# ---------------------------------------------------------------------------------------------- real calls
def resolves(path: str, message: Descriptor) -> bool:
    """Whether `path` leads to a field of `message`: each name a field, `[i]` only on a repeated (non-map) field,
    a key only after a map field, subfields only of a message (an element of it when repeated)."""
    seg = re.compile(r"([a-z][a-z0-9_]*)((?:\[\d+\])?)")
    key = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|`(?:[^`\\]|\\[`\\])+`")
    desc, pos = message, 0
    while True:
        m = seg.match(path, pos)
        fd = desc.fields_by_name.get(m.group(1)) if m else None
        if m is None or fd is None:
            return False
        repeated = fd.is_repeated
        is_map = fd.message_type is not None and fd.message_type.GetOptions().map_entry
        if m.group(2) and (not repeated or is_map):
            return False
        pos = m.end()
        if pos == len(path):
            return True
        if path[pos] != ".":
            return False
        pos += 1
        if is_map:
            k = key.match(path, pos)
            if k is None:
                return False
            value = fd.message_type.fields_by_name["value"]
            pos = k.end()
            if pos == len(path):
                return True
            if value.message_type is None or path[pos] != ".":
                return False
            desc, pos = value.message_type, pos + 1
            continue
        if fd.message_type is None or (repeated and not m.group(2)):
            return False
        desc = fd.message_type


def test_the_resolver_itself() -> None:
    assert resolves("images[2].regions[1]", rpb.RecognizeRequest.DESCRIPTOR)
    assert resolves("options.labels.`brand name`", rpb.RecognizeRequest.DESCRIPTOR)
    assert resolves("images[0].image.content", rpb.EvaluateRequest.DESCRIPTOR)
    for bad in ("regions[4][2]", "images[1].regions[4][2]", "images.content", "options[0]", "options.labels[0]",
                "images[0].content.x", "texts"):
        assert not resolves(bad, rpb.RecognizeRequest.DESCRIPTOR), bad
    assert not resolves("requests[22].content", cpb.AddReferenceImagesRequest.DESCRIPTOR)
    assert resolves("content", cpb.AddReferenceImagesRequest.DESCRIPTOR)


@pytest.fixture(scope="module")
def server(clip_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = make_settings(tmp_path_factory.mktemp("paths") / "data", max_regions_per_image=3, enroll_chunk=2)
    srv = RunningServer(settings, SHARED.engine(clip_model_dir))
    yield srv
    srv.stop()


class Seen:
    """Every field path the calls produced, with the message type it must lead into."""

    def __init__(self) -> None:
        self.paths: list[tuple[str, Descriptor, str]] = []  # (path, message type, where it was seen)

    def item(self, status: common_pb2.ItemStatus, message: Descriptor, stream_index: int | None = None) -> str:
        """An item status's path, also checked against its ErrorInfo / BadRequest details."""
        assert status.code != 0
        info, fields = _details(status.details)
        assert info.metadata.get("field", "") == status.field and fields in ([], [status.field])
        if stream_index is not None:
            assert info.metadata["stream_index"] == str(stream_index)
            assert status.message.startswith(f"message {stream_index}: ")
        self.paths.append((status.field, message, "item"))
        return status.field

    def call(self, err: grpc.RpcError, message: Descriptor, stream_index: int | None = None) -> str:
        """A call-level error's path: the trailer (percent-decoded), ErrorInfo and BadRequest all say the same."""
        assert isinstance(err, grpc.Call)
        trailing = dict(err.trailing_metadata() or ())
        status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
        info, fields = _details(status.details)
        path = info.metadata["field"]
        raw = trailing["skulens-error-field"]
        assert raw.isascii() and unquote(raw) == path and fields in ([], [path])
        assert (stream_index is None) == ("stream_index" not in info.metadata)
        if stream_index is not None:
            assert info.metadata["stream_index"] == str(stream_index)
        self.paths.append((path, message, "call"))
        return path


def _details(details: object) -> tuple[error_details_pb2.ErrorInfo, list[str]]:
    info, fields = error_details_pb2.ErrorInfo(), []
    for any_ in details:  # type: ignore[attr-defined]
        if any_.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            any_.Unpack(info)
        elif any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    assert info.domain == "skulens.v1"
    return info, fields


def _fails(call: object, *args: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        out = call(*args, timeout=30)  # type: ignore[operator]
        if not isinstance(out, rpb.EvaluateResponse | rpb.RecognizeResponse | cpb.UpsertProductResponse |
                          rpb.SearchByTextResponse):
            list(out)  # type: ignore[call-overload]
    return err.value


def _box(x: int, y: int, w: int, h: int) -> common_pb2.Box:
    return common_pb2.Box(x=x, y=y, width=w, height=h)


def test_every_path_real_calls_produce_follows_the_grammar(server: RunningServer) -> None:
    seen = Seen()
    good, garbage = pattern_image(801), b"not an image"
    with grpc.insecure_channel(server.addr) as ch:
        rec, cat = recognition_pb2_grpc.RecognitionServiceStub(ch), catalog_pb2_grpc.CatalogServiceStub(ch)
        R = rpb.RecognizeRequest.DESCRIPTOR

        # Recognize: per item (an image, a nested repeated region), then call-level options and limits
        resp = rec.Recognize(rpb.RecognizeRequest(images=[
            rpb.ImageInput(id="ok", content=good),
            rpb.ImageInput(id="bad", content=garbage),
            rpb.ImageInput(id="boxes", content=good, regions=[_box(0, 0, 48, 48), _box(80, 80, 40, 40),
                                                               _box(0, 0, 8, 8)]),
        ]), timeout=60)
        assert seen.item(resp.results[1].recognition.status, R) == "images[1].content"
        regions = resp.results[2].regions
        assert regions[0].recognition.status.code == 0
        assert seen.item(regions[1].recognition.status, R) == "images[2].regions[1]"  # a nested repeated region
        assert seen.item(regions[2].recognition.status, R) == "images[2].regions[2]"

        def recognize(**options: object) -> grpc.RpcError:
            request = rpb.RecognizeRequest(images=[rpb.ImageInput(content=good)],
                                           options=common_pb2.SearchOptions(**options))  # type: ignore[arg-type]
            return _fails(rec.Recognize, request)

        assert seen.call(recognize(top_k=999), R) == "options.top_k"
        assert seen.call(recognize(labels={"brand name": "v" * 300}), R) == "options.labels.`brand name`"
        assert seen.call(recognize(labels={"brand": "v" * 300}), R) == "options.labels.brand"
        err = recognize(labels={"bad\u200bkey": "x"})  # an invalid key: the map is named, the key quoted
        assert seen.call(err, R) == "options.labels" and "'bad\\u200bkey'" in err.details()
        err = recognize(labels={"caf\u00e9": "v" * 300})  # a non-ASCII key: the trailer is percent-encoded
        assert seen.call(err, R) == "options.labels.`caf\u00e9`"
        assert dict(err.trailing_metadata())["skulens-error-field"] == "options.labels.`caf%C3%A9`"
        assert seen.call(recognize(category="dairy\x00"), R) == "options.category"
        assert seen.call(recognize(unknown_threshold=2.0), R) == "options.unknown_threshold"
        too_many = rpb.RecognizeRequest(images=[rpb.ImageInput(content=good, regions=[_box(0, 0, 20, 20)] * 4)])
        assert seen.call(_fails(rec.Recognize, too_many), R) == "images[0].regions"
        assert seen.call(_fails(rec.Recognize, rpb.RecognizeRequest()), R) == "images"
        assert seen.call(_fails(rec.Recognize, rpb.RecognizeRequest(images=[rpb.ImageInput(content=good)],
                                                                    source="_x")), R) == "source"

        # Embed and SearchByText
        emb = rec.Embed(rpb.EmbedRequest(images=[rpb.ImageInput(content=good), rpb.ImageInput(content=garbage)]),
                        timeout=60)
        assert seen.item(emb.images[1].status, rpb.EmbedRequest.DESCRIPTOR) == "images[1].content"
        T = rpb.SearchByTextRequest.DESCRIPTOR
        assert seen.call(_fails(rec.SearchByText, rpb.SearchByTextRequest(texts=["milk", " "])), T) == "texts[1]"

        # UpsertProduct: a label value by its map key, a mask path by its index
        U = cpb.UpsertProductRequest.DESCRIPTOR
        up = cpb.UpsertProductRequest(product_id="paths", labels={"pack size": "x" * 300})
        assert seen.call(_fails(cat.UpsertProduct, up), U) == "labels.`pack size`"
        up = cpb.UpsertProductRequest(product_id="paths")
        up.update_mask.paths.extend(["display_name", "colour"])
        assert seen.call(_fails(cat.UpsertProduct, up), U) == "update_mask.paths[1]"
        assert seen.call(_fails(cat.UpsertProduct, cpb.UpsertProductRequest(product_id="")), U) == "product_id"
        cat.UpsertProduct(cpb.UpsertProductRequest(product_id="paths"), timeout=30)

        # AddReferenceImages / EnrollReferenceImages: relative to the message, its position beside it
        A = cpb.AddReferenceImagesRequest.DESCRIPTOR
        msgs = [
            cpb.AddReferenceImagesRequest(product_id="paths", content=pattern_image(802)),
            cpb.AddReferenceImagesRequest(product_id="paths", content=b""),
            cpb.AddReferenceImagesRequest(product_id="paths", content=garbage),
            cpb.AddReferenceImagesRequest(product_id="paths", content=good, region=_box(90, 90, 40, 40)),
            cpb.AddReferenceImagesRequest(product_id="nobody", content=good),
            cpb.AddReferenceImagesRequest(product_id="paths", content=good, source="s\x00"),
            cpb.AddReferenceImagesRequest(product_id="paths", content=good, request_id="nope"),
        ]
        added = cat.AddReferenceImages(iter(msgs), timeout=60)
        got = [seen.item(r.status, A, r.index) if r.status.code else "" for r in added.results]
        assert got == ["", "content", "content", "region", "product_id", "source", "request_id"]
        acks = list(cat.EnrollReferenceImages(iter([cpb.EnrollReferenceImagesRequest(product_id="paths",
                                                                                      content=garbage)] * 3),
                                              timeout=60))
        assert [seen.item(r.status, cpb.EnrollReferenceImagesRequest.DESCRIPTOR, r.index)
                for a in acks for r in a.results] == ["content"] * 3

        # RecognizeStream: an image of a message, a refused message
        S = rpb.RecognizeStreamRequest.DESCRIPTOR
        stream = list(rec.RecognizeStream(iter([
            rpb.RecognizeStreamRequest(images=[rpb.ImageInput(content=good)]),
            rpb.RecognizeStreamRequest(images=[rpb.ImageInput(content=good), rpb.ImageInput(content=garbage)]),
            rpb.RecognizeStreamRequest(images=[rpb.ImageInput(content=good)],
                                       options=common_pb2.SearchOptions(top_k=999)),
            rpb.RecognizeStreamRequest(images=[rpb.ImageInput(content=good, regions=[_box(0, 0, 48, 48),
                                                                                     _box(95, 0, 10, 10)])]),
        ]), timeout=60))
        by_pos = {(r.message_index, r.image_index): r.result for r in stream}
        assert seen.item(by_pos[(1, 1)].recognition.status, S, 1) == "images[1].content"
        assert seen.item(by_pos[(2, 0)].status, S, 2) == "options.top_k"
        assert seen.item(by_pos[(3, 0)].regions[1].recognition.status, S, 3) == "images[0].regions[1]"

        # Evaluate (client streaming, one answer): a call-level error names the field and the message's position
        E = rpb.EvaluateRequest.DESCRIPTOR
        photo = rpb.LabelledImage(image=rpb.ImageInput(content=good), product_id="paths")
        late = [rpb.EvaluateRequest(images=[photo]), rpb.EvaluateRequest(options=rpb.EvaluateOptions())]
        assert seen.call(_fails(rec.Evaluate, iter(late)), E, 1) == "options"
        boxed = rpb.LabelledImage(image=rpb.ImageInput(content=good, regions=[_box(0, 0, 20, 20)]))
        assert seen.call(_fails(rec.Evaluate, iter([rpb.EvaluateRequest(images=[photo, boxed])])), E, 0) == \
            "images[1].image.regions"
        bad_opts = rpb.EvaluateRequest(options=rpb.EvaluateOptions(search=common_pb2.SearchOptions(top_k=999)))
        assert seen.call(_fails(rec.Evaluate, iter([bad_opts])), E, 0) == "options.search.top_k"

    assert len(seen.paths) >= 30
    wrong = [(p, where) for p, _, where in seen.paths if not FIELD_PATH.match(p)]
    assert not wrong, f"paths outside the grammar: {wrong}"
    unresolved = [(p, d.name) for p, d, _ in seen.paths if not resolves(p, d)]
    assert not unresolved, f"paths that lead to no field of the request message: {unresolved}"
