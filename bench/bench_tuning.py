"""The approximate index's search width tuned on reference recall against product recall, in one run.

The embedded catalog's HNSW / IVF index widens its search until a measured recall@10 reaches `recall_target`.
Catalog searches return top-10 *products* (a product scores its best reference), reading some 100 references a
query, so what they get is the product recall, not the reference recall@10 the index used to measure. Per size,
the same vectors are indexed twice: tuned on reference recall (`VectorIndex.build` without product keys, the old
behaviour) and on product recall (with them, what every catalog build now does). For each: the build time (the
tuning included), the width chosen, the recall the index reports, the product recall@10 and top-1 agreement the
catalog's product search (`matching.search_products`) then gets on other queries against exact search, and the
latency of one such search.

Data: bench_catalog's catalog-like 512-d vectors (brands, products, five references a product); queries are stored
references plus noise, as in bench_shared.

    python bench/bench_tuning.py --sizes 100000 --out docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_REPO), *(str(_REPO / d) for d in ("proto", "server", "catalog", "export"))]

from bench.bench_catalog import DIM, machine, make_catalog, make_queries  # noqa: E402
from bench.bench_shared import exact_products  # noqa: E402
from bench.report import write_section  # noqa: E402
from skulens.catalog.index import VectorIndex  # noqa: E402
from skulens.catalog.matching import RefMap, first_round_k, search_products  # noqa: E402
from skulens.catalog.settings import CatalogSettings  # noqa: E402


@dataclass
class Row:
    n: int
    tuned_on: str
    build_s: float
    width: int
    reported: float
    product_recall: float
    top1: float
    p50_ms: float
    p95_ms: float


def measure(n: int, queries: int, kind: str, settings: CatalogSettings) -> list[Row]:
    """Both tunings over one catalog of `n` references."""
    ids, vecs, product = make_catalog(n, seed=n)
    q = make_queries(vecs, queries, seed=n)
    exact = exact_products(vecs, product, q, 10)
    refs = RefMap()
    refs.set(ids, product)
    per_product = n / (int(product.max()) + 1)
    rows = []
    for tuned_on, keys in (("references", None), ("products", product)):
        t0 = time.perf_counter()
        idx = VectorIndex.build(DIM, ids, vecs, settings, kind, products=keys)
        build_s = time.perf_counter() - t0

        def search(x: np.ndarray, idx: VectorIndex = idx) -> list[list[int]]:
            hits = search_products(lambda y, k, depth: idx.search(y, k, depth=depth), refs.lookup, x, top_k=10,
                                   initial_k=first_round_k(10, per_product, idx.ntotal), max_k=idx.ntotal,
                                   min_score=None, ambiguity_margin=settings.ambiguity_margin)
            return [[h.product_pk for h in row[:10]] for row in hits]

        got = search(q)
        recall = float(np.mean([len(set(g) & set(e)) / max(1, len(e)) for g, e in zip(got, exact, strict=True)]))
        top1 = float(np.mean([bool(g) and g[0] == e[0] for g, e in zip(got, exact, strict=True)]))
        lat = []
        for i in range(len(q)):
            t0 = time.perf_counter()
            search(q[i:i + 1])
            lat.append((time.perf_counter() - t0) * 1000)
        rows.append(Row(n, tuned_on, build_s, idx.search_width, float(idx.recall_at_10 or 0.0), recall, top1,
                        float(np.percentile(lat, 50)), float(np.percentile(lat, 95))))
        r = rows[-1]
        print(f"== {n} tuned on {tuned_on}: width {r.width}, reported {r.reported:.4f}, product recall "
              f"{r.product_recall:.3f}, p50 {r.p50_ms:.2f} ms", flush=True)
    return rows


def render(rows: Sequence[Row], args: argparse.Namespace, facts: str, load_end: float) -> str:
    out = [
        "# Approximate index width: tuned on reference recall or on product recall",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `python bench/bench_tuning.py --sizes "
        f"{','.join(str(n) for n in args.sizes)} --queries {args.queries} --kind {args.kind}` on {facts}; load "
        f"average at the end {load_end:.1f}. The same {args.kind.upper()} index settings "
        "(defaults: `recall_target` 0.95, widths doubled from `hnsw_ef_search` / `ivf_nprobe` up to "
        "`hnsw_max_ef_search` / `ivf_max_nprobe`) built twice over the same vectors, in one process, one after the "
        "other. *Reported* = the recall@10 the index measured at build time (stats' `index_recall_at_10`); "
        "*product recall@10* / *top-1* = what the catalog's product search then gets on other queries, against "
        "exact search; latency = one such search (one query).",
        "",
        "| refs | tuned on | build + tuning s | width | reported recall@10 | product recall@10 | top-1 | "
        "1 query p50 / p95 ms |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(f"| {r.n} | {r.tuned_on} | {r.build_s:.1f} | {r.width} | {r.reported:.4f} | "
                   f"{r.product_recall:.3f} | {r.top1:.3f} | {r.p50_ms:.2f} / {r.p95_ms:.2f} |")
    if args.note:
        out += ["", args.note]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[100_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--kind", choices=("hnsw", "ivf"), default="hnsw")
    ap.add_argument("--out", type=Path, default=None, help="docs/BENCHMARKS.md: its section is replaced")
    ap.add_argument("--note", default="", help="a paragraph appended to the section")
    args = ap.parse_args(argv)
    settings = CatalogSettings(use_gpu="never")
    facts = machine()  # the machine, and the load average at start
    rows = [r for n in args.sizes for r in measure(n, args.queries, args.kind, settings)]
    text = render(rows, args, facts, os.getloadavg()[0])
    print(text)
    if args.out is not None:
        write_section(args.out, "tuning", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
