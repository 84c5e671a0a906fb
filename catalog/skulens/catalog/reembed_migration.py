"""`skulens reembed` on any backend: re-embedding a catalog with a new model as a model migration done offline.

The staged swap of `skulens.catalog.reembed` belongs to the embedded catalog. The shared one (and an embedded one
that already holds a migration, or whose old model is to be kept) is re-embedded through the migration protocol of
`CatalogBackend` instead, as a server would do it (`skulens.catalog.migration_state`): start (or resume) a
migration to the new model's space, back-fill every pending reference from its stored image under the catalog's
back-fill lease, batch by batch (each batch commits: a killed run loses at most the batch in flight and a rerun
continues from what the space holds), then switch and, unless the previous model is kept, finish. References that
cannot get an embedding (no stored image, an image that fails to decode) block the switch: the run refuses with
`ReembedBlocked`, naming them, and keeps what it back-filled. Servers on a shared catalog keep answering with the
old model meanwhile and follow the switch if they can load the new model from the directory recorded for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from skulens.catalog import validation as v
from skulens.catalog.backend import CatalogBackend
from skulens.catalog.errors import CatalogClosed, CatalogError, InvalidArgument, MigrationError
from skulens.catalog.location import CatalogLocation, open_catalog
from skulens.catalog.migration_state import ModelSpace, SpaceProgress
from skulens.catalog.models import DroppedReference, ReembedReport
from skulens.catalog.reembed import EmbedImages
from skulens.catalog.settings import CatalogSettings

log = logging.getLogger("skulens.catalog")

#: References named in a `ReembedBlocked` (the count covers all of them).
LISTED = 50
NO_IMAGE = "no stored image"


class ReembedBlocked(MigrationError):
    """Live references cannot get the new model's embedding, so the catalog cannot switch to it; nothing was
    switched and the embeddings back-filled so far are kept. `references`: up to `LISTED` of them with why,
    `count`: how many lack an embedding."""

    def __init__(self, message: str, field: str | None = None, *,
                 references: Sequence[DroppedReference] = (), count: int = 0) -> None:
        super().__init__(message, field)
        self.references = list(references)
        self.count = count


@runtime_checkable
class StagedReembed(Protocol):
    """A backend with its own offline re-embedding (the embedded catalog's staged swap)."""

    def reembed(self, new_fingerprint: str, new_dim: int, embed_images: EmbedImages, *, batch_size: int = 64,
                progress: Callable[[int, int], None] | None = None) -> ReembedReport:
        ...


def runs_as_migration(catalog: CatalogBackend, keep_previous: bool = False) -> bool:
    """Whether re-embedding `catalog` runs as a migration: on a backend without a staged swap (the shared one),
    and on the embedded one when a migration is under way or the previous model is to be kept."""
    if keep_previous or not isinstance(catalog, StagedReembed):
        return True
    return catalog.migration_state().phase != "none"


def open_for_reembed(location: CatalogLocation, target: ModelSpace, settings: CatalogSettings | None = None, *,
                     keep_previous: bool = False) -> tuple[CatalogBackend, bool]:
    """Open the catalog at `location` (created if new) to re-embed it into `target`: (catalog, whether it runs
    as a migration). A migration needs the catalog opened for the model it serves; the staged swap takes it opened
    for the new model (reads and the swap only)."""
    cat = open_catalog(location, fingerprint=target.fingerprint, dim=target.dim, settings=settings,
                       allow_fingerprint_mismatch=True)
    try:
        migrate = runs_as_migration(cat, keep_previous)
        state = cat.migration_state()
        other = state.other
        opened_for_serving = (state.serving.fingerprint == target.fingerprint or (other is not None
                              and (other.fingerprint, other.dim) == (target.fingerprint, target.dim)))
    except BaseException:
        cat.close()
        raise
    if not migrate or opened_for_serving:
        return cat, migrate
    cat.close()
    serving = state.serving
    return open_catalog(location, fingerprint=serving.fingerprint, dim=serving.dim, settings=settings), True


def reembed_by_migration(catalog: CatalogBackend, target: ModelSpace, embed_images: EmbedImages, *,
                         batch_size: int = 64, keep_previous: bool = False,
                         progress: Callable[[int, int], None] | None = None, stop: threading.Event | None = None,
                         wait_seconds: float = 1.0) -> ReembedReport:
    """Move `catalog` (opened for the model it serves) to `target`'s model: start or resume the migration, back-fill
    every pending reference, switch, and finish unless `keep_previous`; a rerun after an interruption continues.

    `embed_images` as for `Catalog.reembed` (an exception it raises aborts the run; committed batches stay).
    `progress(done, total)` after each batch. `stop` set: abort between batches (CatalogClosed). While another
    process (a server) holds the back-fill lease, waits `wait_seconds` at a time until it is free or the space is
    filled. ReembedBlocked when references cannot get an embedding; MigrationError when another migration is under
    way. In the report, `reembedded` counts the live references with a new-model embedding at the switch, `resumed`
    those that had one before this run (an interrupted run, enrolments during the migration, a server's back-fill).
    """
    fp = v.fingerprint(target.fingerprint, "fingerprint")
    dim = v.dim(target.dim)
    batch = v.positive_int(batch_size, "batch_size", 65536)
    stop = stop or threading.Event()
    t0 = time.perf_counter()
    state = catalog.migration_state()
    if state.serving.fingerprint == fp:  # switched already: a rerun after a run that stopped before it finished
        old = state.previous or state.serving
        if state.previous is not None and not keep_previous:
            catalog.finish_migration()
        done = catalog.space_progress(fp)
        return ReembedReport(old.fingerprint, fp, old.dim, dim, done.embedded, done.embedded, [],
                             time.perf_counter() - t0)
    old = state.serving
    same = state.candidate is not None and state.candidate.fingerprint == fp
    catalog.start_migration(ModelSpace(fp, dim, target.model_dir), state.shadow_share if same else 0.0)
    before = catalog.space_progress(fp)
    failed = _Backfill(catalog, fp, dim, embed_images, batch, progress, stop).run(before, wait_seconds)
    after = catalog.space_progress(fp)
    if not after.complete:
        raise _blocked(catalog, after, failed, old)
    catalog.switch_model(fp)
    if not keep_previous:
        catalog.finish_migration()
    return ReembedReport(old.fingerprint, fp, old.dim, dim, after.embedded, before.embedded, [],
                         time.perf_counter() - t0)


class _Backfill:
    """Fills one space from the stored images; remembers the references whose image could not be embedded."""

    def __init__(self, catalog: CatalogBackend, fp: str, dim: int, embed_images: EmbedImages, batch: int,
                 progress: Callable[[int, int], None] | None, stop: threading.Event) -> None:
        self.catalog, self.fp, self.dim, self.embed_images, self.batch = catalog, fp, dim, embed_images, batch
        self.progress = progress or (lambda done, total: None)
        self.stop = stop
        self.failed: dict[int, str] = {}  # reference id -> why its image gave no embedding

    def run(self, before: SpaceProgress, wait_seconds: float) -> dict[int, str]:
        """Back-fill under the lease (waiting while another process holds it); the failures."""
        told = False
        while True:
            with self.catalog.backfill_lease() as mine:
                if mine:
                    self._passes(before.embedded, before.live)
                    return self.failed
            now = self.catalog.space_progress(self.fp)
            self.progress(now.embedded, now.live)
            if now.pending == 0:  # the other process filled it
                return self.failed
            if not told:
                log.warning("another process (a server?) is back-filling model %s in this catalog: waiting for it",
                            self.fp)
                told = True
            if self.stop.wait(wait_seconds):
                raise CatalogClosed("reembed interrupted; run it again to resume")

    def _passes(self, done: int, total: int) -> None:
        """Pass over the pending references until a pass finds none to try (enrolments meanwhile are picked up)."""
        tried = True
        while tried:
            tried, after = False, 0
            while True:
                if self.stop.is_set():
                    raise CatalogClosed("reembed interrupted; run it again to resume")
                page = self.catalog.pending_references(self.fp, after, self.batch)
                if not page:
                    break
                after = page[-1].reference_id
                todo = [(p.reference_id, p.image, p.region) for p in page
                        if p.image is not None and p.reference_id not in self.failed]
                if todo:
                    tried = True
                    self._embed(todo)
                    done += len(todo)
                    self.progress(done, max(done, total))

    def _embed(self, todo: list[tuple[int, bytes, tuple[int, int, int, int] | None]]) -> None:
        images = [img for _, img, _ in todo]
        regions = [region for _, _, region in todo]
        outs = list(self.embed_images(images, regions) if any(r is not None for r in regions)
                    else self.embed_images(images))
        if len(outs) != len(todo):
            raise CatalogError(f"embed_images returned {len(outs)} results for {len(todo)} images")
        ids: list[int] = []
        rows: list[np.ndarray] = []
        tolerance = self.catalog.settings.norm_tolerance
        for (rid, _, _), out in zip(todo, outs, strict=True):
            if isinstance(out, Exception):
                self.failed[rid] = f"embedding failed: {out}"
                continue
            try:
                rows.append(v.vectors(out, self.dim, tolerance, "embedding", single=True)[0])
            except InvalidArgument as exc:
                self.failed[rid] = f"invalid embedding: {exc}"
                continue
            ids.append(rid)
        if ids:
            self.catalog.put_space_embeddings(self.fp, ids, np.stack(rows))


def _blocked(catalog: CatalogBackend, progress: SpaceProgress, failed: dict[int, str],
             old: ModelSpace) -> ReembedBlocked:
    """The refusal to switch: what blocks it, with up to `LISTED` references named (product looked up)."""
    reasons = {rid: NO_IMAGE for rid in progress.unembeddable_ids}
    reasons.update(failed)
    named = [DroppedReference(rid, _product_of(catalog, rid), why) for rid, why in sorted(reasons.items())[:LISTED]]
    missing = progress.live - progress.embedded
    parts = [f"{progress.unembeddable} have no stored image"] if progress.unembeddable else []
    if failed:
        parts.append(f"{len(failed)} could not be embedded")
    rest = missing - progress.unembeddable - len(failed)
    if rest > 0:
        parts.append(f"{rest} were enrolled while it ran")
    message = (f"cannot switch to model {progress.fingerprint!r}: it lacks embeddings of {missing} of "
               f"{progress.live} live references ({', '.join(parts)}). Delete them or enrol them again with a "
               f"usable image, then run the command again: it keeps the {progress.embedded} embeddings back-filled "
               f"so far (nothing was switched; the catalog still serves {old.fingerprint!r})")
    return ReembedBlocked(message, references=named, count=missing)


def _product_of(catalog: CatalogBackend, reference_id: int) -> str:
    """The product of a live reference ("?" when it is gone)."""
    got = catalog.export_references(after=reference_id - 1, limit=1)
    return got[0].product_id if got and got[0].reference_id == reference_id else "?"


__all__ = ["LISTED", "ReembedBlocked", "StagedReembed", "open_for_reembed", "reembed_by_migration",
           "runs_as_migration"]
