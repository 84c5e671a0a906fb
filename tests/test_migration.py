"""Zero-downtime model migration through a real server (port 0, real ONNX models, real SQLite + FAISS catalog):
start → back-fill → shadow → switch → finish with a client recognising all along, and the manager's parts."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client import generate_latest
from serve_process import ServeProcess
from service_harness import SHARED, RunningServer, make_settings, pattern_image

from skulens.client import image_input
from skulens.service.migration import ShadowStats
from skulens.v1 import catalog_pb2, common_pb2

N_PRODUCTS = 8


def enrol(client: Any, products: range, *, refs: int = 2) -> None:
    for p in products:
        client.upsert_product(f"sku-{p}", f"Product {p}")
        client.add_references(
            catalog_pb2.AddReferenceImagesRequest(product_id=f"sku-{p}", content=pattern_image(p, variant=v))
            for v in range(refs)
        )


def wait_for(what: str, check: Any, timeout: float = 120.0) -> Any:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class RecognitionLoop:
    """Recognises one enrolled photo after another (one call at a time) and checks health, recording everything."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.answers: list[tuple[float, float, str, int]] = []  # (sent, answered, fingerprint, catalog version)
        self.failures: list[str] = []
        self.health: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RecognitionLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            p = i % N_PRODUCTS
            t0 = time.monotonic()
            try:
                resp = self.client.recognize([image_input(pattern_image(p), id=str(i))], timeout=30)
                r = resp.results[0].recognition
                if r.status.code != 0 or r.matches[0].product_id != f"sku-{p}":
                    self.failures.append(f"call {i}: {r.status.message or r.matches[0].product_id}")
                self.answers.append((t0, time.monotonic(), resp.model_fingerprint, resp.catalog_version))
                self.health.add(self.client.health())
            except grpc.RpcError as exc:
                self.failures.append(f"call {i}: {exc.code().name} {exc.details()}")
            i += 1


@pytest.fixture
def server(tmp_path: Path, clip_model_dir: Path) -> Any:
    # nearest-neighbour answers: every enrolled photo must find its own product under either (random-weights) model
    settings = make_settings(tmp_path / "data", model_dir=clip_model_dir, migration_poll_seconds=0.1,
                             backfill_batch=4, matching="nearest")
    srv = RunningServer(settings, SHARED.engine(clip_model_dir))
    yield srv
    srv.stop()


