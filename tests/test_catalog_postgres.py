"""What is PostgreSQL-specific in the shared catalog backend (`PostgresCatalog`); the behaviour both backends share
is tests/test_catalog_backend_contract.py. Runs against the session's embedded PostgreSQL 18 + pgvector
(tests/pg_fixture.py), no mocks: replicas on one database, filtered HNSW recall with iterative scans, the partial
index per fingerprint, identity, tombstones, NOTIFY, and a server that goes away and comes back.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import psycopg
import pytest
from catalog_helpers import unit
from pg_fixture import PgServer

from skulens.catalog import CatalogError, CatalogSettings, FingerprintMismatch, InvalidArgument, NewReference, NotFound
from skulens.catalog.backend import CatalogBackend
from skulens.catalog.errors import CatalogUnavailable
from skulens.catalog.postgres import PostgresCatalog, redact
from skulens.catalog.postgres_binary import Vector

DIM = 32
FP = "pg-test/random/32:'quoted'"  # a quote in the fingerprint: the index predicate is a literal


Open = Callable[..., PostgresCatalog]


@pytest.fixture
def open_catalog(postgres_server: PgServer, schema: str) -> Iterator[Open]:
    """`open_catalog(**kw)`: a PostgresCatalog on the test's schema (all closed at teardown)."""
    opened: list[PostgresCatalog] = []

    def open_(**kw: Any) -> PostgresCatalog:
        args: dict[str, Any] = {"fingerprint": FP, "dim": DIM, "schema": schema, **kw}
        cat = PostgresCatalog.open(args.pop("url", postgres_server.url()), **args)
        opened.append(cat)
        return cat

    yield open_
    for cat in opened:
        cat.close()


def test_is_a_catalog_backend(open_catalog: Open) -> None:
    cat = open_catalog()
    assert isinstance(cat, CatalogBackend)
    st = cat.stats()
    assert (st.backend, st.index_device, st.index_kind, st.index_search_width, st.recall_at_10) == (
        "postgresql+pgvector", "postgres", "flat", 0, None)
    assert st.storage_bytes > 0 and st.pgvector_version.startswith("0.8")


def test_two_replicas_see_each_others_writes_immediately(open_catalog: Open, postgres_server: PgServer,
                                                          schema: str) -> None:
    a, b = open_catalog(), open_catalog()
    assert a.version() == b.version()
    vecs = unit(np.random.default_rng(0).standard_normal((4, DIM)))
    a.upsert_product("cola", "Cola", "drinks", {"brand": "x"})
    (r0,) = a.add_references("cola", [NewReference(vecs[0], image=b"cola-0")])
    assert b.version() == a.version() == a.stats().version == b.stats().version
    (res,) = b.search(vecs[0], top_k=1, category="drinks")
    assert (res.matches[0].product_id, res.matches[0].reference_id) == ("cola", r0.reference_id)
    # a write of b's: seen by a at once, and b's duplicate check sees a's image
    assert b.add_references("cola", [NewReference(vecs[1], image=b"cola-0")])[0].duplicate
    before = a.version()
    b.upsert_product("cola", "Cola Zero", "drinks", {"brand": "x"})
    assert a.version() > before and a.get_product("cola").product.display_name == "Cola Zero"
    (r1,) = b.add_references("cola", [NewReference(vecs[2])])
    (res,) = a.search(vecs[2], top_k=1)
    assert res.matches[0].reference_id == r1.reference_id and res.matches[0].display_name == "Cola Zero"
    a.delete_reference(r1.reference_id)
    (res,) = b.search(vecs[2], top_k=1)
    assert res.matches[0].reference_id == r0.reference_id
    with pytest.raises(NotFound):
        b.delete_reference(r1.reference_id)
    # deletes are tombstones: the rows stay, marked; the id can be created again as a new, empty product
    assert b.delete_product("cola") == 1
    assert a.search(vecs[0], top_k=3)[0].matches == []
    a.upsert_product("cola")
    assert b.get_product("cola").references == []
    rows = postgres_server.execute(
        f'SELECT count(*), count(deleted_at) FROM "{schema}".products WHERE product_id = %s', ("cola",))
    assert rows == [(2, 1)]
    assert postgres_server.execute(f'SELECT count(*), count(deleted_at) FROM "{schema}".refs') == [(2, 2)]
    assert a.stats().references == 0 and b.stats().index_size == 0


