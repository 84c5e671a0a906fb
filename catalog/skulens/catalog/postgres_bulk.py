"""Bulk loading of the shared catalog: the HNSW index built after the rows rather than grown one vector at a time.

pgvector adds a vector to an HNSW graph by searching the graph for its neighbours and relinking them: about 3 ms a
512-d vector at m = 32, ef_construction = 80 on this project's 2-core test machine, most of an enrolment's cost
(`add_references` without the index writes about three times as fast). `CREATE INDEX` builds the same graph in
memory at about 1 ms a vector (and with parallel workers where the server allows them). `deferred_index`, used by
`PostgresCatalog.bulk_load`, drops a model space's index when a load will at least double what it holds, lets the
caller write, and builds it again at the end (also when the load fails half-way: what was committed stays).

Meanwhile every replica's searches still answer, exactly, by a scan of the embeddings (slower past some ten thousand
references), and other writers are not held up; the build takes a SHARE lock on `embeddings` (their writes wait,
up to `busy_timeout_ms`). A process that dies in between leaves the rebuild to the next `PostgresCatalog.open` of
the catalog.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from psycopg import sql

from skulens.catalog.postgres_pool import Database, one_row

if TYPE_CHECKING:
    from skulens.catalog.postgres_schema import CatalogSchema
    from skulens.catalog.settings import CatalogSettings

log = logging.getLogger(__name__)

BUILD_MEMORY_MIN = 64 << 20  # PostgreSQL's default maintenance_work_mem


def build_memory(rows: int, dim: int, m: int, most: int) -> int:
    """Bytes of `maintenance_work_mem` that pgvector's in-memory HNSW build of `rows` vectors wants (the vector and
    up to 2m neighbour links of each, with a quarter to spare), at least BUILD_MEMORY_MIN and at most `most` (the
    settings' `index_build_memory_mb`)."""
    need = int(rows * (4 * dim + 2 * m * 16 + 200) * 1.25)
    return min(most, max(BUILD_MEMORY_MIN, need))


def should_defer(indexed: int, expected: int) -> bool:
    """Whether a load of `expected` references into an index of `indexed` vectors is cheaper with the index built
    after it: rebuilding costs about (indexed + expected) build steps at a third of an insert each."""
    return expected > 0 and indexed < expected


@contextmanager
def deferred_index(db: Database, schema: CatalogSchema, settings: CatalogSettings, defer: bool) -> Iterator[bool]:
    """With `defer`: the index of `schema`'s model space dropped inside, built again on the way out (whatever
    happened inside); yields whether it was dropped."""
    if not defer:
        yield False
        return
    db.run(lambda conn: conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(
        sql.Identifier(schema.schema, schema.index_name()))))
    try:
        yield True
    finally:
        t0 = time.perf_counter()
        db.run(lambda conn: schema.create_index(conn, settings))
        rows = db.run(lambda conn: one_row(conn.execute(schema.q(
            "SELECT count(*) FROM {embeddings} WHERE fingerprint = {fp}"))), tx=False)[0]
        log.info("shared catalog %s: HNSW index of %d vectors built in %.1fs", schema.schema, int(rows),
                 time.perf_counter() - t0)


__all__ = ["BUILD_MEMORY_MIN", "build_memory", "deferred_index", "should_defer"]
