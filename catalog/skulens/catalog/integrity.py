"""Catalog integrity: refuse a lost store at open, and the full offline check behind `skulens catalog check`.

The store (catalog.db) is the source of truth; the index snapshot is derived and carries a sha256 trailer
(`VectorIndex.save`). At open, `refuse_lost_store` refuses a missing or empty catalog.db when the directory
shows that the catalog held data (a snapshot, a non-empty WAL), and `Store` runs `PRAGMA quick_check`.
`check_catalog` runs SQLite's full `integrity_check` and compares the snapshot with the store (checksum, stamp,
reference ids, count and vectors); it only reads.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from skulens.catalog.errors import CatalogCorrupt
from skulens.catalog.index import VectorIndex
from skulens.catalog.settings import CatalogSettings
from skulens.catalog.store import REQUIRED_META, REQUIRED_TABLES, remedy, sqlite_findings, table_names

log = logging.getLogger(__name__)

DB_FILE = "catalog.db"
SNAPSHOT_FILE = "index.snapshot"
StoreIdentity = tuple[int, str, int]  # (dim, fingerprint, generation) of a store


def evidence_of_data(path: Path) -> list[str]:
    """Phrases naming the files in catalog directory `path` that only a catalog that held data leaves."""
    found: list[str] = []
    snap = path / SNAPSHOT_FILE
    if snap.is_file():
        stamp = (VectorIndex.read_header(snap) or {}).get("stamp")
        refs = stamp.get("references") if isinstance(stamp, dict) else None
        found.append(f"{snap} exists" + (f" (an index of {refs} references)" if isinstance(refs, int) else ""))
    wal = path / (DB_FILE + "-wal")
    if wal.is_file() and wal.stat().st_size > 0:
        found.append(f"{wal} holds {wal.stat().st_size} bytes")
    return found


def refuse_lost_store(path: Path) -> list[str]:
    """Raise `CatalogCorrupt` when catalog.db in `path` is missing or empty (0 bytes) although the directory
    shows that the catalog held data; return that evidence (empty for a new catalog) for `Store`."""
    db = path / DB_FILE
    evidence = evidence_of_data(path)
    state = "missing" if not db.exists() else "empty (0 bytes)" if db.is_file() and db.stat().st_size == 0 else ""
    if state and evidence:
        raise CatalogCorrupt(f"catalog store {db} is {state}, yet {' and '.join(evidence)}: the catalog's data "
                             f"are lost; {remedy(db)}")
    if state.startswith("empty"):
        log.warning("catalog store %s is an empty file and nothing else shows data: starting a new catalog", db)
    return evidence


@dataclass
class CheckReport:
    """Findings of `check_catalog`: (level, text) lines, level "ok", "note" or "PROBLEM"."""

    path: Path
    lines: list[tuple[str, str]] = field(default_factory=list)
    subjects: set[str] = field(default_factory=set)  # what the problems concern: "store", "snapshot", "model"

    @property
    def problems(self) -> list[str]:
        return [text for level, text in self.lines if level == "PROBLEM"]

    @property
    def healthy(self) -> bool:
        return not self.problems

    def add(self, level: str, text: str, subject: str = "store") -> None:
        self.lines.append((level, text))
        if level == "PROBLEM":
            self.subjects.add(subject)

    def format(self) -> str:
        """The readable report: one line per finding, then the verdict (and what to do when unhealthy)."""
        out = [f"catalog check of {self.path}"]
        out += [f"  {level:<8} {text}" for level, text in self.lines]
        if self.healthy:
            out.append("result: healthy")
        else:
            n = len(self.problems)
            todo = []
            if "store" in self.subjects:
                todo.append(f"restore {self.path} from a backup, or move it aside to start with an empty catalog")
            if "snapshot" in self.subjects:
                todo.append("the next open discards the index snapshot and rebuilds the index from the store")
            if "model" in self.subjects:
                todo.append("run `skulens reembed` with the new model")
            out.append(f"result: {n} problem{'s' if n > 1 else ''}: " + "; ".join(todo))
        return "\n".join(out)


def check_catalog(path: Path, *, fingerprint: str | None = None, dim: int | None = None) -> CheckReport:
    """Check catalog directory `path` offline (read-only): full SQLite integrity check, schema, metadata,
    foreign keys, counts, embedding sizes, and the index snapshot against the store. `fingerprint` / `dim`:
    the model the catalog will be served with, when known."""
    path = Path(path)
    report = CheckReport(path)
    db = path / DB_FILE
    if not path.is_dir():
        report.add("PROBLEM", f"{path} is not a directory")
        return report
    evidence = evidence_of_data(path)
    if not db.is_file() or db.stat().st_size == 0:
        state = "is missing" if not db.exists() else "is not a file" if not db.is_file() else "is empty (0 bytes)"
        why = f", yet {' and '.join(evidence)}: the catalog's data are lost" if evidence else ": no catalog here"
        report.add("PROBLEM", f"{db} {state}{why}")
        return report
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        report.add("PROBLEM", f"{db} cannot be opened: {exc}")
        return report
    with closing(conn):
        try:
            ids, identity = _check_store(conn, db, report, evidence, fingerprint, dim)
        except sqlite3.Error as exc:
            report.add("PROBLEM", f"{db} cannot be read: {exc}")
            return report
        if ids is not None:
            _check_snapshot(path / SNAPSHOT_FILE, conn, report, ids, identity)
    return report


def _check_store(conn: sqlite3.Connection, db: Path, report: CheckReport, evidence: list[str],
                 fingerprint: str | None, dim: int | None) -> tuple[np.ndarray | None, StoreIdentity]:
    """The store's checks; returns (reference ids, (dim, fingerprint, generation)) or (None, ...) to stop."""
    none: StoreIdentity = (0, "", 0)
    try:
        rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check(20)").fetchall()]
    except sqlite3.DatabaseError as exc:  # some damage stops the full check; quick_check may say where
        rows = [str(exc)]
        with suppress(sqlite3.DatabaseError):
            rows += [str(r[0]) for r in conn.execute("PRAGMA quick_check(5)").fetchall() if r[0] != "ok"]
    if rows == ["ok"]:
        report.add("ok", f"{db.name}: SQLite integrity_check passed ({db.stat().st_size} bytes)")
    else:
        report.add("PROBLEM", f"{db}: SQLite integrity_check failed: {sqlite_findings(rows)}")
    tables = table_names(conn)
    if "meta" not in tables:
        why = f", yet {' and '.join(evidence)}: the catalog's data are lost" if evidence else ""
        report.add("PROBLEM", f"{db} holds no catalog schema{why}")
        return None, none
    missing = [t for t in REQUIRED_TABLES if t not in tables]
    kv = {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta").fetchall()}
    bad = [f"{k} missing" for k in REQUIRED_META if k not in kv]
    bad += [f"{k} is {kv[k]!r}" for k in ("schema_version", "generation", "dim") if k in kv and not kv[k].isdigit()]
    if missing or bad:
        report.add("PROBLEM", f"{db}: damaged schema or metadata: " + ", ".join(
            [f"table {t} missing" for t in missing] + bad))
        return None, none
    gen, fp, sdim = int(kv["generation"]), kv.get("fingerprint", ""), int(kv.get("dim", "0"))
    report.add("ok", f"schema version {kv['schema_version']}, catalog {kv['catalog_uuid']}, generation {gen}, "
               + (f"model {fp} (dim {sdim})" if fp else "no model recorded yet"))
    fk = conn.execute("PRAGMA foreign_key_check").fetchall()
    if fk:
        report.add("PROBLEM", f"{len(fk)} rows point to rows that do not exist (first: table {fk[0][0]} rowid "
                   f"{fk[0][1]} -> {fk[0][2]})")
    products = int(conn.execute("SELECT COUNT(*) FROM products").fetchone()[0])
    refs, flagged = conn.execute("SELECT COUNT(*), COALESCE(SUM(has_image != 0), 0) FROM refs").fetchone()
    images = int(conn.execute("SELECT COUNT(*) FROM ref_images").fetchone()[0])
    report.add("ok" if int(flagged) == images else "PROBLEM",
               f"{products} products, {refs} references, {images} stored images"
               + ("" if int(flagged) == images else f" but {flagged} references say they have an image"))
    if sdim:
        wrong = int(conn.execute("SELECT COUNT(*) FROM refs WHERE length(embedding) != ?",
                                 (sdim * 4,)).fetchone()[0])
        other = int(conn.execute("SELECT COUNT(*) FROM refs WHERE fingerprint != ?", (fp,)).fetchone()[0])
        if wrong:
            report.add("PROBLEM", f"{wrong} references have an embedding that is not {sdim} float32")
        if other:
            report.add("PROBLEM", f"{other} references were embedded by another model than {fp}")
    staged = int(conn.execute("SELECT COUNT(*) FROM reembed_staging").fetchone()[0])
    if staged:
        report.add("note", f"{staged} re-embedded vectors staged by an unfinished `skulens reembed` (rerun it)")
    if fingerprint is not None and fp and (fp, sdim) != (fingerprint, dim):
        report.add("PROBLEM", f"the catalog's embeddings were made by {fp} (dim {sdim}) but the model is "
                   f"{fingerprint} (dim {dim}): run `skulens reembed`", "model")
    elif fingerprint is not None:
        report.add("ok", f"model {fingerprint} (dim {dim}) matches the catalog")
    ids = np.asarray([r[0] for r in conn.execute("SELECT reference_id FROM refs ORDER BY reference_id")],
                     dtype=np.int64)
    return ids, (sdim, fp, gen)


def _store_vectors(conn: sqlite3.Connection, dim: int, chunk: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    cur = conn.execute("SELECT reference_id, embedding FROM refs WHERE length(embedding) = ? "
                       "ORDER BY reference_id", (dim * 4,))
    while rows := cur.fetchmany(chunk):
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        yield ids, np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dim)


def _check_snapshot(snap: Path, conn: sqlite3.Connection, report: CheckReport, store_ids: np.ndarray,
                    identity: StoreIdentity) -> None:
    """Snapshot vs store: checksum, stamp, then (when the stamp says it is current) ids, count and vectors."""
    dim, fp, gen = identity
    if not snap.exists():
        report.add("note", f"{snap.name}: none (the index is built from the store at open)")
        return
    problem = VectorIndex.verify_snapshot(snap)
    if problem is not None:
        report.add("PROBLEM", f"{snap} {problem}", "snapshot")
        return
    header = VectorIndex.read_header(snap) or {}
    raw = header.get("stamp")
    stamp: dict[str, object] = raw if isinstance(raw, dict) else {}
    uuid = conn.execute("SELECT value FROM meta WHERE key = 'catalog_uuid'").fetchone()[0]
    expected = {"catalog_uuid": uuid, "generation": gen, "fingerprint": fp, "dim": dim,
                "references": len(store_ids)}
    stale = [f"{k} {stamp.get(k)!r} (store {v!r})" for k, v in expected.items() if stamp.get(k) != v]
    if stale:
        report.add("note", f"{snap.name}: checksum ok but stale ({', '.join(stale)}): the next open rebuilds the "
                   "index from the store")
        return
    try:
        index = VectorIndex.load(snap, CatalogSettings())
        ids, vectors = index.stored_vectors()
    except Exception as exc:  # a snapshot with a valid checksum that faiss cannot read: a writer bug
        report.add("PROBLEM", f"{snap} passes its checksum but cannot be read: {exc}", "snapshot")
        return
    order = np.argsort(ids, kind="stable")
    ids, vectors = ids[order], vectors[order]
    in_index = np.isin(store_ids, ids)
    extra = np.setdiff1d(ids, store_ids)
    tomb = int(header.get("tombstones", 0)) if index.kind == "hnsw" else 0
    found: list[str] = []
    if not in_index.all():
        missing = store_ids[~in_index]
        found.append(f"{len(missing)} references of the store are not in the index (first {missing[:5].tolist()})")
    if len(extra) != tomb:
        found.append(f"{len(extra)} ids in the index are not in the store (first {extra[:5].tolist()})")
    if len(np.unique(ids)) != len(ids):
        found.append("the index holds some ids twice")
    differ = 0
    for chunk_ids, chunk in _store_vectors(conn, dim):
        pos = np.searchsorted(ids, chunk_ids)
        ok = (pos < len(ids)) & (ids[np.minimum(pos, len(ids) - 1)] == chunk_ids) if len(ids) else \
            np.zeros(len(chunk_ids), bool)
        differ += int(np.count_nonzero(np.any(vectors[pos[ok]] != chunk[ok], axis=1)))
    if differ:
        found.append(f"{differ} index vectors differ from the store's embeddings")
    if found:
        report.add("PROBLEM", f"{snap} disagrees with the store: " + "; ".join(found), "snapshot")
    else:
        report.add("ok", f"{snap.name}: checksum ok, {index.kind} index of generation {gen} holds the store's "
                   f"{len(store_ids)} references with the same ids and vectors"
                   + (f" (+{tomb} tombstones)" if tomb else ""))