def test_concurrent_writers_on_two_replicas_get_distinct_increasing_versions(open_catalog: Open) -> None:
    replicas = [open_catalog(), open_catalog()]
    start = replicas[0].version()
    seen: list[list[int]] = [[] for _ in range(4)]
    errors: list[BaseException] = []

    def write(t: int) -> None:
        cat = replicas[t % 2]
        try:
            for i in range(15):
                cat.upsert_product(f"p{t}-{i}")
                seen[t].append(cat.version())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    # every write bumped the version (the sequence may skip values: versions need not be dense), and each writer
    # saw it increase strictly: a write's version is above every version committed before it
    assert replicas[1].version() >= start + 60
    for versions in seen:
        assert all(b > a for a, b in itertools.pairwise(versions))
    assert replicas[0].stats().products == 60


def test_writes_notify_their_version(open_catalog: Open, postgres_server: PgServer, schema: str) -> None:
    cat = open_catalog()
    with psycopg.connect(postgres_server.url(), autocommit=True) as listener:
        listener.execute("LISTEN skulens_catalog")
        cat.upsert_product("p")
        version = cat.version()
        got = [n.payload for n in listener.notifies(timeout=5.0, stop_after=1)]
    assert got == [f"{schema}:{version}"]


def _populate(cat: PostgresCatalog, n_products: int, refs_per: int, rare_every: int,
              seed: int = 0) -> tuple[np.ndarray, list[str], list[bool]]:
    rng = np.random.default_rng(seed)
    refs = unit(rng.standard_normal((n_products, refs_per, DIM)))
    pids, rare = [f"sku-{i:04d}" for i in range(n_products)], [i % rare_every == 0 for i in range(n_products)]
    for i, pid in enumerate(pids):
        cat.upsert_product(pid, category="rare" if rare[i] else "common")
        cat.add_references(pid, [NewReference(r) for r in refs[i]])
    return refs, pids, rare


def test_filtered_hnsw_search_keeps_recall_at_5_percent_selectivity(open_catalog: Open,
                                                                     postgres_server: PgServer) -> None:
    # filter_exact_limit=0: every search goes through the HNSW index (no exact path), as past the limit
    settings = CatalogSettings(filter_exact_limit=0, hnsw_m=16, hnsw_ef_construction=64, hnsw_ef_search=10,
                               recall_queries=200)
    writer = open_catalog(settings=settings)
    refs, pids, rare = _populate(writer, 500, 6, rare_every=20)  # 3,000 random unit vectors, 25 rare products
    t0 = time.perf_counter()
    cat = open_catalog(settings=settings)  # measures recall at open and picks hnsw.ef_search
    opened = time.perf_counter() - t0
    st = cat.stats()
    assert (st.index_kind, st.index_size, st.references) == ("hnsw", 3000, 3000)
    assert st.recall_at_10 is not None and st.index_search_width >= 10
    assert st.recall_at_10 >= settings.recall_target or st.index_search_width == settings.hnsw_max_ef_search
    assert writer.stats().recall_at_10 is None  # opened empty: nothing to measure then
    t0 = time.perf_counter()
    replica = open_catalog(settings=settings)  # reuses the stored measurement
    reopened = time.perf_counter() - t0
    again = replica.stats()
    assert (again.index_search_width, again.recall_at_10) == (st.index_search_width, st.recall_at_10)
    assert replica.tune() == pytest.approx(st.recall_at_10)  # measured again: same seed, same answer

    rng = np.random.default_rng(1)
    queries = unit(rng.standard_normal((40, DIM)))
    keep = np.asarray(rare)
    best = np.einsum("prd,qd->qpr", refs, queries).max(axis=2)  # [query, product]: best reference's score
    t1 = time.perf_counter()
    results = cat.search(queries, top_k=10, category="rare", unknown_threshold=-1.0, ambiguity_margin=0.0)
    searched = time.perf_counter() - t1
    recalls = []
    for qi, res in enumerate(results):
        exact = [pids[p] for p in np.argsort(-np.where(keep, best[qi], -np.inf))[:10]]
        got = [m.product_id for m in res.matches]
        assert len(got) == 10 and all(rare[int(p[4:])] for p in got)
        recalls.append(len(set(got) & set(exact)) / 10)
        for m in res.matches:  # scores are the products' best references
            assert m.score == pytest.approx(float(best[qi, int(m.product_id[4:])]), abs=1e-5)
    recall = float(np.mean(recalls))
    print(f"\nfiltered HNSW (5 %, 3,000 vectors): recall@10 {recall:.3f}; open {opened * 1000:.0f} ms, "
          f"{reopened * 1000:.0f} ms with the stored width "
          f"(tuned ef_search {st.index_search_width}, recall@10 {st.recall_at_10:.3f}); 40 queries in "
          f"{searched * 1000:.0f} ms")
    assert recall >= 0.95

    # the approximate statement does walk the partial HNSW index ...
    plan = _explain(postgres_server, cat, category="rare")
    assert cat.index_name() in plan, plan
    # ... and needs the iterative scan: without it a 5 % filter leaves most of the k rows out
    assert _rows_without_iterative_scan(postgres_server, cat, queries[0], k=10) < 10


