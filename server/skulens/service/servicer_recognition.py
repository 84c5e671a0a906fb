"""`RecognitionService`: Recognize, RecognizeStream, SearchByText, Embed.

A well-formed batch always succeeds as a call; each image (or region) carries its own status. The whole call
fails only for request-shape errors (too many images, bad options), overload of the queue, or server state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Sequence
from importlib import metadata
from typing import TYPE_CHECKING

import grpc
import numpy as np

from skulens.errors import SkulensError, code_name, field_path
from skulens.imaging.preprocess import Box
from skulens.inference.errors import Unsupported
from skulens.service.calllog import call_fields
from skulens.service.consistency import reach_version
from skulens.service.convert import (
    SearchParams,
    boxes_of,
    check_images,
    check_texts,
    failed_recognition,
    recognition_pb,
    search_params,
    stale_catalog,
)
from skulens.service.drift_monitor import DEFAULT_SOURCE, check_source
from skulens.service.drift_report import drift_report
from skulens.service.embedding import FieldOf, admit_images, embed_batch, image_fields
from skulens.service.errors_grpc import BadRequest, item_status
from skulens.service.evaluation import evaluate_stream
from skulens.service.migration import top1
from skulens.service.state import Runtime, deadline_of
from skulens.service.text_fusion import candidate_depth, fuse, keyword_result
from skulens.v1 import common_pb2, recognition_pb2, recognition_pb2_grpc

if TYPE_CHECKING:
    from skulens.catalog.adapted import AdaptedMatcher
    from skulens.catalog.backend import CatalogBackend
    from skulens.catalog.models import SearchResult
    from skulens.inference.protocol import Encoder

pb = recognition_pb2


@functools.cache
def server_version() -> str:
    """The installed skulens distribution's version ("unknown" when run from a bare source tree)."""
    try:
        return metadata.version("skulens")
    except metadata.PackageNotFoundError:
        return "unknown"


def _ms(t0: float, t1: float) -> float:
    return round((t1 - t0) * 1000.0, 3)


async def _search(
    matcher: AdaptedMatcher,
    catalog: CatalogBackend,
    queries: np.ndarray,
    params: SearchParams,
    unknown_threshold: float | None = None,
    space: str = "",
    adapt: bool = True,
) -> tuple[list[pb.Recognition], int]:
    """Search float32 [N, D] query rows (stacked once, by the caller or the encoder) in a worker thread; also
    the catalog version read just before the search (the answer reflects at least that version). `space`: the
    fingerprint of the model that embedded them (during a migration the catalog holds two models' spaces);
    `adapt`: image queries, re-scored by the catalog-adapted head when it is on (text queries are not)."""
    results, version = await asyncio.to_thread(
        _search_results, matcher, catalog, queries, params, unknown_threshold, space, adapt
    )
    return [recognition_pb(r) for r in results], version


def _search_results(
    matcher: AdaptedMatcher,
    catalog: CatalogBackend,
    queries: np.ndarray,
    params: SearchParams,
    unknown_threshold: float | None,
    space: str,
    adapt: bool,
) -> tuple[list[SearchResult], int]:
    """`_search`'s work, in the caller's thread: the results and the catalog version read just before."""
    version = catalog.version()
    if not len(queries):
        return [], version
    results = matcher.search(
        catalog,
        queries,
        adapt=adapt,
        top_k=params.top_k,
        min_score=params.min_score,
        category=params.category,
        labels=params.labels,
        unknown_threshold=params.unknown_threshold if params.unknown_threshold is not None else unknown_threshold,
        ambiguity_margin=params.ambiguity_margin,
        trusted=True,  # rows straight from the encoder, bound to this catalog's model at the door
        space=space,
    )
    return results, version


_VECTOR, _KEYWORD, _HYBRID = pb.TEXT_SEARCH_MODE_VECTOR, pb.TEXT_SEARCH_MODE_KEYWORD, pb.TEXT_SEARCH_MODE_HYBRID


def text_modes(has_text: bool) -> list[pb.TextSearchMode]:
    """The SearchByText modes a model allows: KEYWORD always, VECTOR and HYBRID with a text tower."""
    return [_VECTOR, _KEYWORD, _HYBRID] if has_text else [_KEYWORD]


