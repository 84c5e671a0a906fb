"""`Purger`: removes the catalog's old deletions for good, in the background, every `interval_seconds`.

The shared catalog deletes by tombstone (`skulens.catalog.postgres_purge`); every replica runs a purger, and the
catalog's purge lease (a PostgreSQL advisory lock) lets one purge at a time: the others find it taken and skip
that round. The embedded catalog has nothing to purge (its purge reports zeros). Counted in
`skulens_catalog_purged_total{what}`; a failed round is logged and tried again next interval.
"""

from __future__ import annotations

import asyncio
import logging

from skulens.catalog.purge import PurgeReport
from skulens.service.background import BackgroundLoop
from skulens.service.state import Phase, Runtime

log = logging.getLogger(__name__)


class Purger(BackgroundLoop):
    """The background loop (see the module doc)."""

    def __init__(self, runtime: Runtime, *, older_than_seconds: float, interval_seconds: float,
                 max_seconds: float = 60.0) -> None:
        super().__init__(interval_seconds, "catalog purge")
        self.rt = runtime
        self.older_than_seconds = older_than_seconds
        self.interval_seconds = interval_seconds
        self.max_seconds = max_seconds  # one round starts no batch after this long (the rest goes next round)
        self.last: PurgeReport | None = None

    async def round(self) -> None:
        """One purge round."""
        await self.step()

    async def step(self) -> PurgeReport | None:
        """One round: purge what was deleted more than `older_than_seconds` ago (None: not serving)."""
        catalog = self.rt.catalog
        if self.rt.phase is not Phase.SERVING or catalog is None:
            return None
        report = await asyncio.to_thread(catalog.purge_deleted, self.older_than_seconds,
                                         max_seconds=self.max_seconds)
        self.last = report
        if self.rt.metrics is not None:
            self.rt.metrics.count_purged(report)
        if report.rows:
            log.info("catalog %s", report.format())
        return report