def _explain(server: PgServer, cat: PostgresCatalog, category: str) -> str:
    stmt = cat._rounds.statement(False, True, False)
    with psycopg.connect(server.url(), autocommit=True) as conn, conn.transaction():
        conn.execute("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true), "
                     "set_config('enable_sort', 'off', true)")
        q = Vector(np.asarray([0.0] * (DIM - 1) + [1.0], dtype=np.float32))
        rows = cat._rounds.vectors.cursor(conn).execute(b"EXPLAIN " + stmt.as_bytes(conn),
                                                       {"q": [q], "k": 10, "cat": category}).fetchall()
    return "\n".join(str(r[0]) for r in rows)


def _rows_without_iterative_scan(server: PgServer, cat: PostgresCatalog, q: np.ndarray, k: int) -> int:
    stmt = cat._rounds.statement(False, True, False)
    with psycopg.connect(server.url(), autocommit=True) as conn, conn.transaction():
        conn.execute("SELECT set_config('hnsw.iterative_scan', 'off', true), set_config('hnsw.ef_search', '40', "
                     "true), set_config('enable_sort', 'off', true)")
        cur = cat._rounds.vectors.cursor(conn)
        return len(cur.execute(stmt, {"q": [Vector(q)], "k": k, "cat": "rare"}).fetchall())


def test_a_partial_hnsw_index_per_fingerprint(open_catalog: Open, postgres_server: PgServer, schema: str) -> None:
    cat = open_catalog()
    rows = postgres_server.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s "
                                   "AND indexdef LIKE '%%USING hnsw%%'", (schema,))
    assert [r[0] for r in rows] == [cat.index_name()]
    definition = rows[0][1]
    for part in ("(embedding)::vector(32)", "vector_ip_ops", "WHERE (fingerprint = 'pg-test/random/32:''quoted'''"):
        assert part in definition, definition
    # a refused model adds no index; each fingerprint has its own, over the same table
    with pytest.raises(FingerprintMismatch):
        open_catalog(fingerprint="other-model/16", dim=16)
    assert len(postgres_server.execute("SELECT 1 FROM pg_indexes WHERE schemaname = %s AND indexdef LIKE "
                                       "'%%USING hnsw%%'", (schema,))) == 1
    other = postgres_server.new_schema()
    try:
        second = PostgresCatalog.open(postgres_server.url(), fingerprint="other-model/16", dim=16, schema=other)
        assert second.index_name() != cat.index_name()
        second.close()
    finally:
        postgres_server.drop_schemas([other])


def test_opening_with_another_fingerprint_raises_mismatch(open_catalog: Open) -> None:
    cat = open_catalog()
    cat.upsert_product("p")
    v = unit(np.ones(DIM))
    cat.add_references("p", [NewReference(v)])
    version = cat.version()
    for fp, dim in (("another-model/32", DIM), (FP, 64)):
        with pytest.raises(FingerprintMismatch) as err:
            open_catalog(fingerprint=fp, dim=dim)
        assert (err.value.stored_fingerprint, err.value.stored_dim) == (FP, DIM)
        assert (err.value.requested_fingerprint, err.value.requested_dim) == (fp, dim)
    # allowed: reads and deletes only, with the stored identity
    other = open_catalog(fingerprint="another-model/32", allow_fingerprint_mismatch=True)
    assert (other.fingerprint, other.dim) == (FP, DIM)
    assert other.get_product("p").product.reference_count == 1 and other.version() == version
    assert other.stats().index_kind == "none"
    for call in (lambda: other.search(v), lambda: other.add_references("p", [NewReference(v)])):
        with pytest.raises(FingerprintMismatch):
            call()
    assert other.delete_product("p") == 1


