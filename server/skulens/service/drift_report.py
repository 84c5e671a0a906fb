"""The drift monitor's report as a `GetDriftReportResponse`."""

from __future__ import annotations

from typing import Any

from skulens.service.drift_monitor import DriftMonitor, DriftReport
from skulens.service.drift_stats import State, Window
from skulens.v1 import recognition_pb2 as pb

_STATES = {
    State.LEARNING: pb.DRIFT_STATE_LEARNING,
    State.OK: pb.DRIFT_STATE_OK,
    State.WATCH: pb.DRIFT_STATE_WATCH,
    State.DRIFT: pb.DRIFT_STATE_DRIFT,
}


def state_pb(state: State) -> Any:
    """A State as its DriftState enum value."""
    return _STATES[state]


def window_pb(w: Window, state: State | None = None) -> pb.DriftWindow:
    """One window's figures."""
    return pb.DriftWindow(
        end_unix=w.end,
        queries=w.queries,
        known_share=w.shares[0],
        unknown_share=w.shares[1],
        ambiguous_share=w.shares[2],
        score_mean=w.score_mean,
        score_p10=w.score_p10,
        score_p50=w.score_p50,
        score_p90=w.score_p90,
        reference_distance=w.reference_distance,
        mean_shift=w.mean_shift,
        far_share=w.far_share,
        state=state_pb(w.state if state is None else state),
    )


def report_pb(report: DriftReport) -> pb.GetDriftReportResponse:
    """The whole report (enabled)."""
    o = report.options
    out = pb.GetDriftReportResponse(
        enabled=True,
        settings=pb.DriftSettings(
            window_size=o.window_size,
            window_seconds=o.window_seconds,
            slices=o.slices,
            baseline_queries=o.baseline_queries,
            watch_effect=o.watch_effect,
            watch_z=o.watch_z,
            alert_effect=o.alert_effect,
            alert_z=o.alert_z,
            max_sources=o.max_sources,
        ),
        folded_queries=report.folded_queries,
        dropped_queries=report.dropped_queries,
        memory_bytes=report.memory_bytes,
        memory_bound_bytes=report.memory_bound_bytes,
    )
    r = report.reference
    if r is not None:
        out.reference.CopyFrom(
            pb.DriftReference(
                catalog_version=r.catalog_version,
                references=r.references,
                clusters=r.clusters,
                far_cut=r.far_cut,
                fitted_unix=r.fitted_at,
                fit_seconds=r.fit_seconds,
                fits=r.fits,
                error=r.error,
            )
        )
    for s in report.sources:
        src = pb.SourceDrift(
            source=s.source,
            state=state_pb(s.state),
            queries=s.queries,
            baseline_queries=s.baseline_queries,
            baseline_target=o.baseline_queries,
            last_seen_unix=s.last_seen,
            history=[window_pb(w) for w in s.history],
        )
        if s.baseline is not None:
            src.baseline.CopyFrom(window_pb(s.baseline, State.LEARNING))
        if s.current is not None:
            src.current.CopyFrom(window_pb(s.current))
            src.signals.extend(
                pb.DriftSignal(
                    name=g.name, value=g.value, baseline=g.baseline, effect=g.effect, z=g.z, state=state_pb(g.state)
                )
                for g in s.current.signals
            )
        out.sources.append(src)
    return out


def drift_report(monitor: DriftMonitor | None, request: pb.GetDriftReportRequest) -> pb.GetDriftReportResponse:
    """GetDriftReport's answer: `enabled=False` without a monitor."""
    if monitor is None:
        return pb.GetDriftReportResponse(enabled=False)
    history = min(int(request.history), monitor.options.history)
    return report_pb(monitor.report(request.source or None, history))
