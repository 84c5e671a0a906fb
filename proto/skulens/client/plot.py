"""The curves of an evaluation report as a PNG, drawn with Pillow (a core dependency: no plotting library needed).

Left panel: accuracy of the accepted photos against coverage (the share accepted), one point per unknown
threshold. Right panel: false accepts, false rejects and accepted-and-correct against the unknown threshold,
with the threshold in force and the suggested one marked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from skulens.v1 import recognition_pb2

WIDTH, HEIGHT = 1200, 520
PAD_L, PAD_R, PAD_T, PAD_B = 70, 20, 50, 60
COLOURS = {
    "accuracy": (31, 119, 180),
    "false accept": (214, 39, 40),
    "false reject": (255, 127, 14),
    "accepted & correct": (44, 160, 44),
    "in force": (120, 120, 120),
    "suggested": (148, 103, 189),
}
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


class _Panel:
    """One chart: data coordinates (x0..x1, 0..1) → pixels inside a box of the image."""

    def __init__(self, draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], x0: float, x1: float) -> None:
        self.draw, self.box = draw, box
        self.x0, self.x1 = x0, x1 if x1 > x0 else x0 + 1e-6

    def xy(self, x: float, y: float) -> tuple[float, float]:
        left, top, right, bottom = self.box
        return (
            left + (x - self.x0) / (self.x1 - self.x0) * (right - left),
            bottom - max(0.0, min(1.0, y)) * (bottom - top),
        )

    def frame(self, title: str, xlabel: str, font: Font, xticks: Sequence[float]) -> None:
        left, top, right, bottom = self.box
        d = self.draw
        for k in range(6):  # y grid and labels: 0 %, 20 %, ..., 100 %
            _, y = self.xy(self.x0, k / 5)
            d.line([(left, y), (right, y)], fill=(225, 225, 225))
            d.text((left - 8, y), f"{20 * k}%", fill="black", font=font, anchor="rm")
        for x in xticks:
            px, _ = self.xy(x, 0)
            d.line([(px, bottom), (px, bottom + 4)], fill="black")
            d.text((px, bottom + 6), f"{x:.2f}", fill="black", font=font, anchor="mt")
        d.rectangle(self.box, outline="black")
        d.text(((left + right) / 2, top - 12), title, fill="black", font=font, anchor="md")
        d.text(((left + right) / 2, bottom + 28), xlabel, fill="black", font=font, anchor="mt")

    def line(self, points: Sequence[tuple[float, float]], colour: tuple[int, int, int]) -> None:
        px = [self.xy(x, y) for x, y in points]
        if len(px) > 1:
            self.draw.line(px, fill=colour, width=2)
        elif px:
            x, y = px[0]
            self.draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)

    def vline(self, x: float, colour: tuple[int, int, int]) -> None:
        if self.x0 <= x <= self.x1:
            px, _ = self.xy(x, 0)
            _, top, _, bottom = self.box
            for y in range(top, bottom, 8):  # dashed
                self.draw.line([(px, y), (px, min(bottom, y + 4))], fill=colour, width=1)


def _legend(draw: ImageDraw.ImageDraw, at: tuple[int, int], names: Sequence[str], font: Font) -> None:
    x, y = at
    draw.rectangle([x - 6, y - 10, x + 150, y + 16 * len(names) - 6], fill="white", outline=(200, 200, 200))
    for name in names:
        draw.line([(x, y), (x + 20, y)], fill=COLOURS[name], width=3)
        draw.text((x + 26, y), name, fill="black", font=font, anchor="lm")
        y += 16


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    return [lo + (hi - lo) * k / (n - 1) for k in range(n)] if hi > lo else [lo]


def plot_report(report: recognition_pb2.EvaluationReport, path: Path, title: str = "") -> Path:
    """Write the report's curves to `path` (PNG); returns it."""
    img = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    curve = list(report.curve)
    half = WIDTH // 2
    left = _Panel(draw, (PAD_L, PAD_T, half - PAD_R, HEIGHT - PAD_B), 0.0, 1.0)
    left.frame("accuracy of accepted photos vs coverage", "coverage (share of photos accepted)", font, _ticks(0, 1))
    left.line([(c.coverage, c.accuracy) for c in curve if c.HasField("accuracy")][::-1], COLOURS["accuracy"])
    _legend(draw, (PAD_L + 10, PAD_T + 14), ["accuracy"], font)

    ts = [c.threshold for c in curve]
    lo, hi = (min(ts), max(ts)) if ts else (0.0, 1.0)
    right = _Panel(draw, (half + PAD_L, PAD_T, WIDTH - PAD_R, HEIGHT - PAD_B), lo, hi)
    right.frame("error rates vs unknown threshold", "unknown threshold (best score)", font, _ticks(lo, hi))
    shown = []
    for name, field in (
        ("false accept", "false_accept"),
        ("false reject", "false_reject"),
        ("accepted & correct", "accepted_correct"),
    ):
        points = [(c.threshold, getattr(c, field)) for c in curve if c.HasField(field)][::-1]
        if points:
            right.line(points, COLOURS[name])
            shown.append(name)
    right.vline(report.thresholds.unknown_threshold, COLOURS["in force"])
    shown.append("in force")
    if report.operating_point.HasField("unknown_threshold"):
        right.vline(report.operating_point.unknown_threshold, COLOURS["suggested"])
        shown.append("suggested")
    _legend(draw, (half + PAD_L + 10, PAD_T + 14), shown, font)
    head = title or (
        f"{report.queries} photos ({report.in_catalog} of catalog products, {report.out_of_catalog} not); "
        f"top-1 {100 * report.overall.top1:.1f} %, top-5 {100 * report.overall.top5:.1f} %"
    )
    draw.text((WIDTH / 2, 8), head, fill="black", font=font, anchor="mt")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path
