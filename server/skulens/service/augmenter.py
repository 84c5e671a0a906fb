"""`Augmenter`: embeds augmented views of the references of small products, in the background.

Catalog-adapted matching (`skulens.catalog.head`) scores a product with few references by the centroid of its
embeddings. One packshot is a poor centroid for shop photos; the centroid of the packshot and its 21 augmented
views (`skulens.imaging.augment`: mirror, corner and centre crops) measured better (docs/BENCHMARKS.md). Embedding
21 views per reference at enrolment would cut enrolment speed 22-fold, so they are embedded here instead, from the
stored image, once the server has been quiet for `quiet_seconds` (no call in progress, no catalog write by any
replica: enrolment and recognition traffic go first, and products still growing past `below` references are not
augmented).
Views of products that reach `below` references are pruned: their own references suffice.

Every replica may run one; the store keeps each reference's views once (a second writer's are skipped).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from skulens.errors import SkulensError
from skulens.imaging.augment import augmented_views
from skulens.imaging.preprocess import Box
from skulens.service.background import BackgroundLoop
from skulens.service.state import Phase, Runtime

log = logging.getLogger(__name__)


@dataclass
class AugmenterStats:
    """What the augmenter did since start, and the last counts it read from the catalog."""

    references: int = 0  # references given views here
    views: int = 0  # views embedded here
    failed: int = 0  # references whose stored image could not be used (left alone afterwards)
    pruned: int = 0  # views dropped because their product grew
    pending: int = -1  # references waiting (last count; -1: not counted yet)
    augmented: int = 0  # references with views (last count)


class Augmenter(BackgroundLoop):
    """The background loop (see the module doc)."""

    def __init__(self, runtime: Runtime, *, below: int, poll_seconds: float = 1.0, quiet_seconds: float = 2.0,
                 batch: int = 8) -> None:
        super().__init__(poll_seconds, "augmented views")
        self.rt = runtime
        self.below = below
        self.poll_seconds = poll_seconds
        self.quiet_seconds = quiet_seconds
        self.batch = batch
        self.stats = AugmenterStats()
        self._failed: set[int] = set()
        self._seen_version = -1
        self._changed_at = 0.0

    @property
    def unusable(self) -> int:
        """References whose stored image could not be used (left alone until the server restarts)."""
        return len(self._failed)

    async def round(self) -> None:
        """Batches back to back while there is work and the server stays quiet."""
        while await self.step():
            pass

    def _quiet(self, version: int) -> bool:
        """True when, for `quiet_seconds`, no call was in progress here and the catalog version did not move (no
        write by another replica either)."""
        now = time.monotonic()
        if version != self._seen_version or self.rt.admission.stats().calls > 0:
            self._seen_version, self._changed_at = version, now
        return now - self._changed_at >= self.quiet_seconds

    async def step(self) -> int:
        """One batch: prune, then embed and store the views of up to `batch` pending references; how many
        references were handled (0: nothing to do, or not now)."""
        catalog, engine = self.rt.catalog, self.rt.engine
        if self.rt.phase is not Phase.SERVING or catalog is None or engine is None:
            return 0
        if engine.fingerprint != catalog.fingerprint:  # a migration switched the catalog: the next poll follows
            return 0
        if not self._quiet(await asyncio.to_thread(catalog.version)):
            return 0
        self.stats.pruned += await asyncio.to_thread(catalog.prune_augmentations, self.below)
        pending = [p for p in await asyncio.to_thread(catalog.augmentation_pending, self.below, 0,
                                                      self.batch + len(self._failed))
                   if p.reference_id not in self._failed][: self.batch]
        if not pending:
            self.stats.pending, self.stats.augmented = await asyncio.to_thread(catalog.augmentation_counts,
                                                                               self.below)
            self.stats.pending = max(0, self.stats.pending - len(self._failed))
            return 0
        for ref in pending:
            if ref.image is None:
                continue
            box = Box(*ref.region) if ref.region is not None else None
            try:
                vectors = await engine.embed_views(ref.image, augmented_views, region=box)
            except SkulensError as exc:
                self._failed.add(ref.reference_id)
                self.stats.failed += 1
                log.warning("augmented views: reference %d left alone: %s", ref.reference_id, exc)
                continue
            written = await asyncio.to_thread(catalog.put_augmentations, ref.reference_id, vectors)
            if written:
                self.stats.references += 1
                self.stats.views += written
        self._seen_version = await asyncio.to_thread(catalog.version)  # our own writes do not count as activity
        self.stats.pending, self.stats.augmented = await asyncio.to_thread(catalog.augmentation_counts, self.below)
        self.stats.pending = max(0, self.stats.pending - len(self._failed))
        return len(pending)
