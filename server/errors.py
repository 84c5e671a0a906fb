"""Inference-side domain errors.

Every error carries `field` (the request field it concerns, e.g. ``images[3]`` or ``regions[0][1]``, or
`None`) and a message that names the limit and the value; the text is safe to send to clients. The gRPC
layer maps the classes to status codes in one table (`server/errors_grpc.py`), so subclasses inherit
their parent's code.
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base of every inference-side domain error."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def with_field(self, field: str | None) -> InferenceError:
        """The same error (same class and message) attached to another request field."""
        clone = type(self)(self.message, field)
        clone.__cause__ = self.__cause__
        return clone

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, field={self.field!r})"


class InvalidImage(InferenceError):
    """The bytes are not a decodable image of a supported format (unknown, corrupt, truncated, empty)."""


class InvalidRegion(InvalidImage):
    """A region (box) is malformed or lies outside its image."""


class ImageTooLarge(InferenceError):
    """The encoded size or the pixel count is over its limit."""


class ImageTooSmall(InferenceError):
    """The image (or region) is under the minimum side."""


class Overloaded(InferenceError):
    """The server cannot take this work now; retry later (after `retry_after_s` when it is known)."""

    def __init__(self, message: str, field: str | None = None, *, retry_after_s: float | None = None) -> None:
        super().__init__(message, field)
        self.retry_after_s = retry_after_s

    def with_field(self, field: str | None) -> InferenceError:
        """The same error attached to another request field (the retry hint kept)."""
        clone = type(self)(self.message, field, retry_after_s=self.retry_after_s)
        clone.__cause__ = self.__cause__
        return clone


class DeadlineExceeded(InferenceError):
    """The request's deadline passed before its inference ran."""


class Cancelled(InferenceError):
    """The work was cancelled (caller went away, or the engine is shutting down)."""


class Unsupported(InferenceError):
    """The model cannot do this (e.g. text search on an image-only model)."""


class ModelLoadError(InferenceError):
    """A model directory does not match its manifest, or its session could not be built as required."""
