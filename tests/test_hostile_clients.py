"""Hostile and vanishing clients against a real server (real model, real gRPC clients, no mocks of grpc).

- Streams cancelled at random points, unary calls cancelled mid-flight, client processes SIGKILLed mid-stream:
  the server stays up (it used to segfault reading the peer of a finished call) and counts every call.
- Garbage on the wire: bodies that are not protobuf, two messages on a unary method, half-sent requests (raw
  HTTP/2 frames written by hand, no h2 library needed), idle connections.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import grpc
import pytest
from service_harness import SHARED, LoopThread, RunningServer, make_settings, pattern_image

from skulens.service.app import connection_options
from skulens.service.settings import Settings
from skulens.v1 import catalog_pb2, catalog_pb2_grpc, recognition_pb2, recognition_pb2_grpc

C = grpc.StatusCode
REPO = Path(__file__).resolve().parents[1]
REC = "/skulens.v1.RecognitionService/"
CAT = "/skulens.v1.CatalogService/"


class GateEngine:
    """Wraps the shared engine: `embed_images` waits while the gate is closed (keeps calls mid-flight)."""

    def __init__(self, inner: Any, lt: LoopThread) -> None:
        self._inner, self._lt = inner, lt
        self.event = asyncio.Event()
        self.event.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def embed_images(self, *args: Any, **kwargs: Any) -> Any:
        await self.event.wait()
        return await self._inner.embed_images(*args, **kwargs)

    def close_gate(self) -> None:
        self._lt.loop.call_soon_threadsafe(self.event.clear)

    def open_gate(self) -> None:
        self._lt.loop.call_soon_threadsafe(self.event.set)


def _settings(data: Path, **overrides: Any) -> Settings:
    known = {f.name for f in fields(Settings)}
    generous = {"max_concurrent_calls": 256, "queue_budget_ms": 600_000.0}  # admission must not shed the test's calls
    for name, value in generous.items():
        if name in known:
            overrides.setdefault(name, value)
    return make_settings(data, **overrides)


@pytest.fixture(scope="module")
def gate_server(clip_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    lt = SHARED.loop_thread()
    engine = GateEngine(SHARED.engine(clip_model_dir), lt)
    srv = RunningServer(
        _settings(tmp_path_factory.mktemp("hostile") / "data", request_read_timeout_seconds=1.5), engine
    )
    srv.gate = engine  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def calls(srv: RunningServer, method: str, code: str) -> float:
    return srv.registry.get_sample_value("skulens_grpc_calls_total", {"method": method, "code": code}) or 0.0


def in_flight(srv: RunningServer, method: str) -> float:
    return srv.registry.get_sample_value("skulens_grpc_calls_in_flight", {"method": method}) or 0.0


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def codes_of(srv: RunningServer, method: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in srv.registry.collect():
        for s in metric.samples:
            if s.name == "skulens_grpc_calls_total" and s.labels.get("method") == method:
                out[s.labels["code"]] = s.value
    return out


CHILD = textwrap.dedent(
    """
    import sys, threading
    import grpc
    from skulens.v1 import recognition_pb2 as pb, recognition_pb2_grpc as rpc

    addr, image = sys.argv[1], open(sys.argv[2], "rb").read()
    hold = threading.Event()

    def requests():
        yield pb.RecognizeStreamRequest(images=[pb.ImageInput(id=f"k{i}", content=image) for i in range(16)])
        hold.wait()  # never half-close: the server cannot finish the call before this process dies

    with grpc.insecure_channel(addr) as ch:
        for r in rpc.RecognitionServiceStub(ch).RecognizeStream(requests(), timeout=120):
            print("got", r.result.id, flush=True)
    """
)


def _readline(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise AssertionError(f"child {proc.pid} printed nothing in {timeout} s")
    return proc.stdout.readline()


@pytest.mark.timeout(120)
def test_cancelled_and_killed_clients_leave_the_server_up_and_counted(
    gate_server: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    srv, gate = gate_server, gate_server.gate  # type: ignore[attr-defined]
    rng = random.Random(20240610)
    n_stream, n_slow, n_enrol, n_unary, n_kill = 24, 4, 10, 10, 6
    image = pattern_image(5)
    (tmp_path / "img.png").write_bytes(image)
    (tmp_path / "child.py").write_text(CHILD)
    with srv.client() as c:
        c.upsert_product("hostile-p")
    before = {m: codes_of(srv, m) for m in ("Recognize", "RecognizeStream", "AddReferenceImages")}
    hold = threading.Event()  # released at the end: the request iterators block on it (never half-close)
    channels = [grpc.insecure_channel(srv.addr) for _ in range(4)]
    rec = [recognition_pb2_grpc.RecognitionServiceStub(ch) for ch in channels]
    cat = [catalog_pb2_grpc.CatalogServiceStub(ch) for ch in channels]
    errors: list[str] = []
    children: list[subprocess.Popen[bytes]] = []
    t_start = time.monotonic()
    caplog.set_level(logging.WARNING)
    gate.close_gate()
    try:
        # 1. open every call while the model is held: all of them are then in flight on the server
        def stream_requests(n: int, id_chars: int = 4) -> Iterator[recognition_pb2.RecognizeStreamRequest]:
            # many images at once: when the client cancels, responses are being written (the old crash needed
            # the cancellation to land while the server awaited a write)
            images = [recognition_pb2.ImageInput(id=f"s{i:03d}".ljust(id_chars, "x"), content=image) for i in range(n)]
            yield recognition_pb2.RecognizeStreamRequest(images=images)
            hold.wait()

        def enrol_requests(n: int) -> Iterator[catalog_pb2.AddReferenceImagesRequest]:
            for i in range(n):
                yield catalog_pb2.AddReferenceImagesRequest(
                    product_id="hostile-p", content=pattern_image(100 + i), source=f"e{i}"
                )
            hold.wait()

        streams = [rec[i % 4].RecognizeStream(stream_requests(16), timeout=90) for i in range(n_stream)]
        # slow readers: a tiny flow-control window and no reading after the first response, so the server is
        # surely blocked in a write when they cancel (this made the old server segfault every time)
        slow_channel = grpc.insecure_channel(
            srv.addr, options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
        )
        channels.append(slow_channel)
        slow_stub = recognition_pb2_grpc.RecognitionServiceStub(slow_channel)
        slow = [slow_stub.RecognizeStream(stream_requests(16, id_chars=120), timeout=90) for _ in range(n_slow)]
        wanted = [rng.choice([0, 1, 2, 3]) for _ in range(n_stream)]  # responses to read before cancelling
        enrols = [
            cat[i % 4].AddReferenceImages.future(enrol_requests(rng.randint(1, 3)), timeout=90) for i in range(n_enrol)
        ]
        unary = [
            rec[i % 4].Recognize.future(
                recognition_pb2.RecognizeRequest(images=[recognition_pb2.ImageInput(id="u", content=image)]),
                timeout=90,
            )
            for i in range(n_unary)
        ]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "proto"), str(REPO)])}
        children += [
            subprocess.Popen(
                [sys.executable, str(tmp_path / "child.py"), srv.addr, str(tmp_path / "img.png")],
                stdout=subprocess.PIPE,
                env=env,
            )
            for _ in range(n_kill)
        ]
        wait_for(
            lambda: (
                (in_flight(srv, "RecognizeStream"), in_flight(srv, "AddReferenceImages"), in_flight(srv, "Recognize"))
                == (n_stream + n_slow + n_kill, n_enrol, n_unary)
            ),
            40,
            "every call to be in flight on the server",
        )

        # 2. while the model is held: cancel the unary calls mid-flight, some streams before any response,
        #    and kill half of the children mid-stream
        def consume(i: int) -> None:
            got = 0
            try:
                for _ in streams[i]:
                    got += 1
                    if got >= wanted[i]:
                        streams[i].cancel()
            except grpc.RpcError as exc:
                if exc.code() is not C.CANCELLED:
                    errors.append(f"stream {i}: {exc.code()} {exc.details()}")

        for i in rng.sample(range(n_unary), n_unary):
            time.sleep(rng.random() * 0.02)
            unary[i].cancel()
        for i, w in enumerate(wanted):
            if w == 0:
                time.sleep(rng.random() * 0.02)
                streams[i].cancel()
        for proc in children[: n_kill // 2]:
            proc.send_signal(signal.SIGKILL)
        readers = [threading.Thread(target=consume, args=(i,), daemon=True) for i in range(n_stream)]
        for t in readers:
            t.start()

        # 3. release the model: streams cancel after their k-th response, enrolments at random moments, the
        #    other children are killed right after their first response
        gate.open_gate()
        for proc in children[n_kill // 2 :]:
            assert _readline(proc, 30).startswith(b"got")
            proc.send_signal(signal.SIGKILL)
        for i in rng.sample(range(n_enrol), n_enrol):
            time.sleep(rng.random() * 0.1)
            enrols[i].cancel()
        for call in slow:
            next(call)  # one response, then the client stops reading
        for t in readers:
            t.join(30)
        for proc in children:
            proc.wait(10)
        time.sleep(1.0)  # the slow streams' 16 results are ready and their writes blocked by flow control
        for call in slow:
            call.cancel()
        wait_for(
            lambda: all(in_flight(srv, m) == 0 for m in ("Recognize", "RecognizeStream", "AddReferenceImages")),
            20,
            "in-flight gauges back to 0",
        )
    finally:
        gate.open_gate()
        hold.set()
        for proc in children:
            if proc.poll() is None:
                proc.kill()
        for ch in channels:
            ch.close()
    assert not errors, errors

    # 4. every call the server started is counted, as CANCELLED, and nothing else
    def delta(method: str) -> dict[str, float]:
        now = codes_of(srv, method)
        return {k: v - before[method].get(k, 0.0) for k, v in now.items() if v - before[method].get(k, 0.0)}

    assert delta("Recognize") == {"CANCELLED": n_unary}
    assert delta("RecognizeStream") == {"CANCELLED": n_stream + n_slow + n_kill}
    assert delta("AddReferenceImages") == {"CANCELLED": n_enrol}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]

    # 5. the server is alive and answers normally, once the cancelled calls' queued images are dropped (the
    #    micro-batcher drops them as it reaches them: a fraction of a second)
    engine = srv.app.runtime.engine
    wait_for(lambda: engine is not None and engine.queue_depth == 0, 20, "the image queue to drain")
    with srv.client(timeout=30) as c:
        assert c.recognize([recognition_pb2.ImageInput(id="after", content=image)]).results[0].status.code == 0
        got = list(
            c.recognize_stream(
                iter(
                    [
                        recognition_pb2.RecognizeStreamRequest(
                            images=[
                                recognition_pb2.ImageInput(id="a", content=image),
                                recognition_pb2.ImageInput(id="b", content=image),
                            ]
                        )
                    ]
                )
            )
        )
        assert sorted(r.id for r in got) == ["a", "b"] and all(r.status.code == 0 for r in got)
    assert calls(srv, "Recognize", "OK") == before["Recognize"].get("OK", 0.0) + 1
    assert calls(srv, "RecognizeStream", "OK") == before["RecognizeStream"].get("OK", 0.0) + 1
    assert time.monotonic() - t_start < 60


# ---------------------------------------------------------------------------------------------- garbage
GARBAGE = b"\xff\xff\xff"


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        (REC + "Recognize", "unary"),
        (CAT + "GetCatalogStats", "unary"),
        (REC + "RecognizeStream", "stream_stream"),
        (CAT + "AddReferenceImages", "stream_unary"),
    ],
)
def test_garbage_body_is_invalid_argument_counted_and_logged_without_traceback(
    gate_server: RunningServer, path: str, shape: str, caplog: pytest.LogCaptureFixture
) -> None:
    method = path.rsplit("/", 1)[-1]
    before = calls(gate_server, method, "INVALID_ARGUMENT")
    caplog.set_level(logging.INFO)
    with grpc.insecure_channel(gate_server.addr) as ch, pytest.raises(grpc.RpcError) as info:
        if shape == "unary":
            ch.unary_unary(path)(GARBAGE, timeout=10)
        elif shape == "stream_stream":
            list(ch.stream_stream(path)(iter([GARBAGE]), timeout=10))
        else:  # the bad message is the second one: the error names its index
            good = catalog_pb2.AddReferenceImagesRequest(product_id="nope").SerializeToString()
            ch.stream_unary(path)(iter([good, GARBAGE]), timeout=10)
    err = info.value
    assert err.code() is C.INVALID_ARGUMENT
    name = {"Recognize": "RecognizeRequest", "GetCatalogStats": "GetCatalogStatsRequest"}.get(method)
    if name:
        assert (err.details() or "").startswith(f"request is not a valid {name}: ")
    elif shape == "stream_stream":
        assert "request message 0 is not a valid RecognizeStreamRequest" in (err.details() or "")
    else:
        assert "request message 1 is not a valid AddReferenceImagesRequest" in (err.details() or "")
    assert "x-request-id" in dict(err.trailing_metadata() or ())

    def logged() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "skulens.calls" and r.__dict__["fields"]["method"] == method]

    # the status reaches the client a moment before the server's bookkeeping runs
    wait_for(lambda: bool(logged()), 5, "the call's log line")
    assert calls(gate_server, method, "INVALID_ARGUMENT") == before + 1
    lines = logged()
    assert lines and lines[-1].levelno == logging.WARNING and lines[-1].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_second_message_on_a_unary_method_is_refused(gate_server: RunningServer) -> None:
    before = calls(gate_server, "GetCatalogStats", "INVALID_ARGUMENT")
    with grpc.insecure_channel(gate_server.addr) as ch, pytest.raises(grpc.RpcError) as info:
        ch.stream_unary(CAT + "GetCatalogStats")(iter([b"", b""]), timeout=10)
    assert info.value.code() is C.INVALID_ARGUMENT
    assert "GetCatalogStats takes exactly one request message" in (info.value.details() or "")
    wait_for(lambda: calls(gate_server, "GetCatalogStats", "INVALID_ARGUMENT") == before + 1, 5, "the call counted")


def test_request_that_never_arrives_times_out(gate_server: RunningServer) -> None:
    """A unary call whose body never comes (the client keeps its request stream open) is ended after the read
    timeout (1.5 s here) with DEADLINE_EXCEEDED instead of holding its stream for ever."""
    release = threading.Event()

    def never() -> Iterator[bytes]:
        release.wait(30)
        yield from ()

    before = calls(gate_server, "GetCatalogStats", "DEADLINE_EXCEEDED")
    t0 = time.monotonic()
    with grpc.insecure_channel(gate_server.addr) as ch:
        try:
            with pytest.raises(grpc.RpcError) as info:
                ch.stream_unary(CAT + "GetCatalogStats")(never(), timeout=20)
        finally:
            release.set()
    assert info.value.code() is C.DEADLINE_EXCEEDED
    assert "did not arrive within 1.5 s" in (info.value.details() or "")
    assert 1.4 <= time.monotonic() - t0 < 10
    wait_for(lambda: calls(gate_server, "GetCatalogStats", "DEADLINE_EXCEEDED") == before + 1, 5, "the call counted")
    assert in_flight(gate_server, "GetCatalogStats") == 0



@pytest.fixture(scope="module")
def idle_server(clip_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server whose streams may stay idle 1 s between messages."""
    srv = RunningServer(
        _settings(tmp_path_factory.mktemp("idle") / "data", stream_idle_seconds=1.0), SHARED.engine(clip_model_dir)
    )
    yield srv
    srv.stop()


