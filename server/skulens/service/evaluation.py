"""The Evaluate use case: a stream of labelled photos, each recognised as by Recognize and kept only as its
answer, then the figures of `skulens.catalog.evaluation` as one `EvaluateResponse`.

Limits are the ones every photo call has: images per message, bytes per image, message size, the per-request
pixel budget (each message is a request), plus `max_evaluation_images` per call. The stream counts as one call
against the concurrency cap for its whole life; each message's work is admitted like an enrolment chunk: an
overloaded server makes it wait (within the call's deadline) rather than refusing it, since an evaluation is a
batch job. Messages are recognised one after the other: gRPC flow control keeps the client from sending more
than the server can take.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import numpy as np

from skulens.catalog.adapted import AdaptedMatcher
from skulens.catalog.backend import CatalogBackend
from skulens.catalog.errors import MigrationError
from skulens.catalog.evaluation import (
    EvaluationReport,
    Query,
    TopK,
    catalog_categories,
    evaluate,
    query_from_result,
)
from skulens.catalog.models import SearchResult
from skulens.errors import SkulensError, code_name, field_path
from skulens.inference.protocol import Encoder
from skulens.service.calllog import call_fields
from skulens.service.consistency import reach_version
from skulens.service.convert import SearchParams, check_images, clamped, matches_pb, search_params, verdict_pb
from skulens.service.embedding import embed_batch
from skulens.service.errors_grpc import BadRequest, TooMany, item_status
from skulens.service.settings import MIB, Settings
from skulens.service.state import Runtime, deadline_of
from skulens.v1 import recognition_pb2

pb = recognition_pb2
MAX_FAILURES_LISTED = 100


@dataclass(frozen=True)
class EvaluateParams:
    """Validated EvaluateOptions."""

    search: SearchParams
    target_false_accept: float = 0.05
    confused_pairs: int = 10
    include_queries: bool = False
    curve_points: int = 101


def evaluate_params(options: pb.EvaluateOptions, settings: Settings, prefix: str = "options") -> EvaluateParams:
    """EvaluateOptions checked against the server's limits (BadRequest names the field, a path under `prefix`);
    top_k at least 5."""
    search = search_params(options.search, settings, field_path(prefix, "search"))
    search = dataclasses.replace(search, top_k=max(search.top_k, min(5, settings.max_top_k)))
    target = float(options.target_false_accept) or 0.05
    if not (math.isfinite(target) and 0.0 < target < 1.0):
        field = field_path(prefix, "target_false_accept")
        raise BadRequest(f"{field} must be in (0, 1), got {options.target_false_accept}", field=field)
    pairs = options.confused_pairs or 10
    if pairs > 100:
        field = field_path(prefix, "confused_pairs")
        raise BadRequest(f"{field} must be <= 100, got {pairs}", field=field)
    points = options.curve_points or 101
    if not 2 <= points <= 1001:
        field = field_path(prefix, "curve_points")
        raise BadRequest(f"{field} must be in [2, 1001], got {points}", field=field)
    return EvaluateParams(search, target, pairs, bool(options.include_queries), points)


@dataclass
class _Photo:
    """One labelled photo once recognised: its answer, or the error it failed with."""

    id: str
    label: str
    group: str
    answer: SearchResult | SkulensError


@dataclass(eq=False)  # hashable by identity: the decode pool's caller key
class _Run:
    photos: list[_Photo] = field(default_factory=list)
    version: int = 0
    failed: int = 0


async def evaluate_stream(
    rt: Runtime, requests: AsyncIterator[pb.EvaluateRequest], context: grpc.aio.ServicerContext
) -> pb.EvaluateResponse:
    """Serve one Evaluate call (see recognition.proto). An error that ends the call names its field relative to the
    stream message and the message's position (`stream_index`)."""
    engine, catalog = rt.searchable()
    settings = rt.settings
    deadline = deadline_of(context)
    params = evaluate_params(pb.EvaluateOptions(), settings)
    run = _Run()
    fields = call_fields()
    fields["images"] = 0
    stream_ticket = rt.admission.open_call()
    index = -1
    try:
        async for msg in requests:
            index += 1
            if msg.HasField("options"):
                if index:
                    raise BadRequest("only the first message may set options", field="options")
                params = evaluate_params(msg.options, settings)
                if msg.options.model_fingerprint:
                    engine = _model(rt, catalog, msg.options.model_fingerprint)
                if params.search.min_catalog_version:
                    await reach_version(
                        catalog,
                        params.search.min_catalog_version,
                        deadline,
                        settings.catalog_wait_ms / 1000.0,
                        "options.search.min_catalog_version",
                    )
            check_images(msg.images, settings)
            for k, li in enumerate(msg.images):
                if li.image.regions:
                    raise BadRequest(
                        "Evaluate takes whole photos: regions are not allowed",
                        field=field_path("images", k, "image", "regions"),
                    )
            fields["images"] += len(msg.images)
            if fields["images"] > settings.max_evaluation_images:
                raise TooMany(
                    f"the stream holds more than {settings.max_evaluation_images} photos, the limit per "
                    "Evaluate call (split the set)",
                    field="images",
                )
            if msg.images:
                rt.searchable()  # refused once draining began
                await _recognize(rt, engine, catalog, msg, params.search, deadline, run, index)
        report, outcomes = await asyncio.to_thread(_report, rt.matcher, catalog, run, params)
    except SkulensError as exc:  # the message it concerns: the one being read (none before the first)
        if index >= 0 and exc.stream_index is None:
            raise exc.in_stream(index) from exc.__cause__
        raise
    finally:
        rt.admission.release(stream_ticket)
    return pb.EvaluateResponse(
        report=report,
        queries=outcomes,
        model_fingerprint=engine.fingerprint,
        random_weights=bool(engine.random_weights),
        catalog_version=run.version,
    )


