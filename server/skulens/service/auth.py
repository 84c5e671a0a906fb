"""Bearer-token authentication and scope checks, in one `grpc.aio.ServerInterceptor`.

Clients send `authorization: Bearer <token>` metadata. Scopes:

- `recognize`: Recognize, RecognizeStream, SearchByText, Embed, Evaluate (and GetServerInfo, which `catalog:write` may
  call too).
- `catalog:write`: UpsertProduct, AddReferenceImages, DeleteProduct, DeleteReferenceImage, and every
  MigrationService method (model migration changes what the whole catalog serves).
- catalog reads (GetProduct, ListProducts, GetCatalogStats) accept either scope: a recognizer may need names,
  and a writer must see what it wrote (enrolment resumes by reading the product's references). GetDriftReport
  (monitoring, read-only) accepts either too.

Health checks and server reflection need no token (load balancers and tooling call them). Any other method of
`skulens.v1` missing from the table is refused (fail closed). With no tokens configured the interceptor lets
everything through.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc

from skulens.service.errors_grpc import PermissionDenied, Unauthenticated, describe
from skulens.service.settings import SCOPE_CATALOG_WRITE, SCOPE_RECOGNIZE, Tokens

_R = frozenset({SCOPE_RECOGNIZE})
_W = frozenset({SCOPE_CATALOG_WRITE})
_RW = _R | _W
_REC = "/skulens.v1.RecognitionService/"
_CAT = "/skulens.v1.CatalogService/"
_MIG = "/skulens.v1.MigrationService/"

METHOD_SCOPES: dict[str, frozenset[str]] = {
    _REC + "Recognize": _R,
    _REC + "RecognizeStream": _R,
    _REC + "SearchByText": _R,
    _REC + "Embed": _R,
    _REC + "Evaluate": _R,
    _REC + "GetServerInfo": _RW,
    _REC + "GetDriftReport": _RW,
    _CAT + "UpsertProduct": _W,
    _CAT + "AddReferenceImages": _W,
    _CAT + "EnrollReferenceImages": _W,
    _CAT + "DeleteProduct": _W,
    _CAT + "DeleteReferenceImage": _W,
    _CAT + "GetProduct": _RW,
    _CAT + "ListProducts": _RW,
    _CAT + "GetCatalogStats": _RW,
    **{_MIG + m: _W for m in ("StartMigration", "GetMigration", "SwitchModel", "AbortMigration", "FinishMigration")},
}
PUBLIC_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
_NOBODY: frozenset[str] = frozenset({"<nobody>"})


def required_scopes(method: str) -> frozenset[str] | None:
    """Scopes of which the caller needs one for `method`; None for public methods."""
    if method.startswith(PUBLIC_PREFIXES):
        return None
    return METHOD_SCOPES.get(method, _NOBODY)


class TokenTable:
    """Token → scopes, compared in constant time."""

    def __init__(self, tokens: Tokens) -> None:
        self._tokens = [(t.encode(), s) for t, s in tokens]

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def scopes(self, token: str) -> frozenset[str] | None:
        """The scopes of `token`, or None when it is unknown."""
        given, found = token.encode(), None
        for known, scopes in self._tokens:
            if hmac.compare_digest(given, known):
                found = scopes
        return found


def _authorization(metadata: Mapping[str, str] | Iterable[tuple[str, Any]]) -> list[str]:
    """Every `authorization` value in `metadata` (a mapping or the call's (key, value) pairs)."""
    pairs = metadata.items() if isinstance(metadata, Mapping) else metadata
    return [v if isinstance(v, str) else "" for k, v in pairs if k == "authorization"]


def check(tokens: TokenTable, method: str, metadata: Mapping[str, str] | Iterable[tuple[str, Any]]) -> None:
    """Raise Unauthenticated / PermissionDenied unless `metadata` carries one token good for `method`."""
    needed = required_scopes(method)
    if not tokens or needed is None:
        return
    headers = _authorization(metadata)
    if len(headers) > 1:
        raise Unauthenticated(
            f"{len(headers)} 'authorization' metadata entries: send exactly one, 'authorization: Bearer <token>'"
        )
    header = headers[0] if headers else ""
    if not header:
        raise Unauthenticated("missing bearer token: send metadata 'authorization: Bearer <token>'")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
    granted = tokens.scopes(token.strip())
    if granted is None:
        raise Unauthenticated("unknown bearer token")
    if not granted & needed:
        short = method.rsplit("/", 1)[-1]
        raise PermissionDenied(
            f"{short} needs scope {' or '.join(sorted(needed))}; the token has {', '.join(sorted(granted))}"
        )


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without a token good for their method (UNAUTHENTICATED / PERMISSION_DENIED)."""

    def __init__(self, tokens: Tokens) -> None:
        self._tokens = TokenTable(tokens)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not self._tokens:
            return handler
        try:
            check(self._tokens, handler_call_details.method, tuple(handler_call_details.invocation_metadata or ()))
        except (Unauthenticated, PermissionDenied) as exc:
            return _refusing(handler, exc)
        return handler


def _refusing(handler: grpc.RpcMethodHandler, exc: Exception) -> grpc.RpcMethodHandler:
    """A handler that ends every call with the status for `exc` WITHOUT reading its request.

    It is streaming-request shaped whatever the method's shape (the wire format is the same) and never iterates
    the request stream, so a refused caller's body is never received: a unary-request handler would make gRPC
    read the whole message (up to the message size limit) before the refusal. The response shape is kept.
    """
    code, message, _ = describe(exc)

    async def refuse(_requests: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def refuse_stream(_requests: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream, **kw)
    return grpc.stream_unary_rpc_method_handler(refuse, **kw)
