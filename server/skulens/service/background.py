"""`BackgroundLoop`: a round of background work every `pause_seconds`, on the server's event loop.

The augmenter and the purger share it: `start` once serving, `stop` before the engine and catalog close; a failed
round is logged (with its traceback, server-side only) and the next one runs after the pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger(__name__)


class BackgroundLoop:
    """Runs `round()` every `pause_seconds` until stopped (subclasses define `round`)."""

    def __init__(self, pause_seconds: float, what: str) -> None:
        self.pause_seconds = pause_seconds
        self.what = what
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the loop on the running event loop (first round after one pause)."""
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Stop the loop (a round in flight is cancelled at its next await; what it stored stays)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def round(self) -> None:
        """One round of work."""
        raise NotImplementedError

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.pause_seconds)
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; trying again in %.1f s", self.what, self.pause_seconds)
