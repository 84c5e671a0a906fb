"""`CatalogService`: product CRUD, streamed reference enrolment, paginated listing, stats.

The catalog is synchronous (SQLite + FAISS, thread-safe), so every call runs in a worker thread and never
blocks the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

import grpc
import numpy as np
from skulens.v1 import catalog_pb2, catalog_pb2_grpc, recognition_pb2

from catalog.models import NewReference
from server.calllog import call_fields
from server.convert import product_pb
from server.errors import InferenceError
from server.errors_grpc import code_name, item_status
from server.preprocess import Box
from server.service_recognition import embed_batch
from server.state import Runtime, deadline_of

if TYPE_CHECKING:
    from catalog.catalog import Catalog
    from server.engine import Engine

pb = catalog_pb2


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    """gRPC servicer over the shared `Runtime`'s catalog (and engine, for enrolment)."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.settings = runtime.settings

    async def UpsertProduct(
        self, request: pb.UpsertProductRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertProductResponse:
        """See catalog.proto."""
        _, catalog = self.rt.ready()
        call_fields()["product_id"] = request.product_id
        product, created = await asyncio.to_thread(
            functools.partial(
                catalog.upsert_product,
                request.product_id,
                request.display_name,
                request.category,
                dict(request.labels),
                create_only=request.create_only,
            )
        )
        return pb.UpsertProductResponse(product=product_pb(product), created=created)

    async def AddReferenceImages(
        self, request_iterator: AsyncIterator[pb.AddReferenceImagesRequest], context: grpc.aio.ServicerContext
    ) -> pb.AddReferenceImagesResponse:
        """See catalog.proto: images are embedded and committed `enroll_chunk` at a time."""
        engine, catalog = self.rt.searchable()
        deadline = deadline_of(context)
        resp = pb.AddReferenceImagesResponse()
        chunk: list[tuple[int, pb.AddReferenceImagesRequest]] = []
        index = 0
        async for msg in request_iterator:
            chunk.append((index, msg))
            index += 1
            if len(chunk) >= self.settings.enroll_chunk:
                resp.results.extend(await self._enroll(engine, catalog, chunk, deadline))
                chunk = []
        if chunk:
            resp.results.extend(await self._enroll(engine, catalog, chunk, deadline))
        for r in resp.results:
            if r.status.code != 0:
                resp.failed += 1
            elif r.duplicate:
                resp.duplicates += 1
            else:
                resp.added += 1
        call_fields().update(images=index, added=resp.added, duplicates=resp.duplicates, failed=resp.failed)
        if self.rt.metrics is not None:
            self.rt.metrics.observe_items("AddReferenceImages", index)
            for r in resp.results:
                self.rt.metrics.count_images("AddReferenceImages", code_name(r.status.code))
        return resp

    async def _enroll(
        self,
        engine: Engine,
        catalog: Catalog,
        chunk: Sequence[tuple[int, pb.AddReferenceImagesRequest]],
        deadline: float | None,
    ) -> list[pb.AddedReference]:
        """Embed one chunk together, then add each product's references in one transaction."""
        images = [recognition_pb2.ImageInput(content=m.content) for _, m in chunk]
        boxes: list[list[Box] | None] = [
            [Box(m.region.x, m.region.y, m.region.width, m.region.height)] if m.HasField("region") else None
            for _, m in chunk
        ]
        max_bytes = int(self.settings.max_image_mb * 1024 * 1024)
        embedded = await embed_batch(engine, images, boxes, deadline, max_bytes, field="requests")
        results: dict[int, pb.AddedReference] = {}
        groups: dict[str, list[tuple[int, NewReference]]] = defaultdict(list)
        for (i, msg), e in zip(chunk, embedded, strict=True):
            sha = hashlib.sha256(msg.content).hexdigest()
            base = pb.AddedReference(index=i, product_id=msg.product_id, content_sha256=sha)
            results[i] = base
            out = e.outputs[0]
            if isinstance(out, InferenceError):
                base.status.CopyFrom(item_status(out.with_field(f"requests[{i}].content")))
                continue
            groups[msg.product_id].append(
                (
                    i,
                    NewReference(
                        embedding=np.asarray(out), source=msg.source, image=msg.content, content_sha256=sha
                    ),
                )
            )
        for product_id, refs in groups.items():
            try:
                added = await asyncio.to_thread(catalog.add_references, product_id, [r for _, r in refs])
            except (
                Exception
            ) as exc:  # the product's group failed as a whole (e.g. NOT_FOUND): each item says so
                status = item_status(exc)
                for i, _ in refs:
                    results[i].status.CopyFrom(status)
                continue
            for (i, _), a in zip(refs, added, strict=True):
                results[i].status.CopyFrom(item_status(None))
                results[i].reference_id = int(a.reference_id)
                results[i].duplicate = bool(a.duplicate)
        return [results[i] for i, _ in chunk]

    async def DeleteProduct(
        self, request: pb.DeleteProductRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteProductResponse:
        """See catalog.proto."""
        _, catalog = self.rt.ready()
        call_fields()["product_id"] = request.product_id
        n = await asyncio.to_thread(catalog.delete_product, request.product_id)
        return pb.DeleteProductResponse(deleted_references=n)

    async def DeleteReferenceImage(
        self, request: pb.DeleteReferenceImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteReferenceImageResponse:
        """See catalog.proto."""
        _, catalog = self.rt.ready()
        call_fields()["reference_id"] = request.reference_id
        await asyncio.to_thread(catalog.delete_reference, request.reference_id)
        return pb.DeleteReferenceImageResponse()

    async def GetProduct(
        self, request: pb.GetProductRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetProductResponse:
        """See catalog.proto."""
        _, catalog = self.rt.ready()
        detail = await asyncio.to_thread(catalog.get_product, request.product_id)
        return pb.GetProductResponse(
            product=product_pb(detail.product),
            references=[
                pb.ReferenceImage(
                    reference_id=r.reference_id,
                    source=r.source,
                    content_sha256=r.content_sha256 or "",
                    has_image=r.has_image,
                )
                for r in detail.references
            ],
        )

    async def ListProducts(
        self, request: pb.ListProductsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListProductsResponse:
        """See catalog.proto."""
        _, catalog = self.rt.ready()
        products, token = await asyncio.to_thread(
            catalog.list_products, request.page_size, request.page_token, request.category
        )
        return pb.ListProductsResponse(products=[product_pb(p) for p in products], next_page_token=token)

    async def GetCatalogStats(
        self, request: pb.GetCatalogStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCatalogStatsResponse:
        """See catalog.proto."""
        _, catalog = self.rt.ready()
        t0 = time.perf_counter()
        st = await asyncio.to_thread(catalog.stats)
        call_fields()["stats_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        return pb.GetCatalogStatsResponse(
            product_count=st.products,
            reference_count=st.references,
            references_with_image=st.references_with_image,
            dim=st.dim,
            model_fingerprint=st.fingerprint,
            index_type=st.index_kind,
            index_device=st.index_device,
            db_size_bytes=st.db_size_bytes,
            rebuild_in_progress=st.rebuild_in_progress,
            index_recall_at_10=st.recall_at_10,
            index_search_width=st.index_search_width,
        )
