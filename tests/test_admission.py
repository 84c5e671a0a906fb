"""admission: refusals before any decoding (books, budgets, deadlines), alone and through a real server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry
from service_harness import SHARED, GatedEngine, RunningServer, make_settings, pattern_image

from skulens.client.client import image_input
from skulens.inference.cost_model import CostModel
from skulens.service.admission import Admission, Shed
from skulens.service.admission_options import AdmissionOptions
from skulens.service.errors_grpc import RETRY_PUSHBACK_KEY, TooMany
from skulens.v1 import catalog_pb2, recognition_pb2

C = grpc.StatusCode


def _costs() -> CostModel:
    return CostModel(infer_s_per_item=0.1, decode_s_per_mpix=0.2, decode_workers=1)


# ------------------------------------------------------------------------------------------------ the books
def test_backlog_budget_sheds_with_retry_hint_and_release_restores() -> None:
    ad = Admission(AdmissionOptions(queue_budget_s=0.5))
    costs = _costs()
    t1 = ad.admit(costs, items=4)  # 0.4 s of work, nothing ahead
    t2 = ad.admit(costs, items=4)  # expected wait min(backlog 0.4, 1 request × 0.4) <= 0.5: admitted
    assert ad.backlog_s == pytest.approx(0.8)
    with pytest.raises(Shed) as info:
        ad.admit(costs, items=3)  # expected wait min(0.8, 2 requests × 0.3 s) = 0.6 s > 0.5 s
    assert info.value.retry_after_s == pytest.approx(0.6 - 0.5 + 0.05)
    assert "expected wait 600 ms, the budget is 500 ms" in info.value.message
    small = ad.admit(costs, items=1)  # min(0.8, 2 × 0.1) = 0.2 s: a small request still gets in
    ad.release(t1)
    ad.release(t1)  # idempotent
    assert ad.backlog_s == pytest.approx(0.5)
    ad.admit(costs, items=3)  # min(0.5, 2 × 0.3) = 0.5 s
    ad.release(t2)
    ad.release(small)
    assert ad.stats().refused == {"queue": 1}


def test_one_costly_request_does_not_shut_small_ones_out() -> None:
    ad = Admission(AdmissionOptions(queue_budget_s=0.5))
    costs = _costs()
    ad.admit(costs, items=1, pixels=100_000_000)  # 0.1 + 100 MP × 0.2 s = 20.1 s of decoding on the books
    assert ad.backlog_s == pytest.approx(20.1)
    ad.admit(costs, items=1)  # one turn behind it: 0.1 s
    ad.admit(costs, items=2)  # two turns of 0.2 s
    with pytest.raises(Shed):
        ad.admit(costs, items=2)  # three turns of 0.2 s > 0.5 s


def test_calls_and_bytes_caps() -> None:
    ad = Admission(AdmissionOptions(max_calls=2, max_inflight_bytes=1000, queue_budget_s=100))
    costs = _costs()
    big = ad.admit(costs, items=1, nbytes=5000)  # a lone request always fits, whatever its size
    with pytest.raises(Shed, match="bytes in flight"):
        ad.admit(costs, items=1, nbytes=10)
    ad.release(big)
    a = ad.admit(costs, items=1, nbytes=10)
    ad.open_call()
    with pytest.raises(Shed, match="2 calls in progress, the limit is 2"):
        ad.admit(costs, items=1)
    ad.admit(costs, items=1, new_call=False)  # work of a call already counted (a stream's image)
    ad.release(a)
    assert ad.stats().calls == 1
    assert ad.stats().refused == {"bytes": 1, "calls": 1}


def test_pixel_budget_names_the_field_and_peeks_only_after_cheap_checks() -> None:
    ad = Admission(AdmissionOptions(max_request_pixels=1_000_000, max_calls=1, queue_budget_s=100))
    costs = _costs()
    with pytest.raises(TooMany) as info:
        ad.admit(costs, items=2, pixels=2_000_000, field="images")
    assert info.value.field == "images" and "limit is 1000000 pixels" in info.value.message
    held = ad.admit(costs, items=1)
    peeked: list[int] = []

    def pixels() -> int:
        peeked.append(1)
        return 10

    with pytest.raises(Shed):
        ad.admit(costs, items=1, pixels=pixels)
    assert peeked == []  # refused on the call cap before any header was read
    ad.release(held)
    ad.admit(costs, items=1, pixels=pixels)
    assert peeked == [1]


def test_deadline_that_cannot_be_met_is_shed() -> None:
    ad = Admission(AdmissionOptions(queue_budget_s=100))
    costs = _costs()
    ad.admit(costs, items=10)  # 1 s of work ahead
    with pytest.raises(Shed, match="deadline leaves"):  # wait min(1, 0.3) + own 0.3 > 0.9 × 0.5 s
        ad.admit(costs, items=3, deadline=time.monotonic() + 0.5)
    ad.admit(costs, items=3, deadline=time.monotonic() + 5.0)
    assert ad.stats().refused == {"deadline": 1}


async def test_admit_waiting_blocks_until_room_then_gives_up_at_deadline() -> None:
    ad = Admission(AdmissionOptions(queue_budget_s=0.05))
    costs = _costs()
    held = ad.admit(costs, items=5)
    waiter = asyncio.ensure_future(ad.admit_waiting(costs, items=1))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    ad.release(held)
    ticket = await asyncio.wait_for(waiter, 2)
    assert ticket.cost_s == pytest.approx(0.1)
    with pytest.raises(Shed):
        await ad.admit_waiting(costs, items=1, deadline=time.monotonic() + 0.1)


def test_precheck_refuses_what_even_the_least_work_would_not_fit_and_books_nothing() -> None:
    costs = _costs()  # one model input: 0.1 s
    ad = Admission(AdmissionOptions(max_calls=2, queue_budget_s=0.15, deadline_headroom=0.9))
    assert costs.estimate(1, 0) == pytest.approx(0.1)
    ad.precheck(costs, deadline=time.monotonic() + 10)  # idle: passes
    assert ad.stats() == Admission(AdmissionOptions()).stats()  # and books nothing
    t1 = ad.admit(costs, items=2)
    t2 = ad.admit(costs, items=1)
    with pytest.raises(Shed, match="2 calls in progress"):
        ad.precheck(costs)
    ad.release(t2)
    ad.precheck(costs)  # one request on the books: at most one turn (0.1 s) behind it, within the 0.15 s budget
    with pytest.raises(Shed, match="deadline leaves"):
        ad.precheck(costs, deadline=time.monotonic() + 0.2)  # 0.1 s wait + its own 0.1 s > 0.9 × 0.2 s
    t3 = ad.admit(costs, items=1, new_call=False)  # e.g. a stream's image: work, not a new call
    with pytest.raises(Shed, match="expected wait") as info:
        ad.precheck(costs)  # two requests on the books: two turns, 0.2 s
    assert info.value.retry_after_s and info.value.retry_after_s >= 0.05
    assert ad.stats().refused == {"calls": 1, "deadline": 1, "queue": 1}
    ad.release(t1)
    ad.release(t3)


# ------------------------------------------------------------------------------------------------ a server
@pytest.fixture(scope="module")
def gated(clip_model_dir: Path) -> GatedEngine:
    return GatedEngine(SHARED.engine(clip_model_dir), SHARED.loop_thread())


def _server(gated: GatedEngine, tmp: Path, **limits: Any) -> RunningServer:
    return RunningServer(make_settings(tmp / "data", **limits), gated, registry=CollectorRegistry())


@pytest.fixture()
def held(gated: GatedEngine) -> Iterator[GatedEngine]:
    """The gate closed: admitted calls wait inside the engine until the test opens it."""
    gated.close_gate()
    yield gated
    gated.open()


def _hold_one_call(srv: RunningServer, gated: GatedEngine, n_images: int = 8) -> Any:
    """Start a Recognize of `n_images` that is admitted and then held at the gate; returns its future."""
    c = srv.client()
    req = recognition_pb2.RecognizeRequest(images=[image_input(pattern_image(i)) for i in range(n_images)])
    fut = c.recognition.Recognize.future(req, timeout=60)
    assert gated.entered.wait(30), "the first call never reached the engine"
    return fut


def _refused(srv: RunningServer, **kw: Any) -> tuple[grpc.RpcError, float]:
    with srv.client() as c:
        t0 = time.perf_counter()
        try:
            c.recognize([image_input(pattern_image(99))], **kw)
        except grpc.RpcError as exc:
            return exc, time.perf_counter() - t0
    raise AssertionError("the call was admitted")


def _refused_count(srv: RunningServer, reason: str) -> float:
    return srv.registry.get_sample_value("skulens_admission_refused_total", {"reason": reason}) or 0.0


def test_server_sheds_at_once_with_pushback_when_the_queue_budget_is_spent(
    held: GatedEngine, tmp_path: Path
) -> None:
    srv = _server(held, tmp_path, queue_budget_ms=1.0)
    try:
        first = _hold_one_call(srv, held)
        exc, seconds = _refused(srv)
        assert exc.code() == C.RESOURCE_EXHAUSTED
        assert "budget is 1 ms" in (exc.details() or "")
        trailers = dict(exc.trailing_metadata() or ())
        assert int(trailers[RETRY_PUSHBACK_KEY]) > 0
        assert seconds < 1.0, seconds  # refused before anything was decoded (the goal is 50 ms at p99)
        assert _refused_count(srv, "queue") == 1
        held.open()
        assert len(first.result(60).results) == 8
        with srv.client() as c:  # the books are clear again
            assert c.recognize([image_input(pattern_image(1))]).results[0].status.code == 0
        assert srv.registry.get_sample_value("skulens_admission_slowdown") == 1.0  # nothing was queued behind work
    finally:
        held.open()
        srv.stop()


def test_an_overloaded_server_refuses_a_call_before_reading_its_body(held: GatedEngine, tmp_path: Path) -> None:
    """A Recognize whose body is not even a valid message: INVALID_ARGUMENT when the server has room, but
    RESOURCE_EXHAUSTED (with its retry hint) when it is overloaded, because the body is never read then."""
    srv = _server(held, tmp_path, queue_budget_ms=1.0)
    garbage = b"\xff\xff\xff\xff not a RecognizeRequest"
    try:
        with srv.client() as c:
            raw = c.channel.unary_unary("/skulens.v1.RecognitionService/Recognize")
            held.open()
            with pytest.raises(grpc.RpcError) as room:
                raw(garbage, timeout=30)
            assert room.value.code() == C.INVALID_ARGUMENT
            held.close_gate()
            first = _hold_one_call(srv, held)
            with pytest.raises(grpc.RpcError) as busy:
                raw(garbage, timeout=30)
            assert busy.value.code() == C.RESOURCE_EXHAUSTED, busy.value
            assert int(dict(busy.value.trailing_metadata() or ())[RETRY_PUSHBACK_KEY]) > 0
            held.open()
            first.result(60)
    finally:
        held.open()
        srv.stop()


def test_server_sheds_a_call_whose_deadline_cannot_be_met(held: GatedEngine, tmp_path: Path) -> None:
    srv = _server(held, tmp_path, queue_budget_ms=600_000.0)
    try:
        first = _hold_one_call(srv, held)
        exc, _ = _refused(srv, timeout=0.05)
        assert exc.code() == C.RESOURCE_EXHAUSTED, exc
        assert "deadline leaves" in (exc.details() or "")
        assert _refused_count(srv, "deadline") == 1
        held.open()
        first.result(60)
    finally:
        held.open()
        srv.stop()


def test_server_caps_concurrent_calls_and_bytes(held: GatedEngine, tmp_path: Path) -> None:
    srv = _server(held, tmp_path, queue_budget_ms=600_000.0, max_concurrent_calls=1)
    try:
        first = _hold_one_call(srv, held)
        exc, _ = _refused(srv)
        assert exc.code() == C.RESOURCE_EXHAUSTED and "calls in progress" in (exc.details() or "")
        held.open()
        first.result(60)
    finally:
        held.open()
        srv.stop()
    held.close_gate()
    srv = _server(held, tmp_path / "b", queue_budget_ms=600_000.0, max_inflight_mb=0.001)
    try:
        first = _hold_one_call(srv, held)
        exc, _ = _refused(srv)
        assert exc.code() == C.RESOURCE_EXHAUSTED and "bytes in flight" in (exc.details() or "")
        held.open()
        first.result(60)
    finally:
        held.open()
        srv.stop()


def test_server_refuses_a_request_over_its_pixel_budget(gated: GatedEngine, tmp_path: Path) -> None:
    srv = _server(gated, tmp_path, max_request_megapixels=0.01)  # 10,000 pixels; one 96×96 image is 9,216
    try:
        with srv.client() as c:
            assert c.recognize([image_input(pattern_image(1))]).results[0].status.code == 0
            try:
                c.recognize([image_input(pattern_image(1)), image_input(pattern_image(2))])
            except grpc.RpcError as exc:
                assert exc.code() == C.RESOURCE_EXHAUSTED
                assert "18432 pixels in total; the limit is 10000" in (exc.details() or "")
                assert dict(exc.trailing_metadata() or ()).get("skulens-error-field") == "images"
            else:
                raise AssertionError("admitted")
        assert _refused_count(srv, "pixels") == 1
    finally:
        srv.stop()


def test_stream_images_are_refused_one_by_one_and_the_stream_goes_on(held: GatedEngine, tmp_path: Path) -> None:
    srv = _server(held, tmp_path, queue_budget_ms=1.0)
    try:
        first = _hold_one_call(srv, held)
        msgs = [recognition_pb2.RecognizeStreamRequest(images=[image_input(pattern_image(i), id=f"s{i}")])
                for i in range(3)]
        with srv.client() as c:
            results = list(c.recognize_stream(msgs, timeout=30))
        assert sorted(r.id for r in results) == ["s0", "s1", "s2"]
        assert {r.status.code for r in results} == {C.RESOURCE_EXHAUSTED.value[0]}
        held.open()
        first.result(60)
        with srv.client() as c:  # the books are clear again (one image: a 1 ms budget admits one at a time)
            results = list(c.recognize_stream(msgs[:1], timeout=30))
        assert [r.status.code for r in results] == [0]
    finally:
        held.open()
        srv.stop()


def test_enrolment_waits_for_room_instead_of_failing(held: GatedEngine, tmp_path: Path) -> None:
    srv = _server(held, tmp_path, queue_budget_ms=1.0)
    try:
        first = _hold_one_call(srv, held)
        with srv.client() as c:
            c.upsert_product("p1")
            reqs = [catalog_pb2.AddReferenceImagesRequest(product_id="p1", content=pattern_image(i)) for i in (1, 2)]
            enrolling = c.catalog.AddReferenceImages.future(iter(reqs), timeout=60)
            time.sleep(0.5)
            assert not enrolling.done()  # held back by the queue budget, not refused
            held.open()
            assert enrolling.result(60).added == 2
        first.result(60)
    finally:
        held.open()
        srv.stop()


class _Clock:
    """A hand-moved clock for the admission books."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_work_slower_than_expected_raises_the_expected_wait() -> None:
    clock = _Clock()
    ad = Admission(AdmissionOptions(queue_budget_s=1.0), clock=clock)
    costs = _costs()  # 0.1 s a model input
    assert ad.slowdown == 1.0
    ahead = [ad.admit(costs, items=1) for _ in range(3)]  # 0, 0.1 and 0.2 s expected: under a quarter, not learned
    for t in ahead[1:]:
        with t:
            clock.now += 1.0
    assert ad.slowdown == 1.0
    ahead[1:] = [ad.admit(costs, items=1) for _ in range(2)]
    with ad.admit(costs, items=1):  # three ahead: expected 0.3 s wait + 0.1 s own
        clock.now += 1.2  # took three times as long
    assert ad.slowdown == pytest.approx(3.0 ** Admission.SLOWDOWN_ALPHA)
    for _ in range(200):
        with ad.admit(costs, items=1):
            clock.now += 1.2  # keeps taking three times the uncorrected expectation
    assert ad.slowdown == pytest.approx(3.0, rel=0.05)  # converges to the real factor
    for t in ahead:
        ad.release(t, done=True)  # admitted with nothing (or little) ahead: teaches nothing
    assert ad.slowdown == pytest.approx(3.0, rel=0.05)
    assert ad.expected_wait(0.1) == 0.0  # nothing on the books
    held = [ad.admit(costs, items=1) for _ in range(4)]  # the fourth waits 3 × 0.1 s × 3 = 0.9 s <= 1 s
    with pytest.raises(Shed, match=r"expected wait 1\d\d\d ms"):
        ad.admit(costs, items=1)  # 4 × 0.1 s × 3 = 1.2 s > 1 s: refused, where 0.4 s would have passed
    for t in held:
        ad.release(t)
    assert ad.stats().slowdown == ad.slowdown