def test_live_traffic_through_start_backfill_shadow_switch_and_finish(
    server: RunningServer, effnet_model_dir: Path
) -> None:
    client = server.client()
    enrol(client, range(N_PRODUCTS))
    old = client.server_info().model.fingerprint
    with RecognitionLoop(client) as loop:
        wait_for("answers before the migration", lambda: len(loop.answers) >= 3)
        status = client.start_migration(str(effnet_model_dir), shadow_share=1.0)
        new = status.candidate.fingerprint
        assert status.phase == "candidate" and new != old and status.candidate.dim == 1280
        assert status.candidate.loaded_here and status.serving.fingerprint == old
        with pytest.raises(grpc.RpcError) as err:  # not back-filled yet (or racing the last batch)
            client.switch_model("not-a-model")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        enrol(client, range(N_PRODUCTS, N_PRODUCTS + 1))  # during the back-fill: goes into both spaces
        done = wait_for("back-fill", lambda: (s := client.get_migration()).backfill.pending == 0 and s)
        stats = wait_for("stats to count the back-fill", lambda: (st := client.stats()).migration_embedded and st)
        assert (stats.migration_phase, stats.migration_model_fingerprint) == ("candidate", new)
        metrics = generate_latest(server.registry).decode()
        assert 'skulens_migration_phase{phase="candidate"} 1.0' in metrics
        assert f'skulens_migration_backfill_references{{state="embedded"}} {2 * (N_PRODUCTS + 1)}.0' in metrics
        assert 'skulens_migration_backfill_references{state="pending"} 0.0' in metrics
        assert "skulens_migration_backfill_images_total" in metrics
        assert done.backfill.embedded == done.backfill.live_references == 2 * (N_PRODUCTS + 1)
        assert done.backfill.unembeddable == 0
        wait_for("shadow comparisons", lambda: client.get_migration().shadow.compared >= 5)
        shadow = client.get_migration().shadow
        assert 0 <= shadow.top1_agree <= shadow.compared and shadow.shadow_errors == 0

        switch_sent = time.monotonic()
        switched = client.switch_model(new)
        switch_done = time.monotonic()
        assert (switched.phase, switched.serving.fingerprint, switched.previous.fingerprint) == ("switched", new, old)
        wait_for("answers after the switch", lambda: sum(a[0] > switch_done for a in loop.answers) >= 5)
        finished = client.finish_migration()
        assert (finished.phase, finished.serving.fingerprint) == ("none", new)
        wait_for("answers after finish", lambda: sum(a[0] > time.monotonic() - 0.5 for a in loop.answers) >= 3)

    assert loop.failures == []
    assert loop.health == {"SERVING"}
    before = [fp for sent, answered, fp, _ in loop.answers if answered < switch_sent]
    after = [fp for sent, _, fp, _ in loop.answers if sent > switch_done]
    assert before and set(before) == {old}
    assert after and set(after) == {new}
    fps = [fp for _, _, fp, _ in loop.answers]
    assert fps == sorted(fps, key=lambda fp: fp == new)  # one flip, never back
    versions = [v for _, _, _, v in loop.answers]
    assert versions == sorted(versions)
    # the new fingerprint from one catalog version on: every old answer's version is below every new one's
    assert max(v for _, _, fp, v in loop.answers if fp == old) < min(v for _, _, fp, v in loop.answers if fp == new)
    assert client.server_info().model.fingerprint == new
    # the product enrolled during the back-fill is found by the new model
    r = client.recognize([image_input(pattern_image(N_PRODUCTS))]).results[0].recognition
    assert r.matches[0].product_id == f"sku-{N_PRODUCTS}"


def test_abort_keeps_the_serving_model_and_switch_back_undoes(server: RunningServer, effnet_model_dir: Path) -> None:
    client = server.client()
    enrol(client, range(3))
    client.upsert_product("crop")  # a reference that is a crop: back-filled from its region, not the whole photo
    crop_req = catalog_pb2.AddReferenceImagesRequest(product_id="crop", content=pattern_image(77))
    crop_req.region.CopyFrom(common_pb2.Box(x=0, y=0, width=48, height=48))
    client.add_references([crop_req])
    old = client.server_info().model.fingerprint
    new = client.start_migration(str(effnet_model_dir)).candidate.fingerprint
    assert client.abort_migration().phase == "none"
    assert client.abort_migration().phase == "none"  # idempotent
    assert client.server_info().model.fingerprint == old
    client.start_migration(str(effnet_model_dir))
    wait_for("back-fill", lambda: client.get_migration().backfill.pending == 0)
    client.switch_model(new)
    assert client.recognize([image_input(pattern_image(1))]).model_fingerprint == new
    crop = client.recognize([image_input(pattern_image(77), regions=[(0, 0, 48, 48)])]).results[0].regions[0]
    assert crop.recognition.matches[0].product_id == "crop"
    assert crop.recognition.matches[0].score == pytest.approx(1.0, abs=1e-3)  # the same crop, embedded alike
    back = client.switch_model(old)  # undo
    assert (back.serving.fingerprint, back.candidate.fingerprint if back.HasField("candidate") else "") == (old, "")
    assert back.previous.fingerprint == new
    resp = client.recognize([image_input(pattern_image(1))])
    assert resp.model_fingerprint == old and resp.results[0].recognition.matches[0].product_id == "sku-1"
    with pytest.raises(grpc.RpcError) as err:
        client.start_migration(str(effnet_model_dir))  # the previous model is still kept: finish first
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as err:
        client.start_migration("/nonexistent/model")
    assert err.value.code() != grpc.StatusCode.OK


