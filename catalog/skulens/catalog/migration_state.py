"""The state of a model migration, kept in the catalog store (both backends) so that every replica sees it.

A catalog serves one model's embedding space. A migration adds a second space (the *candidate*, keyed by its
model fingerprint), fills it from the stored reference images (back-fill) while the serving model keeps
answering, then `switch`es: the candidate serves and the old space stays as *previous* until `finish` drops it
(so a switch can be undone by switching back), or `abort` drops the candidate instead. At most one other space
exists at a time. The transitions here are pure; each backend stores the JSON in the same transaction as the
change it describes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import Any

from skulens.catalog import validation as v
from skulens.catalog.errors import InvalidArgument, MigrationError


@dataclass(frozen=True)
class ModelSpace:
    """One model's embedding space in the catalog: its fingerprint, dimension and where its model lives
    (the model directory as the servers see it; "" when unknown)."""

    fingerprint: str
    dim: int
    model_dir: str = ""


@dataclass(frozen=True)
class SpaceProgress:
    """How far a space is filled: live references, those with an embedding in the space, and those that cannot
    get one (no stored image; up to 100 of their ids in `unembeddable_ids`)."""

    fingerprint: str
    live: int
    embedded: int
    unembeddable: int
    unembeddable_ids: tuple[int, ...] = ()

    @property
    def pending(self) -> int:
        """References still to embed (their image is stored)."""
        return max(0, self.live - self.embedded - self.unembeddable)

    @property
    def complete(self) -> bool:
        """Every live reference has an embedding in the space."""
        return self.embedded >= self.live


@dataclass(frozen=True)
class PendingReference:
    """A live reference without an embedding in some space, and its stored image (None: not kept)."""

    reference_id: int
    image: bytes | None
    region: tuple[int, int, int, int] | None = None  # the crop the reference is of (x, y, width, height)


@dataclass(frozen=True)
class MigrationState:
    """Which spaces the catalog holds: `serving`, and at most one of `candidate` (being filled) or `previous`
    (served before the last switch, kept until `finish`). `shadow_share`: the share of live recognitions the
    candidate also answers (for comparison only)."""

    serving: ModelSpace
    candidate: ModelSpace | None = None
    previous: ModelSpace | None = None
    shadow_share: float = 0.0
    started_at: float = 0.0
    switched_at: float = 0.0

    @property
    def phase(self) -> str:
        """"none", "candidate" (back-fill / shadow; not serving yet) or "switched" (previous kept)."""
        if self.candidate is not None:
            return "candidate"
        return "switched" if self.previous is not None else "none"

    @property
    def other(self) -> ModelSpace | None:
        """The space besides the serving one (candidate or previous), if any: enrolments go to both."""
        return self.candidate or self.previous

    def space(self, fingerprint: str) -> ModelSpace | None:
        """The space with this fingerprint, if the catalog holds it."""
        for s in (self.serving, self.candidate, self.previous):
            if s is not None and s.fingerprint == fingerprint:
                return s
        return None

    # ---------------------------------------------------------------- transitions (pure)
    def start(self, candidate: ModelSpace, shadow_share: float, serving_model_dir: str = "",
              now: float | None = None) -> MigrationState:
        """Add `candidate`; the same candidate again only updates its share and model directory.
        `serving_model_dir` is recorded for the serving model when the state does not know it yet."""
        fp, dim = v.fingerprint(candidate.fingerprint, "fingerprint"), v.dim(candidate.dim)
        share = check_share(shadow_share)
        if fp == self.serving.fingerprint:
            raise InvalidArgument(f"model {fp!r} is the serving model already", field="model")
        if self.previous is not None:
            raise MigrationError(f"the catalog still keeps the previous model {self.previous.fingerprint!r} of the "
                                 "last switch: run `skulens migrate finish` (or switch back) first")
        if self.candidate is not None and self.candidate.fingerprint != fp:
            raise MigrationError(f"a migration to {self.candidate.fingerprint!r} is running: abort it before "
                                 f"starting one to {fp!r}")
        if self.candidate is not None and self.candidate.dim != dim:
            raise InvalidArgument(f"model {fp!r} has dim {self.candidate.dim} in this catalog, not {dim}",
                                  field="model")
        started = self.started_at if self.candidate is not None else (time.time() if now is None else now)
        serving = self.serving
        if serving_model_dir and not serving.model_dir:
            serving = replace(serving, model_dir=serving_model_dir)
        return replace(self, serving=serving, candidate=ModelSpace(fp, dim, candidate.model_dir), shadow_share=share,
                       started_at=started)

    def switch(self, fingerprint: str, now: float | None = None) -> MigrationState:
        """Serve the candidate (or, undoing a switch, the previous model); the serving one becomes previous."""
        if self.candidate is not None and self.candidate.fingerprint == fingerprint:
            target = self.candidate
        elif self.previous is not None and self.previous.fingerprint == fingerprint:
            target = self.previous
        elif fingerprint == self.serving.fingerprint:
            return self  # already serving: a retried switch
        else:
            raise MigrationError(f"model {fingerprint!r} is neither the candidate nor the previous model of this "
                                 "catalog: start a migration to it first")
        return replace(self, serving=target, candidate=None, previous=self.serving, shadow_share=0.0,
                       switched_at=time.time() if now is None else now)

    def finish(self) -> tuple[MigrationState, ModelSpace | None]:
        """Forget the previous model (after a switch); (new state, the space to drop). Idempotent."""
        if self.candidate is not None:
            raise MigrationError(f"the migration to {self.candidate.fingerprint!r} has not switched yet: switch "
                                 "or abort it")
        return MigrationState(self.serving), self.previous

    def abort(self) -> tuple[MigrationState, ModelSpace | None]:
        """Forget the candidate (before a switch); (new state, the space to drop). Idempotent."""
        if self.previous is not None:
            raise MigrationError(f"the migration has switched already: switch back to "
                                 f"{self.previous.fingerprint!r} first, or finish it")
        return MigrationState(self.serving), self.candidate

    # ---------------------------------------------------------------- storage
    def to_json(self) -> str:
        """The part stored beside the serving identity (which the store keeps in its own columns)."""
        def space(s: ModelSpace | None) -> dict[str, Any] | None:
            return None if s is None else {"fingerprint": s.fingerprint, "dim": s.dim, "model_dir": s.model_dir}

        return json.dumps({"serving_model_dir": self.serving.model_dir, "candidate": space(self.candidate),
                           "previous": space(self.previous), "shadow_share": self.shadow_share,
                           "started_at": self.started_at, "switched_at": self.switched_at}, sort_keys=True)

    @classmethod
    def from_json(cls, fingerprint: str, dim: int, text: str | None) -> MigrationState:
        """The state of a catalog serving `fingerprint` / `dim` with stored JSON `text` (None: no migration)."""
        if not text:
            return cls(ModelSpace(fingerprint, dim))
        d = json.loads(text)

        def space(x: dict[str, Any] | None) -> ModelSpace | None:
            return None if not x else ModelSpace(str(x["fingerprint"]), int(x["dim"]), str(x.get("model_dir", "")))

        return cls(ModelSpace(fingerprint, dim, str(d.get("serving_model_dir", ""))), space(d.get("candidate")),
                   space(d.get("previous")), float(d.get("shadow_share", 0.0)), float(d.get("started_at", 0.0)),
                   float(d.get("switched_at", 0.0)))


def check_share(share: object) -> float:
    """A shadow share in [0, 1]; InvalidArgument otherwise."""
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0.0 <= float(share) <= 1.0:
        raise InvalidArgument(f"shadow_share must be in [0, 1], got {share!r}", field="shadow_share")
    return float(share)


def refuse_incomplete(progress: SpaceProgress) -> None:
    """MigrationError unless every live reference has an embedding in the space (a switch's precondition)."""
    if progress.complete:
        return
    missing = progress.live - progress.embedded
    detail = (f"; {progress.unembeddable} have no stored image (e.g. reference ids "
              f"{list(progress.unembeddable_ids[:10])}): delete them or enrol them again with their image"
              if progress.unembeddable else "")
    raise MigrationError(f"model {progress.fingerprint!r} lacks embeddings of {missing} of {progress.live} live "
                         f"references (back-fill still running{detail})")
