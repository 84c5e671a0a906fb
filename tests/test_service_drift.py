"""Drift monitoring through a real server (port 0, EfficientNet-Lite0 with its real ImageNet weights, SQLite catalog
in tmp): generated product photos; one source's photos turn darkened / blurred / rotated, another's turn to
products the catalog lacks, a third stays as it was. GetDriftReport, the metrics and the request checks.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter
from prometheus_client import generate_latest
from service_harness import SHARED, RunningServer, make_settings, rpc_error

from skulens.cli import main
from skulens.client.client import SkulensClient, image_input
from skulens.v1 import catalog_pb2, recognition_pb2

PRODUCTS = 24  # in the catalog: ids 0..23; products 1000.. are not
SHOTS = 3  # reference photos per product
WINDOW = 48  # drift window: 48 queries, baseline = the first 96 of each source
BATCH = 8
S = recognition_pb2


def product_photo(product: int, shot: int, size: int = 128) -> bytes:
    """A generated packaged product (background, stripes, four shapes: all from `product`), photographed with a
    small shift, zoom, brightness change and sensor noise that depend on `shot`."""
    rng = np.random.default_rng(product)
    big = 2 * size
    im = Image.new("RGB", (big, big), tuple(int(c) for c in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(im)
    stripe, stripes = tuple(int(c) for c in rng.integers(0, 256, 3)), int(rng.integers(2, 7))
    for k in range(stripes):
        y = int(big * (k + 0.5) / stripes)
        d.rectangle([0, y, big, y + big // 40], fill=stripe)
    for _ in range(4):
        kind, (x, y), (w, h) = int(rng.integers(0, 3)), rng.uniform(0.05, 0.7, 2), rng.uniform(0.15, 0.45, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = [int(x * big), int(y * big), int((x + w) * big), int((y + h) * big)]
        (d.ellipse, d.rectangle, d.rounded_rectangle)[kind](box, fill=colour)
    s = np.random.default_rng(product * 7919 + shot + 1)
    crop = int(big * s.uniform(0.85, 1.0))
    ox, oy = (int(v) for v in s.integers(0, big - crop + 1, 2))
    im = im.crop((ox, oy, ox + crop, oy + crop)).resize((size, size), Image.Resampling.BILINEAR)
    im = ImageEnhance.Brightness(im).enhance(s.uniform(0.9, 1.1))
    pixels = np.asarray(im).astype(np.int16) + s.integers(-8, 9, (size, size, 3))
    return _jpeg(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))


def degraded(photo: bytes, kind: str) -> bytes:
    """The photo darkened (35 % brightness), blurred (Gaussian, radius 3) or rotated by 90°."""
    im = Image.open(io.BytesIO(photo)).convert("RGB")
    if kind == "dark":
        im = ImageEnhance.Brightness(im).enhance(0.35)
    elif kind == "blur":
        im = im.filter(ImageFilter.GaussianBlur(3))
    else:
        im = im.rotate(90)
    return _jpeg(im)


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(effnet_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = make_settings(
        tmp_path_factory.mktemp("drift") / "data",
        drift_window_size=WINDOW,
        drift_clusters=8,
        drift_window_seconds=3600.0,
        drift_max_sources=4,
    )
    srv = RunningServer(settings, SHARED.engine(effnet_model_dir))
    with srv.client() as c:
        for p in range(PRODUCTS):
            c.upsert_product(f"p{p}")
        resp = c.add_references(
            catalog_pb2.AddReferenceImagesRequest(product_id=f"p{p}", content=product_photo(p, shot))
            for p in range(PRODUCTS)
            for shot in range(SHOTS)
        )
        assert resp.added == PRODUCTS * SHOTS
    yield srv
    srv.stop()


def send(c: SkulensClient, source: str, photos: list[bytes]) -> None:
    for i in range(0, len(photos), BATCH):
        resp = c.recognize([image_input(p) for p in photos[i : i + BATCH]], source=source)
        assert all(r.status.code == 0 for r in resp.results)


def until_seen(c: SkulensClient, expected: dict[str, int], timeout: float = 30.0) -> S.GetDriftReportResponse:
    """The report once the monitor's aggregator has taken in `expected` queries per source."""
    end = time.monotonic() + timeout
    while True:
        rep = c.drift_report(history=1000)
        seen = {s.source: s.queries for s in rep.sources}
        if all(seen.get(k, 0) >= n for k, n in expected.items()) or time.monotonic() > end:
            return rep
        time.sleep(0.1)


