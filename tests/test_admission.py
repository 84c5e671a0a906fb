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
        # the held call was a busy period of its own (over a quarter of the 1 ms budget): the factor is what it taught
        assert srv.registry.get_sample_value("skulens_admission_slowdown") == srv.app.runtime.admission.slowdown
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


class _Machine:
    """Admitted 1-item calls served first come first served in micro-batches of up to `batch` items, each item
    taking `item_s` seconds of the hand-moved clock, whatever the cost model expects (`_costs`: 0.1 s)."""

    def __init__(
        self, ad: Admission, clock: _Clock, batch: int, item_s: float, costs: CostModel | None = None
    ) -> None:
        self.ad, self.clock, self.batch, self.item_s = ad, clock, batch, item_s
        self.costs = costs or _costs()
        self.queue: list[tuple[Any, float]] = []  # (ticket, admitted at)
        self.done_in: list[float] = []  # each finished call's time from admission to done

    def offer(self) -> bool:
        """One call arrives now: admitted (True) or refused."""
        try:
            self.queue.append((self.ad.admit(self.costs, items=1), self.clock.now))
        except Shed:
            return False
        return True

    def run_batch(self) -> int:
        """Serve the next micro-batch (the clock moves by its items' time); how many calls it ended."""
        head, self.queue = self.queue[: self.batch], self.queue[self.batch :]
        self.clock.now += self.item_s * len(head)
        for ticket, at in head:
            self.ad.release(ticket, done=True)
            self.done_in.append(self.clock.now - at)
        return len(head)


def test_the_slowdown_is_the_drain_rate_of_saturated_books() -> None:
    """Work expected at 0.1 s an item drains at 0.05 s an item: the factor goes to 0.5; slowed to 0.3 s an item it
    goes to 3, and the expected wait follows."""
    clock = _Clock()
    ad = Admission(AdmissionOptions(queue_budget_s=5.0), clock=clock)
    m = _Machine(ad, clock, batch=8, item_s=0.05)
    assert ad.slowdown == 1.0
    for _ in range(20):
        for _ in range(16 - len(m.queue)):
            assert m.offer()
        m.run_batch()
    assert ad.slowdown == pytest.approx(0.5, rel=0.02)
    m.item_s = 0.3
    for _ in range(20):
        for _ in range(16 - len(m.queue)):
            m.offer()
        m.run_batch()
    assert ad.slowdown == pytest.approx(3.0, rel=0.02)
    assert ad.expected_wait(0.1) == pytest.approx(len(m.queue) * 0.1 * 3.0, rel=0.02)  # 8 on the books: 2.4 s
    assert ad.stats().slowdown == ad.slowdown
    while m.queue:
        m.run_batch()


def test_books_that_are_not_saturated_or_work_that_failed_teach_nothing() -> None:
    """A lone call also waits for micro-batching and the batch in progress: that is not the machine being slow.
    Work released failed or by hand (cancelled) is not counted as drained."""
    clock = _Clock()
    ad = Admission(AdmissionOptions(queue_budget_s=1.0), clock=clock)  # saturated behind 0.25 s of work
    m = _Machine(ad, clock, batch=8, item_s=0.5)
    for _ in range(50):
        for _ in range(2):  # 0.2 s expected on the books, each batch takes 1 s: never saturated
            assert m.offer()
        m.run_batch()
    assert ad.slowdown == 1.0
    held = [ad.admit(_costs(), items=1) for _ in range(5)]  # saturated from here on
    for _ in range(50):
        clock.now += 1.0
        with pytest.raises(RuntimeError), ad.admit(_costs(), items=1):
            raise RuntimeError("decode failed")
        ad.release(ad.admit(_costs(), items=1))  # released by hand without done=True
    assert ad.slowdown == 1.0  # nothing drained: no rate to learn yet
    for t in held:
        ad.release(t)


def test_a_closed_loop_within_the_budget_is_not_refused() -> None:
    """32 callers calling back to back, served 16 at a time in batches of 0.2 s: every call ends 0.4 s after it
    was admitted, within a 0.5 s budget, although each waits for a whole batch in progress (which an expectation
    per call, 10 ms of work for each call ahead, does not hold). The expected wait settles on the real 0.4 s and
    nobody is refused."""
    clock = _Clock()
    ad = Admission(AdmissionOptions(queue_budget_s=0.5), clock=clock)
    m = _Machine(ad, clock, batch=16, item_s=0.0125, costs=CostModel(infer_s_per_item=0.01))
    for _ in range(32):
        assert m.offer()
    for _ in range(500):
        for _ in range(m.run_batch()):
            assert m.offer(), f"refused with {len(m.queue)} on the books, slowdown {ad.slowdown:.2f}"
    assert ad.stats().refused == {}
    assert max(m.done_in) == pytest.approx(0.4)
    assert ad.slowdown == pytest.approx(1.25, rel=0.01)
    assert ad.expected_wait(0.01) == pytest.approx(0.4, rel=0.01)  # 32 on the books


def test_under_open_loop_overload_admitted_calls_end_within_the_budget() -> None:
    """Calls arriving four times faster than the machine drains them: the books fill to the budget and no further,
    and admitted calls end about one budget after admission (the cost model is 3× too optimistic)."""
    clock = _Clock()
    ad = Admission(AdmissionOptions(queue_budget_s=1.0), clock=clock)
    m = _Machine(ad, clock, batch=8, item_s=0.3)  # the cost model is 3× too optimistic
    offered = refused = 0
    due = 1.0  # arrivals owed: four for each item's time that passes
    while clock.now < 1100.0:
        for _ in range(int(due)):
            offered += 1
            refused += not m.offer()
        due -= int(due)
        before = clock.now
        m.run_batch()
        due += (clock.now - before) / 0.3 * 4 if clock.now > before else 1.0
    assert refused > 0.7 * offered
    late = m.done_in[len(m.done_in) // 2 :]  # once the factor has been learned
    assert max(late) <= 1.0 + 8 * 0.3 + 1e-9  # the budget plus a batch in progress
    assert ad.slowdown == pytest.approx(3.0, rel=0.05)
    while m.queue:
        m.run_batch()


async def test_enrolment_waiting_for_room_does_not_teach_the_slowdown() -> None:
    clock = _Clock()
    ad = Admission(AdmissionOptions(queue_budget_s=100.0), clock=clock)
    costs = _costs()
    ahead = ad.admit(costs, items=1)
    with await ad.admit_waiting(costs, items=1, deadline=None):
        clock.now += 30.0  # catalog writes take their time; not the model's speed
    assert ad.slowdown == 1.0
    ad.release(ahead)
