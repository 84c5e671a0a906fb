"""`ConnectionPool` and `Database`: the shared catalog's connections, how a call runs on them, and its errors.

Connections: a small pool of our own (autocommit connections, explicit BEGIN / COMMIT), at most `pool_size` in
use at once; more concurrent calls wait up to `busy_timeout_ms` for one. A lost connection (server down or
restarted) raises `CatalogUnavailable` and empties the pool; a call that failed on a stale pooled connection
before anything was committed is retried once on a fresh one, so a server restart costs no error once it is back.
Lock waits are bounded by `busy_timeout_ms` (PostgreSQL `lock_timeout`); deadlocks and serialisation failures
are retried. Other database errors become the catalog's domain errors (`Database.error`). Messages never carry
the URL's password.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import psycopg

from skulens.catalog.errors import (
    AlreadyExists,
    CatalogClosed,
    CatalogError,
    CatalogUnavailable,
    InvalidArgument,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5
_TRANSIENT = ("40001", "40P01")  # serialization failure, deadlock: rolled back, run again
_LOST = ("57P01", "57P02", "57P03")  # admin / crash shutdown, cannot connect now
_LOCK_TIMEOUT = "55P03"

T = TypeVar("T")
Conn = psycopg.Connection[Any]


# ================================================================ URL, messages
_URL_PASSWORD = re.compile(r"(://[^:/@?#]*:)([^@]*)(@)")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact(url: str) -> str:
    """`url` (a URL or a key=value connection string) with its password replaced by ***."""
    return _KV_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***\3", url))


def first_line(exc: BaseException) -> str:
    """The first non-blank line of `exc`'s message (its type's name when it has none)."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def parse_url(url: object) -> tuple[str, dict[str, str]]:
    """(the connection string, its parameters); InvalidArgument when `url` is not one."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidArgument("url must be a postgresql:// URL (or a libpq connection string)", field="url")
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise InvalidArgument(f"url {redact(url)!r} is not a valid PostgreSQL connection URL: "
                              f"{redact(first_line(exc))}", field="url") from None
    return url, {k: str(val) for k, val in params.items() if val is not None}


# ================================================================ connection helpers
def one_row(cur: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    """The row a statement that always returns one returned."""
    row = cur.fetchone()
    assert row is not None
    return tuple(row)


def lost(conn: Conn, exc: psycopg.Error) -> bool:
    """True when `exc` means the connection is gone (server down, restarted, network)."""
    if conn.closed or conn.broken:
        return True
    state = exc.sqlstate or ""
    return state.startswith("08") or state in _LOST or (not state and isinstance(exc, psycopg.OperationalError))


def _rollback(conn: Conn) -> bool:
    """Roll back the open transaction, if any; True when the connection can be used again."""
    try:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
        return True
    except psycopg.Error:
        return False


# ================================================================ the pool
class ConnectionPool:
    """At most `size` connections in use at once; idle ones are kept for the next call. Thread-safe."""

    def __init__(self, conninfo: str, params: Mapping[str, str], size: int, wait_s: float, lock_timeout_ms: int,
                 describe: str, secret: str | None) -> None:
        self._conninfo = conninfo
        self._extra: dict[str, Any] = {}
        if "connect_timeout" not in params:
            self._extra["connect_timeout"] = CONNECT_TIMEOUT_S
        if "application_name" not in params:
            self._extra["application_name"] = "skulens"
        self._size = size
        self._wait_s = wait_s
        self.lock_timeout_ms = lock_timeout_ms
        self._lock_timeout = f"{int(lock_timeout_ms)}ms"
        self.describe = describe
        self._secret = secret
        self._idle: list[Conn] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(size)
        self._closed = False

    def scrub(self, text: str) -> str:
        """`text` without the password."""
        if self._secret:
            text = text.replace(self._secret, "***")
        return redact(text)

    def unavailable(self, exc: BaseException, what: str = "cannot be reached") -> CatalogUnavailable:
        return CatalogUnavailable(f"the shared catalog at {self.describe} {what} "
                                  f"({self.scrub(first_line(exc))}); retry")

    def acquire(self) -> tuple[Conn, bool]:
        """(connection, fresh): an idle connection, or a new one; CatalogUnavailable if none can be had."""
        if not self._slots.acquire(timeout=self._wait_s):
            raise CatalogUnavailable(f"no free connection to the shared catalog at {self.describe} within "
                                     f"{self._wait_s:g} s (all {self._size} busy); retry")
        try:
            with self._lock:
                if self._closed:
                    raise CatalogClosed()
                conn = self._idle.pop() if self._idle else None
            if conn is not None and not conn.closed:
                return conn, False
            return self._connect(), True
        except BaseException:
            self._slots.release()
            raise

    def connect(self) -> Conn:
        """A connection of its own, outside the pool's count (a listener's); CatalogUnavailable if none can be had.
        The caller closes it."""
        with self._lock:
            if self._closed:
                raise CatalogClosed()
        return self._connect()

    def _connect(self) -> Conn:
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True, **self._extra)
        except psycopg.Error as exc:
            raise self.unavailable(exc) from None
        try:
            conn.execute("SELECT set_config('lock_timeout', %s, false), set_config('jit', 'off', false)",
                         (self._lock_timeout,))
        except psycopg.Error as exc:
            conn.close()
            raise self.unavailable(exc) from None
        return conn

    def release(self, conn: Conn, *, reuse: bool) -> None:
        try:
            ok = (reuse and not conn.closed and not conn.broken
                  and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE)
            with self._lock:
                if ok and not self._closed:
                    self._idle.append(conn)
                    return
            conn.close()
        finally:
            self._slots.release()

    def flush(self) -> None:
        """Close the idle connections (after a connection was lost: the others are likely stale too)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.flush()


