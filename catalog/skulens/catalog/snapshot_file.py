"""`SnapshotFile`: the index snapshot (`index.snapshot`), written at close and loaded at open instead of a build.

The file's stamp names the catalog, the store generation, the model, the reference count and the index
settings it was written for. At open it is used only when that stamp matches the store, its checksum its
content, and it holds exactly the store's reference ids; otherwise the index is rebuilt from the store, with a
WARNING naming the file when the file was damaged (a stale one is merely noted in `info`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from skulens.catalog.errors import CatalogCorrupt
from skulens.catalog.index import GpuFactory, VectorIndex, choose_kind
from skulens.catalog.models import SnapshotInfo
from skulens.catalog.settings import CatalogSettings
from skulens.catalog.store import Store, StoreSnapshot

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 2  # 2: the search width is tuned on product recall (format 1's on reference recall: rebuilt)


class SnapshotFile:
    """Stamps, loads and writes one catalog's index snapshot; `info` says what became of it."""

    def __init__(self, path: Path, store: Store, settings: CatalogSettings, gpu_factory: GpuFactory | None) -> None:
        self.path = path
        self.settings = settings
        self._store = store
        self._gpu_factory = gpu_factory
        self.saved_generation: int | None = None  # store generation of the file on disk, once loaded or written
        self.info = SnapshotInfo(str(path), settings.snapshot, False, "not loaded", None, 0)

    def stamp(self, catalog_uuid: str, generation: int, fingerprint: str, dim: int,
              references: int) -> dict[str, Any]:
        """What a snapshot of this index state must carry to be loaded later."""
        return {"format": SNAPSHOT_FORMAT, "catalog_uuid": catalog_uuid, "generation": generation,
                "fingerprint": fingerprint, "dim": dim, "references": references,
                "config": self.settings.index_config()}

    def save_if_changed(self, index: VectorIndex | None, generation: int, fingerprint: str, dim: int,
                        references: int) -> bool:
        """Write `index` (the state at store generation `generation`) unless snapshots are off, the file holds
        that generation already, or another process wrote since (a snapshot would be stale); True if written."""
        if not self.settings.snapshot or index is None or self.saved_generation == generation:
            return False
        if self._store.generation() != generation:
            return False
        stamp = self.stamp(self._store.meta().catalog_uuid, generation, fingerprint, dim, references)
        size = index.save(self.path, stamp)
        self.saved_generation = generation
        old = self.info
        self.info = SnapshotInfo(old.path, True, old.loaded, old.detail, generation, size)
        return True

    def load(self, snap: StoreSnapshot, ids: np.ndarray, fingerprint: str, dim: int) -> VectorIndex | None:
        """The snapshot's index when it is current (stamp), intact (checksum) and holds exactly the store's
        reference ids `ids`; else None (rebuild), with a WARNING naming the file when it was damaged."""
        header = VectorIndex.read_header(self.path)
        size = self.path.stat().st_size if self.path.exists() else 0
        expected = self.stamp(snap.catalog_uuid, snap.generation, fingerprint, dim, len(ids))
        index, detail, damage = self._open(header, expected, ids)
        if damage:
            log.warning("index snapshot %s discarded (%s); rebuilding the index from the store", self.path, damage)
        gen = None if header is None else header.get("stamp", {}).get("generation")
        self.info = SnapshotInfo(str(self.path), True, index is not None, detail, gen, size)
        if index is not None:
            self.saved_generation = snap.generation
        return index

    def _open(self, header: dict[str, Any] | None, expected: dict[str, Any],
              ids: np.ndarray) -> tuple[VectorIndex | None, str, str]:
        """(the index or None, what became of the file, why it was discarded as damaged or "")."""
        path, live = self.path, len(ids)
        if header is None:
            if path.exists():
                return None, "unreadable snapshot", "not a skulens index snapshot or its header is garbled"
            return None, "no snapshot", ""
        stamp = header.get("stamp", {})
        diff = [k for k in expected if stamp.get(k) != expected[k]]
        if diff:
            detail = ", ".join(f"{k} {stamp.get(k)!r} != store {expected[k]!r}"
                               for k in diff if k != "config")
            return None, "stale snapshot: " + (detail or "index settings changed"), ""
        if choose_kind(live, self.settings, str(header.get("kind"))) != header.get("kind"):
            return None, "snapshot index kind no longer fits the catalog size", ""
        try:
            index = VectorIndex.load(path, self.settings, gpu_factory=self._gpu_factory)
        except CatalogCorrupt as exc:
            why = str(exc).removeprefix(f"index snapshot {path} ")
            return None, f"corrupt snapshot: {why}", why
        except Exception as exc:
            return None, f"unreadable snapshot: {exc}", f"faiss cannot read it ({exc})"
        physical = index.ntotal - (index.tombstones if index.kind == "hnsw" else 0)
        if physical != live or not np.isin(ids, index.reference_ids()).all():
            return None, f"snapshot holds {physical} live vectors, store has {live}", (
                f"it holds {physical} live vectors with ids that differ from the store's {live} references")
        return index, "loaded", ""