def test_only_normally_finished_queued_work_teaches_the_slowdown() -> None:
    clock = _Clock()
    ad = Admission(AdmissionOptions(queue_budget_s=0.1), clock=clock)  # learned from behind 25 ms of work
    costs = _costs()
    ahead = ad.admit(costs, items=1)
    with pytest.raises(RuntimeError), ad.admit(costs, items=1):  # failed (or cancelled): says nothing of speed
        clock.now += 5.0
        raise RuntimeError("decode failed")
    ad.release(ad.admit(costs, items=1))  # released by hand without done=True
    assert ad.slowdown == 1.0
    with ad.admit(costs, items=1):
        clock.now += 0.01  # much faster than expected: the factor falls, but not under its bound
    assert ad.slowdown < 1.0
    for _ in range(500):
        with ad.admit(costs, items=1):
            clock.now += 0.001
    assert ad.slowdown == pytest.approx(Admission.SLOWDOWN_BOUNDS[0])
    ad.release(ahead)


@pytest.mark.parametrize("expectile", [0.5, 0.9])
def test_a_higher_slowdown_expectile_covers_the_slow_tail(expectile: float) -> None:
    """Queued work taking 1× or 3× its expectation in turn: at 0.5 the factor settles at their geometric mean
    (√3), so half of that work ends later than expected; at 0.9 it settles high enough that the 3× work is
    nearly covered (an expectile of the ratios' log: 3 ** 0.9 ≈ 2.69)."""
    clock = _Clock()
    ad = Admission(AdmissionOptions(queue_budget_s=1.0, slowdown_expectile=expectile), clock=clock)
    costs = _costs()
    ahead = [ad.admit(costs, items=1) for _ in range(3)]  # three ahead: each later one expects 0.3 s + 0.1 s
    seen = []
    for i in range(2000):
        t = ad.admit(costs, items=1)
        uncorrected = t.expected_s / ad.slowdown
        clock.now += uncorrected * (3.0 if i % 2 else 1.0)
        ad.release(t, done=True)
        seen.append(ad.slowdown)
    settled = sum(seen[-200:]) / 200
    assert settled == pytest.approx(3.0 ** expectile, rel=0.05)
    for t in ahead:
        ad.release(t)
    with pytest.raises(ValueError, match="slowdown_expectile"):
        AdmissionOptions(slowdown_expectile=1.0)


async def test_enrolment_waiting_for_room_does_not_teach_the_slowdown() -> None:
    clock = _Clock()
    ad = Admission(AdmissionOptions(queue_budget_s=100.0), clock=clock)
    costs = _costs()
    ahead = ad.admit(costs, items=1)
    with await ad.admit_waiting(costs, items=1, deadline=None):
        clock.now += 30.0  # catalog writes take their time; not the model's speed
    assert ad.slowdown == 1.0
    ad.release(ahead)
