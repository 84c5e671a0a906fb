"""`skulens.catalog.purge`: the purge report, its arguments, `purge_location` and the `skulens catalog purge`
command, against a real embedded catalog and the session's real PostgreSQL (tests/pg_fixture.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from catalog_helpers import unit

from skulens.catalog import Catalog, InvalidArgument, NewReference, NotFound
from skulens.catalog.location import parse_location
from skulens.catalog.purge import PurgeReport, check_args, purge_location
from skulens.cli import EXIT_OK, EXIT_USAGE, main

DIM = 8
FP = "purge-cli/random/8"


@pytest.fixture
def pg_url(postgres_server: Any) -> Iterator[str]:
    url = postgres_server.new_database()  # the catalog in its `public` schema, as a deployment has it
    yield url
    postgres_server.drop_database(url)


def test_report_and_arguments() -> None:
    r = PurgeReport(products=1, references=2, embeddings=3, augmented=4, batches=2, seconds=0.5)
    assert r.rows == 10 and r.format().startswith("purged 1 products, 2 references, 3 vectors and 4 augmented")
    assert "another process" in PurgeReport(skipped=True).format()
    assert check_args(0, 1) == (0.0, 1)
    for args, field in (((-0.5, 1), "older_than_seconds"), ((float("nan"), 1), "older_than_seconds"),
                        ((1.0, 0), "limit"), ((1.0, True), "limit")):
        with pytest.raises(InvalidArgument) as err:
            check_args(*args)
        assert err.value.field == field


def test_purge_location_on_postgres(pg_url: str, postgres_server: Any) -> None:
    from skulens.catalog.postgres import PostgresCatalog

    with pytest.raises(NotFound):  # nothing there yet: not created by a maintenance command
        purge_location(parse_location(pg_url), older_than_seconds=0.0)
    with PostgresCatalog.open(pg_url, fingerprint=FP, dim=DIM) as cat:
        cat.upsert_product("a")
        cat.add_references("a", [NewReference(unit(np.ones(DIM)))])
        cat.upsert_product("b")
        cat.add_references("b", [NewReference(unit(np.arange(1, DIM + 1)))])
        cat.delete_product("a")
        version = cat.version()
    report = purge_location(parse_location(pg_url), older_than_seconds=3600.0)
    assert report.rows == 0 and not report.skipped  # deleted just now: within the grace period
    report = purge_location(parse_location(pg_url), older_than_seconds=0.0, vacuum=True)
    assert (report.products, report.references, report.embeddings, report.vacuumed) == (1, 1, 1, True)
    with PostgresCatalog.open(pg_url, fingerprint=FP, dim=DIM) as cat:
        assert cat.version() == version and [p.product_id for p in cat.list_products()[0]] == ["b"]


def test_purge_location_on_an_embedded_catalog(tmp_path: Path) -> None:
    with Catalog.open(tmp_path / "cat", fingerprint=FP, dim=DIM) as cat:
        cat.upsert_product("a")
        cat.delete_product("a")
    assert purge_location(parse_location(tmp_path / "cat"), older_than_seconds=0.0).rows == 0
    with pytest.raises(NotFound):
        purge_location(parse_location(tmp_path / "none"))
    assert not (tmp_path / "none").exists()


def test_catalog_purge_command(pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from skulens.catalog.postgres import PostgresCatalog

    with PostgresCatalog.open(pg_url, fingerprint=FP, dim=DIM) as cat:
        cat.upsert_product("a")
        cat.add_references("a", [NewReference(unit(np.ones(DIM))), NewReference(unit(-np.ones(DIM)))])
        cat.delete_product("a")
    assert main(["catalog", "purge", "--catalog", pg_url]) == EXIT_OK  # default grace: one day
    assert "purged 0 products, 0 references" in capsys.readouterr().out
    assert main(["catalog", "purge", "--catalog", pg_url, "--older-than", "0", "--batch", "1", "--json"]) == EXIT_OK
    out = json.loads(capsys.readouterr().out)
    assert (out["products"], out["references"], out["embeddings"], out["batches"]) == (1, 2, 2, 3)
    assert out["catalog"] == parse_location(pg_url).redacted()
    assert main(["catalog", "purge", "--catalog", pg_url, "--older-than", "-1"]) == EXIT_USAGE
    assert "older_than_seconds" in capsys.readouterr().err
    assert main(["catalog", "purge", "--catalog", str(tmp_path / "none")]) == EXIT_USAGE
    assert "no catalog" in capsys.readouterr().err