def _model(rt: Runtime, catalog: CatalogBackend, fingerprint: str) -> Encoder:
    """The engine of `fingerprint`: the serving one, or a model migration's other model held by this server."""
    if rt.engine is not None and rt.engine.fingerprint == fingerprint:
        return rt.engine
    engine = rt.migration.engine_for(fingerprint) if rt.migration is not None else None
    if engine is None or catalog.migration_state().space(fingerprint) is None:
        raise MigrationError(
            f"model {fingerprint!r} is neither the serving model nor a model migration's candidate or previous "
            "model loaded on this server",
            field="options.model_fingerprint",
        )
    return engine


async def _recognize(
    rt: Runtime,
    engine: Encoder,
    catalog: CatalogBackend,
    msg: pb.EvaluateRequest,
    params: SearchParams,
    deadline: float | None,
    run: _Run,
    index: int,
) -> None:
    """Embed and search one message's photos; their answers (or errors) go to `run`."""
    max_bytes = int(rt.settings.max_image_mb * MIB)
    contents = [li.image.content for li in msg.images]
    pixels = [engine.decode_pixels(c) if len(c) <= max_bytes else 0 for c in contents]
    ticket = await rt.admission.admit_waiting(
        engine.costs,
        deadline=deadline,
        items=len(contents),
        nbytes=sum(len(c) for c in contents if len(c) <= max_bytes),
        pixels=sum(pixels),
        new_call=False,
        field="images",
    )
    with ticket:
        embedded = await embed_batch(
            engine, contents, [None] * len(contents), deadline, max_bytes, caller=run, pixels=pixels,
            field_of=lambda k, _: field_path("images", k, "image", "content"), stream_indexes=[index] * len(contents),
            mirror=rt.settings.query_mirror,
        )
    outputs = [e.outputs[0] for e in embedded]
    good = [o for o in outputs if isinstance(o, np.ndarray)]

    def search() -> tuple[list[SearchResult], int]:
        version = catalog.version()
        if not good:
            return [], version
        return rt.matcher.search(
            catalog,
            np.stack(good),
            top_k=params.top_k,
            min_score=params.min_score,
            category=params.category,
            labels=params.labels,
            unknown_threshold=params.unknown_threshold,
            ambiguity_margin=params.ambiguity_margin,
            trusted=True,
            space=engine.fingerprint,
        ), version

    found, run.version = await asyncio.to_thread(search)
    answers = iter(found)
    for li, out in zip(msg.images, outputs, strict=True):
        if isinstance(out, np.ndarray):
            answer: SearchResult | SkulensError = next(answers)
        else:
            answer = out  # named by embed_batch: images[k].image.content of message `index`
            run.failed += 1
        run.photos.append(_Photo(li.image.id, li.product_id, li.group, answer))
    if rt.metrics is not None:
        rt.metrics.observe_items("Evaluate", len(contents))
        for out in outputs:
            rt.metrics.count_images("Evaluate", code_name(0 if isinstance(out, np.ndarray) else item_status(out).code))


