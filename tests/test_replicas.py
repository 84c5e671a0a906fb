"""Several `skulens serve` processes on one shared catalog (PostgreSQL + pgvector), as real processes: enrol
through one, recognise through the other (read-your-writes with min_catalog_version, and the lag without it),
deletes seen everywhere, a replica killed with SIGKILL in the middle of a streaming enrolment, PostgreSQL stopped and
started under load."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from serve_process import ServeProcess
from service_harness import pattern_image

from skulens.client.client import SkulensClient, image_input, search_options
from skulens.v1 import catalog_pb2

C = grpc.StatusCode
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def replicas(postgres_server: Any, effnet_model_dir: Path, tmp_path: Path) -> Iterator[tuple[ServeProcess, ...]]:
    url = postgres_server.new_database()
    servers: list[ServeProcess] = []
    try:
        for name in ("a", "b"):
            # nearest-neighbour scores: a photo must score its own reference's cosine on either replica
            servers.append(ServeProcess(effnet_model_dir, url, tmp_path / f"{name}.log", "--matching", "nearest"))
        yield tuple(servers)
    finally:
        for s in servers:
            s.stop()
        postgres_server.drop_database(url)


def _enrol(c: SkulensClient, pid: str, seeds: list[int]) -> catalog_pb2.AddReferenceImagesResponse:
    c.upsert_product(pid, display_name=pid.upper())
    return c.add_references(
        [catalog_pb2.AddReferenceImagesRequest(product_id=pid, content=pattern_image(s)) for s in seeds]
    )


def _top(c: SkulensClient, seed: int, **options: Any) -> str:
    resp = c.recognize([image_input(pattern_image(seed))], search_options(top_k=1, **options))
    matches = resp.results[0].recognition.matches
    return matches[0].product_id if matches else ""


def test_enrol_on_a_recognise_on_b(replicas: tuple[ServeProcess, ...]) -> None:
    """An enrolment through A is found through B: at once with min_catalog_version, and without it within the
    measured lag; a delete through A is gone from B's answers; both report one catalog version."""
    a, b = replicas
    with a.client() as ca, b.client() as cb:
        added = _enrol(ca, "oat-1l", [1, 2])
        assert added.added == 2 and added.catalog_version > 0
        assert cb.stats().backend == "postgresql+pgvector"
        assert _top(cb, 1, min_catalog_version=added.catalog_version) == "oat-1l"
        got = cb.get_product("oat-1l", min_catalog_version=added.catalog_version)
        assert got is not None and len(got.references) == 2
        t0 = time.perf_counter()
        second = _enrol(ca, "rye-500g", [3])
        while _top(cb, 3) != "rye-500g":  # no version given: how long until B sees it
            assert time.perf_counter() - t0 < 5, "B never saw A's enrolment"
        lag_ms = (time.perf_counter() - t0) * 1000
        print(f"write on A → visible on B without min_catalog_version: {lag_ms:.1f} ms")
        gone = ca.catalog.DeleteProduct(catalog_pb2.DeleteProductRequest(product_id="oat-1l"), timeout=30)
        assert gone.catalog_version > second.catalog_version
        assert _top(cb, 1, min_catalog_version=gone.catalog_version) != "oat-1l"
        assert cb.get_product("oat-1l", min_catalog_version=gone.catalog_version) is None
        assert ca.stats().catalog_version == cb.stats().catalog_version == gone.catalog_version


def test_a_replica_killed_mid_enrolment_loses_nothing_acknowledged(replicas: tuple[ServeProcess, ...]) -> None:
    """SIGKILL of A while it streams an enrolment (EnrollReferenceImages: acknowledged batch by batch): B keeps
    answering; every reference A acknowledged is there; what A committed is whole (every stored reference is
    searchable as itself through B), nothing half-written."""
    a, b = replicas
    with a.client() as ca, b.client() as cb:
        acked = _enrol(ca, "kept", [10, 11])  # acknowledged before the kill
        ca.upsert_product("bulk")
        seeds = list(range(100, 260))

        def stream() -> Iterator[catalog_pb2.AddReferenceImagesRequest]:
            for s in seeds:
                yield catalog_pb2.AddReferenceImagesRequest(product_id="bulk", content=pattern_image(s))
                time.sleep(0.01)

        outcome: list[BaseException] = []
        bulk_acks: list[catalog_pb2.AddedReference] = []  # what A acknowledged, batch by batch, before it died

        def enrol_bulk() -> None:
            try:
                for ack in ca.enroll_stream(stream()):
                    bulk_acks.extend(ack.results)
            except BaseException as exc:
                outcome.append(exc)

        t = threading.Thread(target=enrol_bulk)
        t.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # kill once some of the bulk enrolment is committed
            detail = cb.get_product("bulk")
            if detail is not None and len(detail.references) >= 32:
                break
            time.sleep(0.05)
        a.kill()
        t.join(timeout=30)
        assert outcome and isinstance(outcome[0], grpc.RpcError), outcome
        assert outcome[0].code() is C.UNAVAILABLE
        detail = cb.get_product("bulk")
        assert detail is not None and 32 <= len(detail.references) < len(seeds)
        stored = {r.reference_id for r in detail.references}
        assert bulk_acks and {a.reference_id for a in bulk_acks if a.status.code == 0} <= stored  # every ack holds
        kept = cb.get_product("kept", min_catalog_version=acked.catalog_version)
        assert kept is not None and len(kept.references) == 2
        shas = {r.content_sha256: r.reference_id for r in detail.references}
        for s in seeds:  # every committed reference is whole: found as itself, with its own reference id
            sha = hashlib.sha256(pattern_image(s)).hexdigest()
            if sha in shas:
                resp = cb.recognize([image_input(pattern_image(s))], search_options(top_k=1))
                m = resp.results[0].recognition.matches[0]
                assert (m.product_id, m.reference_id) == ("bulk", shas[sha]) and m.score > 0.999
        assert cb.stats().reference_count == 2 + len(detail.references)


