"""The local FAISS copy of a shared catalog (`CatalogMirror` behind `MirroredCatalog`): it follows another replica's
writes through the change feed, keeps answering while PostgreSQL is down, recovers on its own, and reads everything
again when the feed cannot prove it missed nothing. Real PostgreSQL (tests/pg_fixture.py), real FAISS.

The `CatalogBackend` contract suite runs against the mirrored backend too (tests/test_catalog_backend_contract.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from catalog_helpers import branded_refs, recalls_of, unit

from skulens.catalog import CatalogSettings, NewReference
from skulens.catalog.errors import CatalogUnavailable, InvalidArgument
from skulens.catalog.location import open_catalog, parse_location

pytest.importorskip("psycopg")

from skulens.catalog.mirrored import MirroredCatalog
from skulens.catalog.postgres import PostgresCatalog

DIM = 16
FP = "mirror-test/random/16:0"
WAIT_S = 5.0


@pytest.fixture
def pair(postgres_server: Any, schema: str) -> Iterator[tuple[PostgresCatalog, MirroredCatalog]]:
    """(A: a replica writing the shared catalog directly, B: a replica answering from its local copy)."""
    settings = CatalogSettings(unknown_threshold=0.0, ambiguity_margin=0.0)
    a = PostgresCatalog.open(postgres_server.url(), schema=schema, fingerprint=FP, dim=DIM, settings=settings)
    b = MirroredCatalog.open(PostgresCatalog.open(postgres_server.url(), schema=schema, fingerprint=FP, dim=DIM,
                                                  settings=settings), poll_seconds=0.2)
    try:
        yield a, b
    finally:
        b.close()
        a.close()


def _enrol(cat: Any, pid: str, vectors: np.ndarray, category: str = "") -> list[int]:
    cat.upsert_product(pid, pid.title(), category)
    return [r.reference_id for r in cat.add_references(pid, [NewReference(x) for x in vectors])]


def _caught_up(a: PostgresCatalog, b: MirroredCatalog) -> None:
    assert b.mirror.wait_for(a.version(), WAIT_S), (b.version(), a.version())


def _top(b: MirroredCatalog, q: np.ndarray, **kw: Any) -> list[str]:
    return [m.product_id for m in b.search(q[None, :], top_k=5, **kw)[0].matches]


def test_another_replicas_writes_reach_the_copy(pair: tuple[PostgresCatalog, MirroredCatalog]) -> None:
    a, b = pair
    rng = np.random.default_rng(1)
    x = unit(rng.standard_normal((3, DIM)))
    ids = _enrol(a, "cola", x[:2], "drinks")
    _caught_up(a, b)
    hit = b.search(x[:1], top_k=1)[0].matches[0]
    assert (hit.product_id, hit.reference_id) == ("cola", ids[0]) and abs(hit.score - 1.0) < 1e-5
    assert b.version() == a.version()
    # a rename, a move to another category and a new reference, each seen by the copy
    a.upsert_product("cola", "Cola Zero", "soda")
    _enrol(a, "chips", x[2:], "snacks")
    _caught_up(a, b)
    assert b.search(x[:1], top_k=1)[0].matches[0].display_name == "Cola Zero"
    assert _top(b, x[0], category="soda") == ["cola"]
    assert _top(b, x[0], category="drinks") == []
    assert _top(b, x[2], category="snacks") == ["chips"]
    # the copy's answers equal the database's own
    direct = a.search(x, top_k=5)
    mirrored = b.search(x, top_k=5)
    assert [[(m.product_id, m.reference_id) for m in r.matches] for r in mirrored] == \
        [[(m.product_id, m.reference_id) for m in r.matches] for r in direct]


def test_deletes_on_another_replica_leave_the_copy(pair: tuple[PostgresCatalog, MirroredCatalog]) -> None:
    a, b = pair
    rng = np.random.default_rng(2)
    x = unit(rng.standard_normal((4, DIM)))
    ids = _enrol(a, "p1", x[:2])
    _enrol(a, "p2", x[2:])
    _caught_up(a, b)
    a.delete_reference(ids[0])
    _caught_up(a, b)
    assert b.search(x[:1], top_k=1)[0].matches[0].reference_id == ids[1]
    a.delete_product("p1")
    _caught_up(a, b)
    assert "p1" not in _top(b, x[0])
    assert b.stats().products == 1 and b.stats().references == 2
    # a product deleted and created again is a new product: its old references do not come back
    _enrol(a, "p1", x[3:])
    _caught_up(a, b)
    assert b.search(x[:1], top_k=2)[0].matches[0].reference_id not in ids
    assert b.stats().references == 3


def test_a_write_through_the_mirrored_replica_is_found_at_once(pair: tuple[PostgresCatalog, MirroredCatalog]
                                                               ) -> None:
    a, b = pair
    x = unit(np.random.default_rng(3).standard_normal((1, DIM)))
    _enrol(b, "fresh", x)  # returns once the copy holds it: no min_catalog_version needed on this replica
    assert _top(b, x[0]) == ["fresh"]
    assert b.version() == a.version()


def test_copy_answers_while_postgres_is_down_and_recovers(pair: tuple[PostgresCatalog, MirroredCatalog],
                                                         postgres_server: Any) -> None:
    a, b = pair
    rng = np.random.default_rng(4)
    x = unit(rng.standard_normal((3, DIM)))
    _enrol(a, "milk", x[:1])
    _caught_up(a, b)
    held = b.version()
    postgres_server.stop()
    try:
        deadline = time.monotonic() + WAIT_S
        while b.cache_state().reachable and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.05)
        state = b.cache_state()
        assert state is not None and not state.reachable and state.version == held and state.last_error
        assert _top(b, x[0]) == ["milk"]  # still answering, from the copy
        assert b.version() == held
        with pytest.raises(CatalogUnavailable):
            _enrol(b, "bread", x[1:2])  # writes cannot be served without the database
        stats = b.stats()
        assert stats.primary is None and stats.cache.version == held and stats.references == 1
    finally:
        postgres_server.start()
    _enrol(a, "bread", x[1:2])  # a retry once it is back: no restart of either replica
    _caught_up(a, b)
    state = b.cache_state()
    assert state is not None and state.reachable and state.last_error == "" and state.version == a.version()
    assert state.full_syncs >= 2  # the first read, and everything again after the reconnection
    assert _top(b, x[1])[0] == "bread"


def test_copy_behind_the_pruned_feed_reads_everything(pair: tuple[PostgresCatalog, MirroredCatalog],
                                                      postgres_server: Any, schema: str) -> None:
    a, b = pair
    rng = np.random.default_rng(5)
    x = unit(rng.standard_normal((3, DIM)))
    _enrol(a, "one", x[:1])
    _caught_up(a, b)
    b.mirror.stop()  # the copy stops following; meanwhile changes come and the feed is pruned past them
    _enrol(a, "two", x[1:2])
    a.delete_product("one")
    fulls = b.cache_state().full_syncs  # type: ignore[union-attr]
    assert postgres_server.execute(f'SELECT count(*) FROM "{schema}".changes WHERE version > {b.version()}')[0][0] > 0
    report = a.purge_deleted(older_than_seconds=0.0)
    assert not report.skipped
    floor = postgres_server.execute(f'SELECT changes_floor FROM "{schema}".meta')[0][0]
    assert floor == a.version()
    b.mirror.start()
    _caught_up(a, b)
    assert b.cache_state().full_syncs == fulls + 1  # type: ignore[union-attr]
    assert _top(b, x[1]) == ["two"] and "one" not in _top(b, x[0])


def test_changes_are_read_in_commit_order_without_gaps(pair: tuple[PostgresCatalog, MirroredCatalog],
                                                       schema: str, postgres_server: Any) -> None:
    """Every write's feed rows carry the version it committed; none is left unstamped."""
    a, _ = pair
    x = unit(np.random.default_rng(6).standard_normal((4, DIM)))
    _enrol(a, "p", x[:2])
    v1 = a.version()
    a.delete_reference(_enrol(a, "q", x[2:])[0])
    rows = postgres_server.execute(f'SELECT version, product_pk, reference_id FROM "{schema}".changes ORDER BY 1, 3')
    assert all(r[0] is not None for r in rows)
    assert sum(1 for r in rows if r[0] == v1 and r[2] is not None) == 2  # the two references of "p"
    assert max(r[0] for r in rows) == a.version()


