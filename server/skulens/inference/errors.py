"""Inference-side domain errors.

Every error carries `field` (the request field it concerns, e.g. ``images[3]`` or ``regions[0][1]``, or
`None`) and a message that names the limit and the value; the text is safe to send to clients. The gRPC
layer maps the classes to status codes in one table (`skulens.service.errors_grpc`), so subclasses inherit
their parent's code.
"""

from __future__ import annotations

from skulens.errors import SkulensError


class InferenceError(SkulensError):
    """Base of the inference engine's own domain errors (overload, deadlines, model load, capability)."""


class Overloaded(InferenceError):
    """The server cannot take this work now; retry later (after `retry_after_s` when it is known)."""

    def __init__(self, message: str, field: str | None = None, *, retry_after_s: float | None = None) -> None:
        super().__init__(message, field)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(InferenceError):
    """The request's deadline passed before its inference ran."""


class Cancelled(InferenceError):
    """The work was cancelled (caller went away, or the engine is shutting down)."""


class DecodeWorkerLost(InferenceError):
    """The decode worker process holding this image died (a decoder crash, the OOM killer); retry the image."""


class Unsupported(InferenceError):
    """The model cannot do this (e.g. text search on an image-only model)."""


class ModelLoadError(InferenceError):
    """A model directory does not match its manifest, or its session could not be built as required."""