def test_postgres_down_then_back_under_load(replicas: tuple[ServeProcess, ...], postgres_server: Any) -> None:
    """PostgreSQL stopped and started while B serves: calls fail with UNAVAILABLE (never INTERNAL, never past
    their deadline), then succeed again, with no restart of B."""
    _, b = replicas
    with b.client(timeout=5) as cb:
        _enrol(cb, "milk", [20])
        assert _top(cb, 20) == "milk"
        postgres_server.stop()
        try:
            codes = []
            for _ in range(5):
                t0 = time.monotonic()
                try:
                    _top(cb, 20)
                    codes.append("OK")
                except grpc.RpcError as exc:
                    codes.append(exc.code().name)
                assert time.monotonic() - t0 < 6  # the 5 s deadline, never a hang
            assert set(codes) == {"UNAVAILABLE"}, codes
            err = None
            try:
                cb.upsert_product("new")
            except grpc.RpcError as exc:
                err = exc
            assert err is not None and err.code() is C.UNAVAILABLE
        finally:
            postgres_server.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                assert _top(cb, 20) == "milk"
                break
            except grpc.RpcError as exc:
                assert exc.code() is C.UNAVAILABLE
                assert time.monotonic() < deadline, "B did not recover"
                time.sleep(0.2)
        cb.upsert_product("new")


@pytest.fixture()
def mirrored(postgres_server: Any, effnet_model_dir: Path, tmp_path: Path) -> Iterator[tuple[ServeProcess, ...]]:
    """(A: reads and writes PostgreSQL directly, B: answers searches from a local FAISS copy, --catalog-cache faiss)."""
    url = postgres_server.new_database()
    servers: list[ServeProcess] = []
    try:
        servers.append(ServeProcess(effnet_model_dir, url, tmp_path / "a.log", "--matching", "nearest"))
        servers.append(ServeProcess(effnet_model_dir, url, tmp_path / "b.log", "--matching", "nearest",
                                    "--catalog-cache", "faiss", "--catalog-cache-poll-ms", "200"))
        yield tuple(servers)
    finally:
        for s in servers:
            s.stop()
        postgres_server.drop_database(url)


def test_mirror_follows_writes_and_answers_while_postgres_is_down(mirrored: tuple[ServeProcess, ...],
                                                                   postgres_server: Any) -> None:
    """B (local copy): A's enrolment is found at once with min_catalog_version and within the measured lag
    without it; A's delete is gone from B's answers; with PostgreSQL stopped B keeps recognising (saying how stale it
    is) while writes answer UNAVAILABLE with a retry hint; once PostgreSQL is back both recover with no restart."""
    a, b = mirrored
    with a.client() as ca, b.client(timeout=5) as cb:
        added = _enrol(ca, "oat-1l", [1, 2])
        assert _top(cb, 1, min_catalog_version=added.catalog_version) == "oat-1l"
        t0 = time.perf_counter()
        second = _enrol(ca, "rye-500g", [3])
        while _top(cb, 3) != "rye-500g":
            assert time.perf_counter() - t0 < 5, "B's copy never saw A's enrolment"
        print(f"write on A → in B's copy without min_catalog_version: {(time.perf_counter() - t0) * 1000:.1f} ms")
        gone = ca.catalog.DeleteProduct(catalog_pb2.DeleteProductRequest(product_id="oat-1l"), timeout=30)
        assert gone.catalog_version > second.catalog_version
        assert _top(cb, 1, min_catalog_version=gone.catalog_version) != "oat-1l"
        stats = cb.stats()
        assert stats.HasField("cache") and stats.cache.kind == "faiss" and stats.cache.primary_reachable
        assert stats.cache.cached_version == gone.catalog_version == stats.catalog_version
        assert not ca.stats().HasField("cache")

        held = gone.catalog_version
        postgres_server.stop()
        try:
            t0 = time.monotonic()
            for _ in range(20):  # recognition keeps answering from the copy throughout
                resp = cb.recognize([image_input(pattern_image(3))], search_options(top_k=1))
                assert resp.results[0].recognition.matches[0].product_id == "rye-500g"
                assert resp.catalog_version == held
                if resp.HasField("stale_catalog"):
                    break
                time.sleep(0.1)
            assert resp.HasField("stale_catalog"), "B never noticed that PostgreSQL is down"
            stale = resp.stale_catalog
            assert not stale.primary_reachable and stale.cached_version == held and stale.last_error
            assert time.monotonic() - t0 < 5
            with pytest.raises(grpc.RpcError) as err:
                cb.upsert_product("new")
            assert err.value.code() is C.UNAVAILABLE
            assert dict(err.value.trailing_metadata() or ()).get("grpc-retry-pushback-ms") == "1000"
            assert cb.stats().cache.primary_reachable is False
        finally:
            postgres_server.start()
        deadline = time.monotonic() + 30
        while True:  # writes come back without a restart
            try:
                third = _enrol(cb, "new", [4])
                break
            except grpc.RpcError as exc:
                assert exc.code() is C.UNAVAILABLE
                assert time.monotonic() < deadline, "B's writes did not recover"
                time.sleep(0.2)
        resp = cb.recognize([image_input(pattern_image(4))], search_options(top_k=1))
        assert resp.results[0].recognition.matches[0].product_id == "new"
        assert not resp.HasField("stale_catalog") and resp.catalog_version == third.catalog_version
        assert _top(ca, 4, min_catalog_version=third.catalog_version) == "new"
