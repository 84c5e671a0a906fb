"""The one base of every skulens domain error.

A domain error carries a client-safe `message` that names the limit and the value, and `field`: the request
field it concerns (or None). Each room subclasses it (`skulens.catalog.errors`, `skulens.inference.errors`,
`skulens.model.manifest.ManifestError`, the service's own in `skulens.service.errors_grpc`), and the service maps
the classes to gRPC status codes in one table (`skulens.service.errors_grpc`). Anything that is not a
`SkulensError` is a bug and reaches clients only as a generic INTERNAL.

Imported by every room (the client included), it imports nothing of skulens.
"""

from __future__ import annotations

from typing import TypeVar

import grpc

_E = TypeVar("_E", bound="SkulensError")


class SkulensError(Exception):
    """Base of every domain error; `field` names the request field concerned, if any."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def with_field(self: _E, field: str | None) -> _E:
        """The same error (same class, message and extra attributes) attached to another request field."""
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        Exception.__init__(clone, self.message)
        clone.field = field
        clone.__cause__ = self.__cause__
        return clone

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, field={self.field!r})"


class ConfigError(SkulensError, ValueError):
    """A setting or command-line argument is invalid (found at start-up; never sent to a client)."""


def code_name(value: int) -> str:
    """gRPC status code name of a numeric code (e.g. 3 → INVALID_ARGUMENT); the number itself when unknown."""
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return str(code.name)
    return str(value)
