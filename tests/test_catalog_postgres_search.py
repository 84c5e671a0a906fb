"""Search in the shared catalog (`skulens.catalog.postgres_search`), against the session's real PostgreSQL +
pgvector: the first round rides with the counts and is sent again when the catalog changed shape since the last
search with the same filter; one query and a batch get the same exact answers; the graph walk is at least as wide as
the rows a round reads; the width is tuned on the product recall searches get."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from catalog_helpers import unit
from pg_fixture import PgServer
from psycopg.types.json import Jsonb

from skulens.catalog import CatalogSettings, NewReference
from skulens.catalog.postgres import PostgresCatalog
from skulens.catalog.postgres_binary import Vector
from skulens.catalog.postgres_search import HNSW_MAX_EF_SEARCH, Shape

DIM = 16
FP = "search-test/16"
Open = Callable[..., PostgresCatalog]


def _add(cat: PostgresCatalog, refs: np.ndarray, category: str, first: int) -> list[str]:
    pids = []
    for p in range(len(refs)):
        pid = f"{category}-{first + p:03d}"
        cat.upsert_product(pid, category=category)
        cat.add_references(pid, [NewReference(r) for r in refs[p]])
        pids.append(pid)
    return pids


def _best(refs: dict[str, np.ndarray], q: np.ndarray, k: int) -> list[str]:
    """Exact top-k products (a product scores its best reference)."""
    scores = {pid: float((r @ q).max()) for pid, r in refs.items()}
    return sorted(scores, key=lambda p: -scores[p])[:k]


def test_a_search_is_right_when_the_catalog_changed_shape_since_the_last(pg_opener: Open) -> None:
    cat = pg_opener(exact_limit=20)
    rng = np.random.default_rng(0)
    refs = unit(rng.standard_normal((8, 5, DIM)))
    held: dict[str, np.ndarray] = {}
    for pid, r in zip(_add(cat, refs[:3], "x", 0), refs[:3], strict=True):  # 15 candidates: exact
        held[pid] = r
    _add(cat, unit(rng.standard_normal((3, 5, DIM))), "y", 0)
    q = unit(rng.standard_normal((4, DIM)))

    def check(category: str) -> None:
        for row, res in zip(q, cat.search(q, top_k=3, category=category), strict=True):
            assert [m.product_id for m in res.matches] == _best(held, row, 3)
        (one,) = cat.search(q[0], top_k=3, category=category)
        assert [m.product_id for m in one.matches] == _best(held, q[0], 3)

    check("x")
    check("x")  # the shape of the last search: exact
    for pid, r in zip(_add(cat, refs[3:], "x", 3), refs[3:], strict=True):  # 40 candidates: through the HNSW index
        held[pid] = r
    check("x")
    for pid in list(held)[2:]:  # 10 candidates again: exact
        cat.delete_product(pid)
        del held[pid]
    cat.delete_reference(cat.get_product("x-000").references[0].reference_id)
    held["x-000"] = held["x-000"][1:]
    check("x")
    assert cat._rounds.kind(cat.stats().references) == "hnsw"  # 9 + 15 live references, unfiltered: > 20


def test_the_first_round_rides_with_the_counts(pg_opener: Open) -> None:
    cat = pg_opener(exact_limit=0)
    refs = unit(np.random.default_rng(1).standard_normal((20, 3, DIM)))
    _add(cat, refs, "z", 0)
    rounds = cat._rounds
    qs = [Vector(v) for v in unit(np.random.default_rng(2).standard_normal((3, DIM)))]
    args = {"cat": "z", "labels": Jsonb({}), "lim": 1000}  # products counted up to 1,000
    guess = rounds._round(Shape(False, 3.0, 60, 60), len(qs), 5, True, args)

    def trip(conn: Any) -> tuple[Any, ...]:
        counts, first = rounds._first_trip(conn, qs, "z", {}, args, guess)
        return counts, first, rounds._fetch(conn, guess, qs, guess.initial, 0)

    counts, first, again = cat._db.run(trip, tx=False)
    assert counts == (60, 20, 60, 60) and first is not None and len(first) == 3 * guess.initial
    assert sorted(first) == sorted(again)
    without, none = cat._db.run(lambda conn: rounds._first_trip(conn, qs, "", {}, args, None), tx=False)
    assert without == (60, 20, 60, 60) and none is None


def test_one_query_and_a_batch_get_the_same_exact_answers(pg_opener: Open) -> None:
    cat = pg_opener()  # 300 references: exact
    rng = np.random.default_rng(3)
    _add(cat, unit(rng.standard_normal((30, 5, DIM))), "a", 0)
    _add(cat, unit(rng.standard_normal((30, 5, DIM))), "b", 0)
    assert cat.stats().index_kind == "flat"
    q = unit(rng.standard_normal((6, DIM)))
    for category in ("", "b"):
        batch = cat.search(q, top_k=4, category=category)
        for row, res in zip(q, batch, strict=True):
            (one,) = cat.search(row, top_k=4, category=category)
            assert [(m.product_id, m.reference_id) for m in one.matches] == [
                (m.product_id, m.reference_id) for m in res.matches]
            assert [m.score for m in one.matches] == pytest.approx([m.score for m in res.matches], abs=1e-6)


def test_the_graph_walk_is_at_least_as_wide_as_a_round(pg_opener: Open) -> None:
    cat = pg_opener(settings=CatalogSettings(hnsw_ef_search=40), exact_limit=0)
    rounds = cat._rounds
    hnsw = rounds._round(Shape(False, 5.0, 10_000, 10_000), 1, 10, False, {"cat": "", "labels": Jsonb({})})
    assert hnsw.initial == 100 and hnsw.width == 40
    assert rounds._settings(hnsw, 0, 100)[0]["hnsw.ef_search"] == 100
    assert rounds._settings(hnsw, 1, 400)[0]["hnsw.ef_search"] == 400
    assert rounds._settings(hnsw, 2, 30)[0]["hnsw.ef_search"] == 160
    assert rounds._settings(hnsw, 3, 6400)[0]["hnsw.ef_search"] == HNSW_MAX_EF_SEARCH


def test_a_filtered_scan_may_visit_enough_tuples_for_the_rows_it_reads(pg_opener: Open) -> None:
    cat = pg_opener(exact_limit=10)  # products are counted up to 11: the filter's 20 references are known
    rng = np.random.default_rng(6)
    _add(cat, unit(rng.standard_normal((4, 5, DIM))), "few", 0)  # 20 of 100 references: a share of 0.2
    _add(cat, unit(rng.standard_normal((16, 5, DIM))), "many", 0)
    cat.search(unit(rng.standard_normal(DIM)), top_k=3, category="few")
    (shape,) = [v for k, v in cat._rounds._shapes.items() if "few" in k]
    assert not shape.exact and shape.share == pytest.approx(0.2)
    rounds = cat._rounds
    plain = rounds._round(Shape(False, 5.0, 100_000, 100_000), 1, 10, False, {"cat": "", "labels": Jsonb({})})
    narrow = rounds._round(Shape(False, 5.0, 100_000, 100_000, 0.05), 1, 10, True, {"cat": "c", "labels": Jsonb({})})
    wide = rounds._round(Shape(False, 5.0, 100_000, 100_000, 0.9), 1, 10, True, {"cat": "c", "labels": Jsonb({})})
    assert narrow.initial == 100 and narrow.share == 0.05
    assert rounds._settings(plain, 0, 100)[1] == 20_000  # pgvector's default
    plan, cap = rounds._settings(narrow, 0, 100)  # 40 visits a row x 100 rows / 0.05
    assert cap == 80_000 == plan["hnsw.max_scan_tuples"]
    assert rounds._settings(narrow, 1, 400)[1] == 320_000 and rounds._settings(plain, 1, 400)[1] == 80_000
    assert rounds._settings(wide, 0, 100)[1] == 20_000  # a filter that keeps most rows needs no more


def test_the_width_is_tuned_on_the_product_recall_searches_get(pg_opener: Open,
                                                               postgres_server: PgServer) -> None:
    # clustered like catalog photos: products near their brand, five references near their product
    rng = np.random.default_rng(4)
    brands = rng.standard_normal((20, DIM))
    centres = brands[rng.integers(0, 20, 400)] + 0.6 * rng.standard_normal((400, DIM))
    refs = unit(centres[:, None, :] + 0.35 * rng.standard_normal((400, 5, DIM)))
    settings = CatalogSettings(hnsw_m=4, hnsw_ef_construction=8, hnsw_ef_search=4, recall_queries=100)
    writer = pg_opener(settings=settings, exact_limit=0)
    with writer.bulk_load(expected=2000):
        writer.add_references_many([(pid, [NewReference(r) for r in refs[p]]) for p, pid in enumerate(
            [writer.upsert_product(f"sku-{p:03d}")[0].product_id for p in range(400)])])
    cat = pg_opener(settings=settings, exact_limit=0)
    st = cat.stats()
    assert st.index_kind == "hnsw" and st.recall_at_10 is not None
    assert st.recall_at_10 >= settings.recall_target or st.index_search_width == settings.hnsw_max_ef_search
    stored = postgres_server.execute(f'SELECT tuned_config FROM "{cat.schema}".meta')[0][0]
    assert '"measured": "products@10"' in stored
    # queries like the measurement's (stored references plus noise) get that product recall, give or take
    held = {f"sku-{p:03d}": refs[p] for p in range(400)}
    picks = rng.choice(400 * 5, 60, replace=False)
    q = unit(refs.reshape(-1, DIM)[picks] + 0.5 / np.sqrt(DIM) * rng.standard_normal((60, DIM)))
    found = [len({m.product_id for m in res.matches} & set(_best(held, row, 10))) / 10
             for row, res in zip(q, cat.search(q, top_k=10), strict=True)]
    assert float(np.mean(found)) >= st.recall_at_10 - 0.08


@pytest.mark.parametrize("per_product", [1.0, 30.0])
def test_the_width_measurement_knows_the_exact_products_as_the_exact_search_does(pg_opener: Open,
                                                                                 per_product: float) -> None:
    # the measurement reads every live vector once and compares here; the exact search rounds compare in SQL
    rng = np.random.default_rng(9)
    centres = unit(rng.standard_normal((30, DIM)))
    refs = unit(centres[:, None, :] + 0.05 * rng.standard_normal((30, 30, DIM)))  # 30 close references a product
    cat = pg_opener(exact_limit=0)
    added = {}
    for p in range(30):
        cat.upsert_product(f"sku-{p:02d}")
        added[p] = cat.add_references(f"sku-{p:02d}", [NewReference(r) for r in refs[p]])
    cat.delete_product("sku-07")  # deleted: in neither answer
    for ref in added[11][:6]:
        cat.delete_reference(ref.reference_id)
    probes = unit(refs.reshape(-1, DIM)[rng.choice(900, 40, replace=False)] + 0.1 * rng.standard_normal((40, DIM)))
    tuning, rounds = cat._tuning, cat._rounds
    # per_product 1 keeps 64 references a probe, about two products' worth here: every probe needs the wider
    # pass; 30 keeps 1,200, more than there are
    got = cat._db.run(lambda conn: tuning._exact(conn, probes, 10, per_product), tx=False)
    live = 29 * 30 - 6
    want = cat._db.run(lambda conn: rounds.hits(
        conn, rounds._round(Shape(True, 30.0, live, live), 40, 10, False, {"cat": "", "labels": Jsonb({})}),
        [Vector(x) for x in probes], 10, None, 0.0, {}), tx=False)
    assert got == [{h.product_pk for h in row[:10]} for row in want]
    assert all(len(g) == 10 for g in got)


def test_a_recall_below_the_target_at_the_widest_search_is_a_warning(pg_opener: Open,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    # a graph of 2 links searched at most 2 wide cannot find all of 10 products among 300 random references
    sparse = CatalogSettings(hnsw_m=2, hnsw_ef_construction=4, hnsw_ef_search=2, hnsw_max_ef_search=2,
                             recall_target=0.99, recall_queries=50)
    rng = np.random.default_rng(11)
    writer = pg_opener(settings=sparse, exact_limit=0)
    _add(writer, unit(rng.standard_normal((100, 3, DIM))), "r", 0)
    with caplog.at_level("WARNING", logger="skulens.catalog.postgres_search"):
        caplog.clear()
        recall = writer.tune()
        assert recall is not None and recall < 0.99, recall
        assert any("stays below the target 0.990" in r.getMessage() and r.levelname == "WARNING"
                   for r in caplog.records)
        caplog.clear()
        reader = pg_opener(settings=sparse, exact_limit=0)  # reuses the stored width and recall: warns too
        assert reader.stats().recall_at_10 == pytest.approx(recall)
        assert any("stays below the target" in r.getMessage() for r in caplog.records)
        caplog.clear()
        met = dataclasses.replace(sparse, recall_target=0.0)  # any recall meets it: no warning
        assert pg_opener(settings=met, exact_limit=0).tune() is not None
        assert not any("stays below the target" in r.getMessage() for r in caplog.records)
