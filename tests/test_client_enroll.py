"""skulens.client.enroll against a real server: every image carries its own request id, and a call whose answer
is lost after the server committed it is sent again with the same ids, so nothing is embedded or added twice."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from service_harness import SHARED, RunningServer, make_settings, pattern_image

from skulens.client.enroll import enroll, load_plan

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


class LostAnswer(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """What a client sees when the connection drops after the server committed the call: UNAVAILABLE."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection reset after the server answered"

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def initial_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False


@pytest.fixture(scope="module")
def engine(clip_model_dir: Path) -> Any:
    return SHARED.engine(clip_model_dir)


@pytest.fixture(scope="module")
def server(engine: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    srv = RunningServer(make_settings(tmp_path_factory.mktemp("enroll") / "data", enroll_chunk=2), engine)
    yield srv
    srv.stop()


def _folder(root: Path, seeds: dict[str, list[int]]) -> Path:
    for pid, ss in seeds.items():
        (root / pid).mkdir(parents=True)
        for s in ss:
            (root / pid / f"{s}.png").write_bytes(pattern_image(s))
    return root


def test_a_lost_answer_is_sent_again_with_the_same_request_ids(server: RunningServer, engine: Any,
                                                               tmp_path: Path) -> None:
    plans = load_plan(_folder(tmp_path / "set", {"lost-a": [901, 902], "lost-b": [903]}))
    calls: list[list[str]] = []
    with server.client() as client:
        real = client.catalog.AddReferenceImages

        def answer_lost_once(requests: Iterator[Any], **kw: Any) -> Any:
            msgs = list(requests)
            calls.append([m.request_id for m in msgs])
            resp = real(iter(msgs), **kw)  # the server enrols and commits every image
            if len(calls) == 1:
                raise LostAnswer()  # ... and its answer never arrives
            return resp

        client.catalog.AddReferenceImages = answer_lost_once
        before = engine.stats().images_embedded
        report = enroll(client, plans, retry_wait_s=0.01)
        assert engine.stats().images_embedded == before + 3  # the retry embedded nothing
        assert [len(client.get_product(p).references) for p in ("lost-a", "lost-b")] == [2, 1]  # type: ignore
    assert len(calls) == 2 and calls[0] == calls[1]  # the same request ids, one per image
    assert all(UUID.match(r) for r in calls[0]) and len(set(calls[0])) == 3
    assert (report.added, report.duplicates, report.failed, report.retries) == (3, 0, 0, 1)


def test_retries_are_bounded_and_other_errors_are_not_retried(server: RunningServer, tmp_path: Path) -> None:
    plans = load_plan(_folder(tmp_path / "set", {"bounded": [911]}))
    with server.client() as client:
        attempts = []

        def always_lost(requests: Iterator[Any], **kw: Any) -> Any:
            attempts.append(len(list(requests)))
            raise LostAnswer()

        client.catalog.AddReferenceImages = always_lost
        with pytest.raises(grpc.RpcError):
            enroll(client, plans, retries=2, retry_wait_s=0.01)
        assert attempts == [1, 1, 1]

        class Refused(LostAnswer):
            def code(self) -> grpc.StatusCode:
                return grpc.StatusCode.PERMISSION_DENIED

        def refused(requests: Iterator[Any], **kw: Any) -> Any:
            attempts.append(len(list(requests)))
            raise Refused()

        client.catalog.AddReferenceImages = refused
        with pytest.raises(grpc.RpcError):
            enroll(client, plans, retry_wait_s=0.01)
        assert attempts == [1, 1, 1, 1]  # not retried