def test_open_catalog_builds_the_cache_only_for_a_shared_catalog(postgres_server: Any, schema: str,
                                                                 tmp_path: Any) -> None:
    url = postgres_server.url() + f"?options=-csearch_path%3D{schema},public"
    cat = open_catalog(parse_location(url), fingerprint=FP, dim=DIM, cache="faiss", cache_poll_seconds=0.2)
    try:
        assert isinstance(cat, MirroredCatalog) and cat.cache_state() is not None
    finally:
        cat.close()
    with pytest.raises(InvalidArgument, match="local already"):
        open_catalog(parse_location(str(tmp_path / "data")), fingerprint=FP, dim=DIM, cache="faiss")
    with pytest.raises(InvalidArgument, match="catalog cache 'redis'"):
        open_catalog(parse_location(url), fingerprint=FP, dim=DIM, cache="redis")


def test_a_schema_5_catalog_gets_its_change_feed_at_open(postgres_server: Any, schema: str) -> None:
    """A catalog from before the feed (schema 5) is upgraded in place at open; a copy then follows its writes."""
    a = PostgresCatalog.open(postgres_server.url(), schema=schema, fingerprint=FP, dim=DIM)
    x = unit(np.random.default_rng(7).standard_normal((2, DIM)))
    _enrol(a, "old", x[:1])
    a.close()
    for stmt in (f'DROP TABLE "{schema}".changes', f'ALTER TABLE "{schema}".meta DROP COLUMN changes_floor',
                 f'DROP FUNCTION "{schema}".skulens_feed_product() CASCADE',
                 f'DROP FUNCTION "{schema}".skulens_feed_reference() CASCADE',
                 f'DROP FUNCTION "{schema}".skulens_feed_embeddings() CASCADE',
                 f'UPDATE "{schema}".meta SET schema_version = 5'):
        postgres_server.execute(stmt)
    a = PostgresCatalog.open(postgres_server.url(), schema=schema, fingerprint=FP, dim=DIM)
    b = MirroredCatalog.open(PostgresCatalog.open(postgres_server.url(), schema=schema, fingerprint=FP, dim=DIM),
                             poll_seconds=0.2)
    try:
        assert postgres_server.execute(f'SELECT schema_version FROM "{schema}".meta')[0][0] == 6
        assert _top(b, x[0]) == ["old"]  # the first read is of everything
        _enrol(a, "new", x[1:])
        _caught_up(a, b)
        assert _top(b, x[1])[0] == "new"
    finally:
        b.close()
        a.close()


