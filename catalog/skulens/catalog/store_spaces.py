"""`SpaceStore`: the SQLite store's side of a model migration (see `skulens.catalog.migration_state`).

The serving space is `refs.embedding`; the one other space (candidate, or previous after a switch) is
`space_embeddings`. The state JSON is the `migration` key of `meta`. Every change is one transaction that bumps
the generation, like every other write of the store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from skulens.catalog.migration_state import (
    MigrationState,
    ModelSpace,
    PendingReference,
    SpaceProgress,
    refuse_incomplete,
)
from skulens.catalog.models import region_of
from skulens.catalog.store import Store


class SpaceStore:
    """Migration state and the non-serving space's embeddings of one `Store`."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @staticmethod
    def _state(tx: sqlite3.Connection) -> MigrationState:
        kv = dict(tx.execute("SELECT key, value FROM meta WHERE key IN ('fingerprint', 'dim', 'migration')"))
        return MigrationState.from_json(str(kv.get("fingerprint", "")), int(kv.get("dim", 0)), kv.get("migration"))

    def state(self) -> MigrationState:
        """The stored migration state."""
        with self._store._lock:
            return self._state(self._store.conn)

    def save(self, state: MigrationState, drop: ModelSpace | None = None) -> int:
        """Store `state` (dropping the embeddings of `drop`); the new generation."""
        with self._store.transaction() as tx:
            if drop is not None:
                tx.execute("DELETE FROM space_embeddings WHERE fingerprint = ?", (drop.fingerprint,))
            if state.phase == "none" and not state.serving.model_dir:
                tx.execute("DELETE FROM meta WHERE key = 'migration'")
            else:
                tx.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('migration', ?)", (state.to_json(),))
            return self._store._bump(tx)

    def pending(self, fingerprint: str, after: int, limit: int) -> list[PendingReference]:
        """Live references with id > `after` and no embedding in the space, in id order, with their image."""
        with self._store._lock:
            rows = self._store.conn.execute(
                "SELECT r.reference_id, i.image, r.region_x, r.region_y, r.region_w, r.region_h FROM refs r "
                "LEFT JOIN ref_images i ON i.reference_id = r.reference_id "
                "WHERE r.reference_id > ? AND NOT EXISTS (SELECT 1 FROM space_embeddings s "
                "WHERE s.fingerprint = ? AND s.reference_id = r.reference_id) ORDER BY r.reference_id LIMIT ?",
                (int(after), fingerprint, int(limit))).fetchall()
        return [PendingReference(int(r[0]), None if r[1] is None else bytes(r[1]), region_of(r[2:6])) for r in rows]

    def put(self, fingerprint: str, rows: Sequence[tuple[int, bytes]]) -> tuple[list[int], int]:
        """Write (reference id, float32 bytes) of the space for references that still exist and lack one;
        (ids written, generation)."""
        with self._store.transaction() as tx:
            written = []
            for rid, blob in rows:
                cur = tx.execute("INSERT OR IGNORE INTO space_embeddings(fingerprint, reference_id, embedding) "
                                 "SELECT ?, reference_id, ? FROM refs WHERE reference_id = ?", (fingerprint, blob, rid))
                if cur.rowcount:
                    written.append(int(rid))
            gen = self._store._bump(tx) if written else int(
                tx.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])
        return written, gen

    def progress(self, fingerprint: str, serving: bool = False) -> SpaceProgress:
        """How far the space is filled (`serving`: it is the serving space, complete by construction)."""
        with self._store._lock:
            return self._progress(self._store.conn, fingerprint, serving)

    @staticmethod
    def _progress(conn: sqlite3.Connection, fingerprint: str, serving: bool = False) -> SpaceProgress:
        live = int(conn.execute("SELECT COUNT(*) FROM refs").fetchone()[0])
        if serving:
            return SpaceProgress(fingerprint, live, live, 0)
        embedded = int(conn.execute("SELECT COUNT(*) FROM space_embeddings s JOIN refs r ON r.reference_id = "
                                    "s.reference_id WHERE s.fingerprint = ?", (fingerprint,)).fetchone()[0])
        bad = [int(r[0]) for r in conn.execute(
            "SELECT r.reference_id FROM refs r WHERE r.has_image = 0 AND NOT EXISTS (SELECT 1 FROM "
            "space_embeddings s WHERE s.fingerprint = ? AND s.reference_id = r.reference_id) "
            "ORDER BY r.reference_id", (fingerprint,))]
        return SpaceProgress(fingerprint, live, embedded, len(bad), tuple(bad[:100]))

    def switch(self, fingerprint: str) -> tuple[MigrationState, int]:
        """Serve space `fingerprint` (candidate or previous) in one transaction: its embeddings move into `refs`,
        the serving ones into `space_embeddings`; MigrationError when a live reference lacks one (nothing
        changes). (new state, generation)."""
        with self._store.transaction() as tx:
            state = self._state(tx)
            new = state.switch(fingerprint)
            if new is state:
                return state, int(tx.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])
            old = state.serving
            refuse_incomplete(self._progress(tx, fingerprint))
            tx.execute("INSERT OR REPLACE INTO space_embeddings(fingerprint, reference_id, embedding) "
                       "SELECT ?, reference_id, embedding FROM refs", (old.fingerprint,))
            tx.execute("UPDATE refs SET fingerprint = ?, embedding = (SELECT s.embedding FROM space_embeddings s "
                       "WHERE s.fingerprint = ? AND s.reference_id = refs.reference_id)", (fingerprint, fingerprint))
            tx.execute("DELETE FROM space_embeddings WHERE fingerprint = ?", (fingerprint,))
            tx.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", [
                ("fingerprint", new.serving.fingerprint), ("dim", str(new.serving.dim)),
                ("migration", new.to_json())])
            return new, self._store._bump(tx)
