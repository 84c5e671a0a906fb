"""The error table: every domain error class reaches the client as its status code with its message and field;
anything else is INTERNAL with a generic text, the traceback only in the log."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from service_harness import SHARED

from skulens.catalog import errors as cat
from skulens.errors import ConfigError, SkulensError, code_name
from skulens.imaging import errors as img
from skulens.inference import errors as inf
from skulens.model.manifest import ManifestError
from skulens.service import errors_grpc as eg
from skulens.service.calllog import CallInterceptor

C = grpc.StatusCode
ROWS: list[tuple[BaseException, grpc.StatusCode]] = [
    (img.InvalidImage("not an image", "images[1].content"), C.INVALID_ARGUMENT),
    (img.InvalidRegion("box outside the image", "images[0].regions[2]"), C.INVALID_ARGUMENT),
    (img.ImageTooLarge("image is 30000000 bytes; the limit is 20971520", "images[0].content"), C.INVALID_ARGUMENT),
    (img.ImageTooSmall("image is 8x8 pixels; the minimum side is 16", "images[0].content"), C.INVALID_ARGUMENT),
    (
        cat.InvalidArgument("product_id must be 1-128 UTF-8 characters, got 0", "product_id"),
        C.INVALID_ARGUMENT,
    ),
    (eg.BadRequest("options.top_k must be <= 100, got 500", "options.top_k"), C.INVALID_ARGUMENT),
    (cat.NotFound("product 'x' does not exist", "product_id"), C.NOT_FOUND),
    (cat.AlreadyExists("reference exists", "reference_id"), C.ALREADY_EXISTS),
    (cat.FingerprintMismatch.between("a/b/1:x", 1, "c/d/2:y", 2), C.FAILED_PRECONDITION),
    (inf.ModelLoadError("model file image.onnx is missing"), C.FAILED_PRECONDITION),
    (ManifestError("malformed manifest"), C.FAILED_PRECONDITION),
    (inf.Overloaded("inference queue is full (1024 items); retry later"), C.RESOURCE_EXHAUSTED),
    (eg.TooMany("images holds 65 images; the limit is 64 per request", "images"), C.RESOURCE_EXHAUSTED),
    (inf.DeadlineExceeded("deadline passed before inference"), C.DEADLINE_EXCEEDED),
    (inf.Cancelled("inference was cancelled"), C.CANCELLED),
    (inf.Unsupported("model has no text tower", "texts"), C.UNIMPLEMENTED),
    (inf.DecodeWorkerLost("the decode worker process died; retry it", "images[0].content"), C.UNAVAILABLE),
    (eg.NotReady("still loading"), C.UNAVAILABLE),
    (eg.Draining("shutting down"), C.UNAVAILABLE),
    (cat.CatalogClosed(), C.UNAVAILABLE),
    (eg.Unauthenticated("missing bearer token"), C.UNAUTHENTICATED),
    (eg.PermissionDenied("needs catalog:write"), C.PERMISSION_DENIED),
    (cat.RequestIdReused("request id used for another image", "request_id"), C.ALREADY_EXISTS),
]


@pytest.mark.parametrize(
    ("exc", "code"), ROWS, ids=[type(e).__name__ + str(i) for i, (e, _) in enumerate(ROWS)]
)
def test_table(exc: BaseException, code: grpc.StatusCode) -> None:
    assert eg.code_of(exc) is code
    got_code, message, field = eg.describe(exc)
    assert got_code is code
    assert getattr(exc, "message", str(exc)) in message
    if getattr(exc, "field", None):
        assert field == exc.field and message.startswith(field)  # type: ignore[attr-defined]


def test_every_domain_class_is_mapped() -> None:
    """No concrete domain error class falls through to INTERNAL."""
    bases = {SkulensError, inf.InferenceError, img.ImageError, cat.CatalogError, eg.ServiceError}
    seen, todo = [], list(SkulensError.__subclasses__())
    while todo:
        klass = todo.pop()
        seen.append(klass)
        todo.extend(klass.__subclasses__())
    assert {inf.Overloaded, img.InvalidRegion, cat.CatalogCorrupt, eg.TooMany, ManifestError} <= set(seen)
    for klass in seen:
        start_up_only = issubclass(klass, ConfigError)  # settings / arguments: never reach a client
        if klass not in bases and not start_up_only and not klass.__module__.startswith(("tests", "test_")):
            assert eg.code_of(klass("m")) is not None, klass.__qualname__


def test_unknown_exception_is_internal_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="skulens.errors"):
        code, message, field = eg.describe(KeyError("secret-internal-detail"))
    assert (code, message, field) == (C.INTERNAL, eg.INTERNAL_MESSAGE, "")
    assert "secret-internal-detail" not in message
    assert any(r.exc_info for r in caplog.records)


def test_item_status() -> None:
    ok = eg.item_status(None)
    assert ok.code == 0 and not ok.message
    bad = eg.item_status(img.InvalidImage("broken", "images[3].content"))
    assert (bad.code, bad.field) == (3, "images[3].content") and bad.message == "images[3].content: broken"
    assert code_name(3) == "INVALID_ARGUMENT" and code_name(0) == "OK"
    assert not ok.details
    info, violations = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert [bad.details[0].Unpack(info), bad.details[1].Unpack(violations)] == [True, True]
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "INVALID_IMAGE", "skulens.v1", {"field": "images[3].content"})
    assert [(v.field, v.description) for v in violations.field_violations] == [
        ("images[3].content", "images[3].content: broken")]


def _info(status: object) -> error_details_pb2.ErrorInfo:
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)  # type: ignore[attr-defined]
    return info


def test_a_stream_message_error_carries_its_position() -> None:
    """In a stream the path is relative to the message; its position is in the text and in ErrorInfo metadata
    "stream_index" (also for a copy of the status made for another message with the same outcome)."""
    exc = img.InvalidImage("not an image", "content").in_stream(7)
    assert exc.field == "content" and exc.stream_index == 7 and exc.message == "not an image"
    st = eg.item_status(exc)
    assert (st.field, st.message) == ("content", "message 7: content: not an image")
    assert dict(_info(st).metadata) == {"field": "content", "stream_index": "7"}
    again = eg.for_stream_message(st, 9)
    assert (again.code, again.field, again.message) == (3, "content", "message 9: content: not an image")
    assert dict(_info(again).metadata) == {"field": "content", "stream_index": "9"}
    bad = error_details_pb2.BadRequest()
    assert again.details[1].Unpack(bad) and bad.field_violations[0].description == again.message
    assert st.message == "message 7: content: not an image"  # the original is untouched
    reused = eg.item_status(cat.RequestIdReused("used before", "request_id").in_stream(2))
    assert reused.code == C.ALREADY_EXISTS.value[0] and _info(reused).reason == "REQUEST_ID_REUSED"
    assert len(reused.details) == 1  # no BadRequest for ALREADY_EXISTS
    assert eg.for_stream_message(eg.item_status(None), 3) == eg.item_status(None)


def test_trailer_text_is_ascii() -> None:
    assert eg.trailer_text("options.labels.brand") == "options.labels.brand"
    encoded = eg.trailer_text("labels.`caf\u00e9 100%`")
    assert encoded == "labels.`caf%C3%A9 100%25`" and encoded.isascii()
    from urllib.parse import unquote

    assert unquote(encoded) == "labels.`caf\u00e9 100%`"


# ---------------------------------------------------------------------------------------------- over the wire
_BY_NAME = {f"{type(e).__name__}{i}": e for i, (e, _) in enumerate(ROWS)}
_BY_NAME["internal"] = RuntimeError("secret-internal-detail")


@pytest.fixture(scope="module")
def raising_server() -> Iterator[str]:
    """A grpc.aio server with the CallInterceptor and methods that raise the error named in the request."""
    lt = SHARED.loop_thread()

    async def raise_named(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise _BY_NAME[request.decode()]

    async def stream_raise(request: bytes, context: grpc.aio.ServicerContext):
        yield b"first"
        raise _BY_NAME[request.decode()]

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(interceptors=[CallInterceptor(None)])
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "test.Raise",
                    {
                        "Unary": grpc.unary_unary_rpc_method_handler(raise_named),
                        "Stream": grpc.unary_stream_rpc_method_handler(stream_raise),
                    },
                )
            ]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = lt.run(start())
    yield f"127.0.0.1:{port}"
    lt.run(server.stop(0))


@pytest.mark.parametrize("name", list(_BY_NAME))
def test_status_on_the_wire(raising_server: str, name: str, caplog: pytest.LogCaptureFixture) -> None:
    exc = _BY_NAME[name]
    with grpc.insecure_channel(raising_server) as ch, caplog.at_level(logging.INFO):
        call = ch.unary_unary("/test.Raise/Unary")
        try:
            call(name.encode(), timeout=10, metadata=[("x-request-id", f"rid-{name}")])
        except grpc.RpcError as err:
            assert isinstance(err, grpc.Call)
            trailing = dict(err.trailing_metadata() or ())
            assert trailing.get("x-request-id") == f"rid-{name}"
            if name == "internal":
                assert err.code() is C.INTERNAL
                assert "secret-internal-detail" not in (err.details() or "")
                assert err.details() == eg.INTERNAL_MESSAGE
            else:
                assert err.code() is eg.code_of(exc)
                assert getattr(exc, "message", str(exc)) in (err.details() or "")
                if getattr(exc, "field", None):
                    assert trailing.get(eg.FIELD_METADATA_KEY) == exc.field  # type: ignore[attr-defined]
        else:
            raise AssertionError("call succeeded")
    if name == "internal":
        logged = [r for r in caplog.records if r.exc_info]
        assert logged and "secret-internal-detail" in str(logged[0].exc_info[1])  # type: ignore[index]


def test_stream_error_after_first_message(raising_server: str) -> None:
    with grpc.insecure_channel(raising_server) as ch:
        stream = ch.unary_stream("/test.Raise/Stream")(b"Overloaded11", timeout=10)
        got = []
        with pytest.raises(grpc.RpcError) as info:
            for m in stream:
                got.append(m)
        assert got == [b"first"]
        assert info.value.code() is C.RESOURCE_EXHAUSTED


def test_abort_helper_keeps_trailing_metadata() -> None:
    """`abort` adds the field to trailing metadata already set (the request id)."""

    class Ctx:
        def __init__(self) -> None:
            self.aborted: tuple[object, ...] = ()

        def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
            return (("x-request-id", "r1"),)

        async def abort(self, code: object, message: str, trailing: object) -> None:
            self.aborted = (code, message, trailing)
            raise grpc.aio.AbortError()

    ctx = Ctx()
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(eg.abort(ctx, eg.BadRequest("bad", "options.top_k")))
    assert ctx.aborted[0] is C.INVALID_ARGUMENT
    trailing = dict(ctx.aborted[2])  # type: ignore[call-overload]
    assert list(trailing) == ["x-request-id", eg.STATUS_DETAILS_KEY, eg.FIELD_METADATA_KEY]
    assert trailing["x-request-id"] == "r1" and trailing[eg.FIELD_METADATA_KEY] == "options.top_k"
    assert trailing[eg.STATUS_DETAILS_KEY] == eg.status_proto(eg.BadRequest("bad", "options.top_k")).SerializeToString()


def test_a_method_nobody_implemented_is_unimplemented_not_internal() -> None:
    """A generated servicer's default raises NotImplementedError: UNIMPLEMENTED, the standard's answer."""
    code, message, field = eg.describe(NotImplementedError("Method not implemented!"))
    assert (code, field) == (C.UNIMPLEMENTED, "") and "not implemented" in message


def test_status_details_are_standard_google_rpc() -> None:
    """Every error also travels as a google.rpc.Status: ErrorInfo (stable reason, domain, field), BadRequest with
    the field violation for INVALID_ARGUMENT, RetryInfo when a retry delay is known."""
    from google.rpc import error_details_pb2

    def details(st: object) -> dict[str, object]:
        out: dict[str, object] = {}
        for any_ in st.details:  # type: ignore[attr-defined]
            for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
                if any_.Is(kind.DESCRIPTOR):
                    msg = kind()
                    any_.Unpack(msg)
                    out[kind.__name__] = msg
        return out

    st = eg.status_proto(img.ImageTooLarge("image is 9 bytes; the limit is 4 bytes", "images[2].content"))
    assert (st.code, st.message) == (
        C.INVALID_ARGUMENT.value[0], "images[2].content: image is 9 bytes; the limit is 4 bytes")
    d = details(st)
    info, bad = d["ErrorInfo"], d["BadRequest"]
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "IMAGE_TOO_LARGE", "skulens.v1", {"field": "images[2].content"})
    assert [(v.field, v.description) for v in bad.field_violations] == [("images[2].content", st.message)]
    assert "RetryInfo" not in d
    shed = details(eg.status_proto(inf.Overloaded("busy", retry_after_s=0.25)))
    assert shed["RetryInfo"].retry_delay.ToMilliseconds() == 250 and "BadRequest" not in shed
    assert shed["ErrorInfo"].reason == "OVERLOADED"
    behind = details(eg.status_proto(eg.CatalogBehind("behind", "min_catalog_version", retry_after_s=0.1)))
    assert behind["RetryInfo"].retry_delay.ToMilliseconds() == 100
    internal = eg.status_proto(KeyError("secret"))
    assert internal.code == C.INTERNAL.value[0] and "secret" not in internal.message
    assert details(internal)["ErrorInfo"].reason == "INTERNAL"
