"""A thin synchronous client for the skulens gRPC API (used by the CLI, the benchmark and tests).

Connection settings come from arguments or the environment: `SKULENS_ADDR` (host:port, default
127.0.0.1:$SKULENS_PORT or 127.0.0.1:50051), `SKULENS_TOKEN` (bearer token), `SKULENS_CLIENT_TLS_CA`,
`SKULENS_CLIENT_TLS_CERT` / `SKULENS_CLIENT_TLS_KEY` (client certificate for mutual TLS),
`SKULENS_CLIENT_TLS_SERVER_NAME`. The client's TLS variables are distinct from the server's (`SKULENS_TLS_CERT`…),
so a shell or container that runs both never hands the server's key to the client.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from skulens.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    migration_pb2,
    migration_pb2_grpc,
    recognition_pb2,
    recognition_pb2_grpc,
)

MIB = 1024 * 1024


def default_addr(environ: Mapping[str, str] | None = None) -> str:
    """`SKULENS_ADDR`, else 127.0.0.1:`SKULENS_PORT` (50051)."""
    env = os.environ if environ is None else environ
    return env.get("SKULENS_ADDR") or f"127.0.0.1:{env.get('SKULENS_PORT') or 50051}"


@dataclass(frozen=True)
class ClientConfig:
    """Where and how to connect."""

    addr: str
    token: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str | None = None
    tls: bool = False
    timeout: float | None = 60.0
    max_message_mb: int = 64

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ClientConfig:
        """Config from `SKULENS_*` variables; keyword overrides that are not None win."""
        env = os.environ if environ is None else environ

        def path(name: str) -> Path | None:
            v = env.get(name)
            return Path(v) if v else None

        base: dict[str, Any] = {
            "addr": default_addr(env),
            "token": env.get("SKULENS_TOKEN") or None,
            "tls_ca": path("SKULENS_CLIENT_TLS_CA"),
            "tls_cert": path("SKULENS_CLIENT_TLS_CERT"),
            "tls_key": path("SKULENS_CLIENT_TLS_KEY"),
            "tls_server_name": env.get("SKULENS_CLIENT_TLS_SERVER_NAME") or None,
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


def image_input(
    content: bytes, id: str = "", regions: Sequence[tuple[int, int, int, int]] = ()
) -> recognition_pb2.ImageInput:
    """An ImageInput message; regions as (x, y, width, height)."""
    return recognition_pb2.ImageInput(
        id=id,
        content=content,
        regions=[common_pb2.Box(x=x, y=y, width=w, height=h) for x, y, w, h in regions],
    )


def search_options(
    top_k: int = 0,
    min_score: float = 0.0,
    category: str = "",
    labels: Mapping[str, str] | None = None,
    min_catalog_version: int = 0,
) -> common_pb2.SearchOptions:
    """A SearchOptions message (`min_catalog_version`: the catalog_version of a write, for read-your-writes on
    any replica)."""
    return common_pb2.SearchOptions(
        top_k=top_k,
        min_score=min_score,
        category=category,
        labels=dict(labels or {}),
        min_catalog_version=min_catalog_version,
    )


class SkulensClient:
    """Stubs for both services plus health, with auth metadata, TLS, a default timeout and request ids."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", config.max_message_mb * MIB),
            ("grpc.max_send_message_length", config.max_message_mb * MIB),
        ]
        if config.tls_server_name:
            options.append(("grpc.ssl_target_name_override", config.tls_server_name))
        if config.tls or config.tls_ca or config.tls_cert:
            creds = grpc.ssl_channel_credentials(
                root_certificates=config.tls_ca.read_bytes() if config.tls_ca else None,
                private_key=config.tls_key.read_bytes() if config.tls_key else None,
                certificate_chain=config.tls_cert.read_bytes() if config.tls_cert else None,
            )
            self.channel = grpc.secure_channel(config.addr, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(config.addr, options=options)
        self.recognition = recognition_pb2_grpc.RecognitionServiceStub(self.channel)
        self.catalog = catalog_pb2_grpc.CatalogServiceStub(self.channel)
        self.migration = migration_pb2_grpc.MigrationServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def __enter__(self) -> SkulensClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def metadata(self, request_id: str | None = None) -> list[tuple[str, str]]:
        """Call metadata: bearer token and x-request-id."""
        md = [("x-request-id", request_id or uuid.uuid4().hex)]
        if self.config.token:
            md.append(("authorization", f"Bearer {self.config.token}"))
        return md

    def _kw(self, timeout: float | None) -> dict[str, Any]:
        return {
            "metadata": self.metadata(),
            "timeout": timeout if timeout is not None else self.config.timeout,
        }

    # -- recognition
    def recognize(
        self,
        images: Sequence[recognition_pb2.ImageInput],
        options: common_pb2.SearchOptions | None = None,
        timeout: float | None = None,
        source: str = "",
    ) -> recognition_pb2.RecognizeResponse:
        """One Recognize call (`source`: where the photos come from, for drift monitoring)."""
        return self.recognition.Recognize(
            recognition_pb2.RecognizeRequest(images=images, options=options, source=source), **self._kw(timeout)
        )

    def recognize_stream(
        self, requests: Iterable[recognition_pb2.RecognizeStreamRequest], timeout: float | None = None
    ) -> Iterator[recognition_pb2.ImageResult]:
        """RecognizeStream: yields ImageResults as they come (`recognize_stream_responses` for their positions)."""
        for resp in self.recognize_stream_responses(requests, timeout):
            yield resp.result

    def recognize_stream_responses(
        self, requests: Iterable[recognition_pb2.RecognizeStreamRequest], timeout: float | None = None
    ) -> Iterator[recognition_pb2.RecognizeStreamResponse]:
        """RecognizeStream: yields whole responses (result, catalog version, message and image position)."""
        yield from self.recognition.RecognizeStream(iter(requests), **self._kw(timeout))

    def search_text(
        self,
        texts: Sequence[str],
        options: common_pb2.SearchOptions | None = None,
        timeout: float | None = None,
        mode: recognition_pb2.TextSearchMode = recognition_pb2.TEXT_SEARCH_MODE_UNSPECIFIED,
    ) -> recognition_pb2.SearchByTextResponse:
        """One SearchByText call (`mode`: VECTOR, KEYWORD or HYBRID; unset: the server's default)."""
        return self.recognition.SearchByText(
            recognition_pb2.SearchByTextRequest(texts=texts, options=options, mode=mode), **self._kw(timeout)
        )

    def embed(
        self,
        images: Sequence[recognition_pb2.ImageInput] = (),
        texts: Sequence[str] = (),
        timeout: float | None = None,
    ) -> recognition_pb2.EmbedResponse:
        """One Embed call."""
        return self.recognition.Embed(
            recognition_pb2.EmbedRequest(images=images, texts=texts), **self._kw(timeout)
        )

    def evaluate(
        self, requests: Iterable[recognition_pb2.EvaluateRequest], timeout: float | None = None
    ) -> recognition_pb2.EvaluateResponse:
        """Evaluate (client streaming): labelled photos in, one report out (`skulens.client.evaluate` builds the
        messages from a folder or CSV). gRPC consumes the iterable as flow control allows."""
        return self.recognition.Evaluate(iter(requests), **self._kw(timeout))

    # -- catalog
    def upsert_product(
        self,
        product_id: str,
        display_name: str = "",
        category: str = "",
        labels: Mapping[str, str] | None = None,
        timeout: float | None = None,
        create_only: bool = False,
        update_mask: Sequence[str] | None = None,
        etag: str = "",
        description: str = "",
    ) -> catalog_pb2.UpsertProductResponse:
        """Create or update a product (`create_only`: ALREADY_EXISTS instead of updating). An existing product
        changes the fields named in `update_mask` ("display_name", "category", "labels", "description"; "*": all),
        or, without it, the fields given non-empty here. `etag` (from a read's `Product.etag`): update only if
        nobody changed the product since (ABORTED otherwise)."""
        request = catalog_pb2.UpsertProductRequest(
            product_id=product_id,
            display_name=display_name,
            category=category,
            labels=dict(labels or {}),
            create_only=create_only,
            etag=etag,
            description=description,
        )
        if update_mask is not None:
            request.update_mask.paths.extend(update_mask)
        return self.catalog.UpsertProduct(request, **self._kw(timeout))

    def add_references(
        self, requests: Iterable[catalog_pb2.AddReferenceImagesRequest], timeout: float | None = None
    ) -> catalog_pb2.AddReferenceImagesResponse:
        """Stream reference images (client streaming); gRPC consumes the iterable as flow control allows."""
        return self.catalog.AddReferenceImages(iter(requests), **self._kw(timeout))

    def get_product(
        self, product_id: str, timeout: float | None = None, min_catalog_version: int = 0
    ) -> catalog_pb2.GetProductResponse | None:
        """The product and its references, or None when it does not exist."""
        try:
            return self.catalog.GetProduct(
                catalog_pb2.GetProductRequest(product_id=product_id, min_catalog_version=min_catalog_version),
                **self._kw(timeout),
            )
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def list_products(
        self, category: str = "", page_size: int = 0, timeout: float | None = None
    ) -> Iterator[common_pb2.Product]:
        """Every product, page after page."""
        token = ""
        while True:
            page = self.catalog.ListProducts(
                catalog_pb2.ListProductsRequest(page_size=page_size, page_token=token, category=category),
                **self._kw(timeout),
            )
            yield from page.products
            token = page.next_page_token
            if not token:
                return

    def enroll_stream(
        self,
        requests: Iterable[catalog_pb2.EnrollReferenceImagesRequest | catalog_pb2.AddReferenceImagesRequest],
        timeout: float | None = None,
    ) -> Iterator[catalog_pb2.EnrollReferenceImagesResponse]:
        """EnrollReferenceImages: yields one acknowledgement per committed batch, as soon as it is committed
        (AddReferenceImagesRequest messages are converted: the two have the same fields)."""

        def converted() -> Iterator[catalog_pb2.EnrollReferenceImagesRequest]:
            for r in requests:
                if isinstance(r, catalog_pb2.EnrollReferenceImagesRequest):
                    yield r
                else:
                    yield catalog_pb2.EnrollReferenceImagesRequest.FromString(r.SerializeToString())

        yield from self.catalog.EnrollReferenceImages(converted(), **self._kw(timeout))

    def delete_product(
        self, product_id: str, timeout: float | None = None, allow_missing: bool = False, etag: str = ""
    ) -> int:
        """Delete a product; returns the number of references deleted (`allow_missing`: 0, not NOT_FOUND, when
        it does not exist: safe to retry; `etag`: only if nobody changed it since that read, else ABORTED)."""
        return int(
            self.catalog.DeleteProduct(
                catalog_pb2.DeleteProductRequest(product_id=product_id, allow_missing=allow_missing, etag=etag),
                **self._kw(timeout),
            ).deleted_references
        )

    def delete_reference(self, reference_id: int, timeout: float | None = None, allow_missing: bool = False) -> None:
        """Delete one reference image (`allow_missing`: OK, not NOT_FOUND, when it does not exist)."""
        self.catalog.DeleteReferenceImage(
            catalog_pb2.DeleteReferenceImageRequest(reference_id=reference_id, allow_missing=allow_missing),
            **self._kw(timeout),
        )

    def stats(self, timeout: float | None = None) -> catalog_pb2.GetCatalogStatsResponse:
        """Catalog statistics."""
        return self.catalog.GetCatalogStats(catalog_pb2.GetCatalogStatsRequest(), **self._kw(timeout))

    def drift_report(
        self, source: str = "", history: int = 0, timeout: float | None = None
    ) -> recognition_pb2.GetDriftReportResponse:
        """Drift signals per source (`source`: only that one; `history`: judged windows per source, newest last)."""
        return self.recognition.GetDriftReport(
            recognition_pb2.GetDriftReportRequest(source=source, history=history), **self._kw(timeout)
        )

    def server_info(self, timeout: float | None = None) -> recognition_pb2.GetServerInfoResponse:
        """The server's model, limits, thresholds and catalog (size batches by `limits`)."""
        return self.recognition.GetServerInfo(recognition_pb2.GetServerInfoRequest(), **self._kw(timeout))

    # -- model migration (scope catalog:write)
    def start_migration(
        self, model_dir: str, shadow_share: float = 0.0, timeout: float | None = None
    ) -> migration_pb2.MigrationStatus:
        """Start migrating the catalog to the model at `model_dir` (a path on the server); back-fill begins."""
        req = migration_pb2.StartMigrationRequest(model_dir=model_dir, shadow_share=shadow_share)
        return self.migration.StartMigration(req, **self._kw(timeout)).status

    def get_migration(self, timeout: float | None = None) -> migration_pb2.MigrationStatus:
        """The migration's state, back-fill progress and this replica's shadow comparison."""
        return self.migration.GetMigration(migration_pb2.GetMigrationRequest(), **self._kw(timeout)).status

    def switch_model(self, fingerprint: str, timeout: float | None = None) -> migration_pb2.MigrationStatus:
        """Serve `fingerprint` (the candidate, or the previous model to undo a switch) from now on."""
        req = migration_pb2.SwitchModelRequest(fingerprint=fingerprint)
        return self.migration.SwitchModel(req, **self._kw(timeout)).status

    def abort_migration(self, timeout: float | None = None) -> migration_pb2.MigrationStatus:
        """Drop the candidate (before a switch)."""
        return self.migration.AbortMigration(migration_pb2.AbortMigrationRequest(), **self._kw(timeout)).status

    def finish_migration(self, timeout: float | None = None) -> migration_pb2.MigrationStatus:
        """Drop the previous model (after a switch): no undo from here."""
        return self.migration.FinishMigration(migration_pb2.FinishMigrationRequest(), **self._kw(timeout)).status

    # -- health
    def health(self, service: str = "", timeout: float | None = 5.0) -> str:
        """The grpc.health.v1 status name of `service` ("" = the whole server)."""
        reply = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
