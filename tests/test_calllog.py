"""The call interceptor on a small grpc.aio server (no model): cancellation bookkeeping, the servicer's cleanup
running inside the call, request parsing (garbage, extra messages, read timeout)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry
from service_harness import SHARED

from skulens.service.calllog import CallInterceptor, message_name, parse_request
from skulens.service.errors_grpc import BadRequest
from skulens.service.metrics import Metrics
from skulens.v1 import catalog_pb2

C = grpc.StatusCode
BIG = b"x" * 100_000


class Toy:
    """A server with CallInterceptor(metrics, read_timeout=0.5) and a few test methods."""

    def __init__(self) -> None:
        self.lt = SHARED.loop_thread()
        self.metrics = Metrics(CollectorRegistry())
        self.cleanups: list[dict[str, Any]] = []
        self.cleaned = threading.Event()

        async def endless(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            """Streams `request` forever; its finally records whether the call was still usable."""
            try:
                while True:
                    yield request
                    await asyncio.sleep(0.005 if len(request) < 1000 else 0)
            finally:
                self.cleanups.append({"peer": context.peer(), "time_remaining": context.time_remaining()})
                self.cleaned.set()

        async def stats(request: catalog_pb2.GetCatalogStatsRequest, context: grpc.aio.ServicerContext) -> bytes:
            return b"ok"

        async def collect(requests: AsyncIterator[catalog_pb2.GetProductRequest], _: Any) -> bytes:
            return ",".join([r.product_id async for r in requests]).encode()

        async def start() -> tuple[grpc.aio.Server, int]:
            server = grpc.aio.server(interceptors=[CallInterceptor(self.metrics, read_timeout=0.5)])
            server.add_generic_rpc_handlers(
                [
                    grpc.method_handlers_generic_handler(
                        "test.Toy",
                        {
                            "Endless": grpc.unary_stream_rpc_method_handler(endless),
                            "Stats": grpc.unary_unary_rpc_method_handler(
                                stats, request_deserializer=catalog_pb2.GetCatalogStatsRequest.FromString
                            ),
                            "Collect": grpc.stream_unary_rpc_method_handler(
                                collect, request_deserializer=catalog_pb2.GetProductRequest.FromString
                            ),
                        },
                    )
                ]
            )
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            return server, port

        self.server, port = self.lt.run(start())
        self.addr = f"127.0.0.1:{port}"

    def calls(self, method: str, code: str) -> float:
        return self.metrics.registry.get_sample_value("skulens_grpc_calls_total", {"method": method, "code": code}) or 0

    def in_flight(self, method: str) -> float:
        return self.metrics.registry.get_sample_value("skulens_grpc_calls_in_flight", {"method": method}) or 0

    def eventually(self, method: str, code: str, n: float) -> None:
        end = time.monotonic() + 5
        while self.calls(method, code) != n or self.in_flight(method):
            assert time.monotonic() < end, (method, code, self.calls(method, code), self.in_flight(method))
            time.sleep(0.01)


@pytest.fixture(scope="module")
def toy() -> Iterator[Toy]:
    t = Toy()
    yield t
    t.lt.run(t.server.stop(0))


def test_message_name_and_parse_request() -> None:
    des = catalog_pb2.GetProductRequest.FromString
    assert message_name(des) == "GetProductRequest" and message_name(None) == "request message"
    assert parse_request(des, catalog_pb2.GetProductRequest(product_id="p").SerializeToString(), "x").product_id == "p"
    assert parse_request(None, b"raw", "x") == b"raw"
    with pytest.raises(BadRequest, match=r"^request message 3 is not a valid GetProductRequest: "):
        parse_request(des, b"\xff\xff\xff", "request message 3")


@pytest.mark.parametrize("size", ["small", "big"])
def test_cancelled_stream_cleans_up_inside_the_call_and_is_counted(
    toy: Toy, size: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The client cancels after 3 responses. "big": 100 kB responses, the client stops reading first, so the
    server is blocked in a write when the cancellation lands (the old wrapper then read the peer of a freed call:
    SIGSEGV). The servicer's finally runs while the call still exists (reading the context there is safe) and
    the call is counted once as CANCELLED, its log line carrying the peer read when the call started."""
    before = toy.calls("Endless", "CANCELLED")
    toy.cleaned.clear()
    caplog.set_level(logging.INFO, logger="skulens.calls")
    with grpc.insecure_channel(toy.addr) as ch:
        call = ch.unary_stream("/test.Toy/Endless")(b"hello" if size == "small" else BIG, timeout=30)
        for _ in range(3):
            next(call)
        if size == "big":
            time.sleep(0.5)  # flow control fills up: the server's next write blocks
        call.cancel()
        assert toy.cleaned.wait(5), "the servicer's finally did not run"
    toy.eventually("Endless", "CANCELLED", before + 1)
    assert isinstance(toy.cleanups[-1]["peer"], str)  # the call still exists (gRPC blanks a cancelled call's peer)
    done = [r for r in caplog.records if r.__dict__.get("fields", {}).get("method") == "Endless"]
    assert done[-1].__dict__["fields"]["code"] == "CANCELLED"
    assert done[-1].__dict__["fields"]["peer"].startswith("ipv4:127.0.0.1:")
    assert done[-1].levelno == logging.WARNING and done[-1].exc_info is None


