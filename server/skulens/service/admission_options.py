"""Limits of admission control (`skulens.service.admission`); `Settings.admission_options` builds them."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class AdmissionOptions:
    """Limits of `Admission` (see the module docstring)."""

    max_calls: int = 64
    max_inflight_bytes: int = 256 * MIB
    queue_budget_s: float = 1.0
    max_request_pixels: int = 1_000_000_000
    deadline_headroom: float = 0.9

    def __post_init__(self) -> None:
        if self.max_calls < 1 or self.max_inflight_bytes < 1 or self.max_request_pixels < 1:
            raise ValueError("max_calls, max_inflight_bytes and max_request_pixels must be >= 1")
        if self.queue_budget_s <= 0 or not 0 < self.deadline_headroom <= 1:
            raise ValueError("queue_budget_s must be > 0 and deadline_headroom in (0, 1]")