@pytest.mark.parametrize("method", ["RecognizeStream", "AddReferenceImages"])
def test_an_idle_stream_is_ended_and_frees_its_slot(idle_server: RunningServer, method: str) -> None:
    """A streaming-request call whose client sends one message, then nothing while keeping the stream open, is
    ended after the stream idle limit (1.0 s here) with DEADLINE_EXCEEDED naming the limit; its call slot is free."""
    release = threading.Event()
    image = recognition_pb2.ImageInput(id="i", content=pattern_image(3))
    first: bytes = (
        recognition_pb2.RecognizeStreamRequest(images=[image]).SerializeToString()
        if method == "RecognizeStream"
        else catalog_pb2.AddReferenceImagesRequest(product_id="nobody", content=pattern_image(3)).SerializeToString()
    )

    def one_then_silence() -> Iterator[bytes]:
        yield first
        release.wait(30)

    before = calls(idle_server, method, "DEADLINE_EXCEEDED")
    t0 = time.monotonic()
    prefix = REC if method == "RecognizeStream" else CAT
    with grpc.insecure_channel(idle_server.addr) as ch:
        try:
            with pytest.raises(grpc.RpcError) as info:
                if method == "RecognizeStream":
                    list(ch.stream_stream(prefix + method)(one_then_silence(), timeout=20))
                else:
                    ch.stream_unary(prefix + method)(one_then_silence(), timeout=20)
        finally:
            release.set()
    assert info.value.code() is C.DEADLINE_EXCEEDED
    assert "no request message for 1 s" in (info.value.details() or "")
    assert 0.9 <= time.monotonic() - t0 < 10
    wait_for(lambda: calls(idle_server, method, "DEADLINE_EXCEEDED") == before + 1, 5, "the call counted")
    assert in_flight(idle_server, method) == 0
    assert idle_server.app.runtime.admission.stats().calls == 0


