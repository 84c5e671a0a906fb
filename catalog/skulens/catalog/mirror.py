"""`CatalogMirror`: a local FAISS copy of a shared catalog, kept in step by its change feed (`--catalog-cache faiss`).

A checkout lane must answer even while PostgreSQL cannot be reached. The mirror holds the serving model's live
references, the products (names, categories, labels) and the stored verdict thresholds in memory — a
`CatalogView`, as the embedded backend's — and follows the catalog through `skulens.catalog.postgres_feed`:

- one thread owns one connection that LISTENs on the catalog's channel; a NOTIFY only wakes it, and it also reads
  every `poll_seconds`, so a lost notification costs at most one poll;
- each read is one REPEATABLE READ snapshot: the version, then the current rows of every key changed since the
  mirror's version (versions follow commit order, so the result is exactly the catalog at that version);
- after every (re)connection, after a model switch, when the feed no longer holds the changes the mirror missed,
  and when its HNSW index holds too many removed vectors, it reads everything and builds a new index aside while
  the current one keeps answering, then swaps them;
- while the database is down it keeps answering from what it holds and says so (`state`: not reachable, the
  version it holds, seconds since its last read); it reconnects on its own, backing off up to a second.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import numpy as np
import psycopg
from psycopg import sql

from skulens.catalog import postgres_feed
from skulens.catalog.errors import CatalogUnavailable
from skulens.catalog.index import VectorIndex, choose_kind
from skulens.catalog.models import CacheState
from skulens.catalog.postgres_pool import Conn, ConnectionPool, first_line
from skulens.catalog.postgres_schema import NOTIFY_CHANNEL, CatalogSchema
from skulens.catalog.settings import CatalogSettings
from skulens.catalog.view import CatalogView

log = logging.getLogger(__name__)

DEFAULT_POLL_SECONDS = 1.0
MAX_BACKOFF_S = 1.0


class CatalogMirror:
    """The copy, its feed thread and its state. `view()` is the `CatalogView` searches read (under its read
    lock); it is replaced as a whole by a full read, changed in place by a delta."""

    def __init__(self, pool: ConnectionPool, schema: CatalogSchema, settings: CatalogSettings, *,
                 poll_seconds: float = DEFAULT_POLL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._pool = pool
        self._schema = schema
        self.settings = settings
        self.poll_seconds = poll_seconds
        self._clock = clock
        self._view = CatalogView(schema.fingerprint, schema.dim)
        self._view.install(VectorIndex.empty(schema.dim, settings))
        self._version = -1
        self._thresholds: str | None = None
        self._cond = threading.Condition()
        self._reachable = False
        self._seen = 0
        self._synced_at = clock()
        self._syncs = self._full_syncs = 0
        self._error = ""
        self._resync = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Conn | None = None

    # ---------------------------------------------------------------- reads
    def view(self) -> CatalogView:
        return self._view

    @property
    def version(self) -> int:
        return max(self._version, 0)

    @property
    def thresholds(self) -> str | None:
        """The stored verdict thresholds (raw, `skulens.catalog.thresholds.decode`) as of `version`."""
        return self._thresholds

    def state(self) -> CacheState:
        with self._cond:
            return CacheState("faiss", self._reachable, self.version, max(self._seen, self.version),
                               max(0.0, self._clock() - self._synced_at), self._syncs, self._full_syncs, self._error)

    def wait_for(self, version: int, timeout: float) -> bool:
        """Block until the copy holds `version` (True) or `timeout` seconds passed (False)."""
        end = self._clock() + timeout
        with self._cond:
            while self._version < version:
                left = end - self._clock()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Read the catalog once (CatalogUnavailable when it cannot be), then follow it from a thread."""
        self._stop.clear()
        conn = self._pool.connect()
        try:
            self._listen(conn)
            self._sync(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._thread = threading.Thread(target=self._run, name="skulens-catalog-mirror", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following (idempotent); the copy keeps what it holds."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(self.poll_seconds + 5.0)

    # ---------------------------------------------------------------- the feed thread
    def _run(self) -> None:
        backoff = 0.05
        conn, self._conn = self._conn, None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self._pool.connect()
                    self._listen(conn)
                    self._resync = True  # notifications were lost while disconnected
                    log.info("catalog mirror: reconnected to %s", self._pool.describe)
                self._sync(conn)
                backoff = 0.05
                self._wait(conn)
            except Exception as exc:  # any failure: report, reconnect, keep answering
                self._failed(exc)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                    conn = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
        if conn is not None:
            conn.close()

    def _listen(self, conn: Conn) -> None:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))

    def _wait(self, conn: Conn) -> None:
        """Until a notification of a newer version of this catalog, or `poll_seconds`."""
        prefix = self._schema.schema + ":"
        end = time.monotonic() + self.poll_seconds
        while not self._stop.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return
            for note in conn.notifies(timeout=min(left, 0.25), stop_after=1):
                if note.payload.startswith(prefix):
                    try:
                        seen = int(note.payload[len(prefix):])
                    except ValueError:
                        return
                    with self._cond:
                        self._seen = max(self._seen, seen)
                    if seen > self._version:
                        return

    def _failed(self, exc: BaseException) -> None:
        text = self._pool.scrub(first_line(exc))
        with self._cond:
            was, self._reachable = self._reachable, False
            self._error = text
        if not isinstance(exc, (psycopg.Error, CatalogUnavailable)):  # not the connection: a defect, with its trace
            log.error("catalog mirror: read failed: %s", text, exc_info=exc)
        elif was:
            log.warning("catalog mirror: the shared catalog at %s cannot be read (%s); answering from the copy at "
                        "version %d until it can", self._pool.describe, text, self.version)

    # ---------------------------------------------------------------- applying a read
    def _sync(self, conn: Conn) -> None:
        full = self._resync or self._version < 0
        state = postgres_feed.read(conn, self._schema, None if full else self._version, self._view.fingerprint)
        if state.full:
            self._install_full(state)
        elif state.version > self._version:
            self._apply_delta(state)
        with self._cond:
            self._seen = max(self._seen, state.version)
            self._reachable, self._error = True, ""
            self._synced_at = self._clock()
            self._thresholds = state.thresholds
            if state.version > self._version or state.full:
                self._version = state.version
                self._syncs += 1
                self._full_syncs += int(state.full)
            self._cond.notify_all()

    def _install_full(self, state: postgres_feed.FeedState) -> None:
        """A new view from a read of everything, built aside, then swapped in."""
        view = CatalogView(state.fingerprint, state.dim)
        for row in state.products:
            view.put_product(row)
        view.refs.set(state.ids, state.pks)
        kind = choose_kind(len(state.ids), self.settings)
        view.install(VectorIndex.build(state.dim, state.ids, state.vectors, self.settings, kind,
                                       products=state.pks) if len(state.ids)
                     else VectorIndex.empty(state.dim, self.settings))
        view.generation = state.version
        if state.fingerprint != self._schema.fingerprint or state.dim != self._schema.dim:
            log.info("catalog mirror: the catalog now serves model %s", state.fingerprint)
            self._schema = CatalogSchema(self._schema.schema, state.fingerprint, state.dim)
        self._view = view
        self._resync = False

    def _apply_delta(self, state: postgres_feed.FeedState) -> None:
        view = self._view
        with view.rw.write():
            for row in state.products:
                view.put_product(row)
            for pk in state.dropped_products:
                view.drop_product(pk)
            gone = state.dropped_refs[view.refs.lookup(state.dropped_refs) >= 0]
            if len(gone):
                view.remove_references(state.version, gone)
            new = view.refs.lookup(state.ids) < 0
            ids, pks, vectors = state.ids[new], state.pks[new], state.vectors[new]
            for pk in np.unique(pks):
                mine = pks == pk
                view.add_references(state.version, int(pk), ids[mine], vectors[mine])
            view.generation = state.version
            index = view.index
            if index is not None and index.needs_rebuild(view.refs.live):
                self._resync = True  # the next read builds a fresh index aside


__all__ = ["DEFAULT_POLL_SECONDS", "CatalogMirror"]