def test_open_creates_the_extension_and_schema_in_a_new_database(postgres_server: PgServer) -> None:
    url = postgres_server.new_database()  # template0: no pgvector extension yet
    try:
        with PostgresCatalog.open(url, fingerprint=FP, dim=DIM) as cat:
            assert cat.schema == "public"
            cat.upsert_product("p")
            version = cat.version()
        with PostgresCatalog.open(url, fingerprint=FP, dim=DIM) as again:  # idempotent, writes nothing
            assert again.version() == version and again.get_product("p").product.product_id == "p"
    finally:
        postgres_server.drop_database(url)


def test_unreachable_server_is_catalog_unavailable_without_the_password() -> None:
    url = "postgresql://skulens:s3cret-pw@127.0.0.1:1/catalog"
    with pytest.raises(CatalogUnavailable) as err:
        PostgresCatalog.open(url, fingerprint=FP, dim=DIM)
    assert "s3cret" not in str(err.value) and "s3cret" not in repr(err.value) and err.value.__cause__ is None
    assert "postgresql://skulens:***@127.0.0.1:1/catalog" in str(err.value)
    for bad in ("postgresql://skulens:s3cret-pw@host/db?nonsense=1", "host=h password=s3cret-pw junk"):
        with pytest.raises(InvalidArgument) as bad_err:
            PostgresCatalog.open(bad, fingerprint=FP, dim=DIM)
        assert bad_err.value.field == "url" and "s3cret" not in str(bad_err.value)
    assert redact("host=h password='a b' user=u") == "host=h password=*** user=u"


def test_server_stopped_is_unavailable_and_recovers_after_restart(open_catalog: Open,
                                                                  postgres_server: PgServer) -> None:
    cat = open_catalog(url=postgres_server.url().replace("postgres@", "postgres:s3cret-pw@"))
    vecs = unit(np.random.default_rng(2).standard_normal((3, DIM)))
    cat.upsert_product("p")
    cat.add_references("p", [NewReference(vecs[0])])
    cat.search(vecs, top_k=1)  # several pooled connections now idle
    version = cat.version()
    postgres_server.stop()
    try:
        calls: list[Callable[[], object]] = [
            cat.version, cat.stats, lambda: cat.search(vecs[0]), lambda: cat.get_product("p"),
            lambda: cat.upsert_product("q"), lambda: cat.add_references("p", [NewReference(vecs[1])])]
        for call in calls:
            with pytest.raises(CatalogUnavailable) as err:
                call()
            assert isinstance(err.value, CatalogError) and "s3cret" not in str(err.value)
            assert "retry" in str(err.value)
    finally:
        postgres_server.start()
    # the same object works again: no reopen
    assert cat.version() == version
    cat.upsert_product("q")
    assert cat.version() > version
    # a restart while connections sit idle in the pool costs no error either (stale ones are retried)
    cat.search(vecs, top_k=1)
    postgres_server.stop()
    postgres_server.start()
    (res,) = cat.search(vecs[0], top_k=1)
    assert res.matches[0].product_id == "p"
    assert [p.product_id for p in cat.list_products()[0]] == ["p", "q"]


