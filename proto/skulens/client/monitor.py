"""`skulens monitor`: a drift report (GetDriftReport) as a table, and its signals over time as a PNG.

The PNG is drawn with Pillow (a core dependency, so it works on a client-only install; matplotlib is only in the
`dev` extra): one panel per signal (known share, median best score, mean shift from the baseline, share of queries
far from every reference cluster), one line per source, each judged window a dot coloured by its state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from skulens.v1 import recognition_pb2 as pb

STATE_NAMES = {
    pb.DRIFT_STATE_UNSPECIFIED: "-",
    pb.DRIFT_STATE_LEARNING: "LEARNING",
    pb.DRIFT_STATE_OK: "OK",
    pb.DRIFT_STATE_WATCH: "WATCH",
    pb.DRIFT_STATE_DRIFT: "DRIFT",
}
STATE_COLOURS = {
    pb.DRIFT_STATE_OK: (46, 160, 67),
    pb.DRIFT_STATE_WATCH: (230, 160, 0),
    pb.DRIFT_STATE_DRIFT: (210, 40, 40),
}
LINE_COLOURS = (
    (31, 119, 180),
    (148, 103, 189),
    (23, 190, 207),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (255, 127, 14),
)
HEADER = (
    "source",
    "state",
    "queries",
    "baseline",
    "known",
    "unknown",
    "ambig.",
    "score p50",
    "mean shift",
    "ref. dist.",
    "far",
    "worst signal",
)
#: (title, value of a window) per panel of the plot.
PANELS: tuple[tuple[str, Callable[[pb.DriftWindow], float]], ...] = (
    ("known share", lambda w: w.known_share),
    ("median best score", lambda w: w.score_p50),
    ("mean shift from baseline (baseline spreads)", lambda w: w.mean_shift),
    ("share far from every reference cluster", lambda w: w.far_share),
)


def _pct(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{100 * x:.0f}%"


def _num(x: float, digits: int = 2) -> str:
    return "-" if not math.isfinite(x) else f"{x:.{digits}f}"


def rows(report: pb.GetDriftReportResponse) -> list[list[str]]:
    """One row per source: baseline → latest window for each figure, and the signal furthest past its z."""
    out = []
    for s in report.sources:
        b = s.baseline if s.HasField("baseline") else None
        c = s.current if s.HasField("current") else None
        judged = [g for g in s.signals if math.isfinite(g.z)]
        worst = max(judged, key=lambda g: g.z, default=None)
        out.append(
            [
                s.source,
                STATE_NAMES.get(s.state, "?"),
                str(s.queries),
                f"{s.baseline_queries}/{s.baseline_target}",
                _fig(b, c, lambda w: w.known_share),
                _fig(b, c, lambda w: w.unknown_share),
                _fig(b, c, lambda w: w.ambiguous_share),
                _fig(b, c, lambda w: w.score_p50, _num),
                _num(c.mean_shift) if c is not None else "-",
                _fig(b, c, lambda w: w.reference_distance, _num),
                _fig(b, c, lambda w: w.far_share),
                f"{worst.name} z={worst.z:.1f} ({STATE_NAMES.get(worst.state, '?')})" if worst else "-",
            ]
        )
    return out


def _fig(
    base: pb.DriftWindow | None,
    now: pb.DriftWindow | None,
    get: Callable[[pb.DriftWindow], float],
    fmt: Callable[[float], str] = _pct,
) -> str:
    """`baseline→latest` of one figure ("-" where a window is missing)."""
    b = fmt(get(base)) if base is not None else "-"
    return b if now is None else f"{b}→{fmt(get(now))}"


def table(report: pb.GetDriftReportResponse) -> str:
    """The report as a text table plus a line on the reference, thresholds and bounds."""
    if not report.enabled:
        return "drift monitoring is off on this server (--no-drift-monitor)"
    cells = [list(HEADER), *rows(report)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(HEADER))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    st, ref = report.settings, report.reference
    lines.append("")
    lines.append(
        f"windows of {st.window_size} queries (≤ {st.window_seconds:g} s, sliding by "
        f"{st.window_size // max(st.slices, 1)}), "
        f"baseline {st.baseline_queries} queries; WATCH at effect ≥ {st.watch_effect:g} and z ≥ {st.watch_z:g}, "
        f"DRIFT at effect ≥ {st.alert_effect:g} and z ≥ {st.alert_z:g}"
    )
    if report.HasField("reference"):
        lines.append(
            f"reference: catalog version {ref.catalog_version}, {ref.references} embeddings, {ref.clusters} centres, "
            f"far cut {_num(ref.far_cut, 3)}, fit {ref.fit_seconds:.3f} s ({ref.fits} fits)"
            + (f"; last fit failed: {ref.error}" if ref.error else "")
        )
    lines.append(
        f"{len(report.sources)} sources (≤ {st.max_sources} named + _default + _other), {report.folded_queries} "
        f"queries folded into _other, {report.dropped_queries} dropped; memory {report.memory_bytes / 1e6:.1f} MB "
        f"(bound {report.memory_bound_bytes / 1e6:.1f} MB)"
    )
    return "\n".join(lines)


def plot(report: pb.GetDriftReportResponse, path: Path, *, width: int = 1000, panel_height: int = 190) -> int:
    """Write the sources' history (GetDriftReportRequest.history windows) as a PNG; returns the points drawn."""
    font = ImageFont.load_default()
    sources = [s for s in report.sources if len(s.history)]
    legend_h = 18 * max(1, math.ceil(len(sources) / 4)) + 10
    height = 30 + len(PANELS) * panel_height + legend_h + 20
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 8), "skulens drift signals per source (dots: window state OK / WATCH / DRIFT)", fill="black", font=font)
    times = [w.end_unix for s in sources for w in s.history]
    t0, t1 = (min(times), max(times)) if times else (0.0, 1.0)
    left, right = 70, width - 20
    drawn = 0
    for p, (title, get) in enumerate(PANELS):
        top = 30 + p * panel_height + 16
        bottom = top + panel_height - 40
        values = [get(w) for s in sources for w in s.history if math.isfinite(get(w))]
        lo, hi = _range(values, unit=p != 2)
        d.text((left, top - 14), title, fill="black", font=font)
        d.rectangle([left, top, right, bottom], outline=(180, 180, 180))
        for frac in (0.0, 0.5, 1.0):
            y = bottom - frac * (bottom - top)
            d.line([left - 4, y, left, y], fill="black")
            d.text((5, y - 6), f"{lo + frac * (hi - lo):.2f}", fill="black", font=font)

        def xy(
            t: float, v: float, top: int = top, bottom: int = bottom, lo: float = lo, hi: float = hi
        ) -> tuple[float, float]:
            x = left + (t - t0) / max(t1 - t0, 1e-9) * (right - left)
            return x, bottom - (v - lo) / max(hi - lo, 1e-9) * (bottom - top)

        for k, s in enumerate(sources):
            colour = LINE_COLOURS[k % len(LINE_COLOURS)]
            pts = [(xy(w.end_unix, get(w)), w.state) for w in s.history if math.isfinite(get(w))]
            if len(pts) > 1:
                d.line([pt for pt, _ in pts], fill=colour, width=2)
            for (x, y), state in pts:
                c = STATE_COLOURS.get(state, colour)
                d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=c, outline=colour)
                drawn += 1
    span = f"{t1 - t0:.0f} s" if times else "no judged windows yet"
    axis_y = 30 + len(PANELS) * panel_height
    d.text((left, axis_y - 20), f"time -> ({span})", fill="black", font=font)
    for k, s in enumerate(sources):
        x = left + (k % 4) * ((right - left) // 4)
        y = axis_y + 5 + 18 * (k // 4)
        d.rectangle([x, y + 3, x + 14, y + 9], fill=LINE_COLOURS[k % len(LINE_COLOURS)])
        d.text((x + 20, y), f"{s.source} ({STATE_NAMES.get(s.state, '?')})", fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return drawn


def _range(values: Sequence[float], *, unit: bool) -> tuple[float, float]:
    """Axis range: [0, 1] widened to the values for shares and scores, [0, max] for the mean shift."""
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    if unit:
        return min(0.0, lo), max(1.0, hi)
    return min(0.0, lo), max(hi * 1.1, 1e-3)
