"""The shared catalog's bulk load (`skulens.catalog.postgres_bulk`, `PostgresCatalog.bulk_load`), against the
session's real PostgreSQL + pgvector: the HNSW index is dropped when a load at least doubles what it holds and built
again afterwards (also after a failure), searches answer right meanwhile and after, and the width is measured again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import psycopg
import pytest
from catalog_helpers import unit
from pg_fixture import PgServer
from psycopg import sql

from skulens.catalog import CatalogSettings, NewReference
from skulens.catalog.errors import InvalidArgument, NotFound
from skulens.catalog.postgres import PostgresCatalog
from skulens.catalog.postgres_bulk import BUILD_MEMORY_MIN, build_memory, should_defer

DIM = 16
FP = "bulk-test/16"
Open = Callable[..., PostgresCatalog]


def _has_index(server: PgServer, cat: PostgresCatalog) -> bool:
    return bool(server.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{cat.schema}"."{cat.index_name()}"',))[0][0])


def _load(cat: PostgresCatalog, refs: np.ndarray, first: int = 0) -> None:
    items = []
    for p in range(len(refs)):
        cat.upsert_product(f"sku-{first + p:04d}", category="even" if (first + p) % 2 == 0 else "odd")
        items.append((f"sku-{first + p:04d}", [NewReference(r) for r in refs[p]]))
    for at in range(0, len(items), 64):
        cat.add_references_many(items[at:at + 64])


def test_memory_and_the_decision() -> None:
    most = CatalogSettings().index_build_memory_mb << 20
    assert most == 1 << 30
    assert build_memory(0, 512, 32, most) == BUILD_MEMORY_MIN
    assert build_memory(100_000, 512, 32, most) == int(100_000 * (4 * 512 + 2 * 32 * 16 + 200) * 1.25)
    assert build_memory(10_000_000, 512, 32, most) == most
    assert build_memory(1_000_000, 512, 32, 8 << 30) == int(1_000_000 * (4 * 512 + 2 * 32 * 16 + 200) * 1.25)
    assert build_memory(0, 512, 32, 2 << 20) == 2 << 20  # the setting wins over the minimum
    assert should_defer(0, 1) and should_defer(999, 1000)
    assert not should_defer(1000, 1000) and not should_defer(0, 0)


def test_a_bulk_load_builds_the_index_after_the_rows(pg_opener: Open, postgres_server: PgServer) -> None:
    settings = CatalogSettings(hnsw_m=8, hnsw_ef_construction=32, hnsw_ef_search=16, recall_queries=50)
    cat = pg_opener(settings=settings, exact_limit=0)  # every search through the HNSW path
    other = pg_opener(settings=settings, exact_limit=0)  # another replica, searching meanwhile
    refs = unit(np.random.default_rng(0).standard_normal((150, 4, DIM)))
    assert _has_index(postgres_server, cat)
    with cat.bulk_load(expected=600) as deferred:
        assert deferred and not _has_index(postgres_server, cat)
        _load(cat, refs)
        # without the index every replica's search still answers, exactly (a scan)
        (res,) = other.search(refs[7, 2], top_k=3, category="odd")
        assert res.matches[0].product_id == "sku-0007" and res.matches[0].score == pytest.approx(1.0, abs=1e-5)
    assert _has_index(postgres_server, cat)
    st = cat.stats()
    assert (st.references, st.index_kind, st.index_size) == (600, "hnsw", 600)
    assert st.recall_at_10 is not None and st.recall_at_10 >= settings.recall_target  # measured after the build
    with psycopg.connect(postgres_server.url(), autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL enable_sort = off")  # as searches pin it: the index, never a sort of all rows
        plan = "\n".join(r[0] for r in conn.execute(
            f'EXPLAIN SELECT reference_id FROM "{cat.schema}".embeddings WHERE fingerprint = %s '
            f"ORDER BY embedding::vector({DIM}) <#> %s::vector({DIM}) LIMIT 5", (FP, str([0.25] * DIM))))
    assert cat.index_name() in plan
    for p in (3, 80, 149):
        (res,) = other.search(refs[p, 0], top_k=1)
        assert res.matches[0].product_id == f"sku-{p:04d}"

    # a load smaller than what the index holds keeps it (each vector goes into the graph as it is written)
    with cat.bulk_load(expected=100) as deferred:
        assert not deferred and _has_index(postgres_server, cat)
        _load(cat, refs[:25], first=150)
    assert cat.stats().references == 700
    with cat.bulk_load(defer_index=False) as deferred:
        assert not deferred


def test_the_index_comes_back_when_a_load_fails(pg_opener: Open, postgres_server: PgServer) -> None:
    cat = pg_opener()
    refs = unit(np.random.default_rng(1).standard_normal((4, 2, DIM)))
    with pytest.raises(NotFound), cat.bulk_load(expected=1000) as deferred:
        assert deferred
        _load(cat, refs[:2])
        cat.upsert_product("sku-0002")
        cat.add_references_many([("sku-0002", [NewReference(refs[2, 0])]), ("missing", [NewReference(refs[3, 0])])])
    assert _has_index(postgres_server, cat)
    assert cat.stats().references == 4  # the committed batches stay; the failed one wrote nothing
    (res,) = cat.search(refs[1, 1], top_k=1)
    assert res.matches[0].product_id == "sku-0001"


def test_open_builds_an_index_a_dead_loader_left_missing(pg_opener: Open, postgres_server: PgServer) -> None:
    cat = pg_opener()
    _load(cat, unit(np.random.default_rng(2).standard_normal((3, 2, DIM))))
    postgres_server.execute(f'DROP INDEX "{cat.schema}"."{cat.index_name()}"')  # as a loader killed mid-load
    again = pg_opener()
    assert _has_index(postgres_server, again) and again.stats().references == 6


@pytest.mark.parametrize(("most_mb", "asked"), [(2, "2MB"), (1024, "64MB")])
def test_an_index_build_asks_for_at_most_the_configured_memory(pg_opener: Open, most_mb: int, asked: str) -> None:
    settings = CatalogSettings(index_build_memory_mb=most_mb)
    cat = pg_opener(settings=settings, exact_limit=0)
    cat.upsert_product("p")
    cat.add_references("p", [NewReference(v) for v in unit(np.random.default_rng(1).standard_normal((3, DIM)))])

    def rebuild(conn: Any) -> str:  # the build's transaction: the index dropped and created again in it
        conn.execute("SET LOCAL maintenance_work_mem = '1MB'")  # under both, so that the build's own one shows
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(cat.schema, cat.index_name())))
        cat._schema.create_index(conn, settings)
        return str(conn.execute("SHOW maintenance_work_mem").fetchone()[0])

    # 3 rows want less than the 64 MB floor: the build asks for the floor, or for the setting when it is lower
    assert cat._db.run(rebuild) == asked
    with pytest.raises(InvalidArgument, match="index_build_memory_mb must be >= 1"):
        CatalogSettings(index_build_memory_mb=0)
