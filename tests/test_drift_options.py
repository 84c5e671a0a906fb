"""`DriftOptions` and the drift settings that build them (flag > environment > default, checked at start)."""

from __future__ import annotations

import pytest

from skulens.service.drift_options import DriftOptions
from skulens.service.settings import Settings, SettingsError


def test_derived_sizes() -> None:
    o = DriftOptions(window_size=200, baseline_windows=2, clusters=64)
    assert (o.slice_size, o.baseline_queries, o.min_window_queries, o.sample_size()) == (50, 400, 50, 16384)
    o = DriftOptions(window_size=10, slices=4, clusters=4)
    assert (o.slice_size, o.min_window_queries, o.sample_size()) == (3, 3, 4096)


def test_settings_build_the_options_from_the_environment() -> None:
    s = Settings.from_sources(
        None,
        {
            "SKULENS_DRIFT_WINDOW_SIZE": "100",
            "SKULENS_DRIFT_MAX_SOURCES": "8",
            "SKULENS_DRIFT_ALERT_Z": "6",
            "SKULENS_DRIFT_MONITOR": "off",
        },
    )
    o = s.drift_options()
    assert (o.window_size, o.max_sources, o.alert_z, o.watch_z) == (100, 8, 6.0, 3.0)
    assert s.drift_monitor is False and Settings().drift_monitor is True
    assert Settings().drift_options() == DriftOptions()  # the settings' defaults are the options' defaults


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("drift_max_sources", 0, "--drift-max-sources / SKULENS_DRIFT_MAX_SOURCES must be in 1..10000"),
        ("drift_window_size", 3, "must be in 4..1000000"),
        ("drift_window_seconds", 0.0, "must be > 0"),
        ("drift_alert_z", 2.0, "must be >= drift_watch_z (3.0)"),
        ("drift_alert_effect", 0.1, "must be >= drift_watch_effect (0.2)"),
    ],
)
def test_out_of_range_settings_are_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings(**{field: value})
