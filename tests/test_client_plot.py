"""skulens.client.plot: the curves of a report drawn as a PNG with Pillow."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from skulens.client.plot import COLOURS, HEIGHT, WIDTH, plot_report
from skulens.v1 import recognition_pb2

pb = recognition_pb2


def _report(*, with_outside: bool) -> pb.EvaluationReport:
    r = pb.EvaluationReport(queries=10, in_catalog=6, out_of_catalog=4 if with_outside else 0)
    r.thresholds.unknown_threshold = 0.5
    for k in range(10):
        t = 0.9 - 0.05 * k
        p = r.curve.add(threshold=t, coverage=(k + 1) / 10, accuracy=1.0 - 0.03 * k)
        p.false_reject = max(0.0, 1.0 - (k + 1) / 6)
        p.accepted_correct = min(1.0, (k + 1) / 7)
        if with_outside:
            p.false_accept = max(0.0, (k - 5) / 4)
    if with_outside:
        r.operating_point.unknown_threshold = 0.62
    return r


def _has(img: Image.Image, colour: tuple[int, int, int]) -> bool:
    return any(c == colour for _, c in img.getcolors(WIDTH * HEIGHT) or [])


def test_both_panels_and_their_curves(tmp_path: Path) -> None:
    path = plot_report(_report(with_outside=True), tmp_path / "out" / "curves.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (WIDTH, HEIGHT)
        rgb = img.convert("RGB")
    for name in ("accuracy", "false accept", "false reject", "accepted & correct", "suggested"):
        assert _has(rgb, COLOURS[name]), name


def test_without_outside_photos_no_false_accept_curve(tmp_path: Path) -> None:
    with Image.open(plot_report(_report(with_outside=False), tmp_path / "c.png")) as img:
        rgb = img.convert("RGB")
    assert _has(rgb, COLOURS["false reject"]) and not _has(rgb, COLOURS["false accept"])
    assert not _has(rgb, COLOURS["suggested"])
    empty = plot_report(pb.EvaluationReport(), tmp_path / "empty.png")  # no curve at all still draws the frames
    assert empty.stat().st_size > 0