def test_shadow_stats_report_agreement_and_a_threshold_keeping_the_unknown_share() -> None:
    s = ShadowStats()
    serving = [0.9, 0.8, 0.5, 0.4]  # 2 of 4 below the 0.6 threshold
    candidate = [0.7, 0.65, 0.3, 0.2]
    for i, (a, b) in enumerate(zip(serving, candidate, strict=True)):
        s.record((f"p{i}", a), (f"p{i}" if i < 3 else "other", b))
    r = s.report(0.6)
    assert (r["compared"], r["top1_agree"], r["top1_agreement"]) == (4, 3, 0.75)
    assert r["mean_score_shift"] == pytest.approx(np.mean(np.subtract(candidate, serving)))
    assert r["unknown_share"] == 0.5
    assert r["suggested_unknown_threshold"] == pytest.approx(np.quantile(candidate, 0.5))


# ================================================================ real processes: SIGKILL during back-fill, replicas
SLOW_BACKFILL = ("--migration-poll-seconds", "0.1", "--backfill-batch", "2", "--backfill-pause-seconds", "0.3",
                 "--matching", "nearest")


def test_sigkill_during_backfill_then_restart_resumes_without_loss_or_doubles(
    tmp_path: Path, clip_model_dir: Path, effnet_model_dir: Path
) -> None:
    data = tmp_path / "data"
    first = ServeProcess(clip_model_dir, str(data), tmp_path / "first.log", *SLOW_BACKFILL)
    try:
        with first.client() as c:
            enrol(c, range(12))
            c.start_migration(str(effnet_model_dir))
            before = wait_for("some back-fill", lambda: (e := c.get_migration().backfill.embedded) >= 6 and e)
        first.kill()
    finally:
        first.stop()
    second = ServeProcess(clip_model_dir, str(data), tmp_path / "second.log", *SLOW_BACKFILL)
    try:
        with second.client() as c:
            resumed = c.get_migration()
            assert resumed.phase == "candidate" and resumed.candidate.loaded_here  # reloaded from the stored dir
            assert resumed.backfill.embedded >= before  # what was committed before the kill is kept
            done = wait_for("back-fill to finish", lambda: (s := c.get_migration()).backfill.pending == 0 and s)
            assert done.backfill.embedded == done.backfill.live_references == 24
            assert c.recognize([image_input(pattern_image(3))]).results[0].recognition.matches[0].product_id == "sku-3"
    finally:
        second.stop()
    with sqlite3.connect(data / "catalog.db") as db:
        refs = db.execute("SELECT COUNT(*) FROM refs").fetchone()[0]
        rows, distinct = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT reference_id) FROM space_embeddings").fetchone()
    assert (refs, rows, distinct) == (24, 24, 24)  # nothing lost, nothing doubled


def test_two_replicas_on_one_postgresql_switch_together(
    postgres_server: Any, clip_model_dir: Path, effnet_model_dir: Path, tmp_path: Path
) -> None:
    url = postgres_server.new_database()
    a = b = None
    try:
        a = ServeProcess(effnet_model_dir, url, tmp_path / "a.log", "--migration-poll-seconds", "0.2",
                         "--matching", "nearest")
        b = ServeProcess(effnet_model_dir, url, tmp_path / "b.log", "--migration-poll-seconds", "0.2",
                         "--matching", "nearest")
        with a.client() as ca, b.client() as cb:
            enrol(ca, range(N_PRODUCTS))
            old = ca.server_info().model.fingerprint
            with RecognitionLoop(ca) as loop_a, RecognitionLoop(cb) as loop_b:
                new = ca.start_migration(str(clip_model_dir), shadow_share=0.5).candidate.fingerprint
                wait_for("B to load the candidate", lambda: cb.get_migration().candidate.loaded_here)
                wait_for("back-fill", lambda: ca.get_migration().backfill.pending == 0)
                sa, sb = ca.get_migration().backfill, cb.get_migration().backfill
                assert sa.embedded == sa.live_references == 2 * N_PRODUCTS
                assert sa.embedded_here + sb.embedded_here == 2 * N_PRODUCTS  # each reference embedded once
                switched_at = time.monotonic()
                ca.switch_model(new)
                followed = wait_for("B to serve the new model",
                                    lambda: next((t for t, _, fp, _ in loop_b.answers if fp == new), None), 10)
                wait_for("answers after the switch", lambda: sum(t > switched_at + 1 for t, *_ in loop_b.answers) >= 3)
                assert cb.get_migration().serving.fingerprint == new
                assert cb.finish_migration().phase == "none"  # any replica can finish
                wait_for("A to see the finish", lambda: ca.get_migration().phase == "none")
            for loop in (loop_a, loop_b):
                assert loop.failures == [] and loop.health == {"SERVING"}
                fps = [fp for _, _, fp, _ in loop.answers]
                assert fps == sorted(fps, key=lambda fp: fp == new) and fps[0] == old and fps[-1] == new
                old_v = max(v for _, _, fp, v in loop.answers if fp == old)
                assert old_v < min(v for _, _, fp, v in loop.answers if fp == new)  # one version flips it
            lag = followed - switched_at
            assert lag < 2.0, lag
    finally:
        for s in (a, b):
            if s is not None:
                s.stop()
        postgres_server.drop_database(url)