def test_deadline_expiry_is_counted_as_deadline_exceeded(toy: Toy) -> None:
    before = toy.calls("Endless", "DEADLINE_EXCEEDED")
    with grpc.insecure_channel(toy.addr) as ch, pytest.raises(grpc.RpcError) as info:
        for _ in ch.unary_stream("/test.Toy/Endless")(b"tick", timeout=0.3):
            pass
    assert info.value.code() is C.DEADLINE_EXCEEDED
    toy.eventually("Endless", "DEADLINE_EXCEEDED", before + 1)


def test_unary_request_parsing(toy: Toy) -> None:
    good = catalog_pb2.GetCatalogStatsRequest().SerializeToString()
    with grpc.insecure_channel(toy.addr) as ch:
        assert ch.unary_unary("/test.Toy/Stats")(good, timeout=5) == b"ok"
        with pytest.raises(grpc.RpcError) as info:
            ch.unary_unary("/test.Toy/Stats")(b"\xff\xff\xff", timeout=5)
        assert info.value.code() is C.INVALID_ARGUMENT
        assert (info.value.details() or "").startswith("request is not a valid GetCatalogStatsRequest: ")
        with pytest.raises(grpc.RpcError) as info:
            ch.stream_unary("/test.Toy/Stats")(iter([good, good]), timeout=5)
        assert info.value.code() is C.INVALID_ARGUMENT and "exactly one request message" in (info.value.details() or "")
        with pytest.raises(grpc.RpcError) as info:
            ch.stream_unary("/test.Toy/Stats")(iter([]), timeout=5)
        assert info.value.code() is C.INVALID_ARGUMENT
        assert "ended without a complete GetCatalogStatsRequest" in (info.value.details() or "")
    toy.eventually("Stats", "INVALID_ARGUMENT", 3)


def test_unary_request_read_timeout(toy: Toy) -> None:
    release = threading.Event()

    def never() -> Iterator[bytes]:
        release.wait(10)
        yield from ()

    before = toy.calls("Stats", "DEADLINE_EXCEEDED")
    t0 = time.monotonic()
    with grpc.insecure_channel(toy.addr) as ch, pytest.raises(grpc.RpcError) as info:
        try:
            ch.stream_unary("/test.Toy/Stats")(never(), timeout=10)
        finally:
            release.set()
    assert info.value.code() is C.DEADLINE_EXCEEDED and 0.4 < time.monotonic() - t0 < 5
    toy.eventually("Stats", "DEADLINE_EXCEEDED", before + 1)


def test_streaming_request_parsing_names_the_bad_message(toy: Toy) -> None:
    msgs = [catalog_pb2.GetProductRequest(product_id=p).SerializeToString() for p in ("a", "b")]
    with grpc.insecure_channel(toy.addr) as ch:
        assert ch.stream_unary("/test.Toy/Collect")(iter(msgs), timeout=5) == b"a,b"
        with pytest.raises(grpc.RpcError) as info:
            ch.stream_unary("/test.Toy/Collect")(iter([*msgs, b"\xff\xff\xff"]), timeout=5)
    assert info.value.code() is C.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith("request message 2 is not a valid GetProductRequest: ")
    toy.eventually("Collect", "INVALID_ARGUMENT", 1)


def test_refusal_log_budget_writes_a_few_lines_a_second_and_counts_the_rest() -> None:
    from skulens.service.calllog import RefusalLogBudget

    now = [100.0]
    budget = RefusalLogBudget(2.0, clock=lambda: now[0])
    assert [budget.take() for _ in range(5)] == [0, 0, None, None, None]  # a second's worth, then nothing
    now[0] += 0.5  # one token back
    assert budget.take() == 3 and budget.take() is None  # the line written says 3 were left out before it
    now[0] += 10.0  # the bucket holds one second's worth at most
    assert [budget.take() for _ in range(3)] == [1, 0, None]
    unlimited = RefusalLogBudget(0.0, clock=lambda: now[0])
    assert [unlimited.take() for _ in range(100)] == [0] * 100