def test_an_approximate_copy_reports_the_product_recall_searches_get(postgres_server: Any, schema: str) -> None:
    _, vecs, pks = branded_refs(240, DIM, seed=5)
    a = PostgresCatalog.open(postgres_server.url(), schema=schema, fingerprint=FP, dim=DIM)
    sparse = CatalogSettings(approximate_threshold=1000, approximate_kind="hnsw", hnsw_m=4, hnsw_ef_construction=8,
                             hnsw_ef_search=4, recall_target=0.0)
    try:
        a.add_references_many([(a.upsert_product(f"p{p}")[0].product_id,
                                [NewReference(v) for v in vecs[pks == p]]) for p in range(240)])
        b = MirroredCatalog.open(PostgresCatalog.open(postgres_server.url(), schema=schema, fingerprint=FP, dim=DIM,
                                                      settings=sparse), poll_seconds=0.2)
        try:  # 1,200 references: the copy is an HNSW index, its width measured on the product search
            st = b.stats()
            assert st.index_kind == "hnsw" and st.recall_at_10 is not None
            product_recall, reference_recall = recalls_of(b.mirror.view(), lambda q: b.search(q, top_k=10))
            assert st.recall_at_10 == pytest.approx(product_recall, abs=0.02)
            assert abs(reference_recall - product_recall) > 0.05
        finally:
            b.close()
    finally:
        a.close()
