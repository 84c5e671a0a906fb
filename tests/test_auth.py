"""Bearer tokens and scopes (one interceptor), off by default; TLS and mutual TLS from certificate paths."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from service_harness import SHARED, RunningServer, make_certs, make_settings, pattern_image, rpc_error

from server import auth
from server.client import SkulensClient, image_input
from server.errors_grpc import PermissionDenied, Unauthenticated
from server.settings import parse_tokens

READER = "reader-token-0123456789"
WRITER = "writer-token-0123456789"
BOTH = "both-token-012345678901"
TOKENS = f"{READER}=recognize;{WRITER}=catalog:write;{BOTH}=recognize,catalog:write"
C = grpc.StatusCode


def test_scope_table_covers_every_rpc() -> None:
    from skulens.v1 import catalog_pb2, recognition_pb2

    for module, svc in ((recognition_pb2, "RecognitionService"), (catalog_pb2, "CatalogService")):
        for m in module.DESCRIPTOR.services_by_name[svc].methods:
            assert f"/skulens.v1.{svc}/{m.name}" in auth.METHOD_SCOPES
    assert auth.required_scopes("/grpc.health.v1.Health/Check") is None
    assert auth.required_scopes("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") is None
    assert auth.required_scopes("/skulens.v1.CatalogService/SomethingNew") == {"<nobody>"}  # fail closed


def test_check_unit() -> None:
    table = auth.TokenTable(parse_tokens(TOKENS))
    rec, write = "/skulens.v1.RecognitionService/Recognize", "/skulens.v1.CatalogService/UpsertProduct"
    auth.check(table, rec, {"authorization": f"Bearer {READER}"})
    auth.check(table, write, {"authorization": f"bearer {WRITER}"})
    auth.check(table, "/skulens.v1.CatalogService/GetCatalogStats", {"authorization": f"Bearer {READER}"})
    auth.check(table, "/skulens.v1.CatalogService/GetProduct", {"authorization": f"Bearer {WRITER}"})
    with pytest.raises(Unauthenticated, match="missing bearer token"):
        auth.check(table, rec, {})
    with pytest.raises(Unauthenticated, match="Bearer <token>"):
        auth.check(table, rec, {"authorization": f"Basic {READER}"})
    with pytest.raises(Unauthenticated, match="unknown bearer token"):
        auth.check(table, rec, {"authorization": "Bearer nope-nope-nope-nope"})
    with pytest.raises(
        PermissionDenied, match="UpsertProduct needs scope catalog:write; the token has recognize"
    ):
        auth.check(table, write, {"authorization": f"Bearer {READER}"})
    auth.check(auth.TokenTable(()), write, {})  # no tokens configured: everything passes


@pytest.fixture(scope="module")
def engine(clip_model_dir: Path) -> object:
    return SHARED.engine(clip_model_dir)


@pytest.fixture(scope="module")
def secured(engine: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    srv = RunningServer(make_settings(tmp_path_factory.mktemp("auth") / "data", tokens=TOKENS), engine)
    yield srv
    srv.stop()


def _client(srv: RunningServer, token: str | None) -> SkulensClient:
    return srv.client(token=token)


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (None, C.UNAUTHENTICATED),
        ("wrong-token-0123456789", C.UNAUTHENTICATED),
        (WRITER, C.PERMISSION_DENIED),
        (READER, None),
        (BOTH, None),
    ],
)
def test_recognize_needs_recognize_scope(
    secured: RunningServer, token: str | None, code: grpc.StatusCode | None
) -> None:
    with _client(secured, token) as c:
        if code is None:
            assert c.recognize([image_input(pattern_image(0))]).results[0].status.code == 0
        else:
            err = rpc_error(c.recognize, [image_input(pattern_image(0))])
            assert err.code() is code
            assert "x-request-id" in dict(err.trailing_metadata())


@pytest.mark.parametrize(
    ("token", "code"),
    [(None, C.UNAUTHENTICATED), (READER, C.PERMISSION_DENIED), (WRITER, None), (BOTH, None)],
)
def test_catalog_writes_need_write_scope(
    secured: RunningServer, token: str | None, code: grpc.StatusCode | None
) -> None:
    with _client(secured, token) as c:
        if code is None:
            c.upsert_product("p-auth")
        else:
            assert rpc_error(c.upsert_product, "p-auth").code() is code
            from skulens.v1 import catalog_pb2

            err = rpc_error(c.add_references, [catalog_pb2.AddReferenceImagesRequest(product_id="p")])
            assert err.code() is code


@pytest.mark.parametrize("token", [READER, WRITER])
def test_catalog_reads_accept_either_scope(secured: RunningServer, token: str) -> None:
    with _client(secured, token) as c:
        c.stats()
        list(c.list_products())
        assert c.get_product("nope") is None


def test_health_and_reflection_need_no_token(secured: RunningServer) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with _client(secured, None) as c:
        assert c.health() == "SERVING"
        stub = reflection_pb2_grpc.ServerReflectionStub(c.channel)
        reply = next(
            iter(
                stub.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
                )
            )
        )
        names = {s.name for s in reply.list_services_response.service}
        assert {
            "skulens.v1.RecognitionService",
            "skulens.v1.CatalogService",
            "grpc.health.v1.Health",
        } <= names


def test_auth_off_by_default_on_loopback(engine: object, tmp_path: Path) -> None:
    srv = RunningServer(make_settings(tmp_path / "data"), engine)
    try:
        with _client(srv, None) as c:
            c.upsert_product("open")
            assert c.recognize([image_input(pattern_image(0))]).results[0].status.code == 0
    finally:
        srv.stop()


# ---------------------------------------------------------------------------------------------- TLS
@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_tls(engine: object, certs: dict[str, Path], tmp_path: Path) -> None:
    srv = RunningServer(
        make_settings(tmp_path / "data", tls_cert=certs["server_cert"], tls_key=certs["server_key"]), engine
    )
    try:
        with srv.client(tls_ca=certs["ca"], tls_server_name="localhost") as c:
            assert c.stats().dim == 512
        with srv.client(timeout=3) as plain:  # a plaintext client cannot talk to a TLS port
            assert rpc_error(plain.stats).code() is C.UNAVAILABLE
    finally:
        srv.stop()


def test_mutual_tls(engine: object, certs: dict[str, Path], tmp_path: Path) -> None:
    srv = RunningServer(
        make_settings(
            tmp_path / "data",
            tls_cert=certs["server_cert"],
            tls_key=certs["server_key"],
            tls_client_ca=certs["ca"],
            tokens=TOKENS,
        ),
        engine,
    )
    try:
        with srv.client(
            tls_ca=certs["ca"], tls_cert=certs["client_cert"], tls_key=certs["client_key"], token=READER
        ) as c:
            assert c.recognize([image_input(pattern_image(1))]).results[0].status.code == 0
        with srv.client(tls_ca=certs["ca"], token=READER, timeout=3) as no_cert:
            assert rpc_error(no_cert.stats).code() is C.UNAVAILABLE
    finally:
        srv.stop()
