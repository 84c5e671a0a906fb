"""`BackgroundLoop`: rounds every pause, a failing round logged and the loop going on, stop cancels a round."""

from __future__ import annotations

import asyncio
import logging

import pytest

from skulens.service.background import BackgroundLoop


class Counting(BackgroundLoop):
    def __init__(self, fail_on: int = -1, block_on: int = -1) -> None:
        super().__init__(0.01, "counting test")
        self.rounds = 0
        self.fail_on, self.block_on = fail_on, block_on
        self.blocked = asyncio.Event()

    async def round(self) -> None:
        self.rounds += 1
        if self.rounds == self.fail_on:
            raise RuntimeError("round failed on purpose")
        if self.rounds == self.block_on:
            self.blocked.set()
            await asyncio.sleep(3600)


async def test_rounds_follow_each_other_and_a_failure_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    loop = Counting(fail_on=2)
    with caplog.at_level(logging.ERROR, logger="skulens.service.background"):
        loop.start()
        for _ in range(500):
            if loop.rounds >= 4:
                break
            await asyncio.sleep(0.01)
        await loop.stop()
    assert loop.rounds >= 4
    assert any("counting test failed" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_stop_cancels_a_round_in_flight_and_is_idempotent() -> None:
    loop = Counting(block_on=1)
    loop.start()
    await asyncio.wait_for(loop.blocked.wait(), 5)
    await asyncio.wait_for(loop.stop(), 5)
    assert loop.rounds == 1
    await loop.stop()  # a second stop does nothing


async def test_the_base_round_is_abstract() -> None:
    with pytest.raises(NotImplementedError):
        await BackgroundLoop(1.0, "x").round()
