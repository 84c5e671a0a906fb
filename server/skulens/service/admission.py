"""Admission control: refuse work before doing any of it, so overload costs a refusal, not a timeout.

Every call that embeds (Recognize, RecognizeStream images, Embed, SearchByText, AddReferenceImages chunks)
asks for a `Ticket` before a byte is decoded. The checks, cheapest first:

1. calls in progress < `max_calls` (streams count once for their whole life);
2. encoded bytes held by admitted work + this request ≤ `max_inflight_bytes` (a lone request always fits);
3. the expected wait is within `queue_budget_s`. The backlog is the expected seconds of machine time of all
   admitted, unfinished work, from the engine's `CostModel`; since decoding is shared round-robin between
   requests, a request waits at most one turn behind each request on the books, so the expected wait is
   min(backlog, requests on the books × this request's cost). Checked first for the request's least cost
   (its model inputs), then again with its pixels;
4. the request's own decode budget: total pixels ≤ `max_request_pixels` (header-only peek, done only when
   1–3 passed; a request shape error, not retryable);
5. deadline: expected wait + the request's own cost must fit in the time the client left
   (× `deadline_headroom`).

`precheck` runs 1, 3 and 5 for a request's least possible cost (one model input) before its body is read: an
overloaded server refuses a call without receiving or parsing its images.

The expected wait is corrected by how fast the books really drain: in busy periods (from the moment model work
expected to take a quarter of the budget is on the books until none is left) the admission clock sums the time that
passes and the expected seconds of the work released done in it, both decayed over the last `DRAIN_TAU_S` seconds;
their ratio is a `slowdown` factor (bounded to 0.5-8) that scales every expectation. It is Little's law for the
books: whatever order work is served in (micro-batches, round-robin decoding, a crowd of callers in a closed loop),
work of E expected seconds on the books takes E × slowdown to drain. The cost model measures the machine's speed at
its work; under overload part of the machine goes to taking calls in and refusing them, so work is slower than that:
without a correction, 1-photo calls admitted within a 1 s budget waited 1.9-2.1 s at p99 (docs/BENCHMARKS.md). (An
earlier correction compared each ticket's own time to done with its expectation; in a closed loop a call waits for
a whole micro-batch in progress that its expectation does not hold, and that drove the factor up until a steady
crowd within the budget was mostly refused.)

A refusal by 1, 2, 3 or 5 is `Shed` (RESOURCE_EXHAUSTED) carrying `retry_after_s`, the time the backlog needs
to drain to the budget, which the gRPC layer sends as the standard `grpc-retry-pushback-ms` trailer. A ticket
adds its cost to the backlog until released. Use from one asyncio event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from skulens.inference.cost_model import CostModel
from skulens.inference.errors import Overloaded
from skulens.service.admission_options import AdmissionOptions
from skulens.service.errors_grpc import TooMany


class Shed(Overloaded):
    """Refused at admission because the server is busy; `retry_after_s` says when to try again."""


@dataclass
class Ticket:
    """Admitted work: its estimated seconds and bytes stay on the books until it is released.

    A context manager: ``with admission.admit(...):`` releases it however the block ends (done, failed,
    cancelled); `Admission.release` does the same by hand."""

    cost_s: float
    nbytes: int
    counts_call: bool
    work: bool = True
    released: bool = field(default=False)
    owner: Admission | None = field(default=None, repr=False, compare=False)
    teaches: bool = False  # model work alone: its release counts towards the drain rate

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if self.owner is not None:
            self.owner.release(self, done=exc_type is None)


@dataclass(frozen=True)
class AdmissionStats:
    """What is on the books now, and refusals since start by reason."""

    calls: int
    inflight_bytes: int
    backlog_s: float
    refused: dict[str, int]
    slowdown: float = 1.0


class Admission:
    """The books of admitted work and the checks above; one per server."""

    #: The slowdown factor's bounds.
    SLOWDOWN_BOUNDS = (0.5, 8.0)
    #: The drain rate is measured while model work expected to take at least this share of the queue budget is
    #: on the books (the machine is saturated then; a lone call also waits for micro-batching, not for work).
    LEARN_FROM_BUDGET_SHARE = 0.25
    #: Seconds of saturated time over which the drain rate is averaged (older time decays by e per DRAIN_TAU_S).
    DRAIN_TAU_S = 1.0
    #: The factor is first set from the drain rate once the (decayed) busy time reaches this many seconds.
    DRAIN_MIN_S = 0.25

    def __init__(self, options: AdmissionOptions | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.options = options or AdmissionOptions()
        self._clock = clock
        self._slowdown = 1.0
        self._calls = 0
        self._bytes = 0
        self._backlog = 0.0
        self._tickets = 0
        self._teaching = 0.0  # expected seconds of model work alone on the books
        self._mark = clock()  # when the books last changed
        self._busy_s = 0.0  # decayed saturated seconds
        self._drained_s = 0.0  # decayed expected seconds of work released done in them
        self._draining = False  # in a busy period (see `_changed_books`)
        self._refused: dict[str, int] = {}
        self._changed: asyncio.Event | None = None

    # -- books ---------------------------------------------------------------------------------------------
    @property
    def backlog_s(self) -> float:
        """Expected seconds of machine time of admitted, unfinished work."""
        return max(0.0, self._backlog)

    def stats(self) -> AdmissionStats:
        """A snapshot of the books."""
        return AdmissionStats(self._calls, self._bytes, self.backlog_s, dict(self._refused), self._slowdown)

    @property
    def slowdown(self) -> float:
        """How much longer admitted work has been taking than the cost model expected (1.0: as expected)."""
        return self._slowdown

    def _shed(self, reason: str, message: str, retry_after_s: float) -> Shed:
        self._refused[reason] = self._refused.get(reason, 0) + 1
        retry = max(0.05, retry_after_s)
        return Shed(f"{message}; retry in {1000 * retry:.0f} ms", retry_after_s=retry)

    def _drain_time(self, wait: float | None = None) -> float:
        """Seconds until the expected wait is back within the budget (`wait`: the refused work's own)."""
        wait = self.backlog_s if wait is None else wait
        return max(0.0, wait - self.options.queue_budget_s) + 0.05

    # -- checks --------------------------------------------------------------------------------------------
    def _check_calls_and_bytes(self, nbytes: int, new_call: bool) -> None:
        o = self.options
        if new_call and self._calls >= o.max_calls:
            raise self._shed(
                "calls", f"{self._calls} calls in progress, the limit is {o.max_calls}", self._drain_time()
            )
        if self._bytes and self._bytes + nbytes > o.max_inflight_bytes:
            raise self._shed(
                "bytes",
                f"{self._bytes} image bytes in flight + {nbytes} new exceeds the limit of {o.max_inflight_bytes}",
                self._drain_time(),
            )

    def expected_wait(self, cost_s: float) -> float:
        """Seconds a new piece of work of `cost_s` can expect to wait: the whole backlog if work were served
        first come first served, but decoding is shared round-robin, so at most one turn behind each piece of
        work on the books (`tickets` × its own cost) — a costly request does not make small ones wait for it."""
        return min(self.backlog_s, self._tickets * cost_s) * self._slowdown

    def _expected_done(self, wait: float, cost_s: float) -> float:
        """Seconds until work of `cost_s` expecting to wait `wait` is done (its own cost slowed down too)."""
        return wait + cost_s * self._slowdown

    def _check_queue(self, cost_s: float) -> float:
        """Refuse work whose expected wait is over the budget; the expected wait."""
        wait = self.expected_wait(cost_s)
        if wait > self.options.queue_budget_s:
            raise self._shed(
                "queue",
                f"the work queue holds {1000 * self.backlog_s:.0f} ms of work ({self._tickets} requests); "
                f"expected wait {1000 * wait:.0f} ms, the budget is {1000 * self.options.queue_budget_s:.0f} ms",
                self._drain_time(wait),
            )
        return wait

    def _check_deadline(self, cost_s: float, wait: float, deadline: float | None) -> None:
        """Refuse work of `cost_s`, expected to wait `wait` (`_check_queue`), that would finish past `deadline`."""
        if deadline is None:
            return
        remaining = deadline - self._clock()
        expected = self._expected_done(wait, cost_s)
        if expected > remaining * self.options.deadline_headroom:
            raise self._shed(
                "deadline",
                f"expected to finish in {1000 * expected:.0f} ms but the deadline leaves "
                f"{1000 * max(0.0, remaining):.0f} ms",
                self._drain_time(wait),
            )

    def admit(
        self,
        costs: CostModel,
        *,
        items: int,
        nbytes: int = 0,
        pixels: Callable[[], int] | int = 0,
        deadline: float | None = None,
        new_call: bool = True,
        check_pixels: bool = True,
        field: str = "images",
        learn: bool = True,
    ) -> Ticket:
        """All five checks, then book the work; raises `Shed` or `TooMany` (pixel budget, naming `field`).

        `pixels` may be a callable: the header peek runs only once the O(1) checks (calls, bytes, and the
        queue for the request's least possible cost, its model inputs alone) have passed.
        `new_call=False` books work of a call already counted (a stream's image). `check_pixels=False` skips
        the per-request pixel budget (enrolment chunks: each image is held to the per-image limits instead).
        `learn=False`: the work does not count towards the drain rate (work that also does other things, e.g.
        catalog writes, which would read as a slow model).
        """
        self._check_calls_and_bytes(nbytes, new_call)
        self._check_queue(costs.estimate(items, 0))
        npix = pixels() if callable(pixels) else pixels
        if check_pixels and npix > self.options.max_request_pixels:
            self._refused["pixels"] = self._refused.get("pixels", 0) + 1
            raise TooMany(
                f"{field} decode to {npix} pixels in total; the limit is {self.options.max_request_pixels} "
                "pixels per request (send fewer or smaller images per request)",
                field=field,
            )
        cost = costs.estimate(items, npix)
        wait = self._check_queue(cost)
        self._check_deadline(cost, wait, deadline)
        self._account()
        self._calls += 1 if new_call else 0
        self._bytes += nbytes
        self._backlog += cost
        self._tickets += 1
        self._teaching += cost if learn else 0.0
        self._changed_books()
        return Ticket(cost, nbytes, new_call, owner=self, teaches=learn)

    def precheck(self, costs: CostModel, deadline: float | None = None) -> None:
        """Refuse (`Shed`) a new embedding call that even its least possible work (one model input, no pixels)
        could not be admitted for: the call cap, the queue budget, the deadline. Runs before the request body is
        read, so an overloaded server refuses a call without receiving or parsing it; books nothing."""
        self._check_calls_and_bytes(0, True)
        least = costs.estimate(1, 0)
        self._check_deadline(least, self._check_queue(least), deadline)

    def open_call(self) -> Ticket:
        """Count a long call (a stream) against `max_calls` without booking work; raises `Shed` only on the
        call cap (its images are admitted one by one, against the queue as it is then)."""
        self._check_calls_and_bytes(0, True)
        self._calls += 1
        return Ticket(0.0, 0, True, work=False, owner=self)

    async def admit_waiting(self, costs: CostModel, *, deadline: float | None = None, **kw: object) -> Ticket:
        """Like `admit`, but wait for room instead of refusing (bulk enrolment: backpressure, not errors).

        Gives up with `Shed` when `deadline` passes first; `TooMany` is raised at once."""
        while True:
            try:
                return self.admit(costs, deadline=None, learn=False, **kw)  # type: ignore[arg-type]
            except Shed:
                if deadline is not None and self._clock() >= deadline:
                    raise
            if self._changed is None:
                self._changed = asyncio.Event()
            self._changed.clear()
            timeout = 0.25 if deadline is None else max(0.0, min(0.25, deadline - self._clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    def _saturated(self) -> bool:
        return self._teaching * self._slowdown >= self.LEARN_FROM_BUDGET_SHARE * self.options.queue_budget_s

    def _account(self) -> None:
        """Before the books change: add the time since they last changed to the drain rate's saturated time
        if the books were draining through it (older time and work decay)."""
        now = self._clock()
        dt = max(0.0, now - self._mark)
        self._mark = now
        if dt > 0.0 and self._draining:
            decay = math.exp(-dt / self.DRAIN_TAU_S)
            self._busy_s = self._busy_s * decay + dt
            self._drained_s *= decay

    def _changed_books(self) -> None:
        """After the books change: a busy period is measured from the moment it saturates until no model work
        is left on the books (its tail included, so that the work and the time drained in it match)."""
        if self._teaching <= 1e-12:
            self._draining = False
        elif not self._draining:
            self._draining = self._saturated()

    def _drained(self, cost_s: float) -> None:
        """Work of `cost_s` expected seconds was released done during a busy period."""
        self._drained_s += cost_s
        # once the busy time (a decayed sum that gains each interval's whole length) reaches the minimum (< TAU),
        # it stays at or above it
        if self._busy_s >= self.DRAIN_MIN_S and self._drained_s > 0.0:
            low, high = self.SLOWDOWN_BOUNDS
            self._slowdown = min(high, max(low, self._busy_s / self._drained_s))

    def release(self, ticket: Ticket, *, done: bool = False) -> None:
        """Take finished (or failed, or cancelled) work off the books; idempotent. `done`: the work ended
        normally, so it counts towards the drain rate (a ticket used as a context manager says so itself)."""
        if ticket.released:
            return
        ticket.released = True
        self._account()
        if done and ticket.teaches and self._draining:
            self._drained(ticket.cost_s)
        self._calls -= 1 if ticket.counts_call else 0
        self._bytes -= ticket.nbytes
        self._backlog -= ticket.cost_s
        self._tickets -= 1 if ticket.work else 0
        self._teaching -= ticket.cost_s if ticket.teaches else 0.0
        if self._tickets == 0:
            self._backlog = 0.0  # no float drift when idle
            self._teaching = 0.0
        self._changed_books()
        if self._changed is not None:
            self._changed.set()
