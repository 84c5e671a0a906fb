"""The one base of every skulens domain error.

A domain error carries a client-safe `message` that names the limit and the value, and `field`: the request
field it concerns (or None). Each room subclasses it (`skulens.catalog.errors`, `skulens.inference.errors`,
`skulens.model.manifest.ManifestError`, the service's own in `skulens.service.errors_grpc`), and the service maps
the classes to gRPC status codes in one table (`skulens.service.errors_grpc`). Anything that is not a
`SkulensError` is a bug and reaches clients only as a generic INTERNAL.

Field paths: `field` follows one grammar everywhere (AIP-193 field paths, AIP-161 map keys), built only with
`field_path` (nobody formats a path by hand):

- proto field names in snake_case joined by ``.``: ``options.top_k``;
- an element of a repeated field as ``[i]`` (from 0): ``images[3].content``, ``images[0].regions[2]``;
- an entry of a map as ``.key`` when the key is a plain identifier (``[A-Za-z_][A-Za-z0-9_]*``) and in backticks
  otherwise, a backtick or backslash inside escaped with a backslash: ``labels.brand``, ``labels.`brand name```.
  A key that is itself invalid cannot be addressed reliably: its error names the map (``labels``) and quotes the
  key in the message;
- in a streaming call a path is relative to the stream message (``content``, ``images[2].content``); the
  message's position is the error's `stream_index` (ErrorInfo metadata ``stream_index``, and each answer's own
  index field).

Imported by every room (the client included), it imports nothing of skulens.
"""

from __future__ import annotations

import re
from typing import TypeVar

import grpc

_E = TypeVar("_E", bound="SkulensError")


class SkulensError(Exception):
    """Base of every domain error; `field` names the request field concerned, if any (a path built by
    `field_path`); `stream_index` the position of the stream message it concerns, in a streaming call (the path is
    then relative to that message)."""

    #: Position (from 0) of the stream message the error concerns; None outside streams.
    stream_index: int | None = None

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def with_field(self: _E, field: str | None) -> _E:
        """The same error (same class, message and extra attributes) attached to another request field."""
        clone = self._clone()
        clone.field = field
        return clone

    def in_stream(self: _E, index: int) -> _E:
        """The same error, concerning the stream message at position `index` (its field relative to it)."""
        clone = self._clone()
        clone.stream_index = int(index)
        return clone

    def _clone(self: _E) -> _E:
        clone = _restore(type(self), self.message, self.__dict__)
        clone.__cause__ = self.__cause__
        return clone

    def __reduce__(self) -> tuple[object, ...]:
        """Pickle class, message and attributes (an error crosses from a decode worker process intact)."""
        return (_restore, (type(self), self.message, dict(self.__dict__)))

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, field={self.field!r})"


def _restore(cls: type[_E], message: str, attrs: dict[str, object]) -> _E:
    """Rebuild a pickled `SkulensError` without calling its (subclass-specific) constructor."""
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(attrs)
    return error


class ConfigError(SkulensError, ValueError):
    """A setting or command-line argument is invalid (found at start-up; never sent to a client)."""


def code_name(value: int) -> str:
    """gRPC status code name of a numeric code (e.g. 3 → INVALID_ARGUMENT); the number itself when unknown."""
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return str(code.name)
    return str(value)


# ---------------------------------------------------------------------------------------------- field paths
_NAME = r"[a-z][a-z0-9_]*"
_INDEX = r"\[(?:0|[1-9][0-9]*)\]"
_PLAIN_KEY = r"[A-Za-z_][A-Za-z0-9_]*"
_QUOTED_KEY = r"`(?:[^`\\]|\\[`\\])+`"
#: The whole grammar: a path as a client receives it (`ItemStatus.field`, `FieldViolation.field`, ...).
FIELD_PATH = re.compile(
    rf"{_NAME}(?:{_INDEX})*(?:\.(?:{_NAME}(?:{_INDEX})*|{_PLAIN_KEY}|{_QUOTED_KEY}))*\Z"
)
_PLAIN = re.compile(rf"{_PLAIN_KEY}\Z")


class Key(str):
    """A map key as one part of `field_path` (written plain or in backticks, as AIP-161 says)."""

    __slots__ = ()


def key_segment(key: str) -> str:
    """The path segment of a map key: the key itself when it is a plain identifier, else in backticks."""
    if _PLAIN.match(key):
        return key
    escaped = key.replace("\\", "\\\\").replace("`", "\\`")
    return f"`{escaped}`"


def field_path(*parts: str | int | Key) -> str:
    """Join parts into a field path: a `str` is a field name or a path already built (joined with ``.``; empty
    ones are skipped, so a prefix "" makes a relative path), an `int` an element index (``[i]``), a `Key` a map
    key (``.key`` or ``.`key```). ValueError for a part that does not fit the grammar (a bug of the caller)."""
    out = ""
    for part in parts:
        if isinstance(part, Key):
            if not out or not part:
                raise ValueError(f"a map key needs a map field before it and a value: {parts!r}")
            out += "." + key_segment(part)
        elif isinstance(part, int) and not isinstance(part, bool):
            if not out or part < 0:
                raise ValueError(f"an index needs a repeated field before it and is >= 0: {parts!r}")
            out += f"[{part}]"
        elif isinstance(part, str):
            if not part:
                continue
            if not FIELD_PATH.match(part):
                raise ValueError(f"{part!r} is not a field name or path")
            out = f"{out}.{part}" if out else part
        else:
            raise TypeError(f"a field path part is a str, an int or a Key, not {type(part).__name__}")
    return out


def is_field_path(text: str) -> bool:
    """True when `text` is a path of the grammar (the empty string, "no field", is not)."""
    return bool(FIELD_PATH.match(text))