# --------------------------------------------------------------------------- raw HTTP/2 (frames by hand)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def h2_headers(path: str, authority: str) -> bytes:
    """HPACK block of literal, never-indexed, non-Huffman headers (short names and values only)."""
    out = b""
    for name, value in (
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ):
        n, v = name.encode(), value.encode()
        out += b"\x10" + bytes([len(n)]) + n + bytes([len(v)]) + v
    return out


class RawH2:
    """A TCP connection that speaks just enough HTTP/2 to start a gRPC call and watch the server's frames."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(PREFACE + h2_frame(SETTINGS, 0, 0))
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frames(self, timeout: float) -> Iterator[tuple[int, int, int, bytes]]:
        """Frames from the server until `timeout` (kind "closed" = -1 when the server closes the socket)."""
        end = time.monotonic() + timeout
        self.sock.settimeout(0.1)
        while time.monotonic() < end:
            while len(self.buf) >= 9 and len(self.buf) >= 9 + int.from_bytes(self.buf[:3], "big"):
                n = int.from_bytes(self.buf[:3], "big")
                kind, flags = self.buf[3], self.buf[4]
                stream = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
                payload, self.buf = self.buf[9 : 9 + n], self.buf[9 + n :]
                if kind == SETTINGS and not flags & ACK:
                    self.send(h2_frame(SETTINGS, ACK, 0))
                yield kind, flags, stream, payload
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                yield -1, 0, 0, b""
                return
            self.buf += chunk

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("end_stream", [True, False], ids=["ends-mid-message", "stalls-mid-message"])
def test_half_sent_unary_request_is_answered(gate_server: RunningServer, end_stream: bool) -> None:
    """The 5-byte gRPC prefix announces 100 bytes, 3 arrive. With END_STREAM the server answers at once
    (INVALID_ARGUMENT: no complete message); without, after the read timeout (DEADLINE_EXCEEDED). Either way
    the call ends (trailers with END_STREAM on the stream) and is counted."""
    code = "INVALID_ARGUMENT" if end_stream else "DEADLINE_EXCEEDED"
    before = calls(gate_server, "GetCatalogStats", code)
    h2 = RawH2(gate_server.port)
    t0 = time.monotonic()
    try:
        h2.send(h2_frame(HEADERS, END_HEADERS, 1, h2_headers(CAT + "GetCatalogStats", gate_server.addr)))
        h2.send(h2_frame(DATA, END_STREAM if end_stream else 0, 1, b"\x00" + (100).to_bytes(4, "big") + b"abc"))
        trailers = None
        for kind, flags, stream, payload in h2.frames(10):
            if stream == 1 and kind == HEADERS and flags & END_STREAM:
                trailers = payload
                break
            assert kind not in (-1, GOAWAY), "connection closed instead of answering the call"
    finally:
        h2.close()
    elapsed = time.monotonic() - t0
    assert trailers is not None, "the server never answered the half-sent call"
    status = re.search(rb"grpc-status\x01(\d)", trailers)  # literal, not Huffman-coded (gRPC core's encoder)
    if status is not None:
        assert int(status.group(1)) == getattr(C, code).value[0]
    assert elapsed < (2 if end_stream else 8)
    wait_for(lambda: calls(gate_server, "GetCatalogStats", code) == before + 1, 5, f"{code} counted")


def test_idle_connection_is_closed(clip_model_dir: Path, tmp_path: Path) -> None:
    """`max_connection_idle_seconds`: a connection without calls gets GOAWAY and is closed."""
    srv = RunningServer(_settings(tmp_path / "data", max_connection_idle_seconds=1.0), SHARED.engine(clip_model_dir))
    try:
        h2 = RawH2(srv.port)
        t0 = time.monotonic()
        try:
            kinds = []
            for kind, *_ in h2.frames(15):
                kinds.append(kind)
                if kind in (GOAWAY, -1):
                    break
        finally:
            h2.close()
        assert GOAWAY in kinds and time.monotonic() - t0 < 15
    finally:
        srv.stop()


def test_connection_options_follow_settings() -> None:
    opts = dict(
        connection_options(
            Settings(keepalive_time_seconds=30, keepalive_timeout_seconds=5, max_connection_idle_seconds=0)
        )
    )
    assert opts["grpc.keepalive_time_ms"] == 30_000 and opts["grpc.keepalive_timeout_ms"] == 5_000
    assert opts["grpc.http2.ping_timeout_ms"] == 5_000
    assert opts["grpc.http2.max_pings_without_data"] == 0
    assert "grpc.max_connection_idle_ms" not in opts  # 0 = off
    assert dict(connection_options(Settings()))["grpc.max_connection_idle_ms"] == 300_000


def test_a_peer_that_stops_answering_pings_is_disconnected_and_its_call_freed(
    clip_model_dir: Path, tmp_path: Path
) -> None:
    """A black-holed peer (TCP still open, nothing answered at the HTTP/2 level: no PING ACK) holding a streaming call
    open: the keepalive ping goes unanswered, the server closes the connection after `keepalive_timeout_seconds`,
    and the call's slot is free again — long before the stream idle limit would have ended the call."""
    srv = RunningServer(
        _settings(tmp_path / "data", keepalive_time_seconds=1.0, keepalive_timeout_seconds=1.0,
                  stream_idle_seconds=60.0, max_connection_idle_seconds=0.0),
        SHARED.engine(clip_model_dir),
    )
    try:
        h2 = RawH2(srv.port)
        t0 = time.monotonic()
        kinds: list[int] = []
        try:
            h2.send(h2_frame(HEADERS, END_HEADERS, 1, h2_headers(REC + "RecognizeStream", srv.addr)))
            wait_for(lambda: in_flight(srv, "RecognizeStream") == 1, 10, "the stream to be in flight")
            for kind, *_ in h2.frames(20):  # never answers a PING (RawH2 only acknowledges SETTINGS)
                kinds.append(kind)
                if kind in (GOAWAY, -1):
                    break
        finally:
            h2.close()
        elapsed = time.monotonic() - t0
        assert PING in kinds, kinds  # the server probed the peer ...
        assert kinds[-1] in (GOAWAY, -1) and elapsed < 10, (kinds, elapsed)  # ... and hung up on it
        wait_for(lambda: in_flight(srv, "RecognizeStream") == 0, 10, "the call's slot to be free")
    finally:
        srv.stop()
