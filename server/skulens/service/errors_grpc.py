"""THE table: domain error class → gRPC status code, and the helpers that apply it.

Domain errors (all `skulens.errors.SkulensError`: imaging, inference, catalog, model, and the service-layer
errors below) carry a client-safe message and the request field they concern. Any other exception is a bug:
it becomes INTERNAL with a generic text and its traceback goes to the log only.

| error                                                     | status              |
|-----------------------------------------------------------|---------------------|
| InvalidImage, InvalidRegion, ImageTooLarge, ImageTooSmall | INVALID_ARGUMENT    |
| catalog InvalidArgument, BadRequest                       | INVALID_ARGUMENT    |
| catalog NotFound                                          | NOT_FOUND           |
| catalog AlreadyExists (incl. RequestIdReused)             | ALREADY_EXISTS      |
| FingerprintMismatch, ModelLoadError, ManifestError        | FAILED_PRECONDITION |
| catalog MigrationError (step does not fit the migration)  | FAILED_PRECONDITION |
| catalog EtagMismatch (the product changed since read)     | ABORTED             |
| Overloaded (incl. admission's Shed), TooMany             | RESOURCE_EXHAUSTED  |
| DeadlineExceeded                                          | DEADLINE_EXCEEDED   |
| Cancelled                                                 | CANCELLED           |
| Unsupported (e.g. text on an image-only model)            | UNIMPLEMENTED       |
| NotReady, Draining, CatalogClosed, CatalogBehind, CatalogUnavailable | UNAVAILABLE |
| DecodeWorkerLost (a decode worker process died)           | UNAVAILABLE         |
| catalog CatalogCorrupt (store or snapshot damaged)        | DATA_LOSS           |
| Unauthenticated                                           | UNAUTHENTICATED     |
| PermissionDenied                                          | PERMISSION_DENIED   |
| anything else                                             | INTERNAL (generic)  |
"""

from __future__ import annotations

import logging
import re
from typing import NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from skulens.catalog import errors as cat
from skulens.errors import SkulensError
from skulens.imaging import errors as img
from skulens.inference import errors as inf
from skulens.model.manifest import ManifestError
from skulens.v1 import common_pb2

log = logging.getLogger("skulens.errors")

INTERNAL_MESSAGE = "internal error; see the server log (request id in trailing metadata x-request-id)"
FIELD_METADATA_KEY = "skulens-error-field"
#: gRPC's standard server pushback trailer (retry design A6): milliseconds a client should wait before retrying.
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
#: The standard trailer carrying a serialized google.rpc.Status with its details (every gRPC library reads it).
STATUS_DETAILS_KEY = "grpc-status-details-bin"
#: google.rpc.ErrorInfo.domain of every skulens error.
ERROR_DOMAIN = "skulens.v1"


class ServiceError(SkulensError):
    """Base of the errors the gRPC layer itself raises (request shape, state, auth)."""


class BadRequest(ServiceError):
    """A request value is malformed or out of its limits."""


class TooMany(ServiceError):
    """A request carries more items (images, texts, regions) than the server's per-request limit."""


class NotReady(ServiceError):
    """The server is still loading the model or opening the catalog."""


class Draining(ServiceError):
    """The server is shutting down and takes no new work."""


class CatalogBehind(ServiceError):
    """This replica's catalog has not reached the version the request asks for (yet); retry (elsewhere)."""

    def __init__(self, message: str, field: str | None = None, *, retry_after_s: float | None = None) -> None:
        super().__init__(message, field)
        self.retry_after_s = retry_after_s


class Unauthenticated(ServiceError):
    """No, malformed or unknown bearer token."""


class PermissionDenied(ServiceError):
    """The token lacks the scope the method needs."""


C = grpc.StatusCode
STATUS_TABLE: dict[type[SkulensError], grpc.StatusCode] = {
    img.InvalidImage: C.INVALID_ARGUMENT,  # InvalidRegion derives from it
    img.ImageTooLarge: C.INVALID_ARGUMENT,
    img.ImageTooSmall: C.INVALID_ARGUMENT,
    cat.InvalidArgument: C.INVALID_ARGUMENT,
    BadRequest: C.INVALID_ARGUMENT,
    cat.NotFound: C.NOT_FOUND,
    cat.AlreadyExists: C.ALREADY_EXISTS,
    cat.FingerprintMismatch: C.FAILED_PRECONDITION,
    cat.MigrationError: C.FAILED_PRECONDITION,
    cat.EtagMismatch: C.ABORTED,
    cat.CatalogCorrupt: C.DATA_LOSS,
    inf.ModelLoadError: C.FAILED_PRECONDITION,
    ManifestError: C.FAILED_PRECONDITION,
    inf.Overloaded: C.RESOURCE_EXHAUSTED,
    TooMany: C.RESOURCE_EXHAUSTED,
    inf.DeadlineExceeded: C.DEADLINE_EXCEEDED,
    inf.Cancelled: C.CANCELLED,
    inf.Unsupported: C.UNIMPLEMENTED,
    inf.DecodeWorkerLost: C.UNAVAILABLE,
    NotReady: C.UNAVAILABLE,
    Draining: C.UNAVAILABLE,
    CatalogBehind: C.UNAVAILABLE,
    cat.CatalogClosed: C.UNAVAILABLE,
    cat.CatalogUnavailable: C.UNAVAILABLE,
    Unauthenticated: C.UNAUTHENTICATED,
    PermissionDenied: C.PERMISSION_DENIED,
}


