"""What work costs on this machine, learned while serving: seconds per model input and per decoded megapixel.

The engine feeds it every micro-batch (size, seconds) and every decode (pixels, seconds); admission control
reads `estimate(items, pixels)` to turn a request into expected seconds of work before any of it is done.
Estimates are exponentially weighted moving averages, so they follow a machine that gets busier or a model
that is swapped; until the first observations they hold the seeds given at construction (the engine seeds the
inference cost from its warm-up run).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

MEGAPIXEL = 1_000_000


@dataclass(frozen=True)
class CostSnapshot:
    """The current estimates."""

    infer_s_per_item: float
    decode_s_per_mpix: float
    decode_workers: int


class CostModel:
    """Thread-safe EWMA estimates of inference seconds per item and decode seconds per megapixel.

    `alpha` is the weight of a new observation. Inference cost is observed per batch and divided by its size,
    so under load (full batches) it converges to the batched cost per item. Decode cost is per worker: with
    `decode_workers` threads decoding in parallel the pool's throughput is that many times higher.
    """

    def __init__(
        self,
        *,
        infer_s_per_item: float = 0.02,
        decode_s_per_mpix: float = 0.01,
        decode_workers: int = 1,
        alpha: float = 0.1,
    ) -> None:
        if infer_s_per_item <= 0 or decode_s_per_mpix <= 0 or decode_workers < 1 or not 0 < alpha <= 1:
            raise ValueError("cost seeds must be > 0, decode_workers >= 1, alpha in (0, 1]")
        self._infer = infer_s_per_item
        self._decode = decode_s_per_mpix
        self._workers = decode_workers
        self._alpha = alpha
        self._lock = threading.Lock()

    def seed_inference(self, batch_size: int, seconds: float) -> None:
        """Replace the inference estimate outright (a warm-up measurement)."""
        if batch_size > 0 and seconds > 0:
            with self._lock:
                self._infer = seconds / batch_size

    def observe_inference(self, batch_size: int, seconds: float) -> None:
        """One model run of `batch_size` items took `seconds`."""
        if batch_size <= 0 or seconds <= 0:
            return
        with self._lock:
            self._infer += self._alpha * (seconds / batch_size - self._infer)

    def observe_decode(self, pixels: int, seconds: float) -> None:
        """One decode + preprocess that produced `pixels` pixels took `seconds` (tiny images are ignored: their
        fixed overhead would inflate the per-pixel figure)."""
        if pixels < MEGAPIXEL // 10 or seconds <= 0:
            return
        with self._lock:
            self._decode += self._alpha * (seconds / (pixels / MEGAPIXEL) - self._decode)

    def snapshot(self) -> CostSnapshot:
        """The current estimates."""
        with self._lock:
            return CostSnapshot(self._infer, self._decode, self._workers)

    def estimate(self, items: int, pixels: int) -> float:
        """Expected seconds of machine time for `items` model inputs decoded from `pixels` pixels."""
        s = self.snapshot()
        return items * s.infer_s_per_item + (pixels / MEGAPIXEL) * s.decode_s_per_mpix / s.decode_workers
