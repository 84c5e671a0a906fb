"""Per-catalog verdict thresholds: what `skulens calibrate --apply` measured for this catalog, kept in its store.

Scores live on different scales for different models and for plain versus catalog-adapted matching, so a stored
pair (unknown threshold, ambiguity margin) belongs to one (matching mode, model fingerprint); the server uses the
pair for its own mode and serving model, and falls back to its settings when there is none. A request's
`SearchOptions` still override both.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from skulens.catalog.errors import InvalidArgument

MATCHING_MODES = ("adapted", "nearest")


@dataclass(frozen=True)
class VerdictThresholds:
    """Verdict thresholds for one matching mode and model, with where they came from."""

    matching: str
    fingerprint: str
    unknown_threshold: float
    ambiguity_margin: float
    source: str = ""  # how they were measured (e.g. "calibrate --labelled: 296 photos, target false accepts 5 %")
    set_at: float = 0.0

    def __post_init__(self) -> None:
        if self.matching not in MATCHING_MODES:
            raise InvalidArgument(f"matching must be one of {MATCHING_MODES}, got {self.matching!r}", field="matching")
        if not self.fingerprint:
            raise InvalidArgument("fingerprint is required", field="fingerprint")
        if not (math.isfinite(self.unknown_threshold) and -1.0 <= self.unknown_threshold <= 1.0):
            raise InvalidArgument(f"unknown_threshold must be in [-1, 1], got {self.unknown_threshold}",
                                  field="unknown_threshold")
        if not (math.isfinite(self.ambiguity_margin) and 0.0 <= self.ambiguity_margin <= 2.0):
            raise InvalidArgument(f"ambiguity_margin must be in [0, 2], got {self.ambiguity_margin}",
                                  field="ambiguity_margin")
        if len(self.source) > 1024:
            raise InvalidArgument("source must be at most 1024 characters", field="source")


def encode(entries: Sequence[VerdictThresholds]) -> str:
    """The stored form (JSON)."""
    return json.dumps([asdict(e) for e in entries], sort_keys=True)


def decode(text: str | None) -> list[VerdictThresholds]:
    """Entries from the stored form (None or empty: none)."""
    if not text:
        return []
    return [VerdictThresholds(**e) for e in json.loads(text)]


def replace(entries: Sequence[VerdictThresholds], new: VerdictThresholds) -> list[VerdictThresholds]:
    """`entries` with `new` in place of the entry of the same (matching, fingerprint)."""
    return [e for e in entries if (e.matching, e.fingerprint) != (new.matching, new.fingerprint)] + [new]


def pick(entries: Sequence[VerdictThresholds], matching: str, fingerprint: str) -> VerdictThresholds | None:
    """The entry for this matching mode and model, if stored."""
    for e in entries:
        if (e.matching, e.fingerprint) == (matching, fingerprint):
            return e
    return None