def text_mode(requested: pb.TextSearchMode, has_text: bool, model_name: str = "") -> pb.TextSearchMode:
    """The mode a SearchByText runs in: the requested one (unset: HYBRID with a text tower, else KEYWORD);
    BadRequest for an unknown value, Unsupported (UNIMPLEMENTED) for a mode the model cannot do."""
    if requested == pb.TEXT_SEARCH_MODE_UNSPECIFIED:
        return _HYBRID if has_text else _KEYWORD
    if requested not in (_VECTOR, _KEYWORD, _HYBRID):
        raise BadRequest(f"mode {int(requested)} is not a TextSearchMode", field="mode")
    if requested not in text_modes(has_text):
        raise Unsupported(f"model {model_name} has no text tower; mode {pb.TextSearchMode.Name(requested)} needs "
                          "one (TEXT_SEARCH_MODE_KEYWORD works on every model)", "mode")
    return requested


class RecognitionServicer(recognition_pb2_grpc.RecognitionServiceServicer):
    """gRPC servicer; reads engine and catalog from the shared `Runtime` on every call."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.settings = runtime.settings
        self.max_image_bytes = int(runtime.settings.max_image_mb * 1024 * 1024)

    # ------------------------------------------------------------------ helpers
    def _count(self, method: str, results: Sequence[pb.ImageResult]) -> None:
        m = self.rt.metrics
        if m is None:
            return
        for r in results:
            statuses = [reg.recognition.status.code for reg in r.regions] or [r.recognition.status.code]
            for code in statuses:
                m.count_images(method, code_name(code))

    async def _recognize(
        self,
        engine: Encoder,
        catalog: CatalogBackend,
        images: Sequence[pb.ImageInput],
        params: SearchParams,
        deadline: float | None,
        t_start: float,
        boxes: Sequence[list[Box] | None],
        caller: object | None = None,
        pixels: Sequence[int] | None = None,
        source: str | None = None,
        field_of: FieldOf = image_fields,
        stream_index: int | None = None,
    ) -> tuple[list[pb.ImageResult], int, Encoder]:
        """Embed and search `images`; (one result per image, the catalog version the searches reflected, the
        model that answered). `source`: the checked request source, for drift monitoring (None: not monitored).
        `field_of` / `stream_index`: how the request names the images (in a stream: within message `stream_index`).

        A model switch (this replica's or another's) seen by the version read that comes with the search makes
        the images run again with the model now serving, so that every answer at or past the switch's catalog
        version carries the new model's fingerprint (rare: only calls embedded just before a switch)."""
        t0 = time.perf_counter()
        embedded = await embed_batch(
            engine, [im.content for im in images], boxes, deadline, self.max_image_bytes, caller=caller,
            pixels=pixels, field_of=field_of,
            stream_indexes=None if stream_index is None else [stream_index] * len(images),
            mirror=self.settings.query_mirror,
        )
        t1 = time.perf_counter()
        good = [o for e in embedded for o in e.outputs if isinstance(o, np.ndarray)]
        queries = np.stack(good) if good else np.zeros((0, engine.dim), dtype=np.float32)
        found_list, version = await _search(self.rt.matcher, catalog, queries, params, space=engine.fingerprint)
        serving = catalog.fingerprint
        if serving != engine.fingerprint and self.rt.migration is not None:
            newer = self.rt.migration.engine_for(serving)
            if newer is not None and newer is not engine:
                return await self._recognize(newer, catalog, images, params, deadline, t_start, boxes, caller,
                                             None, source, field_of, stream_index)
        if source is not None and self.rt.drift is not None:  # O(1): queued for the monitor's own thread
            self.rt.drift.observe(source, engine.fingerprint, queries, found_list)
        found = iter(found_list)
        t2 = time.perf_counter()
        timings = common_pb2.Timings(embed_ms=_ms(t0, t1), search_ms=_ms(t1, t2), total_ms=_ms(t_start, t2))
        results = []
        for image, e in zip(images, embedded, strict=True):
            recs = [next(found) if isinstance(o, np.ndarray) else failed_recognition(o) for o in e.outputs]
            ok = [r for r in recs if r.status.code == 0]
            status = ok[0].status if ok else recs[0].status if recs else item_status(None)
            res = pb.ImageResult(id=image.id, status=status, timings=timings)
            if e.boxes is None:
                res.recognition.CopyFrom(recs[0])
            else:
                res.regions.extend(
                    pb.RegionResult(index=i, box=image.regions[i], recognition=rec)
                    for i, rec in enumerate(recs)
                )
            results.append(res)
        return results, version, engine

    async def _reach(
        self, catalog: CatalogBackend, params: SearchParams, deadline: float | None, reached: int = 0
    ) -> int:
        """Wait for the request's min_catalog_version (read-your-writes), before any work is admitted; the
        version seen then (or `reached`, a version already seen: versions never go back, so no wait is needed
        up to it)."""
        if params.min_catalog_version <= reached:
            return reached
        return await reach_version(
            catalog, params.min_catalog_version, deadline, self.settings.catalog_wait_ms / 1000.0,
            "options.min_catalog_version",
        )

    # ------------------------------------------------------------------ RPCs
    async def Recognize(
        self, request: pb.RecognizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecognizeResponse:
        """See recognition.proto."""
        t_start = time.perf_counter()
        engine, catalog = self.rt.searchable()
        check_images(request.images, self.settings, required=True)
        params = search_params(request.options, self.settings)
        source = check_source(request.source)
        boxes = [boxes_of(im, i, self.settings) for i, im in enumerate(request.images)]
        call_fields()["images"] = len(request.images)
        if self.rt.metrics is not None:
            self.rt.metrics.observe_items("Recognize", len(request.images))
        deadline = deadline_of(context)
        await self._reach(catalog, params, deadline)
        ticket, pixels = admit_images(
            self.rt, engine, [im.content for im in request.images], boxes, deadline, self.max_image_bytes
        )
        with ticket:
            results, version, engine = await self._recognize(
                engine, catalog, request.images, params, deadline, t_start, boxes, pixels=pixels, source=source
            )
        if self.rt.migration is not None:  # a share of calls is answered by a migration's candidate too
            self.rt.migration.maybe_shadow(
                [im.content for im in request.images], boxes, [top1(r.recognition) for r in results],
                self.rt.matcher.thresholds(catalog).unknown_threshold,
            )
        self._count("Recognize", results)
        return pb.RecognizeResponse(
            results=results,
            model_fingerprint=engine.fingerprint,
            random_weights=bool(engine.random_weights),
            catalog_version=version,
            stale_catalog=stale_catalog(catalog),
        )

    async def RecognizeStream(
        self, request_iterator: AsyncIterator[pb.RecognizeStreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RecognizeStreamResponse]:
        """See recognition.proto: one response per image, as soon as it is ready.

        The stream counts as one call against the concurrency cap for its whole life; each image is admitted
        on its own (a refused image answers RESOURCE_EXHAUSTED in its result, the stream goes on), and the
        stream's images share one turn of the decode threads."""
        _, catalog = self.rt.searchable()
        deadline = deadline_of(context)
        admission = self.rt.admission
        stream_ticket = admission.open_call()
        stream_key = object()
        window = asyncio.Semaphore(self.settings.stream_window)
        out: asyncio.Queue[pb.RecognizeStreamResponse | BaseException | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        fields = call_fields()
        fields["images"] = 0
        reached = [0]  # the highest catalog version this stream has seen: no image waits for one at or below it

        async def one(
            image: pb.ImageInput, params: SearchParams, boxes: list[Box] | None, t_in: float, at: tuple[int, int],
            source: str,
        ) -> None:
            version = 0
            message, k = at  # paths are relative to the stream message: its image k
            try:
                # an image read after draining began is refused on its own; each image takes the model serving
                # when it is read (a long stream follows a model switch)
                current, _ = self.rt.searchable()
                reached[0] = max(reached[0], await self._reach(catalog, params, deadline, reached[0]))
                ticket, pixels = admit_images(
                    self.rt, current, [image.content], [boxes], deadline, self.max_image_bytes, new_call=False,
                    field=field_path("images", k),
                )
                with ticket:
                    results, version, _ = await self._recognize(
                        current, catalog, [image], params, deadline, t_in, [boxes], stream_key, pixels, source,
                        lambda _, j: image_fields(k, j), message,
                    )
                res = results[0]
                reached[0] = max(reached[0], version)
            except Exception as exc:  # per-image failure (overload, draining, catalog behind...): its own status
                res = pb.ImageResult(
                    id=image.id, status=item_status(exc.in_stream(message) if isinstance(exc, SkulensError) else exc)
                )
            finally:
                window.release()
            self._count("RecognizeStream", [res])
            await out.put(
                pb.RecognizeStreamResponse(result=res, catalog_version=version, message_index=at[0], image_index=at[1],
                                           stale_catalog=stale_catalog(catalog))
            )

        async def refuse(msg: pb.RecognizeStreamRequest, index: int, exc: SkulensError) -> None:
            """A message the server refuses: its error, in the stream, once per image (once if it has none)."""
            status = item_status(exc.in_stream(index))
            images = [(k, im.id) for k, im in enumerate(msg.images)] or [(0, "")]
            fields["refused_messages"] = fields.get("refused_messages", 0) + 1
            for k, image_id in images:
                await out.put(
                    pb.RecognizeStreamResponse(
                        result=pb.ImageResult(id=image_id, status=status), message_index=index, image_index=k
                    )
                )

        async def reader() -> None:
            params = search_params(common_pb2.SearchOptions(), self.settings)
            source = DEFAULT_SOURCE
            try:
                index = -1
                async for msg in request_iterator:
                    index += 1
                    t_in = time.perf_counter()
                    try:
                        check_images(msg.images, self.settings)
                        these = search_params(msg.options, self.settings) if msg.HasField("options") else params
                        src = check_source(msg.source) if msg.source else source
                        boxes = [boxes_of(im, i, self.settings) for i, im in enumerate(msg.images)]
                    except SkulensError as exc:  # this message is refused; the stream and its options go on
                        await refuse(msg, index, exc)
                        continue
                    params, source = these, src
                    if self.rt.metrics is not None and len(msg.images):
                        self.rt.metrics.observe_items("RecognizeStream", len(msg.images))
                    for k, (image, b) in enumerate(zip(msg.images, boxes, strict=True)):
                        await window.acquire()
                        fields["images"] += 1
                        t = asyncio.create_task(one(image, params, b, t_in, (index, k), source))
                        tasks.add(t)
                        t.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*list(tasks))
                await out.put(None)
            except BaseException as exc:
                await out.put(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise

        read_task = asyncio.create_task(reader())
        try:
            while True:
                item = await out.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            for t in [read_task, *tasks]:
                t.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(read_task, *tasks, return_exceptions=True)
            admission.release(stream_ticket)

    async def SearchByText(
        self, request: pb.SearchByTextRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchByTextResponse:
        """See recognition.proto: VECTOR embeds the texts (admitted like any embedding work) and searches the
        index; KEYWORD asks the catalog's full-text index (no model work); HYBRID does both and fuses the lists
        (`skulens.service.text_fusion`)."""
        engine, catalog = self.rt.searchable()
        check_texts(request.texts, self.settings, required=True)
        params = search_params(request.options, self.settings)
        mode = text_mode(request.mode, engine.has_text, engine.model_name)
        texts = list(request.texts)
        call_fields()["texts"] = len(texts)
        call_fields()["mode"] = pb.TextSearchMode.Name(mode)
        deadline = deadline_of(context)
        await self._reach(catalog, params, deadline)
        vectors = None
        if mode != _KEYWORD:
            with self.rt.admission.admit(engine.costs, items=len(texts), deadline=deadline, field="texts"):
                vectors = await engine.embed_texts(texts, deadline=deadline)
        if self.rt.metrics is not None:
            self.rt.metrics.observe_items("SearchByText", len(texts))
            self.rt.metrics.texts.labels("SearchByText").inc(len(texts))
        if mode == _VECTOR:
            assert vectors is not None
            recs, version = await _search(
                self.rt.matcher, catalog, vectors, params, self.settings.text_unknown_threshold,
                space=engine.fingerprint, adapt=False,
            )
        else:
            depth = candidate_depth(params.top_k, self.settings.max_top_k)
            matcher, threshold = self.rt.matcher, self.settings.text_unknown_threshold

            def run() -> tuple[list[SearchResult], int]:
                if vectors is None:
                    version = catalog.version()
                    vector_results: list[SearchResult] = []
                else:
                    wide = dataclasses.replace(params, top_k=depth, min_score=None)
                    vector_results, version = _search_results(
                        matcher, catalog, vectors, wide, threshold, engine.fingerprint, False)
                hits = [catalog.search_text(t, top_k=depth if vectors is not None else params.top_k,
                                            category=params.category, labels=params.labels) for t in texts]
                if vectors is None:
                    return [keyword_result(h, params.top_k, params.min_score) for h in hits], version
                return [fuse(vr, h, params.top_k, params.min_score)
                        for vr, h in zip(vector_results, hits, strict=True)], version

            results, version = await asyncio.to_thread(run)
            recs = [recognition_pb(r) for r in results]
        return pb.SearchByTextResponse(
            results=[pb.TextResult(text=t, recognition=r) for t, r in zip(texts, recs, strict=True)],
            model_fingerprint=engine.fingerprint,
            catalog_version=version,
            mode=mode,
            stale_catalog=stale_catalog(catalog),
        )

    async def Evaluate(
        self, request_iterator: AsyncIterator[pb.EvaluateRequest], context: grpc.aio.ServicerContext
    ) -> pb.EvaluateResponse:
        """See recognition.proto (the use case: skulens.service.evaluation)."""
        return await evaluate_stream(self.rt, request_iterator, context)

    async def GetDriftReport(
        self, request: pb.GetDriftReportRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetDriftReportResponse:
        """See recognition.proto (the monitor: skulens.service.drift_monitor)."""
        return drift_report(self.rt.drift, request)

    async def GetServerInfo(
        self, request: pb.GetServerInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetServerInfoResponse:
        """See recognition.proto."""
        engine, catalog = self.rt.ready()
        s = self.settings
        decode = s.engine_options().decode
        in_force = await asyncio.to_thread(self.rt.matcher.thresholds, catalog)
        return pb.GetServerInfoResponse(
            model=pb.ModelInfo(
                name=engine.model_name,
                fingerprint=engine.fingerprint,
                dim=engine.dim,
                modalities=["image", "text"] if engine.has_text else ["image"],
                random_weights=bool(engine.random_weights),
            ),
            limits=pb.ServerLimits(
                max_images_per_request=s.max_images_per_request,
                max_regions_per_image=s.max_regions_per_image,
                max_texts_per_request=s.max_texts_per_request,
                max_text_chars=s.max_text_chars,
                max_image_bytes=self.max_image_bytes,
                max_message_bytes=s.max_message_bytes,
                max_top_k=s.max_top_k,
                default_top_k=s.default_top_k,
                max_image_pixels=decode.max_pixels,
                min_image_side=decode.min_side,
                max_evaluation_images=s.max_evaluation_images,
            ),
            thresholds=pb.MatchThresholds(
                unknown_threshold=in_force.unknown_threshold,
                text_unknown_threshold=s.text_unknown_threshold,
                ambiguity_margin=in_force.ambiguity_margin,
                source=in_force.source,
                matching=self.rt.matcher.matching,
            ),
            catalog_backend=catalog.backend,
            catalog_version=await asyncio.to_thread(catalog.version),
            server_version=server_version(),
            text_search_modes=text_modes(engine.has_text),
        )

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        """See recognition.proto."""
        engine, _ = self.rt.ready()
        if not request.images and not request.texts:
            raise BadRequest("images and texts are both empty: send at least one image or text", field="images")
        check_images(request.images, self.settings)
        if request.texts:
            check_texts(request.texts, self.settings)
        boxes = [boxes_of(im, i, self.settings) for i, im in enumerate(request.images)]
        deadline = deadline_of(context)
        call_fields().update(images=len(request.images), texts=len(request.texts))
        ticket, pixels = admit_images(
            self.rt,
            engine,
            [im.content for im in request.images],
            boxes,
            deadline,
            self.max_image_bytes,
            extra_items=len(request.texts),
        )
        with ticket:
            return await self._embed(engine, request, boxes, deadline, pixels)

    async def _embed(
        self,
        engine: Encoder,
        request: pb.EmbedRequest,
        boxes: Sequence[list[Box] | None],
        deadline: float | None,
        pixels: Sequence[int],
    ) -> pb.EmbedResponse:
        resp = pb.EmbedResponse(dim=engine.dim, model_fingerprint=engine.fingerprint)
        if request.texts:
            vectors = await engine.embed_texts(list(request.texts), deadline=deadline)
            resp.texts.extend(
                pb.Embedding(id=t, status=item_status(None), values=v.tolist())
                for t, v in zip(request.texts, vectors, strict=True)
            )
        if request.images:
            embedded = await embed_batch(
                engine, [im.content for im in request.images], boxes, deadline, self.max_image_bytes,
                pixels=pixels,
            )
            for image, e in zip(request.images, embedded, strict=True):
                for i, o in enumerate(e.outputs):
                    emb = pb.Embedding(id=image.id, region_index=i, has_region=e.boxes is not None)
                    if isinstance(o, np.ndarray):
                        emb.status.CopyFrom(item_status(None))
                        emb.values.extend(o.tolist())
                    else:
                        emb.status.CopyFrom(item_status(o))
                    resp.images.append(emb)
            if self.rt.metrics is not None:
                self.rt.metrics.observe_items("Embed", len(request.images))
                for emb in resp.images:
                    self.rt.metrics.count_images("Embed", code_name(emb.status.code))
        return resp
