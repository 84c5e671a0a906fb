"""Recognition quality and speed through the gRPC API on the Grocery Store dataset.

Starts `skulens serve` (a subprocess) on a fresh catalog, then:

1. Quality, two runs: enrol the iconic packshots (run "iconic") or the train photos (run "train") as references
   (product id = fine class id, category = coarse class, label group = Fruit/Vegetables/Packages), recognise
   every val photo through `Recognize`, and report top-1 / top-5 overall, per group and per coarse class, next to
   the same figures computed offline with plain numpy from the same embeddings (fetched with `Embed`).
2. Speed: end-to-end images/s and p50/p95/p99 latency of single-image `Recognize` calls at 1, 4 and 16
   concurrent clients (plus one client sending 16-image batches), against the bare model's images/s (ONNX
   Runtime on pre-made tensors) and the in-process engine (decode + preprocess + batching + model).

With `--baseline-tree DIR` (a checkout of an earlier commit, e.g. `git worktree add /tmp/base HEAD~1`) it
instead measures speed side by side: one server from this tree and one from DIR, same model, same catalog (the
iconic packshots), the load levels interleaved round by round so machine noise hits both alike; the section
"service-side-by-side" reports images/s and latency of each and their ratio.

Usage:
    python bench/bench_recognition.py --model .cache/models/effnet --data /work/shared/data/grocery \
        --out docs/BENCHMARKS.md
    python bench/bench_recognition.py --model ... --data ... --baseline-tree /tmp/base --rounds 3 --duration 8
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), *(str(REPO / d) for d in ("proto", "server", "catalog", "export"))]

from bench.report import write_section  # noqa: E402
from skulens.client.client import ClientConfig, SkulensClient, image_input, search_options  # noqa: E402
from skulens.client.enroll import ProductPlan, enroll  # noqa: E402


# ------------------------------------------------------------------------------------------------ dataset
@dataclass(frozen=True)
class Photo:
    path: Path
    fine: int
    coarse: int


@dataclass
class Dataset:
    root: Path
    fine_name: dict[int, str] = field(default_factory=dict)
    coarse_name: dict[int, str] = field(default_factory=dict)
    group_of: dict[int, str] = field(default_factory=dict)  # fine id -> Fruit / Vegetables / Packages
    coarse_of: dict[int, int] = field(default_factory=dict)
    iconic: dict[int, Path] = field(default_factory=dict)
    train: list[Photo] = field(default_factory=list)
    val: list[Photo] = field(default_factory=list)


def load_dataset(root: Path) -> Dataset:
    """classes.csv + train.txt + val.txt."""
    ds = Dataset(root)
    with open(root / "classes.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            fine, coarse = int(row["Class ID (int)"]), int(row["Coarse Class ID (int)"])
            ds.fine_name[fine] = row["Class Name (str)"]
            ds.coarse_name[coarse] = row["Coarse Class Name (str)"]
            ds.coarse_of[fine] = coarse
            iconic = row["Iconic Image Path (str)"].lstrip("/")
            ds.iconic[fine] = root / iconic
            ds.group_of[fine] = Path(iconic).parts[1]
    for split in ("train", "val"):
        for line in (root / f"{split}.txt").read_text().splitlines():
            if line.strip():
                p, fine, coarse = (x.strip() for x in line.split(","))
                getattr(ds, split).append(Photo(root / p, int(fine), int(coarse)))
    return ds


def plans(ds: Dataset, refs: dict[int, list[Path]]) -> list[ProductPlan]:
    return [
        ProductPlan(
            str(f),
            display_name=ds.fine_name[f],
            category=ds.coarse_name[ds.coarse_of[f]],
            labels={"group": ds.group_of[f]},
            paths=paths,
        )
        for f, paths in sorted(refs.items())
    ]


# ------------------------------------------------------------------------------------------------ server
@dataclass(frozen=True)
class ServerLayout:
    """Where a source tree keeps its code: PYTHONPATH entries and the CLI module."""

    paths: tuple[str, ...]
    cli: str


def server_layout(tree: Path) -> ServerLayout:
    """The layout of `tree`: the one-package layout (`server/skulens/…`), or the older one (`server/cli.py`)
    so that `--baseline-tree` can serve a checkout of a commit from before the move."""
    if (tree / "server" / "skulens" / "cli.py").exists():
        return ServerLayout(("proto", "server", "catalog", "export"), "skulens.cli")
    return ServerLayout((".", "proto"), "server.cli")


class Server:
    """`skulens serve` in a subprocess on port 0."""

    def __init__(self, model: Path, data: Path, extra: Sequence[str] = (), tree: Path = REPO) -> None:
        layout = server_layout(tree)
        env = {
            **os.environ,
            "PYTHONPATH": ":".join(str(tree / d) for d in layout.paths),
            "SKULENS_LOG_FORMAT": "text",
            "SKULENS_LOG_LEVEL": "WARNING",
        }
        data.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(data.parent / "server.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                layout.cli,
                "serve",
                "--model",
                str(model),
                "--data",
                str(data),
                "--port",
                "0",
                "--log-level",
                "INFO",
                "--no-sync-commits",
                *extra,
            ],
            cwd=tree,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        self.port = 0
        t0 = time.monotonic()
        for line in self.proc.stderr:
            self.log.write(line)
            m = re.search(r"gRPC listening on [^ ]*:(\d+)", line)
            self.port = int(m.group(1)) if m else self.port
            if 'msg="serving' in line:
                break
            if time.monotonic() - t0 > 300:
                raise RuntimeError("server did not start")
        if not self.port:
            raise RuntimeError(f"server did not start; see {self.log.name}")
        self.ready_s = time.monotonic() - t0
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if "call " not in line:
                self.log.write(line)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> SkulensClient:
        return SkulensClient(ClientConfig(addr=self.addr, timeout=600))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


# ------------------------------------------------------------------------------------------------ quality
def chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def recognize_all(client: SkulensClient, photos: Sequence[Photo], k: int = 5) -> list[list[int]]:
    """Top-k product ids per photo through Recognize (16 images per call)."""
    ranked: list[list[int]] = []
    for batch in chunks(photos, 16):
        resp = client.recognize(
            [image_input(p.path.read_bytes(), id=str(p.path)) for p in batch], search_options(top_k=k)
        )
        for r in resp.results:
            if r.status.code:
                raise RuntimeError(f"{r.id}: {r.status.message}")
            ranked.append([int(m.product_id) for m in r.recognition.matches])
    return ranked


def embed_all(client: SkulensClient, paths: Sequence[Path]) -> np.ndarray:
    """Vectors of image files through Embed."""
    rows = []
    for batch in chunks(paths, 32):
        resp = client.embed([image_input(p.read_bytes()) for p in batch])
        for e in resp.images:
            if e.status.code:
                raise RuntimeError(e.status.message)
            rows.append(np.asarray(e.values, dtype=np.float32))
    return np.stack(rows)


def offline_rank(
    queries: np.ndarray, refs: np.ndarray, ref_labels: np.ndarray, k: int = 5
) -> list[list[int]]:
    """Plain numpy: cosine to every reference, a product scores its best reference, top-k products."""
    sims = queries @ refs.T
    products = np.unique(ref_labels)
    per_product = np.stack([sims[:, ref_labels == p].max(axis=1) for p in products], axis=1)
    order = np.argsort(-per_product, axis=1, kind="stable")[:, :k]
    return [[int(products[j]) for j in row] for row in order]


@dataclass
class Scores:
    n: int
    top1: float
    top5: float


def score(ranked: Sequence[Sequence[int]], truth: Sequence[int]) -> Scores:
    n = len(truth)
    t1 = sum(1 for r, t in zip(ranked, truth, strict=True) if r[:1] == [t])
    t5 = sum(1 for r, t in zip(ranked, truth, strict=True) if t in r[:5])
    return Scores(n, 100.0 * t1 / max(n, 1), 100.0 * t5 / max(n, 1))


def breakdown(ranked: Sequence[Sequence[int]], photos: Sequence[Photo], key: Any) -> dict[str, Scores]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(photos):
        groups[key(p)].append(i)
    return {
        g: score([ranked[i] for i in idx], [photos[i].fine for i in idx]) for g, idx in sorted(groups.items())
    }


@dataclass
class QualityRun:
    name: str
    references: int
    enroll_s: float
    api: Scores
    offline: Scores
    by_group: dict[str, tuple[Scores, Scores]]
    by_coarse: dict[str, tuple[Scores, Scores]]


def quality_run(name: str, server: Server, ds: Dataset, refs: dict[int, list[Path]]) -> QualityRun:
    with server.client() as c:
        for p in c.list_products():
            c.delete_product(p.product_id)
        t0 = time.perf_counter()
        report = enroll(c, plans(ds, refs), batch=512)
        enroll_s = time.perf_counter() - t0
        if report.failed:
            raise RuntimeError(f"enrolment failed: {report.errors[:5]}")
        ranked_api = recognize_all(c, ds.val)
        ref_paths = [p for f in sorted(refs) for p in refs[f]]
        ref_labels = np.asarray([f for f in sorted(refs) for _ in refs[f]])
        ranked_off = offline_rank(embed_all(c, [p.path for p in ds.val]), embed_all(c, ref_paths), ref_labels)
    truth = [p.fine for p in ds.val]

    def both(key: Any) -> dict[str, tuple[Scores, Scores]]:
        a, o = breakdown(ranked_api, ds.val, key), breakdown(ranked_off, ds.val, key)
        return {g: (a[g], o[g]) for g in a}

    return QualityRun(
        name,
        sum(len(v) for v in refs.values()),
        enroll_s,
        score(ranked_api, truth),
        score(ranked_off, truth),
        both(lambda p: ds.group_of[p.fine]),
        both(lambda p: ds.coarse_name[p.coarse]),
    )


# ------------------------------------------------------------------------------------------------ speed
@dataclass
class SpeedRow:
    label: str
    clients: int
    batch: int
    images: int
    seconds: float
    latencies_ms: list[float]

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


def load_test(
    server: Server, payloads: Sequence[bytes], clients: int, batch: int, duration: float
) -> SpeedRow:
    """`clients` threads, each with its own channel, sending `batch`-image Recognize calls for `duration` s."""
    lat: list[float] = []
    counts = [0] * clients
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def worker(k: int) -> None:
        with server.client() as c:
            c.recognize([image_input(payloads[k % len(payloads)])])  # connect + warm
            start.wait()
            i = k * 7919
            while time.perf_counter() < stop_at[0]:
                imgs = [image_input(payloads[(i + j) % len(payloads)]) for j in range(batch)]
                i += batch
                t0 = time.perf_counter()
                c.recognize(imgs, search_options(top_k=5))
                dt = (time.perf_counter() - t0) * 1000
                with lock:
                    lat.append(dt)
                counts[k] += batch

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + duration + 1e6  # set properly once everyone is connected
    start.wait()
    t0 = time.perf_counter()
    stop_at[0] = t0 + duration
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    label = f"{clients} client{'s' if clients > 1 else ''} × {batch}-image calls"
    return SpeedRow(label, clients, batch, sum(counts), seconds, lat)


def bare_model(model: Path, batch: int, seconds: float) -> float:
    """images/s of the ONNX image tower alone on pre-made float32 tensors."""
    import onnxruntime as ort

    from skulens.model.manifest import load_manifest

    m = load_manifest(model)
    sess = ort.InferenceSession(str(model / m.image.file), providers=["CPUExecutionProvider"])
    h, w = int(m.image.input.shape[2]), int(m.image.input.shape[3])
    x = np.random.default_rng(0).standard_normal((batch, 3, h, w)).astype(np.float32)
    sess.run(None, {m.image.input.name: x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(None, {m.image.input.name: x})
        n += batch
    return n / (time.perf_counter() - t0)


def engine_in_process(model: Path, payloads: Sequence[bytes], seconds: float) -> float:
    """images/s of Engine.embed_images (decode + preprocess + micro-batching + model) with no gRPC."""
    from skulens.service.settings import Settings

    async def run() -> float:
        from skulens.inference.engine import Engine

        engine = await asyncio.to_thread(Engine.load, model, Settings().engine_options())
        try:
            await engine.embed_images(list(payloads[:32]))
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                await engine.embed_images(list(payloads[:64]))
                n += 64
            return n / (time.perf_counter() - t0)
        finally:
            await engine.close()

    return asyncio.run(run())


# ------------------------------------------------------------------------------------------------ report
def _q(s: Scores) -> str:
    return f"{s.top1:.1f} | {s.top5:.1f}"


def _breakdown(
    title: str, label: str, runs: Sequence[QualityRun], tables: Sequence[dict[str, tuple[Scores, Scores]]]
) -> list[str]:
    """A markdown table: one row per key of `tables[0]`, top-1 and top-5 (API, then numpy) for each run."""
    cols = [f"{r.name} {src} top-{k}" for r in runs for src in ("API", "numpy") for k in (1, 5)]
    lines = ["", f"### {title} (top-1 / top-5, API then numpy)", "", f"| {label} | val photos | " + " | ".join(cols)
             + " |", "|---|---:|" + "---:|" * len(cols)]
    for g, (api, _) in tables[0].items():
        lines.append(f"| {g} | {api.n} | " + " | ".join(f"{_q(t[g][0])} | {_q(t[g][1])}" for t in tables) + " |")
    return lines


def write_report(
    out: Path,
    args: argparse.Namespace,
    runs: list[QualityRun],
    speed: list[SpeedRow],
    bare: float,
    engine_ips: float,
    ready_s: float,
) -> str:
    import onnxruntime

    from skulens.model.manifest import load_manifest

    m = load_manifest(args.model)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as f:
        cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    extra = f" --server-args='{args.server_args}'" if args.server_args else ""
    lines = [
        "# Service benchmarks: recognition through the gRPC API",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `python bench/bench_recognition.py --model {args.model} "
        f"--data {args.data} --duration {args.duration:g}{extra}` on {os.cpu_count()} CPU cores ({cpu}), no GPU, "
        f"ONNX Runtime {onnxruntime.__version__} (CPUExecutionProvider), Python {platform.python_version()}.",
        f"Model: `{m.model_name}` ({m.variant}, {m.embedding_dim}-d, real ImageNet weights), fingerprint "
        f"`{m.fingerprint}`. Server: `skulens serve` defaults (max_batch 32, max_wait_ms 5)"
        f"{' plus ' + args.server_args if args.server_args else ''} "
        "in its own process; "
        f"clients are threads of the benchmark process on the same machine (they share its {os.cpu_count()} cores). "
        f"Server ready (load + warm-up + catalog open) in {ready_s:.1f} s.",
        "",
        "## Recognition quality (Grocery Store dataset, val split)",
        "",
        f"Query: the {runs[0].api.n} val photos, product id = fine class id (81 products). A product scores its best "
        "reference (cosine); top-k is over products. *API* = `Recognize` through gRPC (FAISS exact index); "
        "*numpy* = the same embeddings (from `Embed`) ranked offline with plain numpy. The two must agree "
        "within 0.5 points.",
        "",
        "| references | count | enrol (images/s) | top-1 API | top-5 API | top-1 numpy | top-5 numpy "
        "| Δ top-1 | Δ top-5 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r.name} | {r.references} | {r.references / r.enroll_s:.1f} | {r.api.top1:.1f} | {r.api.top5:.1f} | "
            f"{r.offline.top1:.1f} | {r.offline.top5:.1f} | {abs(r.api.top1 - r.offline.top1):.2f} | "
            f"{abs(r.api.top5 - r.offline.top5):.2f} |"
        )
    lines += _breakdown("Per group", "group", runs, [r.by_group for r in runs])
    lines += _breakdown("Per coarse class", "coarse class", runs, [r.by_coarse for r in runs])
    lines += [
        "",
        "## Throughput and latency",
        "",
        f"Each client has its own channel and sends `Recognize` calls back to back for {args.duration:g} s over the "
        f"val photos (348×348 JPEG, top_k 5, {runs[-1].references}-reference catalog); latency is per call.",
        "",
        "| load | images | images/s | p50 ms | p95 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in speed:
        lines.append(
            f"| {s.label} | {s.images} | {s.images_per_s:.1f} | {s.pct(50):.1f} | {s.pct(95):.1f} | "
            f"{s.pct(99):.1f} |"
        )
    lines += [
        f"| bare model: ONNX Runtime on pre-made tensors, batch {args.bare_batch} | | {bare:.1f} | | | |",
        f"| engine in-process: decode + preprocess + batching + model, no gRPC | | {engine_ips:.1f} | | | |",
        "",
        "Notes: the machine is shared (other jobs may have run during the measurement), so treat figures as "
        "±10 %. With 2 cores the clients, the gRPC server thread, the decode pool and ONNX Runtime all compete for "
        "the same cores: end-to-end images/s is bounded by the model and the JPEG decode, not by gRPC.",
        "",
    ]
    text = "\n".join(lines)
    write_section(out, "service", text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=REPO / ".cache" / "models" / "effnet")
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/grocery"))
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "BENCHMARKS.md", help="its section is replaced")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per load level")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--bare-batch", type=int, default=32)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument(
        "--server-args", default="", help="extra `skulens serve` flags, e.g. '--ort-spinning' (shown in the report)"
    )
    ap.add_argument("--baseline-tree", type=Path, help="compare speed against a checkout of another commit")
    ap.add_argument("--rounds", type=int, default=3, help="side-by-side: interleaved rounds per load level")
    args = ap.parse_args(argv)
    ds = load_dataset(args.data)
    if args.baseline_tree is not None:
        args.model = args.model.resolve()  # each server runs in its own tree
        print(side_by_side(args, ds))
        return 0
    with tempfile.TemporaryDirectory(prefix="skulens-bench-") as tmp:
        server = Server(args.model, Path(tmp) / "catalog", args.server_args.split())
        try:
            runs = []
            for name, refs in (
                ("iconic", {f: [p] for f, p in ds.iconic.items()}),
                ("train", _by_class(ds.train)),
            ):
                print(f"== quality run {name}", flush=True)
                runs.append(quality_run(name, server, ds, refs))
                r = runs[-1]
                print(
                    f"   API top-1 {r.api.top1:.2f} top-5 {r.api.top5:.2f}; numpy top-1 {r.offline.top1:.2f} "
                    f"top-5 {r.offline.top5:.2f}",
                    flush=True,
                )
            speed: list[SpeedRow] = []
            payloads = [p.path.read_bytes() for p in ds.val]
            if not args.skip_speed:
                for c in args.concurrency:
                    print(f"== load: {c} clients", flush=True)
                    speed.append(load_test(server, payloads, c, 1, args.duration))
                    print(
                        f"   {speed[-1].images_per_s:.1f} images/s p50 {speed[-1].pct(50):.1f} ms", flush=True
                    )
                speed.append(load_test(server, payloads, 1, 16, args.duration))
                print(f"   batch 16: {speed[-1].images_per_s:.1f} images/s", flush=True)
            ready_s = server.ready_s
        finally:
            server.stop()
        print("== bare model / engine", flush=True)
        bare = bare_model(args.model, args.bare_batch, args.duration)
        engine_ips = engine_in_process(args.model, payloads, args.duration)
    print(write_report(args.out, args, runs, speed, bare, engine_ips, ready_s))
    bad = [
        r.name
        for r in runs
        if abs(r.api.top1 - r.offline.top1) > 0.5 or abs(r.api.top5 - r.offline.top5) > 0.5
    ]
    if bad:
        print(f"API and numpy disagree by more than 0.5 points in: {bad}", file=sys.stderr)
        return 1
    return 0


def _git_rev(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain"], capture_output=True, text=True)
    return (out.stdout.strip() or "?") + (" + uncommitted changes" if dirty.stdout.strip() else "")


def side_by_side(args: argparse.Namespace, ds: Dataset) -> str:
    """Speed of this tree's server next to a baseline tree's, load levels interleaved; writes its section."""
    trees = {"baseline": args.baseline_tree.resolve(), "current": REPO}
    payloads = [p.path.read_bytes() for p in ds.val]
    levels = [(c, 1) for c in args.concurrency] + [(1, 16)]
    rows: dict[tuple[str, int, int], list[SpeedRow]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="skulens-bench-") as tmp:
        servers: dict[str, Server] = {}
        try:
            for name, tree in trees.items():
                servers[name] = Server(args.model, Path(tmp) / name / "catalog", args.server_args.split(), tree=tree)
                with servers[name].client() as c:
                    enroll(c, plans(ds, {f: [p] for f, p in ds.iconic.items()}))
            for rnd in range(args.rounds):
                for c, b in levels:
                    order = ["baseline", "current"] if rnd % 2 == 0 else ["current", "baseline"]
                    for name in order:
                        row = load_test(servers[name], payloads, c, b, args.duration)
                        rows[(name, c, b)].append(row)
                        print(f"   round {rnd + 1} {name:8s} {row.label}: {row.images_per_s:.1f} images/s "
                              f"p50 {row.pct(50):.1f} ms", flush=True)
        finally:
            for s in servers.values():
                s.stop()
    lines = [
        "# Service speed side by side: this tree against a baseline commit",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `python bench/bench_recognition.py --model {args.model} "
        f"--data {args.data} --baseline-tree DIR --rounds {args.rounds} --duration {args.duration:g}` on "
        f"{os.cpu_count()} CPU cores, no GPU. Baseline: {_git_rev(trees['baseline'])}; current: "
        f"{_git_rev(REPO)}. Both servers run at once (each in its own process, `skulens serve` defaults, catalog: "
        f"the {len(ds.iconic)} iconic packshots); only one is under load at a time, the levels alternate "
        f"baseline/current and swap order every round. Figures: all {args.rounds} rounds pooled (images/s = total "
        "images / total seconds; latency percentiles over every call).",
        "",
        "| load | baseline images/s | current images/s | current / baseline | baseline p50 / p99 ms "
        "| current p50 / p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c, b in levels:
        pooled = {}
        for name in trees:
            rs = rows[(name, c, b)]
            pooled[name] = SpeedRow(rs[0].label, c, b, sum(r.images for r in rs), sum(r.seconds for r in rs),
                                    [x for r in rs for x in r.latencies_ms])
        base, cur = pooled["baseline"], pooled["current"]
        lines.append(
            f"| {cur.label} | {base.images_per_s:.1f} | {cur.images_per_s:.1f} | "
            f"{cur.images_per_s / base.images_per_s:.3f} | {base.pct(50):.1f} / {base.pct(99):.1f} | "
            f"{cur.pct(50):.1f} / {cur.pct(99):.1f} |"
        )
    lines.append("")
    text = "\n".join(lines)
    write_section(args.out, "service-side-by-side", text)
    return text


def _by_class(photos: Sequence[Photo]) -> dict[int, list[Path]]:
    out: dict[int, list[Path]] = defaultdict(list)
    for p in photos:
        out[p.fine].append(p.path)
    return dict(out)


if __name__ == "__main__":
    sys.exit(main())