def code_of(exc: BaseException) -> grpc.StatusCode | None:
    """The status code for a domain error (most specific class in the table wins); None when unmapped."""
    for klass in type(exc).__mro__:
        code = STATUS_TABLE.get(klass)
        if code is not None:
            return code
    return None


def describe(exc: BaseException) -> tuple[grpc.StatusCode, str, str]:
    """(code, client-safe message, field or "") for any exception; unmapped ones are logged with traceback."""
    if isinstance(exc, NotImplementedError):  # a generated servicer's default for a method nobody implemented
        return C.UNIMPLEMENTED, "method not implemented by this server", ""
    code = code_of(exc) if isinstance(exc, SkulensError) else None
    if code is None or not isinstance(exc, SkulensError):
        log.error("unhandled %s", type(exc).__name__, exc_info=exc)
        return C.INTERNAL, INTERNAL_MESSAGE, ""
    field = exc.field or ""
    message = exc.message or type(exc).__name__
    if field and not message.startswith(field):
        message = f"{field}: {message}"
    if exc.stream_index is not None:  # the field is relative to that stream message
        message = f"message {exc.stream_index}: {message}"
    return code, message, field


def item_status(exc: BaseException | None = None) -> common_pb2.ItemStatus:
    """The per-item status for an error, or OK for None."""
    if exc is None:
        return common_pb2.ItemStatus(code=0)
    code, message, field = describe(exc)
    details = status_proto(exc, (code, message, field)).details
    return common_pb2.ItemStatus(code=code.value[0], message=message, field=field, details=details)


def for_stream_message(status: common_pb2.ItemStatus, index: int) -> common_pb2.ItemStatus:
    """A copy of one stream message's item status for the message at `index` (the same outcome, e.g. for the same
    image sent again): its position in the text ("message N: ") and in ErrorInfo metadata "stream_index"."""
    out = common_pb2.ItemStatus()
    out.CopyFrom(status)
    if not status.code:
        return out
    prefix = re.compile(r"^message \d+: ")
    out.message = prefix.sub(f"message {index}: ", status.message)
    for detail in out.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            info.metadata["stream_index"] = str(index)
            detail.Pack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            for v in bad.field_violations:
                v.description = prefix.sub(f"message {index}: ", v.description)
            detail.Pack(bad)
    return out


def reason_of(exc: BaseException) -> str:
    """The stable ErrorInfo reason of an error: its class name in UPPER_SNAKE_CASE (ImageTooLarge →
    IMAGE_TOO_LARGE); INTERNAL for anything that is not a domain error."""
    if isinstance(exc, NotImplementedError):
        return "UNIMPLEMENTED"
    if not isinstance(exc, SkulensError) or code_of(exc) is None:
        return "INTERNAL"
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", type(exc).__name__).upper()


def status_proto(exc: BaseException, described: tuple[grpc.StatusCode, str, str] | None = None) -> status_pb2.Status:
    """`exc` as a google.rpc.Status with standard details: ErrorInfo (reason, domain, the field) always;
    BadRequest with a field violation for INVALID_ARGUMENT naming a field; RetryInfo when a retry delay is known.
    `described`: `describe(exc)` when the caller has it already (an unmapped error is logged once)."""
    code, message, field = described or describe(exc)
    metadata = {"field": field} if field else {}
    stream_index = getattr(exc, "stream_index", None)
    if stream_index is not None:
        metadata["stream_index"] = str(stream_index)
    details = [error_details_pb2.ErrorInfo(reason=reason_of(exc), domain=ERROR_DOMAIN, metadata=metadata)]
    if code is C.INVALID_ARGUMENT and field:
        details.append(error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field=field, description=message)]
        ))
    retry_after = getattr(exc, "retry_after_s", None)
    if isinstance(retry_after, (int, float)) and code in (C.RESOURCE_EXHAUSTED, C.UNAVAILABLE):
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(max(1, round(retry_after * 1000)))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    packed = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)
        packed.append(a)
    return status_pb2.Status(code=code.value[0], message=message, details=packed)


def trailer_text(text: str) -> str:
    """`text` as an ASCII metadata value: UTF-8 bytes outside printable ASCII (and "%") percent-encoded, as gRPC
    encodes grpc-message (a field path with a non-ASCII map key stays readable and decodable)."""
    if all(0x20 <= ord(c) <= 0x7E and c != "%" for c in text):
        return text
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in text.encode("utf-8"))


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    """End the call with the status for `exc` (field in trailing metadata `skulens-error-field`, percent-encoded
    where it is not ASCII; a retry hint of an overload refusal in `grpc-retry-pushback-ms`)."""
    code, message, field = describe(exc)
    trailing = tuple(context.trailing_metadata() or ())
    trailing += ((STATUS_DETAILS_KEY, status_proto(exc, (code, message, field)).SerializeToString()),)
    if field:
        trailing += ((FIELD_METADATA_KEY, trailer_text(field)),)
    retry_after = getattr(exc, "retry_after_s", None)
    if code in (C.RESOURCE_EXHAUSTED, C.UNAVAILABLE) and isinstance(retry_after, (int, float)):
        trailing += ((RETRY_PUSHBACK_KEY, str(max(1, round(retry_after * 1000)))),)
    await context.abort(code, message, trailing)
    raise AssertionError("unreachable")  # context.abort raises
