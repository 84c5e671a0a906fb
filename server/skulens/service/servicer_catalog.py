"""`CatalogService`: product CRUD, streamed reference enrolment, paginated listing, stats.

The catalog is synchronous (SQLite + FAISS, thread-safe), so every call runs in a worker thread and never
blocks the event loop.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import re
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import grpc
import numpy as np

from skulens.catalog import validation
from skulens.catalog.confusability import EnrolmentWarning
from skulens.catalog.errors import CatalogError, NotFound, RequestIdReused
from skulens.catalog.models import HashedImage, NewReference, Region
from skulens.errors import SkulensError, code_name, field_path
from skulens.imaging.errors import ImageTooLarge, InvalidImage, InvalidRegion
from skulens.imaging.preprocess import Box
from skulens.service.calllog import call_fields
from skulens.service.consistency import reach_version
from skulens.service.convert import cache_pb, product_pb
from skulens.service.embedding import embed_batch
from skulens.service.enrolment_warnings import NewRow, attach, check_batch
from skulens.service.errors_grpc import BadRequest, for_stream_message, item_status
from skulens.service.state import Runtime, deadline_of
from skulens.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2

if TYPE_CHECKING:
    from skulens.catalog.backend import CatalogBackend
    from skulens.inference.protocol import Encoder

pb = catalog_pb2
#: What an enrolment stream carries (the two request messages have the same fields).
_EnrolMessage = catalog_pb2.AddReferenceImagesRequest | catalog_pb2.EnrollReferenceImagesRequest
_T = TypeVar("_T")
_REFERENCE_FIELD = re.compile(r"^references\[(\d+)\]")


_Key = tuple[str, str, Box | None]  # product id, content sha256, region


@dataclass(frozen=True)
class _Item:
    """One enrolment message that passed its own checks: normalised product id, source, hash, box and request
    id."""

    index: int
    msg: _EnrolMessage
    pid: str
    source: str
    image: HashedImage
    box: Box | None
    request_id: str | None = None

    @property
    def region(self) -> Region | None:
        """The box as the catalog stores it."""
        return None if self.box is None else (self.box.x, self.box.y, self.box.width, self.box.height)

    @property
    def sha(self) -> str:
        """The content sha256 (hashed once, when the message arrived)."""
        return self.image.sha256

    @property
    def key(self) -> _Key:
        """The duplicate identity: product, content hash and region (two crops of one photo are two
        references)."""
        return self.pid, self.sha, self.box


def _duplicate(result: pb.AddedReference, reference_id: int) -> None:
    result.status.CopyFrom(item_status(None))
    result.reference_id = reference_id
    result.duplicate = True


def _reference_position(field: str | None) -> int | None:
    """k of a catalog field ``references[k]...`` (one item of an add_references call), else None."""
    m = _REFERENCE_FIELD.match(field or "")
    return int(m.group(1)) if m else None


#: The enrolment message's field for a catalog reference field (``references[k].<name>``).
_MESSAGE_FIELD = {"image": "content", "embedding": "content", "": "content", "content_sha256": "content",
                  "space_embeddings": "content"}


def _for_message(exc: Exception, index: int) -> Exception:
    """An error of stream message `index`, its field relative to the message (``content``, ``source``,
    ``region``, ``request_id``, ``product_id``): a catalog's ``references[k].image`` / ``.embedding`` become
    ``content``; exceptions that are not domain errors are returned as they are."""
    if not isinstance(exc, SkulensError):
        return exc
    old = exc.field or ""
    m = _REFERENCE_FIELD.match(old) if isinstance(exc, CatalogError) else None
    if m:
        rest = old[m.end() :].lstrip(".")
        new = _MESSAGE_FIELD.get(rest, rest)
        message = new + exc.message[len(old) :] if exc.message.startswith(old) else exc.message
        exc = copy.copy(exc)
        exc.field, exc.message, exc.args = new, message, (message,)
    return exc.in_stream(index)


@dataclass
class _Claim:
    """The first message of a call that named a request id: its duplicate identity and its result (filled in
    place as the call goes on)."""

    key: _Key
    result: pb.AddedReference


def _claim_requests(
    items: list[_Item], claimed: dict[str, _Claim], results: dict[int, pb.AddedReference]
) -> tuple[list[_Item], list[tuple[_Item, pb.AddedReference]]]:
    """Record the request ids of this call's messages; a message naming one an earlier message of the call named
    gets that message's outcome (returned as an echo, answered once the chunk is done) or, for another product,
    content or region, RequestIdReused. Returns (the items to enrol, the echoes)."""
    rest, echoes = [], []
    for it in items:
        first = claimed.get(it.request_id) if it.request_id is not None else None
        if it.request_id is None:
            rest.append(it)
        elif first is None:
            claimed[it.request_id] = _Claim(it.key, results[it.index])
            rest.append(it)
        elif first.key == it.key:
            echoes.append((it, first.result))
        else:
            error = RequestIdReused(f"request id {it.request_id} was named by message {first.result.index} of this "
                                    "call for another product, content or region", field="request_id")
            results[it.index].status.CopyFrom(item_status(error.in_stream(it.index)))
    return rest, echoes


async def _then_version(catalog: CatalogBackend, write: Callable[[], _T]) -> tuple[_T, int]:
    """Run a catalog write in a worker thread, then read the version it produced (or a later one)."""

    def run() -> tuple[_T, int]:
        out = write()
        return out, catalog.version()

    return await asyncio.to_thread(run)


def _update_fields(request: pb.UpsertProductRequest) -> frozenset[str]:
    """The product fields an upsert changes (AIP-134): `update_mask` paths ("*": all), else the populated ones."""
    if not request.HasField("update_mask"):
        populated = {"display_name": request.display_name, "category": request.category, "labels": request.labels,
                     "description": request.description}
        return frozenset(name for name, value in populated.items() if value)
    paths = list(request.update_mask.paths)
    if "*" in paths:
        if paths != ["*"]:
            raise BadRequest("update_mask: \"*\" stands alone (it means every field)", field="update_mask.paths")
        return frozenset(validation.PRODUCT_FIELDS)
    for i, path in enumerate(paths):
        if path not in validation.PRODUCT_FIELDS:
            field = field_path("update_mask", "paths", i)
            raise BadRequest(
                f"{field} is {path!r}; a product update may name {', '.join(validation.PRODUCT_FIELDS)} (or \"*\")",
                field=field,
            )
    return frozenset(paths)


def _allowing_missing(delete: Callable[[], _T], missing: _T) -> Callable[[], _T]:
    """`delete`, answering `missing` instead of NotFound (an idempotent delete, AIP-135 allow_missing)."""

    def run() -> _T:
        try:
            return delete()
        except NotFound:
            return missing

    return run


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    """gRPC servicer over the shared `Runtime`'s catalog (and engine, for enrolment)."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.settings = runtime.settings

    async def _reach(self, catalog: CatalogBackend, wanted: int, context: grpc.aio.ServicerContext) -> int:
        """The catalog version once it is at least `wanted` (read-your-writes; see consistency.reach_version)."""
        return await reach_version(
            catalog, wanted, deadline_of(context), self.settings.catalog_wait_ms / 1000.0, "min_catalog_version"
        )

    async def UpsertProduct(
        self, request: pb.UpsertProductRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertProductResponse:
        """See catalog.proto."""
        _, catalog = self.rt.ready()
        call_fields()["product_id"] = request.product_id
        (product, created), version = await _then_version(
            catalog,
            functools.partial(
                catalog.upsert_product,
                request.product_id,
                request.display_name,
                request.category,
                dict(request.labels),
                create_only=request.create_only,
                update_fields=_update_fields(request),
                expected_etag=request.etag or None,
                description=request.description,
            ),
        )
        return pb.UpsertProductResponse(product=product_pb(product), created=created, catalog_version=version)

    async def AddReferenceImages(
        self, request_iterator: AsyncIterator[pb.AddReferenceImagesRequest], context: grpc.aio.ServicerContext
    ) -> pb.AddReferenceImagesResponse:
        """See catalog.proto: images are embedded and committed `enroll_chunk` at a time.

        The call counts once against the concurrency cap; each chunk waits for room in the work queue
        (backpressure on the client stream) rather than being refused, until the call's deadline."""
        engine, catalog = self.rt.searchable()
        deadline = deadline_of(context)
        resp = pb.AddReferenceImagesResponse()
        version: int | None = None  # after the call's last commit
        with self.rt.admission.open_call():
            async for results, after in self._batches(engine, catalog, request_iterator, deadline):
                resp.results.extend(results)
                version = after
        resp.added, resp.duplicates, resp.failed = self._account("AddReferenceImages", resp.results)
        resp.catalog_version = version if version is not None else await asyncio.to_thread(catalog.version)
        return resp

    async def EnrollReferenceImages(
        self, request_iterator: AsyncIterator[pb.EnrollReferenceImagesRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EnrollReferenceImagesResponse]:
        """See catalog.proto: like AddReferenceImages, but each committed batch is acknowledged at once."""
        engine, catalog = self.rt.searchable()
        deadline = deadline_of(context)
        seen: list[pb.AddedReference] = []
        with self.rt.admission.open_call():
            try:
                async for results, version in self._batches(engine, catalog, request_iterator, deadline):
                    seen.extend(results)
                    yield pb.EnrollReferenceImagesResponse(results=results, catalog_version=version)
            finally:
                self._account("EnrollReferenceImages", seen)

    def _account(self, method: str, results: Sequence[pb.AddedReference]) -> tuple[int, int, int]:
        """The call's log fields and metrics for its enrolment results; (added, duplicates, failed)."""
        failed = sum(r.status.code != 0 for r in results)
        duplicates = sum(r.status.code == 0 and r.duplicate for r in results)
        added = len(results) - failed - duplicates
        call_fields().update(images=len(results), added=added, duplicates=duplicates, failed=failed)
        if self.rt.metrics is not None:
            self.rt.metrics.observe_items(method, len(results))
            for r in results:
                self.rt.metrics.count_images(method, code_name(r.status.code))
                for w in r.warnings:
                    self.rt.metrics.count_enrolment_warning(
                        catalog_pb2.EnrolmentWarningKind.Name(w.kind).removeprefix("ENROLMENT_WARNING_KIND_"))
        return added, duplicates, failed

    async def _batches(
        self,
        engine: Encoder,
        catalog: CatalogBackend,
        request_iterator: AsyncIterator[_EnrolMessage],
        deadline: float | None,
    ) -> AsyncIterator[tuple[list[pb.AddedReference], int]]:
        """Read the request stream and enrol it `enroll_chunk` messages at a time; yields each committed batch's
        results (one per message, `index` = its stream position) and the catalog version after it."""
        chunk: list[tuple[int, _EnrolMessage]] = []
        known: dict[_Key, int] = {}  # (product id, sha256) -> reference id, seen in this call
        claimed: dict[str, _Claim] = {}  # request id -> the first message of this call that named it
        index = 0
        async for msg in request_iterator:
            chunk.append((index, msg))
            index += 1
            if len(chunk) >= self.settings.enroll_chunk:
                results = await self._enroll(engine, catalog, chunk, deadline, known, claimed)
                yield results, await asyncio.to_thread(catalog.version)
                chunk = []
        if chunk:
            results = await self._enroll(engine, catalog, chunk, deadline, known, claimed)
            yield results, await asyncio.to_thread(catalog.version)

    async def _enroll(
        self,
        engine: Encoder,
        catalog: CatalogBackend,
        chunk: Sequence[tuple[int, _EnrolMessage]],
        deadline: float | None,
        known: dict[_Key, int],
        claimed: dict[str, _Claim],
    ) -> list[pb.AddedReference]:
        """Enrol one chunk: check each item alone, answer request-id retries and duplicates by hash, embed the
        rest together, then add each product's new references in one transaction.

        `known` maps (product id, content sha256, region) to the reference id for keys this call has enrolled or
        found already, so repeats within the stream are never decoded or embedded either; `claimed` the request
        ids this call has seen (a repeat within the call gets the first message's outcome).
        """
        hashed = await asyncio.to_thread(lambda: [HashedImage(m.content) for _, m in chunk])
        results: dict[int, pb.AddedReference] = {}
        items: list[_Item] = []
        for (i, msg), image in zip(chunk, hashed, strict=True):
            results[i] = pb.AddedReference(index=i, product_id=msg.product_id, content_sha256=image.sha256)
            try:
                items.append(self._check_item(i, msg, image, catalog))
            except SkulensError as exc:
                results[i].status.CopyFrom(item_status(exc.in_stream(i)))
        items, echoes = _claim_requests(items, claimed, results)
        items = await self._replay_requests(catalog, items, known, results)
        items = await self._drop_known(catalog, items, known, results)
        while items:  # one round per region variant of a photo whose first copy failed (almost always one)
            leaders: dict[_Key, _Item] = {}
            for it in items:
                leaders.setdefault(it.key, it)
            followers = [it for it in items if leaders[it.key] is not it]
            await self._embed_and_add(engine, catalog, list(leaders.values()), deadline, known, results)
            items = []
            for it in followers:
                leader = leaders[it.key]
                if it.key in known:
                    _duplicate(results[it.index], known[it.key])
                elif it.box == leader.box:  # same bytes, same crop: the same outcome
                    results[it.index].status.CopyFrom(for_stream_message(results[leader.index].status, it.index))
                else:
                    items.append(it)
        for it, first in echoes:  # a request id named again in this call: the first message's outcome
            out = results[it.index]
            out.status.CopyFrom(for_stream_message(first.status, it.index))
            out.reference_id, out.duplicate = first.reference_id, first.duplicate
        return [results[i] for i, _ in chunk]

    def _check_item(
        self, i: int, msg: _EnrolMessage, image: HashedImage, catalog: CatalogBackend
    ) -> _Item:
        """Validate one request message on its own (id, source, request id, content size, region); errors name
        the message's field (paths relative to the message)."""
        pid = validation.product_id(msg.product_id, "product_id")
        source = validation.source(msg.source, "source")
        request_id = validation.request_id(msg.request_id, "request_id")
        max_bytes = int(self.settings.max_image_mb * 1024 * 1024)
        if catalog.settings.store_images:
            max_bytes = min(max_bytes, catalog.settings.max_image_bytes)
        field = "content"
        if not msg.content:
            raise InvalidImage("image is empty (0 bytes)", field)
        if len(msg.content) > max_bytes:
            raise ImageTooLarge(f"image is {len(msg.content)} bytes; the limit is {max_bytes} bytes", field)
        box = None
        if msg.HasField("region"):
            r = msg.region
            box = Box(r.x, r.y, r.width, r.height)
            if r.width <= 0 or r.height <= 0 or r.x < 0 or r.y < 0:
                raise InvalidRegion(
                    f"region (x={r.x}, y={r.y}, width={r.width}, height={r.height}) must have x, y >= 0 and "
                    "width, height > 0",
                    "region",
                )
        return _Item(i, msg, pid, source, image, box, request_id)

    async def _replay_requests(
        self,
        catalog: CatalogBackend,
        items: list[_Item],
        known: dict[_Key, int],
        results: dict[int, pb.AddedReference],
    ) -> list[_Item]:
        """Answer items whose request id added a live reference before (AIP-155): the original outcome (that
        reference, duplicate false) when product, content and region are the same, RequestIdReused when not;
        nothing of them is decoded or embedded. Returns the other items."""
        asks = [it.request_id for it in items if it.request_id is not None]
        if not asks:
            return items
        try:
            found = await asyncio.to_thread(catalog.requested_references, asks)
        except Exception as exc:  # closed, unavailable, ...: every asking item says so
            for it in items:
                if it.request_id is not None:
                    results[it.index].status.CopyFrom(item_status(_for_message(exc, it.index)))
            return [it for it in items if it.request_id is None]
        rest = []
        for it in items:
            before = found.get(it.request_id) if it.request_id is not None else None
            if before is None:
                rest.append(it)
            elif (before.product_id, before.content_sha256, before.region) != (it.pid, it.sha, it.region):
                error = RequestIdReused.naming(before, "request_id").in_stream(it.index)
                results[it.index].status.CopyFrom(item_status(error))
            else:
                known[it.key] = before.reference_id
                results[it.index].status.CopyFrom(item_status(None))
                results[it.index].reference_id = before.reference_id
        return rest

    async def _drop_known(
        self,
        catalog: CatalogBackend,
        items: list[_Item],
        known: dict[_Key, int],
        results: dict[int, pb.AddedReference],
    ) -> list[_Item]:
        """Answer items whose (product, hash) this call or the catalog holds already; return the others.

        Items of a product that does not exist fail here, before anything is decoded.
        """
        asks: dict[str, list[str]] = defaultdict(list)
        for it in items:
            if it.key not in known:
                asks[it.pid].append(it.sha)

        def lookup() -> dict[str, dict[str, int] | Exception]:
            out: dict[str, dict[str, int] | Exception] = {}
            for pid, shas in asks.items():
                try:
                    out[pid] = catalog.existing_hashes(pid, shas)
                except Exception as exc:  # NOT_FOUND, closed, ...: every item of the product says so
                    out[pid] = exc
            return out

        found = await asyncio.to_thread(lookup) if asks else {}
        rest = []
        for it in items:
            got = found.get(it.pid)
            if isinstance(got, Exception):
                results[it.index].status.CopyFrom(item_status(_for_message(got, it.index)))
                continue
            if got and it.box is None and it.sha in got:  # whole-image references only: a crop is another one
                known[it.key] = got[it.sha]
            if it.key in known:
                _duplicate(results[it.index], known[it.key])
            else:
                rest.append(it)
        return rest

    async def _embed_and_add(
        self,
        engine: Encoder,
        catalog: CatalogBackend,
        items: list[_Item],
        deadline: float | None,
        known: dict[_Key, int],
        results: dict[int, pb.AddedReference],
    ) -> None:
        """Embed distinct items together, then add each product's references (a bad item fails alone)."""
        contents = [it.msg.content for it in items]
        boxes: list[list[Box] | None] = [[it.box] if it.box is not None else None for it in items]
        admission = self.rt.admission
        pixels = [engine.decode_pixels(data) for data in contents]  # headers, read once
        ticket = await admission.admit_waiting(
            engine.costs,
            deadline=deadline,
            items=len(contents),
            nbytes=sum(len(data) for data in contents),
            pixels=sum(pixels),
            new_call=False,
            check_pixels=False,
            field="content",
        )
        with ticket:
            # every enrolment call shares one turn of the decode threads (caller=self): bulk enrolment, however
            # many streams, never holds the decoders against recognition calls
            check = self.settings.enrolment_warnings  # (the decode step measures what the warnings need)
            embedded = await embed_batch(
                engine, contents, boxes, deadline, caller=self, pixels=pixels, measure=check,
                field_of=lambda _, j: "content" if j is None else "region",
                stream_indexes=[it.index for it in items],
            )
            # during a model migration the other model embeds them too (both spaces stay complete)
            other = self.rt.other_engine
            also = (
                await embed_batch(other, contents, boxes, deadline, caller=self, pixels=pixels)
                if other is not None and other is not engine
                else None
            )
        groups: dict[str, list[tuple[_Item, NewReference]]] = defaultdict(list)
        for n, (it, e) in enumerate(zip(items, embedded, strict=True)):
            out = e.outputs[0]
            if isinstance(out, SkulensError):  # named by embed_batch: `content` or `region` of its message
                results[it.index].status.CopyFrom(item_status(out))
                continue
            spaces: dict[str, np.ndarray] = {}
            if also is not None and other is not None and isinstance(also[n].outputs[0], np.ndarray):
                spaces[other.fingerprint] = np.asarray(also[n].outputs[0])
            ref = NewReference(
                embedding=np.asarray(out),
                source=it.source,
                image=it.image,
                space_embeddings=spaces,
                region=it.region,
                request_id=it.request_id,
            )
            groups[it.pid].append((it, ref))

        def commit() -> None:
            for pid, refs in groups.items():
                while refs:
                    try:
                        added = catalog.add_references(pid, [r for _, r in refs])
                    except CatalogError as exc:
                        k = _reference_position(exc.field)
                        if k is None or k >= len(refs):
                            for it, _ in refs:  # the product's group failed as a whole (e.g. NOT_FOUND)
                                results[it.index].status.CopyFrom(item_status(_for_message(exc, it.index)))
                            break
                        it = refs.pop(k)[0]  # one item's own fault: it fails alone, the others are retried
                        results[it.index].status.CopyFrom(item_status(_for_message(exc, it.index)))
                        continue
                    except Exception as exc:  # a bug: INTERNAL for the group, traceback logged once
                        status = item_status(exc)
                        for it, _ in refs:
                            results[it.index].status.CopyFrom(status)
                        break
                    for (it, _), a in zip(refs, added, strict=True):
                        known[it.key] = int(a.reference_id)
                        results[it.index].status.CopyFrom(item_status(None))
                        results[it.index].reference_id = int(a.reference_id)
                        results[it.index].duplicate = bool(a.duplicate)
                    break

        warned: dict[int, list[EnrolmentWarning]] = {}
        if groups and check:  # searched before the commit: a new reference never finds itself
            quality = {it.index: e.qualities[0] if e.qualities else None for it, e in zip(items, embedded, strict=True)}
            rows = [NewRow(it.index, pid, ref.embedding, quality[it.index]) for pid, refs in groups.items()
                    for it, ref in refs]
            warned = await asyncio.to_thread(check_batch, catalog, engine.fingerprint, rows)
        if groups:
            await asyncio.to_thread(commit)
        attach(results, warned)

    async def DeleteProduct(
        self, request: pb.DeleteProductRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteProductResponse:
        """See catalog.proto."""
        _, catalog = self.rt.ready()
        call_fields()["product_id"] = request.product_id
        delete = functools.partial(catalog.delete_product, request.product_id, request.etag or None)
        n, version = await _then_version(catalog, _allowing_missing(delete, 0) if request.allow_missing else delete)
        return pb.DeleteProductResponse(deleted_references=n, catalog_version=version)

    async def DeleteReferenceImage(
        self, request: pb.DeleteReferenceImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteReferenceImageResponse:
        """See catalog.proto."""
        _, catalog = self.rt.ready()
        call_fields()["reference_id"] = request.reference_id
        delete = functools.partial(catalog.delete_reference, request.reference_id)
        _, version = await _then_version(
            catalog, _allowing_missing(delete, None) if request.allow_missing else delete
        )
        return pb.DeleteReferenceImageResponse(catalog_version=version)

    async def GetProduct(
        self, request: pb.GetProductRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetProductResponse:
        """See catalog.proto."""
        _, catalog = self.rt.ready()
        version = await self._reach(catalog, request.min_catalog_version, context)
        detail = await asyncio.to_thread(catalog.get_product, request.product_id)
        return pb.GetProductResponse(
            catalog_version=version,
            product=product_pb(detail.product),
            references=[
                pb.ReferenceImage(
                    reference_id=r.reference_id,
                    source=r.source,
                    content_sha256=r.content_sha256 or "",
                    has_image=r.has_image,
                    region=None if r.region is None else common_pb2.Box(
                        x=r.region[0], y=r.region[1], width=r.region[2], height=r.region[3]
                    ),
                )
                for r in detail.references
            ],
        )

    async def ListProducts(
        self, request: pb.ListProductsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListProductsResponse:
        """See catalog.proto."""
        _, catalog = self.rt.ready()
        version = await self._reach(catalog, request.min_catalog_version, context)
        products, token = await asyncio.to_thread(
            catalog.list_products, request.page_size, request.page_token, request.category
        )
        return pb.ListProductsResponse(
            products=[product_pb(p) for p in products], next_page_token=token, catalog_version=version
        )

    async def GetCatalogStats(
        self, request: pb.GetCatalogStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCatalogStatsResponse:
        """See catalog.proto."""
        _, catalog = self.rt.ready()
        t0 = time.perf_counter()
        st = await asyncio.to_thread(catalog.stats)
        call_fields()["stats_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        resp = pb.GetCatalogStatsResponse(
            product_count=st.products,
            reference_count=st.references,
            references_with_image=st.references_with_image,
            dim=st.dim,
            model_fingerprint=st.fingerprint,
            index_type=st.index_kind,
            index_device=st.index_device,
            db_size_bytes=st.storage_bytes,
            rebuild_in_progress=st.rebuild_in_progress,
            index_recall_at_10=st.recall_at_10,
            index_search_width=st.index_search_width,
            catalog_version=st.version,
            backend=st.backend,
        )
        cache = catalog.cache_state()
        if cache is not None:
            resp.cache.CopyFrom(cache_pb(cache))
        m = self.rt.migration  # the model migration's phase and back-fill progress (this replica's last count)
        if m is not None and m.state is not None:
            other = m.state.other
            resp.migration_phase = m.state.phase
            resp.migration_model_fingerprint = other.fingerprint if other is not None else ""
            resp.migration_embedded = m.progress.embedded if m.progress is not None and other is not None else 0
        head = self.rt.matcher.info()
        resp.matching = self.rt.matcher.matching
        resp.head_fitted_version = max(0, head.fitted_version)
        resp.head_products = head.products
        if self.rt.augmenter is not None:
            pending, augmented = await asyncio.to_thread(catalog.augmentation_counts,
                                                         self.rt.matcher.settings.min_references)
            resp.augmentation_pending = max(0, pending - self.rt.augmenter.unusable)
            resp.augmented_references = augmented
        return resp