def _report(
    matcher: AdaptedMatcher, catalog: CatalogBackend, run: _Run, params: EvaluateParams
) -> tuple[pb.EvaluationReport, list[pb.QueryOutcome]]:
    """The figures of the recognised photos (runs in a worker thread: it reads the catalog's products)."""
    categories = catalog_categories(catalog)
    queries: list[Query] = []
    outcomes: list[pb.QueryOutcome] = []
    failures: list[pb.QueryOutcome] = []
    unlisted = 0
    for p in run.photos:
        known = p.label in categories
        unlisted += int(bool(p.label) and not known)
        group = p.group or (categories[p.label] if known else "")
        if isinstance(p.answer, SkulensError):
            bad = pb.QueryOutcome(
                id=p.id, product_id=p.label, in_catalog=known, group=group, status=item_status(p.answer)
            )
            if len(failures) < MAX_FAILURES_LISTED:
                failures.append(bad)
            if params.include_queries:
                outcomes.append(bad)
            continue
        q = query_from_result(p.answer, p.label if known else None, group, p.id)
        queries.append(q)
        if params.include_queries:
            outcomes.append(
                pb.QueryOutcome(
                    id=p.id,
                    product_id=p.label,
                    in_catalog=known,
                    group=group,
                    status=item_status(None),
                    matches=matches_pb(p.answer.matches),
                    verdict=verdict_pb(q.verdict.value),
                    best_score=clamped(q.best_score),
                    correct=q.correct,
                )
            )
    in_force = matcher.thresholds(catalog)
    search = params.search  # thresholds in force: the request's, else the catalog's stored ones, else the settings'
    threshold = search.unknown_threshold if search.unknown_threshold is not None else in_force.unknown_threshold
    margin = search.ambiguity_margin if search.ambiguity_margin is not None else in_force.ambiguity_margin
    report = evaluate(
        queries,
        target_false_accept=params.target_false_accept,
        current_unknown_threshold=threshold,
        confused_pairs=params.confused_pairs,
        curve_points=params.curve_points,
    )
    notes = list(report.notes)
    if unlisted:
        notes.append(
            f"photos labelled with a product id the catalog does not hold: {unlisted} (counted as products "
            "outside the catalog)"
        )
    if run.failed:
        notes.append(f"photos that could not be recognised: {run.failed} (left out of every figure)")
    out = report_pb(report)
    out.unlisted_products, out.failed = unlisted, run.failed
    out.thresholds.CopyFrom(
        pb.MatchThresholds(unknown_threshold=threshold, ambiguity_margin=margin,
                           source="request" if search.unknown_threshold is not None else in_force.source,
                           matching=matcher.matching)
    )
    del out.notes[:]
    out.notes.extend(notes)
    out.failures.extend(failures)
    return out, outcomes


def report_pb(r: EvaluationReport) -> pb.EvaluationReport:
    """An `EvaluationReport` as its message (None shares stay unset)."""

    def topk(t: TopK) -> pb.TopKAccuracy:
        return pb.TopKAccuracy(queries=t.queries, top1=t.top1, top5=t.top5)

    def opt(**kw: float | None) -> dict[str, float]:
        return {k: v for k, v in kw.items() if v is not None}

    op = r.operating
    msg = pb.EvaluationReport(
        queries=r.queries,
        in_catalog=r.in_catalog,
        out_of_catalog=r.out_of_catalog,
        overall=topk(r.overall),
        groups=[pb.GroupAccuracy(group=g, accuracy=topk(t)) for g, t in r.groups.items()],
        verdicts=[
            pb.VerdictCounts(
                verdict=verdict_pb(v.verdict.value), right=v.right, wrong=v.wrong, out_of_catalog=v.out_of_catalog
            )
            for v in r.verdicts
        ],
        curve=[
            pb.CurvePoint(
                threshold=c.threshold,
                coverage=c.coverage,
                **opt(
                    accuracy=c.accuracy,
                    false_accept=c.false_accept,
                    false_reject=c.false_reject,
                    accepted_correct=c.accepted_correct,
                ),
            )
            for c in r.curve
        ],
        operating_point=pb.OperatingPoint(
            target_false_accept=op.target_false_accept,
            coverage=op.coverage,
            **opt(
                unknown_threshold=op.unknown_threshold,
                ambiguity_margin=op.ambiguity_margin,
                false_accept=op.false_accept,
                false_reject=op.false_reject,
                misidentified=op.misidentified,
                accepted_correct=op.accepted_correct,
            ),
        ),
        confused_pairs=[
            pb.ConfusedPair(product_id=c.product_id, taken_for=c.taken_for, count=c.count) for c in r.confused
        ],
        notes=r.notes,
    )
    if r.auroc is not None:
        msg.auroc = r.auroc
    if r.accepted_correct_at_target is not None:
        msg.accepted_correct_at_target = r.accepted_correct_at_target
    return msg
