"""`RebuildWorker`: rebuilds the index in a background thread when its kind no longer fits the catalog
(size, HNSW tombstones, IVF growth), while searches and writes go on.

The worker opens its own read view of the store under the catalog's write lock, so that no write sits between
its commit and its index update at that moment, and starts the view's journal. It then builds the new index
outside every lock; each write applied meanwhile is journaled and replayed onto the new index before it is
swapped in under the write side of the view's lock. A reload meanwhile (another process wrote, `reembed`)
starts a new epoch and the rebuilt index is discarded; closing the catalog cancels the build.
"""

from __future__ import annotations

import logging
import threading

from skulens.catalog.index import BuildCancelled, GpuFactory, VectorIndex, choose_kind
from skulens.catalog.matching import RefMap
from skulens.catalog.settings import CatalogSettings
from skulens.catalog.store import Store
from skulens.catalog.view import CatalogView

log = logging.getLogger(__name__)


class RebuildWorker:
    """At most one background index rebuild at a time for one catalog's `view`."""

    def __init__(self, store: Store, view: CatalogView, write_lock: threading.RLock, settings: CatalogSettings,
                 closing: threading.Event, gpu_factory: GpuFactory | None) -> None:
        """`write_lock` serialises the catalog's writers; `closing` is set when the catalog closes."""
        self._store = store
        self._view = view
        self._write_lock = write_lock
        self._settings = settings
        self._closing = closing
        self._gpu_factory = gpu_factory
        self._thread: threading.Thread | None = None

    def maybe_start(self) -> None:
        """Start a rebuild when the index kind no longer fits, unless one runs or the catalog is closing."""
        index = self._view.index
        if self._closing.is_set() or index is None or self.running():
            return
        reason = index.needs_rebuild(self._view.refs.live)
        if reason is None:
            return
        log.info("rebuilding the index in the background: %s", reason)
        self._thread = threading.Thread(target=self._run, name="skulens-index-rebuild", daemon=True)
        self._thread.start()

    def running(self) -> bool:
        """Whether a rebuild is in progress."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a running rebuild to finish (or be cancelled); True when none is running."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _run(self) -> None:
        view = self._view
        try:
            with self._write_lock:  # no write is between commit and index update while the view opens
                epoch, dim = view.epoch, view.dim
                current = view.index.kind if view.index is not None else None
                snap = self._store.read_snapshot()
                with view.rw.write():
                    view.journal = []
            try:
                gen = snap.generation
                ids, vectors = snap.embeddings(dim, self._settings.build_chunk)
                refs = RefMap()  # each reference's product at the snapshot: the recall measured is the product search's
                refs.set(*snap.reference_map())
            finally:
                snap.close()
            kind = choose_kind(len(ids), self._settings, current)
            new = VectorIndex.build(dim, ids, vectors, self._settings, kind, cancel=self._closing.is_set,
                                    gpu_factory=self._gpu_factory, products=refs.lookup(ids))
            del vectors
            with view.rw.write():
                if not self._swap_in(new, gen, epoch):
                    return
            log.info("index rebuilt as %s over %d references in %.2fs (recall@10 %s, search width %d)", new.kind,
                     new.ntotal, new.build_seconds, new.recall_at_10, new.search_width)
        except BuildCancelled:
            pass
        except Exception:
            log.exception("background index rebuild failed; the current index stays in use")
        finally:
            with view.rw.write():
                view.journal = None

    def _swap_in(self, new: VectorIndex, gen: int, epoch: int) -> bool:
        """Replay the journaled changes after generation `gen` onto `new` and search it from now on; False
        when the catalog is closing or a reload began a new epoch (caller holds the view's write side)."""
        view = self._view
        journal, view.journal = view.journal, None
        if epoch != view.epoch or journal is None or self._closing.is_set():
            return False
        for g, op, jids, jvecs in journal:
            if g <= gen:
                continue
            if op == "add" and jvecs is not None:
                new.add(jids, jvecs)
            else:
                new.remove(jids)
        view.install(new)
        return True