def test_cli_migrate_start_status_report_switch_finish(
    server: RunningServer, effnet_model_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from skulens.cli import EXIT_OK, main

    client = server.client()
    enrol(client, range(2))
    addr = ["--addr", server.addr]
    assert main(["migrate", "start", str(effnet_model_dir), "--shadow-share", "0.5", *addr]) == EXIT_OK
    out = capsys.readouterr().out
    assert "phase: candidate" in out and "shadow share 0.5" in out and "loaded here" in out
    assert main(["migrate", "status", "--wait", "0.1", *addr]) == EXIT_OK
    out = capsys.readouterr().out
    assert "back-fill: 4/4 references (100.0 %), 0 pending, 0 without a stored image" in out
    labelled = tmp_path / "held-out"
    for p in range(2):  # photos of the catalog's products, labelled by their folder
        (labelled / f"sku-{p}").mkdir(parents=True)
        (labelled / f"sku-{p}" / "a.png").write_bytes(pattern_image(p, variant=3))
    assert main(["migrate", "report", "--labelled", str(labelled), *addr]) == EXIT_OK
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "serving (" in line)
    assert "candidate (" in header
    top1 = next(line for line in out.splitlines() if line.startswith("top-1 %"))
    assert len(top1.split()) == 4  # "top-1 %", serving, candidate
    assert main(["migrate", "report", "--json", "--labelled", str(labelled), *addr]) == EXIT_OK
    got = json.loads(capsys.readouterr().out)
    assert set(got["evaluations"]) == {"serving", "candidate"}
    assert main(["migrate", "switch", *addr]) == EXIT_OK  # default: the candidate
    assert "phase: switched" in capsys.readouterr().out
    assert main(["migrate", "finish", "--json", *addr]) == EXIT_OK
    got = json.loads(capsys.readouterr().out)
    assert got["phase"] == "none" and got["serving"]["dim"] == 1280
    assert main(["migrate", "abort", *addr]) == EXIT_OK  # nothing to abort: idempotent


def test_evaluate_with_a_model_the_server_does_not_hold_is_failed_precondition(server: RunningServer) -> None:
    from skulens.v1 import recognition_pb2

    client = server.client()
    enrol(client, range(1))
    msg = recognition_pb2.EvaluateRequest(
        images=[recognition_pb2.LabelledImage(image=image_input(pattern_image(0)), product_id="sku-0")],
        options=recognition_pb2.EvaluateOptions(model_fingerprint="not-loaded/1:00"),
    )
    with pytest.raises(grpc.RpcError) as err:
        client.evaluate([msg])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not-loaded/1:00" in (err.value.details() or "")
    msg.options.model_fingerprint = client.server_info().model.fingerprint  # the serving one is fine
    msg.options.search.unknown_threshold = 0.25  # a threshold set on the request is the one in force
    report = client.evaluate([msg]).report
    assert report.overall.top1 == 1.0 and report.thresholds.unknown_threshold == pytest.approx(0.25)
