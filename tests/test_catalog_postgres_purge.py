"""The shared catalog's tombstone purge (`skulens.catalog.postgres_purge`, `PostgresCatalog.purge_deleted`), against
the session's real PostgreSQL + pgvector (tests/pg_fixture.py): exactly the old tombstones go (rows, vectors of every
model space, augmented views), in batches, with the version and the head statistics unchanged; the grace period;
two replicas purging at once; a product id deleted, created again and deleted again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import psycopg
import pytest
from catalog_helpers import unit
from pg_fixture import PgServer

from skulens.catalog import InvalidArgument, NewReference, NotFound
from skulens.catalog.head import HeadStats
from skulens.catalog.postgres import PostgresCatalog
from skulens.catalog.postgres_purge import purge_references

DIM = 16
FP = "purge-test/random/16"
HOUR = 3600.0

Open = Callable[..., PostgresCatalog]


@pytest.fixture
def open_catalog(postgres_server: PgServer, schema: str) -> Iterator[Open]:
    opened: list[PostgresCatalog] = []

    def open_(**kw: Any) -> PostgresCatalog:
        # exact_limit=0: searches go through the HNSW index, whose tombstones `stats()` then counts
        cat = PostgresCatalog.open(postgres_server.url(), fingerprint=FP, dim=DIM, schema=schema,
                                   **{"exact_limit": 0, **kw})
        opened.append(cat)
        return cat

    yield open_
    for cat in opened:
        cat.close()


def enrol(cat: PostgresCatalog, pid: str, n: int, seed: int) -> list[int]:
    cat.upsert_product(pid, pid.upper(), "cat")
    vecs = unit(np.random.default_rng(seed).standard_normal((n, DIM)))
    return [r.reference_id for r in cat.add_references(pid, [NewReference(v, image=f"{pid}-{seed}-{i}".encode())
                                                            for i, v in enumerate(vecs)])]


def age(server: PgServer, schema: str, seconds: float, *, refs: Sequence[int] = (), products: str = "") -> None:
    """Move tombstones `seconds` into the past (as if deleted that long ago)."""
    if refs:
        server.execute(f'UPDATE "{schema}".refs SET deleted_at = deleted_at - %s WHERE reference_id = ANY(%s)',
                       (seconds, list(refs)))
    if products:
        server.execute(f'UPDATE "{schema}".products SET deleted_at = deleted_at - %s WHERE product_id = %s '
                       "AND deleted_at IS NOT NULL", (seconds, products))
        server.execute(f'UPDATE "{schema}".refs r SET deleted_at = r.deleted_at - %s FROM "{schema}".products p '
                       "WHERE p.pk = r.product_pk AND p.product_id = %s AND p.deleted_at IS NOT NULL",
                       (seconds, products))


def rows(server: PgServer, schema: str) -> dict[str, int]:
    """Row counts of the tables a purge touches."""
    out = {}
    for table in ("products", "refs", "embeddings", "aug_embeddings"):
        out[table] = int(server.execute(f'SELECT count(*) FROM "{schema}".{table}')[0][0])
    return out


def ref_ids(server: PgServer, schema: str) -> set[int]:
    return {int(r[0]) for r in server.execute(f'SELECT reference_id FROM "{schema}".refs')}


def assert_same_head(a: HeadStats, b: HeadStats) -> None:
    assert (a.fingerprint, a.dim, a.count, a.version) == (b.fingerprint, b.dim, b.count, b.version)
    np.testing.assert_allclose(a.total, b.total, atol=1e-9)
    np.testing.assert_allclose(a.gram, b.gram, atol=1e-9)
    assert sorted(a.products) == sorted(b.products)
    for pid, sums in a.products.items():
        assert (sums.count, sums.references) == (b.products[pid].count, b.products[pid].references)
        np.testing.assert_allclose(sums.total, b.products[pid].total, atol=1e-9)


def test_purge_removes_exactly_the_old_tombstones(open_catalog: Open, postgres_server: PgServer,
                                                  schema: str) -> None:
    cat = open_catalog()
    keep = enrol(cat, "keep", 4, 0)
    old_prod = enrol(cat, "old", 3, 1)
    new_prod = enrol(cat, "new", 2, 2)
    mixed = enrol(cat, "mixed", 4, 3)
    aug = unit(np.random.default_rng(9).standard_normal((3, DIM)))
    assert cat.put_augmentations(old_prod[0], aug) == 3  # augmented views of a reference that will be purged
    assert cat.put_augmentations(keep[0], aug) == 3  # and of a live one, which stay
    cat.delete_product("old")
    cat.delete_product("new")
    cat.delete_reference(mixed[0])  # old tombstone of a live product
    cat.delete_reference(mixed[1])  # recent one
    age(postgres_server, schema, 2 * HOUR, products="old", refs=[mixed[0]])
    before = rows(postgres_server, schema)
    journal = postgres_server.execute(f'SELECT count(*) FROM "{schema}".head_journal')
    st0, version, head = cat.stats(), cat.version(), cat.head_statistics()
    assert st0.index_tombstones == 3 + 2 + 2

    report = cat.purge_deleted(HOUR)
    assert (report.products, report.references, report.embeddings, report.augmented) == (1, 4, 4, 3)
    assert not report.skipped and not report.vacuumed and report.cutoff == pytest.approx(time.time() - HOUR, abs=5)
    after = rows(postgres_server, schema)
    assert {k: before[k] - after[k] for k in before} == {"products": 1, "refs": 4, "embeddings": 4,
                                                         "aug_embeddings": 3}
    assert ref_ids(postgres_server, schema) == set(keep) | set(new_prod) | set(mixed[1:])  # recent tombstones stay
    assert postgres_server.execute(f'SELECT product_id FROM "{schema}".products ORDER BY product_id') == [
        ("keep",), ("mixed",), ("new",)]
    # not a write: version, counts, head statistics and answers as before; the graph's tombstones counted down
    st1 = cat.stats()
    assert cat.version() == version == st1.version
    assert (st1.products, st1.references, st1.index_tombstones) == (st0.products, st0.references, 3)
    assert_same_head(cat.head_statistics(), head)
    # the DELETEs of tombstoned references' vectors journalled nothing (their removal was journalled at deletion)
    assert postgres_server.execute(f'SELECT count(*) FROM "{schema}".head_journal') == journal
    assert [r.reference_id for r in cat.get_product("mixed").references] == mixed[2:]
    assert [r.reference_id for r in cat.get_product("keep").references] == keep
    for gone in ("old", "new"):
        with pytest.raises(NotFound):
            cat.get_product(gone)
    assert cat.purge_deleted(HOUR).rows == 0  # nothing older left

    # no grace period: the recent tombstones go too; vacuum cleans the graph at once
    report = cat.purge_deleted(0.0, vacuum=True)
    assert (report.products, report.references, report.embeddings, report.vacuumed) == (1, 3, 3, True)
    assert ref_ids(postgres_server, schema) == set(keep) | set(mixed[2:])
    assert cat.stats().index_tombstones == 0 and cat.version() == version
    assert_same_head(cat.head_statistics(), head)


def test_purge_runs_in_batches_of_limit(open_catalog: Open, postgres_server: PgServer, schema: str) -> None:
    cat = open_catalog()
    for i in range(5):
        enrol(cat, f"p{i}", 3, i)
        cat.delete_product(f"p{i}")
    report = cat.purge_deleted(0.0, 4)
    # 15 references in batches of 4, then 5 products in batches of 4
    assert (report.references, report.products, report.batches) == (15, 5, 4 + 2)
    assert rows(postgres_server, schema) == {"products": 0, "refs": 0, "embeddings": 0, "aug_embeddings": 0}
    assert cat.purge_deleted(0.0, 4).batches == 0


def test_purge_embeddings_of_every_model_space(open_catalog: Open, postgres_server: PgServer, schema: str) -> None:
    from skulens.catalog.migration_state import ModelSpace

    cat = open_catalog()
    enrol(cat, "a", 2, 0)
    cat.start_migration(ModelSpace("candidate/8", 8))
    ids = enrol(cat, "b", 2, 1)  # no candidate vectors given: back-fill them
    assert cat.put_space_embeddings("candidate/8", ids, unit(np.random.default_rng(3).standard_normal((2, 8)))) == 2
    cat.delete_product("b")
    report = cat.purge_deleted(0.0)
    assert (report.references, report.embeddings) == (2, 4)
    assert cat.space_progress("candidate/8").embedded == 0 and cat.stats().index_tombstones == 0


def test_a_product_id_deleted_created_again_and_deleted_again(open_catalog: Open, postgres_server: PgServer,
                                                              schema: str) -> None:
    cat = open_catalog()
    first = enrol(cat, "sku", 2, 0)
    cat.delete_product("sku")
    second = enrol(cat, "sku", 3, 1)
    cat.delete_product("sku")
    third = enrol(cat, "sku", 2, 2)  # live again
    head, version = cat.head_statistics(), cat.version()
    report = cat.purge_deleted(0.0, 2)
    assert (report.products, report.references) == (2, 5)
    assert postgres_server.execute(f'SELECT count(*) FROM "{schema}".products WHERE product_id = %s',
                                   ("sku",)) == [(1,)]
    assert ref_ids(postgres_server, schema) == set(third) and not set(first + second) & ref_ids(postgres_server,
                                                                                                  schema)
    assert [r.reference_id for r in cat.get_product("sku").references] == third
    assert cat.version() == version
    assert_same_head(cat.head_statistics(), head)
    # the live one can be deleted and purged in turn; its id again after that
    cat.delete_product("sku")
    assert cat.purge_deleted(0.0).products == 1
    assert enrol(cat, "sku", 1, 3)[0] > max(third)  # reference ids are never reused


def test_writes_by_id_after_a_purge_find_nothing(open_catalog: Open) -> None:
    cat = open_catalog()
    (rid,) = enrol(cat, "x", 1, 0)
    cat.delete_reference(rid)
    assert cat.purge_deleted(0.0).references == 1
    assert cat.put_augmentations(rid, unit(np.ones((1, DIM)))) == 0  # re-checks liveness: no foreign-key error
    with pytest.raises(NotFound):
        cat.delete_reference(rid)


def test_two_replicas_purging_at_once_do_not_conflict(open_catalog: Open, postgres_server: PgServer,
                                                      schema: str) -> None:
    a, b = open_catalog(), open_catalog()
    for i in range(12):
        enrol(a, f"p{i:02d}", 4, i)
        a.delete_product(f"p{i:02d}")
    enrol(a, "live", 3, 99)
    reports: list[Any] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run(cat: PostgresCatalog) -> None:
        try:
            start.wait()
            reports.append(cat.purge_deleted(0.0, 3))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sum(r.references for r in reports) == 48 and sum(r.products for r in reports) == 12
    assert rows(postgres_server, schema) == {"products": 1, "refs": 3, "embeddings": 3, "aug_embeddings": 0}


def test_a_second_purger_is_skipped_while_one_holds_the_lease(open_catalog: Open, postgres_server: PgServer,
                                                              schema: str) -> None:
    cat = open_catalog()
    enrol(cat, "p", 2, 0)
    cat.delete_product("p")
    with psycopg.connect(postgres_server.url(), autocommit=True) as other:  # another replica's purger
        assert other.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                             (f"{schema}:purge",)).fetchone() == (True,)
        report = cat.purge_deleted(0.0)
        assert report.skipped and report.rows == 0 and "skipped" in report.format()
        other.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (f"{schema}:purge",))
    assert cat.purge_deleted(0.0).references == 2


def test_locked_tombstones_are_skipped_not_waited_for(open_catalog: Open, postgres_server: PgServer,
                                                      schema: str) -> None:
    cat = open_catalog()
    ids = enrol(cat, "p", 4, 0)
    cat.delete_product("p")
    from skulens.catalog.postgres_schema import CatalogSchema

    tables = CatalogSchema(schema, FP, DIM)
    got: list[tuple[int, int, int]] = []
    with psycopg.connect(postgres_server.url(), autocommit=True) as one, \
            psycopg.connect(postgres_server.url(), autocommit=True) as two:
        one.execute("BEGIN")
        assert purge_references(one, tables, ids[:2], time.time()) == (2, 2, 0)  # rows held until `one` commits

        def second() -> None:
            two.execute("BEGIN")
            got.append(purge_references(two, tables, ids, time.time()))  # skips the held rows, then waits
            two.execute("COMMIT")  # for the `meta` row (its counter) until `one` commits

        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        assert not got  # waiting for `meta`, not failing
        one.execute("COMMIT")
        t.join(10)
    assert got == [(2, 2, 0)]  # only the two nobody held
    assert ref_ids(postgres_server, schema) == set()
    assert cat.purge_deleted(0.0).products == 1


def test_purge_arguments_are_checked(open_catalog: Open) -> None:
    cat = open_catalog()
    for bad in (-1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(InvalidArgument) as err:
            cat.purge_deleted(bad)  # type: ignore[arg-type]
        assert err.value.field == "older_than_seconds"
    for limit in (0, 100_001, 2.5):
        with pytest.raises(InvalidArgument) as err:
            cat.purge_deleted(0.0, limit)  # type: ignore[arg-type]
        assert err.value.field == "limit"


def test_a_catalog_without_the_product_index_gets_it(open_catalog: Open, postgres_server: PgServer,
                                                     schema: str) -> None:
    cat = open_catalog()
    postgres_server.execute(f'DROP INDEX "{schema}".refs_product')  # as made before the index was in the schema
    enrol(cat, "p", 1, 0)
    cat.delete_product("p")
    assert cat.purge_deleted(0.0).products == 1
    assert postgres_server.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
                                   (f'"{schema}".refs_product',)) == [(True,)]
