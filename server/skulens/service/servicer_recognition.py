"""`RecognitionService`: Recognize, RecognizeStream, SearchByText, Embed.

A well-formed batch always succeeds as a call; each image (or region) carries its own status. The whole call
fails only for request-shape errors (too many images, bad options), overload of the queue, or server state.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import numpy as np

from skulens.errors import SkulensError, code_name
from skulens.imaging.errors import ImageTooLarge
from skulens.imaging.preprocess import Box
from skulens.service.admission import Ticket
from skulens.service.calllog import call_fields
from skulens.service.convert import (
    SearchParams,
    boxes_of,
    check_images,
    check_texts,
    failed_recognition,
    recognition_pb,
    search_params,
)
from skulens.service.errors_grpc import item_status
from skulens.service.state import Runtime, deadline_of
from skulens.v1 import common_pb2, recognition_pb2, recognition_pb2_grpc

if TYPE_CHECKING:
    from skulens.catalog.catalog import Catalog
    from skulens.inference.engine import Engine

pb = recognition_pb2


@dataclass
class _Embedded:
    """Per image: its boxes (None = whole image) and its vectors or errors (one per box)."""

    boxes: list[Box] | None
    outputs: list[np.ndarray | SkulensError]


def _ms(t0: float, t1: float) -> float:
    return round((t1 - t0) * 1000.0, 3)


async def embed_batch(
    engine: Engine,
    images: Sequence[pb.ImageInput],
    boxes: Sequence[list[Box] | None],
    deadline: float | None,
    max_bytes: int | None = None,
    field: str = "images",
    caller: object | None = None,
    pixels: Sequence[int] | None = None,
) -> list[_Embedded]:
    """Embed images (each whole, or each of its boxes); regroup the engine's flat results per image.

    Images over `max_bytes` are not decoded: they fail with ImageTooLarge naming the limit. Calls with the
    same `caller` share one turn of the decode threads (a stream's images). `pixels`: per image, as
    `admit_images` read them from the headers (so the engine does not read them again).
    """
    too_big = {i for i, im in enumerate(images) if max_bytes is not None and len(im.content) > max_bytes}
    contents = [b"" if i in too_big else im.content for i, im in enumerate(images)]
    if pixels is not None:
        pixels = [0 if i in too_big else p for i, p in enumerate(pixels)]
    flat = await engine.embed_images(
        contents, regions=list(boxes), deadline=deadline, caller=caller, pixels=pixels
    )
    out, k = [], 0
    for i, b in enumerate(boxes):
        n = len(b) if b is not None else 1
        outputs = list(flat[k : k + n])
        if i in too_big:
            size = len(images[i].content)
            err = ImageTooLarge(f"image is {size} bytes; the limit is {max_bytes} bytes", f"{field}[{i}]")
            outputs = [err] * n
        out.append(_Embedded(b, outputs))
        k += n
    return out


async def _search(
    catalog: Catalog, vectors: list[np.ndarray], params: SearchParams, unknown_threshold: float | None = None
) -> list[pb.Recognition]:
    if not vectors:
        return []
    results = await asyncio.to_thread(
        catalog.search,
        np.stack(vectors).astype(np.float32, copy=False),
        top_k=params.top_k,
        min_score=params.min_score,
        category=params.category,
        labels=params.labels,
        unknown_threshold=unknown_threshold,
    )
    return [recognition_pb(r) for r in results]


def admit_images(
    runtime: Runtime,
    engine: Engine,
    images: Sequence[pb.ImageInput],
    boxes: Sequence[list[Box] | None],
    deadline: float | None,
    max_bytes: int,
    *,
    new_call: bool = True,
    field: str = "images",
    extra_items: int = 0,
) -> tuple[Ticket, list[int]]:
    """Admission for embedding `images` (their boxes, plus `extra_items` other model inputs such as texts):
    cost from sizes and image headers, before decoding. Returns the ticket and each image's decoded pixels
    (0 over `max_bytes`), read once from the headers, for `embed_batch`.

    Raises `Shed` (RESOURCE_EXHAUSTED with a retry hint) or `TooMany` (the request's pixel budget)."""
    per_image: list[int] = []

    def pixels() -> int:
        per_image.extend(
            engine.preprocessor.decode_pixels(im.content) if len(im.content) <= max_bytes else 0 for im in images
        )
        return sum(per_image)

    ticket = runtime.admission.admit(
        engine.costs,
        items=sum(1 if b is None else len(b) for b in boxes) + extra_items,
        nbytes=sum(len(im.content) for im in images if len(im.content) <= max_bytes),
        pixels=pixels,
        deadline=deadline,
        new_call=new_call,
        field=field,
    )
    return ticket, per_image


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
        images: Sequence[pb.ImageInput],
        params: SearchParams,
        deadline: float | None,
        t_start: float,
        boxes: Sequence[list[Box] | None],
        caller: object | None = None,
        pixels: Sequence[int] | None = None,
    ) -> list[pb.ImageResult]:
        engine, catalog = self.rt.searchable()
        t0 = time.perf_counter()
        embedded = await embed_batch(
            engine, images, boxes, deadline, self.max_image_bytes, caller=caller, pixels=pixels
        )
        t1 = time.perf_counter()
        good = [o for e in embedded for o in e.outputs if isinstance(o, np.ndarray)]
        found = iter(await _search(catalog, good, params))
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
        return results

    # ------------------------------------------------------------------ RPCs
    async def Recognize(
        self, request: pb.RecognizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecognizeResponse:
        """See recognition.proto."""
        t_start = time.perf_counter()
        engine, _ = self.rt.searchable()
        check_images(request.images, self.settings)
        params = search_params(request.options, self.settings)
        boxes = [boxes_of(im, i, self.settings) for i, im in enumerate(request.images)]
        call_fields()["images"] = len(request.images)
        if self.rt.metrics is not None:
            self.rt.metrics.observe_items("Recognize", len(request.images))
        deadline = deadline_of(context)
        ticket, pixels = admit_images(self.rt, engine, request.images, boxes, deadline, self.max_image_bytes)
        try:
            results = await self._recognize(request.images, params, deadline, t_start, boxes, pixels=pixels)
        finally:
            self.rt.admission.release(ticket)
        self._count("Recognize", results)
        return pb.RecognizeResponse(
            results=results,
            model_fingerprint=engine.fingerprint,
            random_weights=bool(engine.random_weights),
        )

    async def RecognizeStream(
        self, request_iterator: AsyncIterator[pb.RecognizeStreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RecognizeStreamResponse]:
        """See recognition.proto: one response per image, as soon as it is ready.

        The stream counts as one call against the concurrency cap for its whole life; each image is admitted
        on its own (a refused image answers RESOURCE_EXHAUSTED in its result, the stream goes on), and the
        stream's images share one turn of the decode threads."""
        engine, _ = self.rt.searchable()
        deadline = deadline_of(context)
        admission = self.rt.admission
        stream_ticket = admission.open_call()
        stream_key = object()
        window = asyncio.Semaphore(self.settings.stream_window)
        out: asyncio.Queue[pb.ImageResult | BaseException | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        fields = call_fields()
        fields["images"] = 0

        async def one(
            image: pb.ImageInput, params: SearchParams, boxes: list[Box] | None, t_in: float
        ) -> None:
            ticket: Ticket | None = None
            try:
                ticket, pixels = admit_images(
                    self.rt, engine, [image], [boxes], deadline, self.max_image_bytes, new_call=False, field="image"
                )
                res = (await self._recognize([image], params, deadline, t_in, [boxes], stream_key, pixels))[0]
            except Exception as exc:  # per-image failure (overload, draining, ...): its own status
                res = pb.ImageResult(id=image.id, status=item_status(exc))
            finally:
                if ticket is not None:
                    admission.release(ticket)
                window.release()
            self._count("RecognizeStream", [res])
            await out.put(res)

        async def reader() -> None:
            params = search_params(common_pb2.SearchOptions(), self.settings)
            try:
                async for msg in request_iterator:
                    t_in = time.perf_counter()
                    check_images(msg.images, self.settings)
                    if msg.HasField("options"):
                        params = search_params(msg.options, self.settings)
                    boxes = [boxes_of(im, i, self.settings) for i, im in enumerate(msg.images)]
                    if self.rt.metrics is not None and len(msg.images):
                        self.rt.metrics.observe_items("RecognizeStream", len(msg.images))
                    for image, b in zip(msg.images, boxes, strict=True):
                        await window.acquire()
                        fields["images"] += 1
                        t = asyncio.create_task(one(image, params, b, t_in))
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
                yield pb.RecognizeStreamResponse(result=item)
        finally:
            for t in [read_task, *tasks]:
                t.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(read_task, *tasks, return_exceptions=True)
            admission.release(stream_ticket)

    async def SearchByText(
        self, request: pb.SearchByTextRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchByTextResponse:
        """See recognition.proto."""
        engine, catalog = self.rt.searchable()
        check_texts(request.texts, self.settings)
        params = search_params(request.options, self.settings)
        call_fields()["texts"] = len(request.texts)
        deadline = deadline_of(context)
        ticket = self.rt.admission.admit(engine.costs, items=len(request.texts), deadline=deadline, field="texts")
        try:
            vectors = await engine.embed_texts(list(request.texts), deadline=deadline)
        finally:
            self.rt.admission.release(ticket)
        if self.rt.metrics is not None:
            self.rt.metrics.observe_items("SearchByText", len(request.texts))
            self.rt.metrics.texts.labels("SearchByText").inc(len(request.texts))
        recs = await _search(catalog, list(vectors), params, self.settings.text_unknown_threshold)
        return pb.SearchByTextResponse(
            results=[pb.TextResult(text=t, recognition=r) for t, r in zip(request.texts, recs, strict=True)],
            model_fingerprint=engine.fingerprint,
        )

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        """See recognition.proto."""
        engine, _ = self.rt.ready()
        check_images(request.images, self.settings)
        if request.texts:
            check_texts(request.texts, self.settings)
        boxes = [boxes_of(im, i, self.settings) for i, im in enumerate(request.images)]
        deadline = deadline_of(context)
        call_fields().update(images=len(request.images), texts=len(request.texts))
        ticket, pixels = admit_images(
            self.rt, engine, request.images, boxes, deadline, self.max_image_bytes, extra_items=len(request.texts)
        )
        try:
            return await self._embed(engine, request, boxes, deadline, pixels)
        finally:
            self.rt.admission.release(ticket)

    async def _embed(
        self,
        engine: Engine,
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
                engine, request.images, boxes, deadline, self.max_image_bytes, pixels=pixels
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