def test_degraded_and_unknown_sources_drift_while_an_untouched_one_stays_ok(server: RunningServer) -> None:
    monitor = server.app.runtime.drift
    assert monitor is not None
    monitor.refit(force=True)  # the catalog was just enrolled: fit now rather than at the next periodic check
    baseline = 2 * WINDOW
    with server.client() as c:
        # phase 1: every lane sends photos of catalog products (new shots): the baselines
        for lane, offset in (("lane-ok", 100), ("lane-degraded", 300), ("lane-new", 500)):
            send(c, lane, [product_photo(i % PRODUCTS, offset + i) for i in range(baseline)])
        rep = until_seen(c, dict.fromkeys(("lane-ok", "lane-degraded", "lane-new"), baseline))
        assert {s.source: s.state for s in rep.sources} == dict.fromkeys(
            ("lane-ok", "lane-degraded", "lane-new"), S.DRIFT_STATE_LEARNING
        )
        # phase 2: one lane's camera goes bad, one lane sees products the catalog lacks, one goes on as before
        n = 2 * WINDOW
        send(c, "lane-ok", [product_photo(i % PRODUCTS, 700 + i) for i in range(n)])
        send(
            c,
            "lane-degraded",
            [degraded(product_photo(i % PRODUCTS, 900 + i), ("dark", "blur", "rot")[i % 3]) for i in range(n)],
        )
        send(c, "lane-new", [product_photo(1000 + i % PRODUCTS, i) for i in range(n)])
        rep = until_seen(c, dict.fromkeys(("lane-ok", "lane-degraded", "lane-new"), baseline + n))
    by = {s.source: s for s in rep.sources}
    refs = PRODUCTS * SHOTS  # all read; --drift-clusters 8 (at most refs / 8)
    assert rep.enabled and rep.reference.references == refs and rep.reference.clusters == min(8, refs // 8)
    ok, bad, new = by["lane-ok"], by["lane-degraded"], by["lane-new"]
    for s in (ok, bad, new):
        assert s.queries == baseline + n and s.baseline_queries == baseline == s.baseline_target
        assert len(s.history) == n // (WINDOW // 4)  # judged at every slice close (12 queries) after the baseline
        assert s.baseline.known_share > 0.9 and s.baseline.far_share < 0.3  # a sane baseline to compare with
    # the untouched lane: OK in every judged window, no signal even at WATCH
    assert ok.state == S.DRIFT_STATE_OK
    assert {w.state for w in ok.history} == {S.DRIFT_STATE_OK}
    assert max(g.z for g in ok.signals if math.isfinite(g.z)) < 3.0
    # both changed lanes end at DRIFT, and the signals that carry it are the expected ones
    assert bad.state == new.state == S.DRIFT_STATE_DRIFT
    sig = {s.source: {g.name: g for g in s.signals} for s in (bad, new)}
    for lane in ("lane-degraded", "lane-new"):
        g = sig[lane]
        assert g["best_score"].state == S.DRIFT_STATE_DRIFT and g["best_score"].value < g["best_score"].baseline
        assert g["far_share"].state >= S.DRIFT_STATE_WATCH and g["far_share"].value > g["far_share"].baseline
        assert by[lane].current.reference_distance > by[lane].baseline.reference_distance
    assert sig["lane-degraded"]["mean_shift"].state >= S.DRIFT_STATE_WATCH  # the mean moves too (z 3.5 at 48 queries)
    # and the metric a Prometheus alert rule pages on
    text = generate_latest(server.registry).decode()
    assert 'skulens_drift_state{source="lane-degraded"} 2.0' in text
    assert 'skulens_drift_state{source="lane-new"} 2.0' in text
    assert 'skulens_drift_state{source="lane-ok"} 0.0' in text


def test_skulens_monitor_prints_the_table_and_plots_the_signals(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = tmp_path / "shelf.jpg"
    photo.write_bytes(product_photo(3, 4242))
    assert main(["recognize", "--addr", server.addr, "--source", "cli-lane", str(photo)]) == 0
    with server.client() as c:
        until_seen(c, {"cli-lane": 1})  # the aggregator takes queries in every 0.25 s
    png = tmp_path / "drift.png"
    assert main(["monitor", "--addr", server.addr, "--plot", str(png)]) == 0
    out, err = capsys.readouterr()
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("lane-", "cli-"))}
    assert rows["lane-degraded"][1] == "DRIFT" and rows["lane-new"][1] == "DRIFT" and rows["lane-ok"][1] == "OK"
    assert rows["cli-lane"][1:3] == ["LEARNING", "1"]
    assert "reference: catalog version" in out and f"plot: {png} (" in err
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] == 1000
    assert main(["monitor", "--addr", server.addr, "--source", "lane-ok", "--json", "--history", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [s["source"] for s in report["sources"]] == ["lane-ok"] and len(report["sources"][0]["history"]) == 2


def test_sources_past_the_limit_fold_into_other_and_bad_sources_are_refused(server: RunningServer) -> None:
    photo = product_photo(0, 9999)
    with server.client() as c:
        before = c.drift_report().folded_queries
        for k in range(6):  # the server tracks 4 named sources; the tests above used 4
            c.recognize([image_input(photo)], source=f"extra-{k}")
        c.recognize([image_input(photo)])  # no source: "_default"
        names = {"lane-ok", "lane-degraded", "lane-new", "cli-lane"}
        rep = until_seen(c, {"_other": 6, "_default": 1})
        assert {s.source for s in rep.sources} == names | {"_other", "_default"}
        assert rep.folded_queries - before == 6 and rep.settings.max_sources == 4
        assert rep.memory_bytes <= rep.memory_bound_bytes
        only = c.drift_report(source="cli-lane", history=5)
        assert [s.source for s in only.sources] == ["cli-lane"] and only.sources[0].state == S.DRIFT_STATE_LEARNING
        for bad, why in (
            ("x" * 65, "65 characters; the limit is 64"),
            ("_other", "may not start with '_'"),
            ("lane\n1", "control"),
        ):
            err = rpc_error(c.recognize, [image_input(photo)], source=bad)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and why in (err.details() or ""), err.details()
        # a stream carries its source from message to message; a bad one refuses only its message
        msgs = [
            S.RecognizeStreamRequest(images=[image_input(photo)], source="lane-ok"),
            S.RecognizeStreamRequest(images=[image_input(photo)]),
            S.RecognizeStreamRequest(images=[image_input(photo)], source="_bad"),
        ]
        before_ok = {s.source: s.queries for s in c.drift_report().sources}["lane-ok"]
        codes = sorted((r.message_index, r.result.status.code) for r in c.recognize_stream_responses(msgs))
        assert codes == [(0, 0), (1, 0), (2, grpc.StatusCode.INVALID_ARGUMENT.value[0])]
        assert {s.source: s.queries for s in until_seen(c, {"lane-ok": before_ok + 2}).sources}["lane-ok"] == (
            before_ok + 2
        )
