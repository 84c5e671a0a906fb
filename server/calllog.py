"""The outermost interceptor: request id, error → status mapping, metrics and one log line per call.

- Request id: the `x-request-id` metadata when sane (1..128 printable ASCII), else a new uuid4 hex; set in
  `server.logs.REQUEST_ID` for every log line of the call and returned in trailing metadata `x-request-id`.
- Errors: a domain error escaping a servicer becomes its status from `server.errors_grpc`; any other exception
  becomes INTERNAL with a generic text, its traceback logged (never sent).
- Metrics: calls by method and code, latency, in-flight.
- Log: one line per finished call with method, code, duration, peer and the fields the servicer added with
  `call_fields()`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from server.errors_grpc import abort
from server.logs import REQUEST_ID
from server.metrics import Metrics

log = logging.getLogger("skulens.calls")
REQUEST_ID_KEY = "x-request-id"
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
    code = context.code()
    if code is None:
        return default
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    for c in grpc.StatusCode:
        if c.value[0] == code:
            return str(c.name)
    return str(code)


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler; see the module docstring."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        rid = request_id_from(handler_call_details.invocation_metadata)
        short = method.rsplit("/", 1)[-1]
        kw = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, short, rid), **kw
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, short, rid), **kw
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, short, rid), **kw
            )
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(handler.stream_stream, short, rid), **kw
        )

    # -- bookkeeping shared by both shapes
    def _begin(
        self, context: grpc.aio.ServicerContext, method: str, rid: str
    ) -> tuple[float, dict[str, Any]]:
        REQUEST_ID.set(rid)
        fields: dict[str, Any] = {}
        _CALL_FIELDS.set(fields)
        context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
        if self._metrics is not None:
            self._metrics.in_flight.labels(method).inc()
        return time.perf_counter(), fields

    def _end(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        rid: str,
        t0: float,
        code: str,
        fields: dict[str, Any],
    ) -> None:
        seconds = time.perf_counter() - t0
        if self._metrics is not None:
            self._metrics.in_flight.labels(method).dec()
            self._metrics.calls.labels(method, code).inc()
            self._metrics.latency.labels(method).observe(seconds)
        level = logging.INFO if code in ("OK", "NOT_FOUND", "ALREADY_EXISTS") else logging.WARNING
        if code == "INTERNAL":
            level = logging.ERROR
        log.log(
            level,
            "call %s %s",
            method,
            code,
            extra={
                "fields": {
                    "method": method,
                    "code": code,
                    "ms": round(seconds * 1000, 2),
                    "peer": context.peer(),
                    "request_id": rid,
                    **fields,
                }
            },
        )

    def _wrap_unary(
        self, behavior: Callable[..., Awaitable[Any]], method: str, rid: str
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            t0, fields = self._begin(context, method, rid)
            code = "UNKNOWN"
            try:
                result = await behavior(request, context)
                code = _code_name(context)
                return result
            except grpc.aio.AbortError:
                code = _code_name(context, "UNKNOWN")
                raise
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception as exc:
                try:
                    await abort(context, exc)
                finally:
                    code = _code_name(context, "INTERNAL")
            finally:
                self._end(context, method, rid, t0, code, fields)

        return wrapper

    def _wrap_stream(
        self, behavior: Callable[..., AsyncIterator[Any]], method: str, rid: str
    ) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            t0, fields = self._begin(context, method, rid)
            code = "UNKNOWN"
            try:
                async for response in behavior(request, context):
                    yield response
                code = _code_name(context)
            except grpc.aio.AbortError:
                code = _code_name(context, "UNKNOWN")
                raise
            except (asyncio.CancelledError, GeneratorExit):
                code = "CANCELLED"
                raise
            except Exception as exc:
                try:
                    await abort(context, exc)
                finally:
                    code = _code_name(context, "INTERNAL")
            finally:
                self._end(context, method, rid, t0, code, fields)

        return wrapper