# ================================================================ calls
class Database:
    """Runs a catalog's calls on `pool`, one transaction each, with the retries and the errors described above.

    `schema` only names the catalog in messages. Closing it closes the pool (shared by every `Database` of it).
    """

    def __init__(self, pool: ConnectionPool, schema: str) -> None:
        self.pool = pool
        self.schema = schema
        self._closed = False

    def close(self) -> None:
        """Close the pooled connections; later calls raise `CatalogClosed`."""
        self._closed = True
        self.pool.close()

    def run(self, fn: Callable[[Conn], T], *, tx: bool = True) -> T:
        """Run `fn(conn)` in one transaction (committed when it returns, rolled back when it raises); with
        `tx=False` `fn` runs its statements as they are (single statements, or pipelined transactions of its own).

        A lost connection raises `CatalogUnavailable`, after one retry on a fresh connection when the lost one
        came from the pool and nothing was being committed; deadlocks and serialization failures run again.
        """
        if self._closed:
            raise CatalogClosed()
        attempt = 0
        while True:
            attempt += 1
            conn, fresh = self.pool.acquire()
            reuse = committing = False
            try:
                if tx:
                    conn.execute("BEGIN")
                out = fn(conn)
                committing = tx
                if tx:
                    conn.execute("COMMIT")
                reuse = True
                return out
            except CatalogError:
                reuse = _rollback(conn)
                raise
            except psycopg.Error as exc:
                if lost(conn, exc):
                    self.pool.flush()
                    if not fresh and not committing and attempt == 1:
                        log.info("shared catalog connection lost (%s); retrying on a new one",
                                 self.pool.scrub(first_line(exc)))
                        continue
                    if committing:
                        raise self.pool.unavailable(
                            exc, "was lost while committing a write, whose outcome is unknown "
                                 "(compare version() before retrying)") from None
                    raise self.pool.unavailable(exc) from None
                reuse = _rollback(conn)
                if exc.sqlstate in _TRANSIENT and attempt < 4:
                    continue
                raise self.error(exc) from exc
            finally:
                self.pool.release(conn, reuse=reuse)

    def error(self, exc: psycopg.Error) -> CatalogError:
        """The domain error for a database error that is not a lost connection."""
        text = self.pool.scrub(first_line(exc))
        if exc.sqlstate == _LOCK_TIMEOUT:
            return CatalogUnavailable(f"the shared catalog is busy: a lock was not granted within "
                                      f"{self.pool.lock_timeout_ms} ms ({text}); retry")
        if isinstance(exc, psycopg.errors.UniqueViolation):
            return AlreadyExists(f"the shared catalog refused a duplicate ({text})")
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            return CatalogError(f"the shared catalog's database user lacks a privilege ({text})")
        if isinstance(exc, (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn)):
            return CatalogError(f"the shared catalog's schema {self.schema!r} is damaged or was changed ({text}); "
                                "restore it from a backup")
        return CatalogError(f"shared catalog error ({exc.sqlstate or 'client'}): {text}")


__all__ = ["Conn", "ConnectionPool", "Database", "first_line", "lost", "one_row", "parse_url", "redact"]
