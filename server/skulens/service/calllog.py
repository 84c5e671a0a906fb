"""The outermost interceptor: request id, error → status mapping, metrics and one log line per call.

- Request id: the `x-request-id` metadata when sane (1..128 printable ASCII), else a new uuid4 hex; set in
  `skulens.service.logs.REQUEST_ID` for every log line of the call and returned in trailing metadata `x-request-id`.
- Errors: a domain error escaping a servicer becomes its status from `skulens.service.errors_grpc`; any other exception
  becomes INTERNAL with a generic text, its traceback logged (never sent).
- Metrics: calls by method and code, latency, in-flight.
- Log: one line per finished call with method, code, duration, peer and the fields the servicer added with
  `call_fields()`.
- Requests are parsed here, not by gRPC: garbage is INVALID_ARGUMENT (counted and logged like any call), a unary
  request must arrive within the read timeout, and the call context is never touched after the call ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from grpc._cython import cygrpc

from skulens.inference.errors import DeadlineExceeded
from skulens.service.errors_grpc import BadRequest, abort, code_of
from skulens.service.logs import REQUEST_ID
from skulens.service.metrics import Metrics

log = logging.getLogger("skulens.calls")
# The call ended under the handler: cancelled by gRPC (client cancel, disconnect, deadline), or gRPC core refused
# an operation on it (a write, or sending the status) because the client went away meanwhile.
_CALL_GONE: tuple[type[BaseException], ...] = (asyncio.CancelledError, cygrpc.ExecuteBatchError)
REQUEST_ID_KEY = "x-request-id"
_T = TypeVar("_T")
_CALL_FIELDS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "skulens_call_fields", default=None
)


def call_fields() -> dict[str, Any]:
    """A dict whose entries are added to the current call's log line (a throwaway dict outside a call)."""
    d = _CALL_FIELDS.get()
    return d if d is not None else {}


def request_id_from(metadata: Any) -> str:
    """The caller's x-request-id when sane, else a fresh one."""
    for key, value in metadata or ():
        if (
            key == REQUEST_ID_KEY
            and isinstance(value, str)
            and 0 < len(value) <= 128
            and value.isprintable()
            and value.isascii()
        ):
            return value
    return uuid.uuid4().hex


def _code_name(context: grpc.aio.ServicerContext, default: str = "OK") -> str:
    """The code the handler set on `context` (pure Python state; read only while the call runs)."""
    code = context.code()
    if code is None:
        return default
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    for c in grpc.StatusCode:
        if c.value[0] == code:
            return str(c.name)
    return str(code)


def message_name(deserializer: Callable[[bytes], Any] | None) -> str:
    """The protobuf message name behind `Message.FromString` ("request message" for anything else)."""
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    return str(getattr(descriptor, "name", "")) or "request message"


def parse_request(deserializer: Callable[[bytes], Any] | None, raw: bytes, what: str) -> Any:
    """`deserializer(raw)`; a body it cannot parse is a `BadRequest` naming `what` (no traceback logged)."""
    if deserializer is None:
        return raw
    try:
        return deserializer(raw)
    except Exception as exc:  # DecodeError and friends: the client sent garbage
        detail = str(exc)[:200] or type(exc).__name__
        raise BadRequest(f"{what} is not a valid {message_name(deserializer)}: {detail}") from None


class _DecodedRequests:
    """The request stream of a streaming-request call: raw bytes from gRPC, parsed here one by one so that a
    message that is not valid protobuf becomes a `BadRequest` naming its index. Lazy: nothing is read from the
    call until the handler iterates."""

    def __init__(
        self, raw: AsyncIterable[bytes], deserializer: Callable[[bytes], Any] | None, idle_timeout: float | None = None
    ) -> None:
        self._source = raw
        self._raw: AsyncIterator[bytes] | None = None
        self._deserializer = deserializer
        self._index = 0
        self._idle = idle_timeout

    def __aiter__(self) -> _DecodedRequests:
        return self

    async def __anext__(self) -> Any:
        if self._raw is None:
            self._raw = self._source.__aiter__()
        try:
            raw = await _within(self._idle, self._raw.__anext__())
        except asyncio.TimeoutError:
            raise DeadlineExceeded(
                f"no request message for {self._idle:g} s after message {self._index - 1} (the server's stream idle "
                "limit); send messages sooner, or end the stream",
            ) from None
        index, self._index = self._index, self._index + 1
        return parse_request(self._deserializer, raw, f"request message {index}")


class _Call:
    """What the bookkeeping needs from one call, all read from the context when the call starts."""

    __slots__ = ("code", "deadline", "fields", "method", "peer", "rid", "t0")

    def __init__(self, method: str, rid: str, peer: str, deadline: float | None) -> None:
        self.method, self.rid, self.peer, self.deadline = method, rid, peer, deadline
        self.code = "UNKNOWN"
        self.fields: dict[str, Any] = {}
        self.t0 = time.perf_counter()

    def cancelled_code(self) -> str:
        """DEADLINE_EXCEEDED when the call's deadline has passed (gRPC cancels it then), else CANCELLED."""
        if self.deadline is not None and time.monotonic() >= self.deadline - 0.005:
            return "DEADLINE_EXCEEDED"
        return "CANCELLED"


