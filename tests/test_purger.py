"""The background purge (`skulens.service.purger.Purger`) on real servers (port 0, EfficientNet-Lite0) sharing one
real PostgreSQL catalog (tests/pg_fixture.py): old deletions are purged by one replica at a time, counted in
`skulens_catalog_purged_total`, and the answers do not change."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from service_harness import SHARED, RunningServer, make_settings, pattern_image

from skulens.service.settings import Settings, SettingsError
from skulens.v1 import catalog_pb2


@pytest.fixture
def replicas(postgres_server: Any, effnet_model_dir: Path, tmp_path: Path) -> Iterator[tuple[RunningServer, ...]]:
    url = postgres_server.new_database()
    servers: list[RunningServer] = []
    try:
        for _ in range(2):
            settings = replace(make_settings(tmp_path, purge_after_seconds=0.0, purge_interval_seconds=1.0),
                               data_dir=None, catalog=url)
            servers.append(RunningServer(settings, SHARED.engine(effnet_model_dir)))
        yield tuple(servers)
    finally:
        for srv in servers:
            srv.stop()
        postgres_server.drop_database(url)


def purged(srv: RunningServer, what: str) -> float:
    return srv.registry.get_sample_value("skulens_catalog_purged_total", {"what": what}) or 0.0


def test_replicas_purge_old_deletions_one_at_a_time(replicas: tuple[RunningServer, ...],
                                                    postgres_server: Any) -> None:
    a, b = replicas
    with a.client() as c:
        for pid, n in (("gone", 3), ("kept", 2)):
            c.upsert_product(pid)
            resp = c.add_references(catalog_pb2.AddReferenceImagesRequest(product_id=pid, content=pattern_image(
                10 * len(pid) + k, size=96)) for k in range(n))
            assert resp.added == n
        c.delete_product("gone")
        version = c.stats().catalog_version
    end = time.monotonic() + 30
    while sum(purged(s, "references") for s in replicas) < 3:
        assert time.monotonic() < end, "no purge within 30 s"
        time.sleep(0.2)
    assert sum(purged(s, "products") for s in replicas) == 1
    assert sum(purged(s, "embeddings") for s in replicas) == 3
    with b.client() as c:
        st = c.stats()
        assert (st.catalog_version, st.product_count, st.reference_count) == (version, 1, 2)
        assert c.get_product("gone") is None and len(c.get_product("kept").references) == 2
    for srv in replicas:
        assert srv.app._purger is not None and srv.app._purger.last is not None


def test_purge_settings_are_checked(tmp_path: Path) -> None:
    for bad in ({"purge_after_seconds": -1.0}, {"purge_interval_seconds": 0.5},
                {"purge_interval_seconds": 700_000.0}):
        with pytest.raises(SettingsError):
            Settings(data_dir=tmp_path, **bad)
    off = make_settings(tmp_path, purge_interval_seconds=0.0)
    assert off.purge_interval_seconds == 0.0 and Settings().purge_after_seconds == 86_400.0
