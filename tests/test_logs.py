"""Structured logs (JSON lines / key=value) and the per-call log line with its request id."""

from __future__ import annotations

import io
import json
import logging
import unicodedata
from collections.abc import Iterator

import grpc
import pytest
from service_harness import SHARED

from skulens.service.calllog import CallInterceptor, call_fields, request_id_from
from skulens.service.logs import REQUEST_ID, JsonFormatter, KeyValueFormatter, configure_logging


def _record(msg: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("skulens.test", logging.WARNING, __file__, 1, msg, args or ("world",), None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_json_lines_carry_request_id_and_fields() -> None:
    token = REQUEST_ID.set("rid-1")
    try:
        line = JsonFormatter().format(_record(fields={"method": "Recognize", "images": 3}))
    finally:
        REQUEST_ID.reset(token)
    d = json.loads(line)
    assert d["msg"] == "hello world" and d["level"] == "warning" and d["request_id"] == "rid-1"
    assert d["method"] == "Recognize" and d["images"] == 3 and d["ts"].endswith("Z")


def test_key_value_lines_quote_and_append_traceback() -> None:
    try:
        raise ValueError("bad thing")
    except ValueError:
        import sys

        rec = _record("spaced %s", "value x", fields={"code": "INTERNAL"})
        rec.exc_info = sys.exc_info()
    out = KeyValueFormatter().format(rec)
    first, *rest = out.splitlines()
    assert 'msg="spaced value x"' in first and "code=INTERNAL" in first
    assert any("ValueError: bad thing" in line for line in rest)


def test_configure_logging_replaces_its_own_handler() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        buf = io.StringIO()
        configure_logging("json", "INFO", buf)
        configure_logging("json", "INFO", buf)
        ours = [h for h in root.handlers if getattr(h, "_skulens", False)]
        assert len(ours) == 1
        logging.getLogger("skulens.test").info("one line")
        assert json.loads(buf.getvalue().splitlines()[-1])["msg"] == "one line"
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
        root.setLevel(level)


def test_request_id_from_metadata() -> None:
    assert request_id_from([("x-request-id", "abc-123")]) == "abc-123"
    assert len(request_id_from([("x-request-id", "x" * 200)])) == 32  # too long: replaced
    assert len(request_id_from([("x-request-id", "bad\nid")])) == 32
    assert len(request_id_from(None)) == 32
    assert call_fields() == {}  # outside a call: a throwaway dict


@pytest.fixture(scope="module")
def echo_server() -> Iterator[str]:
    lt = SHARED.loop_thread()

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        call_fields()["size"] = len(request)
        logging.getLogger("skulens.test").info("inside the call")
        return request

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(interceptors=[CallInterceptor(None)])
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
                )
            ]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = lt.run(start())
    yield f"127.0.0.1:{port}"
    lt.run(server.stop(0))


def test_one_log_line_per_call_with_request_id(echo_server: str) -> None:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    loggers = [logging.getLogger("skulens.test"), logging.getLogger("skulens.calls")]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    try:
        with grpc.insecure_channel(echo_server) as ch:
            _, call = ch.unary_unary("/test.Echo/Echo").with_call(
                b"abcd", metadata=[("x-request-id", "req-77")], timeout=10
            )
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
            lg.setLevel(logging.NOTSET)
    assert dict(call.trailing_metadata())["x-request-id"] == "req-77"
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    inside = [d for d in lines if d["msg"] == "inside the call"]
    assert inside and inside[0]["request_id"] == "req-77"
    done = [d for d in lines if d.get("method") == "Echo"]
    assert len(done) == 1 and done[0]["code"] == "OK" and done[0]["size"] == 4 and done[0]["ms"] >= 0
    assert done[0]["request_id"] == "req-77" and done[0]["peer"].startswith("ipv4:127.0.0.1")


FORGED = 'p1\ncode=OK fake=1\r\x1b[2J\x85\u2028\u2029\x00"\\ end'


def test_key_value_escapes_control_characters_in_values_and_keys() -> None:
    """A rejected id full of line breaks, terminal escapes and separators stays inside one quoted value."""
    rec = _record("rejected %s", FORGED, fields={"product_id": FORGED, "bad\nkey": 1, "plain": "café-ü"})
    out = KeyValueFormatter().format(rec)
    assert len(out.splitlines()) == 1  # splitlines breaks on \n \r \x1c-\x1e \x85 \u2028 \u2029
    assert not any(unicodedata.category(c) == "Cc" or c in "\u2028\u2029" for c in out)
    want = '"p1\\ncode=OK fake=1\\r\\x1b[2J\\x85\\u2028\\u2029\\x00\\"\\\\ end"'
    assert f"product_id={want}" in out
    assert 'msg="rejected ' + want[1:] in out
    assert '"bad\\nkey"=1' in out and "plain=café-ü" in out  # printable non-ASCII stays readable


def test_key_value_traceback_still_follows_the_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        import sys

        rec = _record("failed %s", FORGED)
        rec.exc_info = sys.exc_info()
    first, *rest = KeyValueFormatter().format(rec).splitlines()
    assert first.startswith("ts=") and "\\x1b" in first and "Traceback" in rest[0]


def test_json_lines_escape_control_characters_too() -> None:
    line = JsonFormatter().format(_record("rejected %s", FORGED, fields={"product_id": FORGED, "bad\nkey": 1}))
    assert len(line.splitlines()) == 1
    assert not any(unicodedata.category(c) == "Cc" or c in "\u2028\u2029" for c in line)
    d = json.loads(line)
    assert d["product_id"] == FORGED and d["msg"] == f"rejected {FORGED}" and d["bad\nkey"] == 1