class RefusalLogBudget:
    """At most `per_second` log lines a second for calls refused as RESOURCE_EXHAUSTED (a token bucket holding
    one second's worth): an overloaded server refuses hundreds of calls a second, and a line for each would spend
    on logging the time it saves by refusing. Every refusal is still counted in the metrics; the next line that is
    written says how many were left out before it (`refusals_not_logged`). `per_second` 0: every line is written."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = per_second
        self._clock = clock
        self._tokens = per_second
        self._at = clock()
        self.skipped = 0

    def take(self) -> int | None:
        """None: leave this refusal's line out; otherwise write it, with this many left out before it."""
        if self.per_second <= 0:
            return 0
        now = self._clock()
        self._tokens = min(self.per_second, self._tokens + (now - self._at) * self.per_second)
        self._at = now
        if self._tokens < 1.0:
            self.skipped += 1
            return None
        self._tokens -= 1.0
        skipped, self.skipped = self.skipped, 0
        return skipped


async def _first_two(requests: AsyncIterable[bytes]) -> tuple[bytes | None, bytes | None]:
    """The first message of a request stream and the second (None at its end): a unary call has one."""
    it = requests.__aiter__()
    first = await anext(it, None)
    return first, (None if first is None else await anext(it, None))


async def _within(timeout: float | None, coro: Awaitable[_T]) -> _T:
    """`await coro` with a time limit (asyncio.TimeoutError); without an extra task where asyncio allows."""
    if timeout is None:
        return await coro
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(timeout):
            return await coro
    return await asyncio.wait_for(coro, timeout)  # pragma: no cover - Python 3.10