def test_a_catalog_from_before_schema_4_gets_its_head_statistics_at_upgrade(open_catalog: Open,
                                                                             postgres_server: PgServer,
                                                                             schema: str) -> None:
    from skulens.catalog.head import HeadStats

    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((6, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    cat = open_catalog()
    for p in range(2):
        cat.upsert_product(f"p{p}")
        cat.add_references(f"p{p}", [NewReference(v) for v in vecs[3 * p:3 * p + 3]])
    cat.close()
    with psycopg.connect(postgres_server.url(), autocommit=True) as conn:  # as schema 3 left it
        tables = ", ".join(f'"{schema}".{t}' for t in ("head_journal", "head_stats", "head_gram", "head_products",
                                                        "aug_embeddings"))
        conn.execute(f"DROP TABLE {tables} CASCADE")
        conn.execute(f'DROP TRIGGER skulens_head ON "{schema}".embeddings')
        conn.execute(f'DROP TRIGGER skulens_head ON "{schema}".refs')
        conn.execute(f'UPDATE "{schema}".meta SET schema_version = 3')
    again = open_catalog()
    got = again.head_statistics()
    want = HeadStats.from_embeddings(FP, ["p0"] * 3 + ["p1"] * 3, vecs)
    assert got.count == 6 and sorted(got.products) == ["p0", "p1"]
    np.testing.assert_allclose(got.gram, want.gram, atol=1e-9)
    np.testing.assert_allclose(got.products["p1"].total, want.products["p1"].total, atol=1e-9)


def test_the_gram_matrix_is_folded_in_batches_and_read_with_the_pending_rows(open_catalog: Open) -> None:
    from skulens.catalog import postgres_head
    from skulens.catalog.head import HeadStats

    rng = np.random.default_rng(5)
    vecs = rng.standard_normal((9, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    cat = open_catalog()
    cat.upsert_product("a")
    cat.add_references("a", [NewReference(v) for v in vecs[:5]])
    count = cat._db.run(lambda conn: one(conn, cat, "SELECT count(*) FROM {head_journal}"))
    assert count == 5  # summed, still owed to the Gram matrix (fewer than GRAM_BATCH)
    cat._db.run(lambda conn: postgres_head.fold(conn, cat._schema, gram_batch=4))  # now folded into head_gram
    assert cat._db.run(lambda conn: one(conn, cat, "SELECT count(*) FROM {head_journal}")) == 0
    assert cat._db.run(lambda conn: one(conn, cat, "SELECT count(*) FROM {head_gram}")) == 1
    cat.upsert_product("b")
    cat.add_references("b", [NewReference(v) for v in vecs[5:]])
    cat.delete_reference(cat.get_product("a").references[0].reference_id)
    got = cat.head_statistics()
    want = HeadStats.from_embeddings(FP, ["a"] * 4 + ["b"] * 4, vecs[1:])
    np.testing.assert_allclose(got.gram, want.gram, atol=1e-9)
    np.testing.assert_allclose(got.total, want.total, atol=1e-9)
    assert (got.count, got.products["a"].references) == (8, 4)


def one(conn: Any, cat: PostgresCatalog, query: str) -> int:
    return int(conn.execute(cat._schema.q(query)).fetchone()[0])


def test_head_statistics_stay_exact_when_two_replicas_write_at_once(open_catalog: Open) -> None:
    from skulens.catalog.head import HeadStats

    a, b = open_catalog(), open_catalog()
    rng = np.random.default_rng(12)
    vecs = rng.standard_normal((2, 6, 8, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=-1, keepdims=True)
    errors: list[BaseException] = []

    def writer(cat: PostgresCatalog, r: int) -> None:
        try:
            for p in range(6):
                pid = f"r{r}-p{p}"
                cat.upsert_product(pid)
                for k in range(0, 8, 2):
                    cat.add_references(pid, [NewReference(v) for v in vecs[r, p, k:k + 2]])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(cat, r)) for r, cat in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    labels = [f"r{r}-p{p}" for r in range(2) for p in range(6) for _ in range(8)]
    want = HeadStats.from_embeddings(FP, labels, vecs.reshape(-1, DIM))
    for cat in (a, b):
        got = cat.head_statistics()
        assert got.count == 96 and sorted(got.products) == sorted(set(labels))
        np.testing.assert_allclose(got.gram, want.gram, atol=1e-8)
        np.testing.assert_allclose(got.total, want.total, atol=1e-9)


def test_add_references_many_is_one_transaction_with_the_same_answers(open_catalog: Open,
                                                                      postgres_server: PgServer) -> None:
    from skulens.catalog.errors import RequestIdReused
    from skulens.catalog.head import HeadStats

    cat = open_catalog()
    vecs = unit(np.random.default_rng(13).standard_normal((12, DIM)))
    for pid in ("a", "b", "c"):
        cat.upsert_product(pid, category="x")
    (before,) = cat.add_references("a", [NewReference(vecs[0], image=b"a0")])
    rid = "00000000-0000-4000-8000-000000000001"
    version = cat.version()
    out = cat.add_references_many([
        ("a", [NewReference(vecs[1], image=b"a0"), NewReference(vecs[2], image=b"a2")]),  # a0: a duplicate
        ("b", [NewReference(vecs[3], image=b"b3", request_id=rid), NewReference(vecs[4], image=b"b3"),  # repeat
               NewReference(vecs[5], region=(1, 2, 3, 4), image=b"b3")]),  # another crop: a reference of its own
        ("c", [NewReference(vecs[6])]),
    ])
    assert cat.version() > version
    assert [(r.product_id, r.duplicate, r.replayed) for r in out[0]] == [("a", True, False), ("a", False, False)]
    assert out[0][0].reference_id == before.reference_id
    assert [(r.duplicate, r.replayed) for r in out[1]] == [(False, False), (True, False), (False, False)]
    assert out[1][1].reference_id == out[1][0].reference_id
    assert len({r.reference_id for rows in out for r in rows}) == 5
    assert [p.reference_count for p in cat.list_products()[0]] == [2, 2, 1]
    # a retry of the request id answers with its reference, from another call too
    (again,) = cat.add_references_many([("b", [NewReference(vecs[3], image=b"b3", request_id=rid)])])
    assert (again[0].reference_id, again[0].replayed) == (out[1][0].reference_id, True)
    # all or nothing: a missing product, or a request id that names two products in one call, writes nothing
    version, refs = cat.version(), cat.stats().references
    with pytest.raises(NotFound) as missing:
        cat.add_references_many([("a", [NewReference(vecs[7])]), ("nope", [NewReference(vecs[8])])])
    assert missing.value.field == "items[1].product_id"
    other = "00000000-0000-4000-8000-000000000002"
    with pytest.raises(RequestIdReused):
        cat.add_references_many([("a", [NewReference(vecs[9], image=b"x", request_id=other)]),
                                 ("c", [NewReference(vecs[9], image=b"x", request_id=other)])])
    with pytest.raises(InvalidArgument) as bad:
        cat.add_references_many([("a", [NewReference(vecs[10])]), ("b", [NewReference(vecs[11][:3])])])
    assert bad.value.field == "items[1].references[0].embedding"
    with pytest.raises(InvalidArgument):
        cat.add_references_many([("a", [NewReference(vecs[10])]), ("a", [NewReference(vecs[11])])])
    with pytest.raises(InvalidArgument):
        cat.add_references_many([])
    assert (cat.version(), cat.stats().references) == (version, refs)
    # the head statistics are those of the references written
    exported = cat.export_references(0, 100)
    want = HeadStats.from_embeddings(FP, [r.product_id for r in exported], np.stack([r.embedding for r in exported]))
    got = cat.head_statistics()
    assert got.count == 5 and sorted(got.products) == ["a", "b", "c"]
    np.testing.assert_allclose(got.gram, want.gram, atol=1e-9)
    # vectors are written and read back exactly (binary both ways), and stay in the row (no TOAST)
    stored = {r.reference_id: r.embedding for r in exported}
    assert np.array_equal(stored[out[0][1].reference_id], vecs[2])
    assert postgres_server.execute(
        "SELECT a.attstorage FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attname = 'embedding'",
        (f'"{cat.schema}".embeddings',)) == [("m",)]
    assert cat.sample_embeddings(100).shape == (5, DIM)


def test_large_vectors_stay_in_the_row(postgres_server: PgServer, schema: str) -> None:
    cat = PostgresCatalog.open(postgres_server.url(), fingerprint=FP, dim=512, schema=schema)
    try:
        cat.upsert_product("p")
        vecs = unit(np.random.default_rng(14).standard_normal((20, 512)))
        cat.add_references("p", [NewReference(v) for v in vecs])
        # 2 KB a vector: out of line (TOAST) by pgvector's default, in the row with STORAGE MAIN
        assert postgres_server.execute(f'SELECT count(*), count(pg_column_toast_chunk_id(embedding)) '
                                       f'FROM "{schema}".embeddings') == [(20, 0)]
        (res,) = cat.search(vecs[3], top_k=1)
        assert res.matches[0].score == pytest.approx(1.0, abs=1e-5)
    finally:
        cat.close()
