"""`skulens.client.monitor`: the drift report as a table and as a PNG, from a report built here."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from skulens.client.monitor import STATE_COLOURS, plot, table
from skulens.v1 import recognition_pb2 as pb


def window(t: float, known: float, p50: float, shift: float, far: float, state: int) -> pb.DriftWindow:
    return pb.DriftWindow(
        end_unix=t,
        queries=40,
        known_share=known,
        unknown_share=1 - known,
        score_p50=p50,
        mean_shift=shift,
        far_share=far,
        reference_distance=0.5 + shift,
        state=state,
    )


def report() -> pb.GetDriftReportResponse:
    ok, drift = pb.DRIFT_STATE_OK, pb.DRIFT_STATE_DRIFT
    lane1 = pb.SourceDrift(
        source="lane-1",
        state=drift,
        queries=200,
        baseline_queries=80,
        baseline_target=80,
        baseline=pb.DriftWindow(
            queries=80,
            known_share=0.95,
            unknown_share=0.05,
            score_p50=0.9,
            reference_distance=0.5,
            far_share=0.1,
            state=pb.DRIFT_STATE_LEARNING,
        ),
        current=window(130.0, 0.40, 0.70, 1.2, 0.8, drift),
        signals=[
            pb.DriftSignal(name="far_share", value=0.8, baseline=0.1, effect=1.6, z=9.4, state=drift),
            pb.DriftSignal(name="best_score", value=0.7, baseline=0.9, effect=2.0, z=7.1, state=drift),
        ],
        history=[
            window(100.0 + 10 * i, 0.95 - 0.2 * i, 0.9 - 0.07 * i, 0.4 * i, 0.1 + 0.25 * i, ok if i < 2 else drift)
            for i in range(4)
        ],
    )
    lane2 = pb.SourceDrift(
        source="lane-2",
        state=pb.DRIFT_STATE_LEARNING,
        queries=30,
        baseline_queries=30,
        baseline_target=80,
        baseline=pb.DriftWindow(queries=30, known_share=1.0, far_share=math.nan),
    )
    return pb.GetDriftReportResponse(
        enabled=True,
        sources=[lane1, lane2],
        reference=pb.DriftReference(
            catalog_version=12, references=480, clusters=16, far_cut=0.812, fit_seconds=0.034, fits=2
        ),
        settings=pb.DriftSettings(
            window_size=40,
            window_seconds=900,
            slices=4,
            baseline_queries=80,
            watch_effect=0.2,
            watch_z=3,
            alert_effect=0.5,
            alert_z=5,
            max_sources=64,
        ),
        folded_queries=3,
        memory_bytes=2_000_000,
        memory_bound_bytes=90_000_000,
    )


def test_table_rows_and_footer() -> None:
    lines = table(report()).splitlines()
    assert lines[0].split() == [
        "source",
        "state",
        "queries",
        "baseline",
        "known",
        "unknown",
        "ambig.",
        "score",
        "p50",
        "mean",
        "shift",
        "ref.",
        "dist.",
        "far",
        "worst",
        "signal",
    ]
    lane1 = lines[2].split()
    assert lane1[:8] == ["lane-1", "DRIFT", "200", "80/80", "95%→40%", "5%→60%", "0%→0%", "0.90→0.70"]
    assert lane1[8:] == ["1.20", "0.50→1.70", "10%→80%", "far_share", "z=9.4", "(DRIFT)"]
    assert lines[3].split() == ["lane-2", "LEARNING", "30", "30/80", "100%", "0%", "0%", "0.00", "-", "0.00", "-", "-"]
    text = "\n".join(lines)
    assert "WATCH at effect ≥ 0.2 and z ≥ 3, DRIFT at effect ≥ 0.5 and z ≥ 5" in text
    assert "catalog version 12, 480 embeddings, 16 centres, far cut 0.812, fit 0.034 s (2 fits)" in text
    assert "3 queries folded into _other, 0 dropped; memory 2.0 MB (bound 90.0 MB)" in text
    assert "off on this server" in table(pb.GetDriftReportResponse(enabled=False))


def test_plot_draws_every_window_of_every_panel(tmp_path: Path) -> None:
    out = tmp_path / "plots" / "drift.png"
    assert plot(report(), out) == 4 * 4  # 4 windows of lane-1 in each of the 4 panels; lane-2 has none yet
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (1000, 30 + 4 * 190 + 28 + 20)
    pixels = {tuple(p) for p in np.asarray(img.convert("RGB")).reshape(-1, 3)}
    assert STATE_COLOURS[pb.DRIFT_STATE_DRIFT] in pixels and STATE_COLOURS[pb.DRIFT_STATE_OK] in pixels
    assert STATE_COLOURS[pb.DRIFT_STATE_WATCH] not in pixels  # no window was at WATCH
    empty = tmp_path / "empty.png"
    assert plot(pb.GetDriftReportResponse(enabled=True), empty) == 0 and Image.open(empty).size[0] == 1000