Behavior = Callable[..., Any]


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler; see the module docstring.

    The wrappers never touch the call context after the call ended (grpc.aio frees the core call when the
    handler's task finishes; `peer()` or a read on it then is a segfault): everything the log line needs is read
    when the call starts, the status code is tracked here, and response streams are written with
    `context.write` from a coroutine so that the servicer's generator is closed inside the call's task.

    Every method's request arrives as raw bytes (`request_deserializer=None`) and is parsed here: a body that is
    not a valid message is INVALID_ARGUMENT (counted, logged at WARNING, no traceback). Unary-request methods are
    served as streaming-request ones so that the body can be awaited with `read_timeout` seconds (None = no
    limit; expiry is DEADLINE_EXCEEDED, which frees the connection's stream) and a second message is refused.
    `precheck(method, deadline)` runs before a unary-unary request's body is read (after authentication): an
    exception it raises ends the call with that error's status, the body unread (admission's refusal of an
    overloaded server).
    """

    def __init__(
        self, metrics: Metrics | None = None, *, read_timeout: float | None = 30.0, idle_timeout: float | None = None,
        precheck: Callable[[str, float | None], None] | None = None, refusal_log_per_second: float = 0.0,
    ) -> None:
        self._metrics = metrics
        self._refusal_log = RefusalLogBudget(refusal_log_per_second)
        self._read_timeout = read_timeout
        self._idle_timeout = idle_timeout
        self._precheck = precheck

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        rid = request_id_from(handler_call_details.invocation_metadata)
        method = handler_call_details.method.rsplit("/", 1)[-1]
        des, ser = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary or handler.unary_stream:
            read = self._read_one(method, des)
            if handler.unary_unary:
                behavior_uu = handler.unary_unary

                async def run_uu(requests: AsyncIterable[bytes], context: grpc.aio.ServicerContext) -> Any:
                    result = behavior_uu(await read(requests), context)
                    return await result if inspect.isawaitable(result) else result

                # the precheck runs before the body is read (an auth refusal is not unary-unary: it came first)
                return grpc.stream_unary_rpc_method_handler(
                    self._unary(run_uu, method, rid, self._precheck), response_serializer=ser
                )
            behavior_us = handler.unary_stream

            async def run_us(requests: AsyncIterable[bytes], context: grpc.aio.ServicerContext) -> Any:
                return behavior_us(await read(requests), context)

            return grpc.stream_stream_rpc_method_handler(self._stream(run_us, method, rid), response_serializer=ser)
        if handler.stream_unary:
            behavior_su = handler.stream_unary

            async def run_su(requests: AsyncIterable[bytes], context: grpc.aio.ServicerContext) -> Any:
                result = behavior_su(_DecodedRequests(requests, des, self._idle_timeout), context)
                return await result if inspect.isawaitable(result) else result

            return grpc.stream_unary_rpc_method_handler(self._unary(run_su, method, rid), response_serializer=ser)
        behavior_ss = handler.stream_stream

        async def run_ss(requests: AsyncIterable[bytes], context: grpc.aio.ServicerContext) -> Any:
            return behavior_ss(_DecodedRequests(requests, des, self._idle_timeout), context)

        return grpc.stream_stream_rpc_method_handler(self._stream(run_ss, method, rid), response_serializer=ser)

    # -- reading a unary request
    def _read_one(
        self, method: str, deserializer: Callable[[bytes], Any] | None
    ) -> Callable[[AsyncIterable[bytes]], Awaitable[Any]]:
        timeout = self._read_timeout

        async def read(requests: AsyncIterable[bytes]) -> Any:
            try:
                raw, extra = await _within(timeout, _first_two(requests))
            except asyncio.TimeoutError:
                raise DeadlineExceeded(
                    f"the request did not arrive within {timeout:g} s (the server's request read timeout)"
                ) from None
            if raw is None:
                raise BadRequest(f"the call ended without a complete {message_name(deserializer)}")
            if extra is not None:
                raise BadRequest(f"{method} takes exactly one request message; got more")
            return parse_request(deserializer, raw, "request")

        return read

    # -- bookkeeping shared by both shapes
    def _begin(self, context: grpc.aio.ServicerContext, method: str, rid: str) -> _Call:
        """Start of a call: everything needed later is read from the context now, while the call is alive."""
        REQUEST_ID.set(rid)
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + float(remaining)
        call = _Call(method, rid, context.peer(), deadline)
        _CALL_FIELDS.set(call.fields)
        context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
        if self._metrics is not None:
            self._metrics.in_flight.labels(method).inc()
        return call

    def _end(self, call: _Call) -> None:
        """End of a call: metrics and the log line, from `call` only (never from the context)."""
        seconds = time.perf_counter() - call.t0
        code = call.code
        level = logging.INFO if code in ("OK", "NOT_FOUND", "ALREADY_EXISTS") else logging.WARNING
        if code == "INTERNAL":
            level = logging.ERROR
        skipped = self._refusal_log.take() if code == "RESOURCE_EXHAUSTED" else 0
        if skipped is not None:
            fields = {
                "method": call.method,
                "code": code,
                "ms": round(seconds * 1000, 2),
                "peer": call.peer,
                "request_id": call.rid,
                **call.fields,
            }
            if skipped:
                fields["refusals_not_logged"] = skipped
            log.log(level, "call %s %s", call.method, code, extra={"fields": fields})
        if self._metrics is not None:  # after the log line: whoever sees the count finds the line written
            self._metrics.in_flight.labels(call.method).dec()
            self._metrics.calls.labels(call.method, code).inc()
            self._metrics.latency.labels(call.method).observe(seconds)

    async def _abort(self, call: _Call, context: grpc.aio.ServicerContext, exc: Exception) -> NoReturn:
        """End the call with the status for `exc` (runs inside the call's task, while the call is alive)."""
        mapped = code_of(exc)
        call.code = mapped.name if mapped is not None else "INTERNAL"
        try:
            await abort(context, exc)
        except _CALL_GONE as gone:  # the status could not be sent: the client went away meanwhile
            _call_gone(call, gone)

    def _unary(
        self, run: Behavior, method: str, rid: str, precheck: Callable[[str, float | None], None] | None = None
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def wrapper(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            call = self._begin(context, method, rid)
            try:
                if precheck is not None:
                    precheck(method, call.deadline)
                result = await run(requests, context)
                call.code = _code_name(context)
                return result
            except grpc.aio.AbortError:
                call.code = _code_name(context, "UNKNOWN")
                raise
            except _CALL_GONE as gone:
                _call_gone(call, gone)
            except Exception as exc:
                await self._abort(call, context, exc)
            finally:
                self._end(call)

        return wrapper

    def _stream(
        self, run: Behavior, method: str, rid: str
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[None]]:
        async def wrapper(requests: Any, context: grpc.aio.ServicerContext) -> None:
            call = self._begin(context, method, rid)
            responses: Any = None
            try:
                responses = await run(requests, context)
                if inspect.isawaitable(responses):  # a handler that writes its own responses (health Watch)
                    await responses
                    responses = None
                elif hasattr(responses, "__aiter__"):
                    async for response in responses:
                        await context.write(response)
                else:
                    for response in responses:
                        await context.write(response)
                call.code = _code_name(context)
            except grpc.aio.AbortError:
                call.code = _code_name(context, "UNKNOWN")
                raise
            except _CALL_GONE as gone:
                _call_gone(call, gone)
            except Exception as exc:
                await self._abort(call, context, exc)
            finally:
                try:
                    await _close(responses)  # the servicer's cleanup runs now, inside the call's task
                finally:
                    self._end(call)

        return wrapper


def _call_gone(call: _Call, exc: BaseException) -> NoReturn:
    """The call ended under the handler: record CANCELLED (or DEADLINE_EXCEEDED) and end the handler as
    cancelled. gRPC core's refusal of a write or of the status (ExecuteBatchError) becomes CancelledError, which
    grpc.aio treats as a cancelled call; raised as is, it would be logged as a server error when it wins the
    race against gRPC's own cancellation of the handler."""
    call.code = call.cancelled_code()
    if isinstance(exc, asyncio.CancelledError):
        raise exc
    raise asyncio.CancelledError(f"the client went away ({type(exc).__name__})") from None


async def _close(responses: Any) -> None:
    """Close a servicer's response generator (its `finally` blocks run now, not at garbage collection)."""
    aclose = getattr(responses, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()
        return
    close = getattr(responses, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            close()
