"""Settings: flag > environment > default, validation naming the option, tokens, exposure policy."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import pytest

from skulens.catalog.location import CatalogLocation
from skulens.service.settings import (
    SCOPE_CATALOG_WRITE,
    SCOPE_RECOGNIZE,
    Settings,
    SettingsError,
    add_serve_arguments,
    is_loopback,
    parse_bool,
    parse_tokens,
)

TOKEN_R = "r" * 20
TOKEN_W = "w" * 20


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_are_safe() -> None:
    s = Settings()
    assert (s.host, s.port, s.metrics_port) == ("127.0.0.1", 50051, None)
    assert s.load_tokens() == () and s.exposure_warnings(()) == []


def test_flag_beats_environment_beats_default() -> None:
    env = {
        "SKULENS_PORT": "7000",
        "SKULENS_MAX_BATCH": "4",
        "SKULENS_MODEL_DIR": "/m",
        "SKULENS_INSECURE": "yes",
    }
    s = Settings.from_sources(_parse(["--port", "7001", "--data", "/d"]), env)
    assert s.port == 7001  # flag
    assert s.max_batch == 4  # environment
    assert s.model_dir == Path("/m") and s.data_dir == Path("/d")
    assert s.insecure is True
    assert s.max_top_k == 100  # default
    s2 = Settings.from_sources(_parse(["--no-insecure"]), env)
    assert s2.insecure is False  # an explicit --no-flag beats the environment


def test_every_field_has_a_flag_or_is_env_only() -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    dests = {a.dest for a in parser._actions}
    for f in fields(Settings):
        assert (f.name in dests) == f.metadata["cli"], f.name
        assert f.metadata["help"], f.name


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"SKULENS_PORT": "eighty"}, "SKULENS_PORT"),
        ({"SKULENS_PORT": "70000"}, "--port / SKULENS_PORT must be in 0..65535"),
        ({"SKULENS_MAX_IMAGES_PER_REQUEST": "0"}, "SKULENS_MAX_IMAGES_PER_REQUEST must be >= 1"),
        ({"SKULENS_INSECURE": "maybe"}, "SKULENS_INSECURE"),
        ({"SKULENS_LOG_FORMAT": "xml"}, "json or text"),
        ({"SKULENS_TLS_CERT": "/c.pem"}, "--tls-cert and --tls-key go together"),
        ({"SKULENS_DEFAULT_TOP_K": "500"}, "max_top_k"),
        ({"SKULENS_MATCHING": "fuzzy"}, "--matching / SKULENS_MATCHING must be adapted or nearest"),
        ({"SKULENS_HEAD_RIDGE": "0"}, "--head-ridge / SKULENS_HEAD_RIDGE must be in (0, 1000]"),
        ({"SKULENS_HEAD_MIN_REFERENCES": "0"}, "SKULENS_HEAD_MIN_REFERENCES must be in 1..1000000"),
        ({"SKULENS_AUGMENT_QUIET_SECONDS": "-1"}, "SKULENS_AUGMENT_QUIET_SECONDS must be in [0, 3600]"),
        ({"SKULENS_INDEX_BUILD_MEMORY_MB": "0"},
         "--index-build-memory-mb / SKULENS_INDEX_BUILD_MEMORY_MB must be >= 1"),
        ({"SKULENS_CATALOG_CACHE": "redis"}, "--catalog-cache / SKULENS_CATALOG_CACHE must be none or faiss"),
        ({"SKULENS_CATALOG_CACHE": "faiss", "SKULENS_DATA_DIR": "/tmp/c"}, "--catalog-cache needs a shared catalog"),
        ({"SKULENS_CATALOG_CACHE": "faiss"}, "--catalog-cache needs a shared catalog"),
        ({"SKULENS_CATALOG": "postgresql://u@h/d", "SKULENS_CATALOG_CACHE_POLL_MS": "1"},
         "SKULENS_CATALOG_CACHE_POLL_MS must be in 10..600000"),
    ],
)
def test_bad_values_name_the_option(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=None) as info:
        Settings.from_sources(None, env)
    assert needle in str(info.value)


def test_parse_bool() -> None:
    assert parse_bool("On") and parse_bool("1") and not parse_bool("off") and not parse_bool("")
    with pytest.raises(ValueError):
        parse_bool("perhaps")


def test_tokens_file_and_inline(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text(f"# comment\n{TOKEN_R} recognize\n\n{TOKEN_W} recognize,catalog:write  # both\n")
    s = Settings(tokens_file=f, tokens=f"{'x' * 16}=catalog:write")
    toks = dict(s.load_tokens())
    assert toks[TOKEN_R] == {SCOPE_RECOGNIZE}
    assert toks[TOKEN_W] == {SCOPE_RECOGNIZE, SCOPE_CATALOG_WRITE}
    assert toks["x" * 16] == {SCOPE_CATALOG_WRITE}
    assert TOKEN_R not in repr(Settings(tokens=f"{TOKEN_R}=recognize"))
    assert Settings(tokens=f"{TOKEN_R}=recognize").describe()["tokens"] == "<set>"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (f"{TOKEN_R} admin", "scopes must be among"),
        ("short recognize", "at least 16 characters"),
        (TOKEN_R, "expected 'TOKEN SCOPE"),
    ],
)
def test_bad_tokens(text: str, needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        parse_tokens(text)


def test_missing_tokens_file_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="--tokens-file"):
        Settings(tokens_file=tmp_path / "nope").load_tokens()


def test_exposure_policy() -> None:
    assert (
        is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("[::1]") and is_loopback("localhost")
    )
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.com")
    with pytest.raises(SettingsError, match="refusing to listen on non-loopback"):
        Settings(host="0.0.0.0").exposure_warnings(())
    warnings = Settings(host="0.0.0.0", insecure=True).exposure_warnings(())
    assert any("INSECURE" in w for w in warnings) and any("without TLS" in w for w in warnings)
    tokens = parse_tokens(f"{TOKEN_R} recognize")
    assert any(
        "bearer tokens travel in clear text" in w for w in Settings(host="0.0.0.0").exposure_warnings(tokens)
    )


def test_bind_address_brackets_ipv6() -> None:
    assert Settings(host="::1", port=5).bind_address == "[::1]:5"
    assert Settings(host="127.0.0.1", port=5).bind_address == "127.0.0.1:5"


def test_engine_and_catalog_options_follow_settings() -> None:
    s = Settings(
        max_batch=4,
        max_wait_ms=1.5,
        max_queue=9,
        max_image_mb=2,
        providers=("CPUExecutionProvider",),
        unknown_threshold=0.5,
        ambiguity_margin=0.1,
        sync_commits=False,
        max_top_k=50,
        default_top_k=3,
        ort_spinning=True,
        decode_processes=False,
        work_nice=3,
        index_build_memory_mb=4096,
    )
    eo = s.engine_options()
    assert eo.encoder.spinning and not Settings().engine_options().encoder.spinning
    assert (eo.decode_processes, eo.work_nice) == (False, 3)
    served = Settings().engine_options()  # the server's defaults: decode processes, work 10 steps below the loop
    assert (served.decode_processes, served.work_nice) == (True, 10)
    with pytest.raises(SettingsError, match=r"--work-nice / SKULENS_WORK_NICE must be in 0..19, got 20"):
        Settings(work_nice=20)
    assert (eo.batcher.max_batch, eo.batcher.max_wait_ms, eo.batcher.max_queue) == (4, 1.5, 9)
    assert eo.decode.max_bytes == 2 * 1024 * 1024 and eo.encoder.providers == ("CPUExecutionProvider",)
    cs = s.catalog_settings()
    assert (cs.unknown_threshold, cs.ambiguity_margin, cs.synchronous, cs.max_top_k, cs.index_build_memory_mb) == (
        0.5,
        0.1,
        "NORMAL",
        50,
        4096,
    )
    assert Settings().catalog_settings().index_build_memory_mb == 1024
    assert Settings().engine_options().encoder.providers is None


def test_connection_limits() -> None:
    s = Settings()
    assert (s.request_read_timeout_seconds, s.keepalive_time_seconds, s.keepalive_timeout_seconds) == (30, 60, 20)
    assert s.max_connection_idle_seconds == 300
    names = [f.name for f in fields(Settings)]
    group = [f.name for f in fields(Settings) if f.metadata["group"] == "connections"]
    assert names[names.index("drain_delay_seconds") + 1 : names.index("drain_delay_seconds") + 1 + len(group)] == group
    s = Settings.from_sources(
        _parse(["--request-read-timeout-seconds", "0", "--keepalive-time-seconds", "15"]),
        {"SKULENS_MAX_CONNECTION_IDLE_SECONDS": "0", "SKULENS_KEEPALIVE_TIMEOUT_SECONDS": "5"},
    )
    assert (s.request_read_timeout_seconds, s.keepalive_time_seconds) == (0, 15)  # 0 = no read timeout
    assert (s.max_connection_idle_seconds, s.keepalive_timeout_seconds) == (0, 5)  # 0 = never close idle


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        (
            {"SKULENS_REQUEST_READ_TIMEOUT_SECONDS": "-1"},
            "--request-read-timeout-seconds / SKULENS_REQUEST_READ_TIMEOUT_SECONDS must be in [0, 86400] (0 = off)",
        ),
        ({"SKULENS_MAX_CONNECTION_IDLE_SECONDS": "1e9"}, "SKULENS_MAX_CONNECTION_IDLE_SECONDS must be in [0, 86400]"),
        ({"SKULENS_KEEPALIVE_TIME_SECONDS": "0"}, "--keepalive-time-seconds / SKULENS_KEEPALIVE_TIME_SECONDS must"),
        ({"SKULENS_KEEPALIVE_TIMEOUT_SECONDS": "nan"}, "SKULENS_KEEPALIVE_TIMEOUT_SECONDS must be in [1, 86400]"),
    ],
)
def test_bad_connection_limits(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_sources(None, env)
    assert needle in str(info.value)


def test_catalog_location_from_catalog_or_data() -> None:
    """--catalog takes a URL or a directory, --data a directory; not both; the logged URL hides its password."""
    assert Settings().catalog_location() is None
    assert Settings(data_dir=Path("/d")).catalog_location() == CatalogLocation("sqlite", path=Path("/d"))
    env = {"SKULENS_CATALOG": "postgresql://sk:pw@db:5432/cat"}
    s = Settings.from_sources(_parse([]), env)
    loc = s.catalog_location()
    assert loc is not None and loc.kind == "postgresql" and loc.url.endswith("@db:5432/cat")
    assert s.describe()["catalog"] == "postgresql://sk:***@db:5432/cat"
    assert Settings.from_sources(_parse(["--catalog", "sqlite:///srv/c"])).catalog_location() == CatalogLocation(
        "sqlite", path=Path("/srv/c")
    )
    with pytest.raises(SettingsError, match="not both"):
        Settings.from_sources(_parse(["--catalog", "sqlite:///srv/c", "--data", "/d"]))
    with pytest.raises(SettingsError, match="unknown scheme 'redis'"):
        Settings.from_sources(_parse(["--catalog", "redis://h/0"]))


def test_head_settings_follow_settings() -> None:
    s = Settings.from_sources(None, {"SKULENS_MATCHING": "nearest", "SKULENS_HEAD_RIDGE": "2",
                                     "SKULENS_HEAD_WEIGHT": "0", "SKULENS_HEAD_MIN_REFERENCES": "5",
                                     "SKULENS_HEAD_CANDIDATES": "8"})
    h = s.head_settings()
    assert (h.enabled, h.ridge, h.weight, h.min_references, h.candidates) == (False, 2.0, 0.0, 5, 8)
    d = Settings.from_sources(None, {})
    assert (d.matching, d.augment_references, d.query_mirror) == ("adapted", True, False)
    assert d.head_settings().enabled
