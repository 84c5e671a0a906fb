"""Read-your-writes across replicas: wait until this server's catalog reaches a version a client names.

Every write answers with the catalog version it produced; a client that reads through another replica passes it
as `min_catalog_version`, and the read waits (bounded by the call's deadline and `--catalog-wait-ms`) until this
replica's catalog reflects it. The wait polls `CatalogBackend.version()` from a worker thread, backing off from
2 ms to 50 ms; a replica still behind at the end answers UNAVAILABLE with a retry hint, never a stale answer.
"""

from __future__ import annotations

import asyncio
import time

from skulens.catalog.backend import CatalogBackend
from skulens.service.errors_grpc import CatalogBehind


async def reach_version(
    catalog: CatalogBackend, wanted: int, deadline: float | None, max_wait_s: float, field: str
) -> int:
    """The catalog's version once it is at least `wanted` (at once when `wanted` is 0); `CatalogBehind` naming
    `field` when it is still behind at the deadline or after `max_wait_s`."""
    version = await asyncio.to_thread(catalog.version)
    if version >= wanted:
        return version
    now = time.monotonic()
    end = now + max_wait_s if deadline is None else min(deadline - 0.005, now + max_wait_s)
    delay = 0.002
    while time.monotonic() < end:
        await asyncio.sleep(min(delay, max(0.0, end - time.monotonic())))
        delay = min(delay * 2, 0.05)
        version = await asyncio.to_thread(catalog.version)
        if version >= wanted:
            return version
    raise CatalogBehind(
        f"this server's catalog is at version {version}, behind the {wanted} asked for after waiting "
        f"{max(0.0, end - now) * 1000:.0f} ms; retry, or call another replica",
        field,
        retry_after_s=0.1,
    )
