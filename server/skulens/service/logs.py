"""Structured logs: JSON lines or key=value, each stamped with the request id of the call that logged it."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any, TextIO

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("skulens_request_id", default="")

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "fields"}

# Characters that end or forge a line, or drive a terminal: C0 and C1 controls (Unicode category Cc) and the
# line/paragraph separators. They never reach a log line raw (one record = one line).
_CONTROL = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
_SHORT = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
_KV_QUOTED = {c: _SHORT.get(c, f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _CONTROL}
_KV_QUOTED.update({ord('"'): '\\"', ord("\\"): "\\\\"})
_JSON_LEFT_RAW = {c: f"\\u{c:04x}" for c in (*range(0x7F, 0xA0), 0x2028, 0x2029)}  # json.dumps keeps these
_UNSAFE = frozenset(map(chr, _CONTROL)) | frozenset(' ="\\')


def kv_token(text: str) -> str:
    """`text` as a key or value of a key=value line: bare when plain, else double-quoted with `\\`, `"` and
    every control character escaped (\\n, \\xNN, \\u2028), so that it can never break or forge a line."""
    if text and not _UNSAFE.intersection(text):
        return text
    return '"' + text.translate(_KV_QUOTED) + '"'


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    rid = getattr(record, "request_id", "") or REQUEST_ID.get()
    if rid:
        out["request_id"] = rid
    extra = getattr(record, "fields", None)
    if isinstance(extra, dict):
        out.update(extra)
    for k, v in vars(record).items():
        if k not in _RESERVED and k not in out and k != "request_id":
            out[k] = v
    if record.exc_info:
        out["exc"] = logging.Formatter().formatException(record.exc_info)
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, extra fields, exc (traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str, ensure_ascii=False).translate(_JSON_LEFT_RAW)


class KeyValueFormatter(logging.Formatter):
    """`ts=… level=… logger=… msg="…" key=value …`, the traceback on the following lines."""

    def format(self, record: logging.LogRecord) -> str:
        d = _fields(record)
        exc = d.pop("exc", None)
        parts = []
        for k, v in d.items():
            s = v if isinstance(v, str) else json.dumps(v, default=str)
            parts.append(f"{kv_token(str(k))}={kv_token(s)}")
        line = " ".join(parts)
        return f"{line}\n{exc}" if exc else line


def configure_logging(fmt: str = "json", level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send the root logger's records to `stream` (stderr) as JSON lines (`json`) or key=value (`text`)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_skulens", False):
            root.removeHandler(h)
    handler._skulens = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
