"""Zero-downtime model migration on a running server: `MigrationManager` keeps the models the catalog's
migration needs loaded, back-fills the non-serving model's space in a background thread, compares a share of live
answers with the candidate (shadow) and carries out start / switch / abort / finish.

The catalog store holds the state (`skulens.catalog.migration_state`), so any replica may be asked and every replica
follows: each polls the state every `poll_seconds` (and a PostgreSQL catalog notices a switch at its next version
read), loads the models it names from their recorded directories, serves the one the store says serves, and sends
enrolments to both spaces. One replica at a time back-fills (the catalog's back-fill lease). A query is always
searched in the space of the model that embedded it, and the old space stays until `finish`, so no call fails across
a switch.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from skulens.catalog.errors import InvalidArgument, MigrationError
from skulens.catalog.migration_state import MigrationState, ModelSpace, SpaceProgress
from skulens.errors import SkulensError
from skulens.imaging.preprocess import Box

if TYPE_CHECKING:
    from skulens.inference.protocol import Encoder
    from skulens.service.state import Runtime

log = logging.getLogger("skulens.migration")

#: Loads the model in a directory (a path on this server) and warms it.
LoadEngine = Callable[[str], Awaitable["Encoder"]]
RETIRE_AFTER_S = 30.0  # an engine no longer named by the state is closed this long after (calls in flight finish)


@dataclass
class ShadowStats:
    """Serving vs candidate answers to the same queries (this replica), bounded memory."""

    compared: int = 0
    agree: int = 0
    errors: int = 0
    shifts: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    serving_best: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    candidate_best: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, serving: tuple[str, float], candidate: tuple[str, float]) -> None:
        """One query: (top-1 product id, best score) of each model ("" / -1 when nothing was found)."""
        with self.lock:
            self.compared += 1
            self.agree += int(bool(serving[0]) and serving[0] == candidate[0])
            self.shifts.append(candidate[1] - serving[1])
            self.serving_best.append(serving[1])
            self.candidate_best.append(candidate[1])

    def report(self, threshold: float) -> dict[str, float]:
        """Agreement, score-shift statistics and the candidate threshold keeping the same UNKNOWN share."""
        with self.lock:
            shifts = np.asarray(self.shifts, dtype=np.float64)
            serving = np.asarray(self.serving_best, dtype=np.float64)
            candidate = np.asarray(self.candidate_best, dtype=np.float64)
            out = {"compared": float(self.compared), "top1_agree": float(self.agree), "errors": float(self.errors)}
        out["top1_agreement"] = self.agree / self.compared if self.compared else 0.0
        if len(shifts):
            out["mean_score_shift"] = float(shifts.mean())
            p05, p50, p95 = np.quantile(shifts, [0.05, 0.5, 0.95])
            out.update(score_shift_p05=float(p05), score_shift_p50=float(p50), score_shift_p95=float(p95))
            share = float(np.mean(serving < threshold))
            out["unknown_share"] = share
            out["suggested_unknown_threshold"] = float(np.quantile(candidate, share))
        return out


class _Rate:
    """Images per second over the last minute."""

    def __init__(self) -> None:
        self._events: deque[tuple[float, int]] = deque()

    def add(self, n: int) -> None:
        self._events.append((time.monotonic(), n))

    def per_second(self) -> float:
        now = time.monotonic()
        while self._events and self._events[0][0] < now - 60.0:
            self._events.popleft()
        if not self._events:
            return 0.0
        span = max(1.0, now - self._events[0][0])
        return sum(n for _, n in self._events) / span


class MigrationManager:
    """Models, back-fill, shadow comparison and the migration steps of one server (see the module doc)."""

    def __init__(self, runtime: Runtime, load_engine: LoadEngine, *, poll_seconds: float = 1.0,
                 backfill_batch: int = 32, backfill_pause_seconds: float = 0.0, model_dir: str = "",
                 seed: int | None = None) -> None:
        self.rt = runtime
        self._load_engine = load_engine
        self.poll_seconds = poll_seconds
        self.backfill_batch = backfill_batch
        self.backfill_pause = backfill_pause_seconds
        self.model_dir = model_dir  # the directory of the model this server was started with
        self.engines: dict[str, Encoder] = {}
        self.load_errors: dict[str, str] = {}
        self.state: MigrationState | None = None
        self.progress: SpaceProgress | None = None
        self.shadow = ShadowStats()
        self.embedded_here = 0
        self.backfill_running = False
        self._rate = _Rate()
        self._rng = random.Random(seed)
        self._sync_lock = asyncio.Lock()
        self._stop = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # shadow comparisons and engine closes in flight
        self._retiring: list[tuple[float, Encoder]] = []
        self._progress_at = 0.0
        self._initial: Encoder | None = None  # the engine the server started with (closed by its owner)

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Adopt the catalog's state (loading the models it names), then poll it and back-fill in the background."""
        self._loop = asyncio.get_running_loop()
        await self.sync()
        self._task = asyncio.ensure_future(self._poll())
        self._thread = threading.Thread(target=self._backfill_loop, name="skulens-backfill", daemon=True)
        self._thread.start()

    @property
    def initial_engine(self) -> Encoder | None:
        """The engine the server started with (its owner closes it)."""
        return self._initial

    async def stop(self) -> None:
        """Stop polling and back-filling; close the engines this manager loaded (not the server's initial one,
        even when it no longer serves)."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30.0)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        loaded = {id(e): e for e in [*self.engines.values(), *(e for _, e in self._retiring)]}
        for engine in loaded.values():
            if engine is not self._initial:  # the server's own engine is closed by its owner
                await engine.close()
        self.engines.clear()
        self._retiring.clear()

    async def _poll(self) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.sync()
            except Exception:
                log.exception("could not read the migration state; keeping the current models")

    # ---------------------------------------------------------------- state
    async def sync(self) -> MigrationState:
        """Read the state; load the models it names, serve the serving one, route enrolments to the other."""
        catalog = self.rt.catalog
        engine = self.rt.engine
        assert catalog is not None and engine is not None
        async with self._sync_lock:
            if self._initial is None:
                self._initial = engine
                self.engines[engine.fingerprint] = engine
            state = await asyncio.to_thread(catalog.migration_state)
            for space in (state.serving, state.other):
                if space is not None:
                    await self._ensure(space)
            serving = self.engines.get(state.serving.fingerprint)
            if serving is not None and self.rt.engine is not serving:
                log.info("serving model %s (was %s)", serving.fingerprint, self.rt.model_fingerprint)
                self.rt.engine = serving
                if self.rt.metrics is not None:
                    self.rt.metrics.bind(serving)
            other = state.other
            self.rt.other_engine = self.engines.get(other.fingerprint) if other is not None else None
            if state.candidate is not None and (self.state is None or self.state.candidate != state.candidate):
                self.shadow = ShadowStats()  # a new candidate: compare afresh
            if state != self.state:
                self._progress_at = 0.0
            self.state = state
            self._retire(state)
            if other is None:
                self.progress = None
            elif time.monotonic() - self._progress_at > 5.0:
                await self.refresh_progress()
            return state

    async def _ensure(self, space: ModelSpace) -> None:
        if space.fingerprint in self.engines or not space.model_dir or space.fingerprint in self.load_errors:
            return
        try:
            engine = await self._load_engine(space.model_dir)
        except Exception as exc:
            self.load_errors[space.fingerprint] = f"{type(exc).__name__}: {exc}"
            log.error("cannot load model %s from %s: %s (this replica keeps its other models)", space.fingerprint,
                      space.model_dir, exc)
            return
        if (engine.fingerprint, engine.dim) != (space.fingerprint, space.dim):
            self.load_errors[space.fingerprint] = (f"{space.model_dir} holds model {engine.fingerprint} "
                                                   f"(dim {engine.dim}), not {space.fingerprint}")
            log.error("model directory %s: %s", space.model_dir, self.load_errors[space.fingerprint])
            await engine.close()
            return
        self.engines[space.fingerprint] = engine
        log.info("model %s loaded from %s", engine.fingerprint, space.model_dir)

    def _retire(self, state: MigrationState) -> None:
        """Close engines the state no longer names, `RETIRE_AFTER_S` later (calls in flight may hold them)."""
        named = {s.fingerprint for s in (state.serving, state.candidate, state.previous) if s is not None}
        now = time.monotonic()
        for fp in [fp for fp in self.engines if fp not in named]:
            engine = self.engines.pop(fp)
            self._retiring.append((now + RETIRE_AFTER_S, engine))
        due = [e for at, e in self._retiring if at <= now and e is not self.rt.engine]
        self._retiring = [(at, e) for at, e in self._retiring if e not in due]
        for engine in due:
            if engine is not self._initial and self._loop is not None:
                task = self._loop.create_task(engine.close())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def engine_for(self, fingerprint: str) -> Encoder | None:
        """The loaded engine of `fingerprint`, if any."""
        return self.engines.get(fingerprint)

    # ---------------------------------------------------------------- steps (RPCs)
    async def start_migration(self, model_dir: str, shadow_share: float) -> MigrationState:
        """Load the model at `model_dir`, record it as the candidate and let the back-fill begin."""
        if not model_dir:
            raise InvalidArgument("model_dir is required: the candidate's model directory on the server",
                                  field="model_dir")
        catalog = self.rt.catalog
        assert catalog is not None
        engine = await self._load_engine(model_dir)
        fp = engine.fingerprint
        if fp in self.engines:
            await engine.close()
            engine = self.engines[fp]
        try:
            await asyncio.to_thread(catalog.start_migration, ModelSpace(fp, engine.dim, model_dir), shadow_share,
                                    self.model_dir)
        except BaseException as exc:
            if self.engines.get(fp) is not engine:
                await engine.close()
            if isinstance(exc, SkulensError) and exc.field == "model":  # the catalog's name for the request's model
                raise exc.with_field("model_dir") from None
            raise
        self.engines[fp] = engine
        self.load_errors.pop(fp, None)
        log.info("migration to %s started (shadow share %.3f)", fp, shadow_share)
        return await self.sync()

    async def switch(self, fingerprint: str) -> MigrationState:
        """Serve `fingerprint` from now on (this replica at once, the others at their next poll)."""
        catalog = self.rt.catalog
        assert catalog is not None
        if not fingerprint:
            raise InvalidArgument("fingerprint is required: the model to serve", field="fingerprint")
        if fingerprint not in self.engines:
            await self.sync()
        if fingerprint not in self.engines:
            reason = self.load_errors.get(fingerprint, "it is not loaded on this replica")
            raise MigrationError(f"model {fingerprint!r} cannot serve here: {reason}", field="fingerprint")
        await asyncio.to_thread(catalog.switch_model, fingerprint)
        return await self.sync()

    async def abort(self) -> MigrationState:
        """Drop the candidate (before a switch)."""
        assert self.rt.catalog is not None
        await asyncio.to_thread(self.rt.catalog.abort_migration)
        return await self.sync()

    async def finish(self) -> MigrationState:
        """Drop the previous model (after a switch)."""
        assert self.rt.catalog is not None
        await asyncio.to_thread(self.rt.catalog.finish_migration)
        return await self.sync()

    async def refresh_progress(self) -> SpaceProgress | None:
        """Count the back-fill progress now (for a status call)."""
        state, catalog = self.state, self.rt.catalog
        if state is None or state.other is None or catalog is None:
            return None
        self.progress = await asyncio.to_thread(catalog.space_progress, state.other.fingerprint)
        self._progress_at = time.monotonic()
        return self.progress

    def rate(self) -> float:
        """This replica's back-fill images per second over the last minute."""
        return self._rate.per_second()

    # ---------------------------------------------------------------- back-fill (a thread)
    def _backfill_loop(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self._backfill_round()
            except Exception:
                log.exception("back-fill round failed; retrying")
                worked = False
            if not worked:
                self._stop.wait(self.poll_seconds)

    def _backfill_round(self) -> bool:
        """Back-fill while this replica holds the lease and work remains; True when it embedded something."""
        state, catalog = self.state, self.rt.catalog
        other = state.other if state is not None else None
        engine = self.engines.get(other.fingerprint) if other is not None else None
        if other is None or engine is None or catalog is None or self._loop is None:
            return False
        if self.progress is not None and self.progress.pending == 0:
            return False
        worked = False
        with catalog.backfill_lease() as mine:
            if not mine:
                return False
            self.backfill_running = True
            try:
                after = 0
                while not self._stop.is_set() and self.state is state:
                    batch = catalog.pending_references(other.fingerprint, after, self.backfill_batch)
                    if not batch:
                        break
                    after = batch[-1].reference_id
                    todo = [p for p in batch if p.image is not None]
                    if not todo:
                        continue
                    regions = [[Box(*p.region)] if p.region is not None else None for p in todo]
                    future = asyncio.run_coroutine_threadsafe(engine.embed_images(
                        [p.image for p in todo if p.image is not None], regions=regions, caller=self), self._loop)
                    outs = future.result()
                    good = [(p.reference_id, o) for p, o in zip(todo, outs, strict=True) if isinstance(o, np.ndarray)]
                    for p, o in zip(todo, outs, strict=True):
                        if not isinstance(o, np.ndarray):
                            log.warning("back-fill: reference %d cannot be embedded by %s: %s", p.reference_id,
                                        other.fingerprint, o)
                    if good:
                        n = catalog.put_space_embeddings(other.fingerprint, [r for r, _ in good],
                                                         np.stack([o for _, o in good]))
                        self.embedded_here += n
                        self._rate.add(n)
                        worked = True
                    if self.backfill_pause > 0:
                        self._stop.wait(self.backfill_pause)
            finally:
                self.backfill_running = False
        if worked:
            self._progress_at = 0.0  # recount at the next poll
        return worked

    # ---------------------------------------------------------------- shadow
    def maybe_shadow(self, contents: Sequence[bytes], boxes: Sequence[list[Box] | None],
                     answers: Sequence[tuple[str, float] | None], threshold: float) -> None:
        """With the state's shadow share, have the candidate answer these whole images too (in the background;
        answers are (top-1 product id, best score) of the serving model, None where it had none)."""
        state = self.state
        if state is None or state.candidate is None or state.shadow_share <= 0.0:
            return
        engine = self.engines.get(state.candidate.fingerprint)
        if engine is None or self._rng.random() >= state.shadow_share:
            return
        picked: list[tuple[bytes, tuple[str, float]]] = [
            (c, a) for c, b, a in zip(contents, boxes, answers, strict=True) if b is None and a is not None]
        if not picked:
            return
        task = asyncio.ensure_future(self._shadow(engine, state.candidate.fingerprint, picked))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shadow(self, engine: Encoder, space: str, picked: list[tuple[bytes, tuple[str, float]]]) -> None:
        catalog = self.rt.catalog
        try:
            outs = await engine.embed_images([c for c, _ in picked], caller=self)
            rows = [(o, a) for o, (_, a) in zip(outs, picked, strict=True) if isinstance(o, np.ndarray)]
            if not rows or catalog is None:
                return
            found = await asyncio.to_thread(catalog.search, np.stack([o for o, _ in rows]), top_k=1, trusted=True,
                                            space=space)
            for res, (_, served) in zip(found, rows, strict=True):
                cand = (res.matches[0].product_id, res.best_score) if res.matches else ("", res.best_score)
                self.shadow.record(served, cand)
        except Exception as exc:  # never affects the live answer
            with self.shadow.lock:
                self.shadow.errors += 1
            log.debug("shadow comparison failed: %s", exc)

    # ---------------------------------------------------------------- metrics
    def collector(self) -> Collector:
        """Prometheus metrics of the migration (read at scrape time)."""
        return _MigrationCollector(self)


class _MigrationCollector(Collector):
    def __init__(self, manager: MigrationManager) -> None:
        self._m = manager

    def collect(self) -> Iterator[Any]:
        m = self._m
        state, progress = m.state, m.progress
        phase = GaugeMetricFamily("skulens_migration_phase", "1 for the migration's current phase", labels=["phase"])
        for name in ("none", "candidate", "switched"):
            phase.add_metric([name], 1.0 if state is not None and state.phase == name else 0.0)
        yield phase
        pend = GaugeMetricFamily("skulens_migration_backfill_references",
                                 "Live references of the non-serving model's space, by state", labels=["state"])
        if progress is not None:
            pend.add_metric(["embedded"], progress.embedded)
            pend.add_metric(["pending"], progress.pending)
            pend.add_metric(["unembeddable"], progress.unembeddable)
        yield pend
        yield CounterMetricFamily("skulens_migration_backfill_images", "Images this replica back-filled",
                                  value=m.embedded_here)
        yield GaugeMetricFamily("skulens_migration_backfill_running", "1 while this replica back-fills",
                                value=1.0 if m.backfill_running else 0.0)
        with m.shadow.lock:
            compared, agree, errors = m.shadow.compared, m.shadow.agree, m.shadow.errors
        yield CounterMetricFamily("skulens_migration_shadow_compared", "Queries answered by both models",
                                  value=compared)
        yield CounterMetricFamily("skulens_migration_shadow_top1_agree",
                                  "Shadow queries whose top-1 product both models agree on", value=agree)
        yield CounterMetricFamily("skulens_migration_shadow_errors", "Shadow comparisons that failed", value=errors)


def top1(result: Any) -> tuple[str, float] | None:
    """(top-1 product id, best score) of a Recognition message that answered (None for a failed item)."""
    if result.status.code != 0:
        return None
    return (result.matches[0].product_id if result.matches else "", float(result.best_score))
