"""Drift monitoring on the Grocery Store dataset: its cost on recognition throughput, and the states it reaches.

Two `skulens serve` subprocesses on the same model and the same catalog (the train photos of the even fine class
ids: the odd classes are products the catalog lacks), one with the drift monitor (default settings but the window
size) and one with `--no-drift-monitor`:

1. Cost: `clients` threads send 1-image `Recognize` calls (each client its own source) for `duration` seconds to
   one server then the other, alternating the order round by round, so machine noise hits both alike; images/s
   of each, and the ratio (goal: monitoring costs at most 3 %).
2. States: on the monitored server, each source first sends val photos of catalog products (a mild jitter: crop,
   flip, brightness — new shots of the same products) for its baseline, then its own change: nothing
   ("clean"), darkened, blurred, rotated, photos of products not in the catalog, or a mix of the three
   degradations. Reported per source: the state reached, after how many changed queries it first reached WATCH
   and DRIFT, the signals at the end, and the top-1 accuracy before and after the change (what the monitor is
   for: accuracy falls without the verdicts saying so).
3. Reference fit cost: the fit the monitored server made (sample read + k-means, from its report), and k-means
   alone on a maximal sample (clusters × 256 embeddings of the model's dimension).

Usage:
    python bench/bench_drift.py --model .cache/models/efficientnet-lite0-fp32 --data /work/shared/data/grocery \
        --out docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), *(str(REPO / d) for d in ("proto", "server", "catalog", "export"))]

from bench.bench_recognition import Photo, Server, load_dataset, plans  # noqa: E402
from bench.report import write_section  # noqa: E402
from skulens.client import monitor  # noqa: E402
from skulens.client.client import SkulensClient, image_input  # noqa: E402
from skulens.client.enroll import enroll  # noqa: E402
from skulens.v1 import recognition_pb2 as pb  # noqa: E402

STATE = {
    pb.DRIFT_STATE_LEARNING: "LEARNING",
    pb.DRIFT_STATE_OK: "OK",
    pb.DRIFT_STATE_WATCH: "WATCH",
    pb.DRIFT_STATE_DRIFT: "DRIFT",
}


# ------------------------------------------------------------------------------------------------ images
def encode(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def jittered(path: Path, seed: int) -> Image.Image:
    """A new 'shot' of the photo: random crop (85-100 %), horizontal flip, brightness ±10 %."""
    rng = np.random.default_rng(seed)
    im = Image.open(path).convert("RGB")
    w, h = im.size
    f = rng.uniform(0.85, 1.0)
    cw, ch = int(w * f), int(h * f)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    im = im.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        im = ImageOps.mirror(im)
    return ImageEnhance.Brightness(im).enhance(rng.uniform(0.9, 1.1))


def degrade(im: Image.Image, kind: str) -> Image.Image:
    """dark: 35 % brightness; blur: Gaussian radius 4 (on 348-pixel photos); rot: 90°."""
    if kind == "dark":
        return ImageEnhance.Brightness(im).enhance(0.35)
    if kind == "blur":
        return im.filter(ImageFilter.GaussianBlur(4))
    return im.rotate(90, expand=True)


@dataclass(frozen=True)
class Query:
    content: bytes
    fine: int


def stream(
    photos: Sequence[Photo], n: int, seed: int, change: Callable[[Image.Image, int], Image.Image] | None = None
) -> list[Query]:
    """n queries cycling over `photos` in a seeded random order, each a jittered shot, then `change`d."""
    rng = np.random.default_rng(seed)
    order = [photos[int(i)] for i in rng.permutation(max(n, len(photos)))[:n] % len(photos)]
    out = []
    for i, p in enumerate(order):
        im = jittered(p.path, seed * 100_003 + i)
        out.append(Query(encode(change(im, i) if change else im), p.fine))
    return out


# ------------------------------------------------------------------------------------------------ cost
def throughput(server: Server, payloads: Sequence[bytes], clients: int, duration: float) -> float:
    """images/s of `clients` threads sending 1-image Recognize calls (client k: source lane-k)."""
    counts = [0] * clients
    start = threading.Barrier(clients + 1)
    stop_at = [float("inf")]

    def worker(k: int) -> None:
        with server.client() as c:
            c.recognize([image_input(payloads[k])], source=f"lane-{k}")
            start.wait()
            i = k * 7919
            while time.perf_counter() < stop_at[0]:
                c.recognize([image_input(payloads[i % len(payloads)])], source=f"lane-{k}")
                i += 1
                counts[k] += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    stop_at[0] = t0 + duration
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------ states
@dataclass
class Lane:
    name: str
    change: str
    baseline: list[Query]
    changed: list[Query]
    first_watch: int | None = None
    first_drift: int | None = None
    acc_before: float = 0.0
    acc_after: float = 0.0
    report: pb.SourceDrift | None = None


def send(c: SkulensClient, source: str, queries: Sequence[Query], batch: int) -> list[bool]:
    """Recognize in batches; whether each top-1 is the photo's class."""
    hits = []
    for i in range(0, len(queries), batch):
        part = queries[i : i + batch]
        resp = c.recognize([image_input(q.content) for q in part], source=source)
        for q, r in zip(part, resp.results, strict=True):
            m = r.recognition.matches
            hits.append(bool(m) and m[0].product_id == str(q.fine))
    return hits


def wait_seen(c: SkulensClient, source: str, n: int) -> pb.SourceDrift:
    end = time.monotonic() + 60
    while True:
        rep = c.drift_report(source=source, history=100_000)
        if (rep.sources and rep.sources[0].queries >= n) or time.monotonic() > end:
            return rep.sources[0]
        time.sleep(0.05)


def run_lane(c: SkulensClient, lane: Lane, batch: int) -> None:
    lane.acc_before = float(np.mean(send(c, lane.name, lane.baseline, batch)))
    wait_seen(c, lane.name, len(lane.baseline))
    hits: list[bool] = []
    for i in range(0, len(lane.changed), batch):  # one batch at a time, to see when the state changes
        hits += send(c, lane.name, lane.changed[i : i + batch], batch)
        s = wait_seen(c, lane.name, len(lane.baseline) + len(hits))
        if s.state >= pb.DRIFT_STATE_WATCH and lane.first_watch is None:
            lane.first_watch = len(hits)
        if s.state == pb.DRIFT_STATE_DRIFT and lane.first_drift is None:
            lane.first_drift = len(hits)
    lane.acc_after = float(np.mean(hits))
    lane.report = wait_seen(c, lane.name, len(lane.baseline) + len(lane.changed))


def kmeans_cost(dim: int, clusters: int, repeats: int = 3) -> float:
    """Seconds of k-means alone on clusters × 256 random unit vectors of `dim` (one thread, as the monitor)."""
    from skulens.catalog.clusters import fit_clusters

    rng = np.random.default_rng(0)
    x = rng.standard_normal((clusters * 256, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fit_clusters(x, clusters)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def monitor_cpu(dim: int, n_refs: int, queries: int = 16_384, chunk: int = 2048) -> tuple[float, float]:
    """(µs per query on the request path: `observe`, µs per query in the aggregator: `process`) of a DriftMonitor
    with the default options and a reference fitted on `n_refs` random references of `dim` (the costs depend on
    the dimensions and the number of centres, not on the values), 1-query calls spread over 8 sources."""
    from skulens.catalog import Catalog, CatalogSettings, NewReference
    from skulens.service.drift_monitor import DriftMonitor
    from skulens.service.drift_options import DriftOptions

    rng = np.random.default_rng(0)

    def unit(n: int) -> np.ndarray:
        x = rng.standard_normal((n, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    with tempfile.TemporaryDirectory() as tmp:
        fp = f"bench/{dim}:0"
        cat = Catalog.open(
            Path(tmp) / "c", fingerprint=fp, dim=dim, settings=CatalogSettings(synchronous="NORMAL", use_gpu="never")
        )
        refs = unit(n_refs)
        for i in range(0, n_refs, 1024):
            cat.upsert_product(f"p{i}")
            cat.add_references(f"p{i}", [NewReference(v) for v in refs[i : i + 1024]])
        m = DriftMonitor(DriftOptions(), lambda: cat)
        m.refit()
        q = unit(queries)
        answer = [pb.Recognition(verdict=1, best_score=0.9)]
        t_obs = t_proc = 0.0
        for at in range(0, queries, chunk):
            t0 = time.perf_counter()
            for i in range(at, min(at + chunk, queries)):
                m.observe(f"lane-{i % 8}", fp, q[i : i + 1], answer)
            t1 = time.perf_counter()
            m.process()
            t_proc += time.perf_counter() - t1
            t_obs += t1 - t0
        assert sum(s.queries for s in m.report().sources) == queries
        cat.close()
    return t_obs / queries * 1e6, t_proc / queries * 1e6


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="the Grocery Store dataset folder")
    ap.add_argument("--out", type=Path, help="write the section into this markdown file (docs/BENCHMARKS.md)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per throughput measurement")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--window", type=int, default=50, help="--drift-window-size of the monitored server")
    ap.add_argument("--changed", type=int, default=200, help="changed queries per source")
    ap.add_argument("--batch", type=int, default=4, help="images per Recognize call in the state runs")
    args = ap.parse_args()

    ds = load_dataset(args.data)
    catalog_refs: dict[int, list[Path]] = {}
    for p in ds.train:
        if p.fine % 2 == 0:
            catalog_refs.setdefault(p.fine, []).append(p.path)
    known_val = [p for p in ds.val if p.fine % 2 == 0]
    unknown_val = [p for p in ds.val if p.fine % 2 == 1]
    load0 = os.getloadavg()
    # refit 5 s after a catalog change (default 300 s), so that the reference covers the whole enrolled catalog
    window = ["--drift-window-size", str(args.window), "--drift-refit-seconds", "5"]
    with tempfile.TemporaryDirectory() as tmp:
        on = Server(args.model, Path(tmp) / "on" / "catalog", window)
        off = Server(args.model, Path(tmp) / "off" / "catalog", ["--no-drift-monitor"])
        try:
            for srv in (on, off):
                with srv.client() as c:
                    rep = enroll(c, plans(ds, catalog_refs), batch=512)
                    if rep.failed:
                        raise RuntimeError(f"enrolment failed: {rep.errors[:3]}")
            n_refs = sum(len(v) for v in catalog_refs.values())
            with on.client() as c:  # wait for the reference fit of the enrolled catalog
                end = time.monotonic() + 120
                while c.drift_report().reference.catalog_version < c.stats().catalog_version:
                    if time.monotonic() > end:
                        raise RuntimeError("no reference fit of the enrolled catalog within 120 s")
                    time.sleep(0.5)
            print(f"catalog: {len(catalog_refs)} products, {n_refs} references on both servers", flush=True)
            # -- 1. cost
            payloads = [q.content for q in stream(ds.val, 64, seed=1)]
            rates: dict[str, list[float]] = {"on": [], "off": []}
            for r in range(args.rounds):
                for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
                    rate = throughput(on if name == "on" else off, payloads, args.clients, args.duration)
                    rates[name].append(rate)
                    print(f"  round {r + 1} monitor {name:3s}: {rate:.1f} images/s", flush=True)
            # -- 2. states
            n_base = 2 * args.window
            mix = ("dark", "blur", "rot")
            specs: list[tuple[str, str, Callable[[int], list[Query]]]] = [
                ("clean", "none (new shots of the same products)", lambda s: stream(known_val, args.changed, s)),
                (
                    "dark",
                    "darkened to 35 %",
                    lambda s: stream(known_val, args.changed, s, lambda im, i: degrade(im, "dark")),
                ),
                (
                    "blurred",
                    "Gaussian blur, radius 4",
                    lambda s: stream(known_val, args.changed, s, lambda im, i: degrade(im, "blur")),
                ),
                (
                    "rotated",
                    "rotated 90°",
                    lambda s: stream(known_val, args.changed, s, lambda im, i: degrade(im, "rot")),
                ),
                (
                    "mixed",
                    "dark / blur / rotated in turn",
                    lambda s: stream(known_val, args.changed, s, lambda im, i: degrade(im, mix[i % 3])),
                ),
                (
                    "new-products",
                    "products not in the catalog (odd class ids)",
                    lambda s: stream(unknown_val, args.changed, s),
                ),
            ]
            lanes = []
            with on.client() as c:
                for k, (name, change, make) in enumerate(specs):
                    lane = Lane(name, change, stream(known_val, n_base, seed=10 + k), make(100 + k))
                    run_lane(c, lane, args.batch)
                    lanes.append(lane)
                    s = lane.report
                    assert s is not None
                    print(
                        f"  {name:13s} {STATE[s.state]:5s} watch@{lane.first_watch} drift@{lane.first_drift} "
                        f"top-1 {lane.acc_before:.2f}→{lane.acc_after:.2f}",
                        flush=True,
                    )
                final = c.drift_report(history=100_000)
                dim = c.server_info().model.dim
            km = kmeans_cost(dim, 64)
            cpu = monitor_cpu(dim, n_refs)
            shown = pb.GetDriftReportResponse()
            shown.CopyFrom(final)
            del shown.sources[:]
            shown.sources.extend(s for s in final.sources if s.source in {lane.name for lane in lanes})
            monitor.plot(shown, REPO / "docs" / "img" / "drift-grocery.png")  # the state runs' sources only
        finally:
            on.stop()
            off.stop()
    load1 = os.getloadavg()
    md = render(
        args,
        lanes,
        rates,
        final,
        km,
        cpu,
        dim,
        n_refs,
        len(catalog_refs),
        len(known_val),
        len(unknown_val),
        load0,
        load1,
    )
    print(md)
    if args.out:
        write_section(args.out, "drift", md)


def render(
    args: argparse.Namespace,
    lanes: list[Lane],
    rates: dict[str, list[float]],
    final: pb.GetDriftReportResponse,
    km: float,
    cpu: tuple[float, float],
    dim: int,
    n_refs: int,
    n_products: int,
    n_known_val: int,
    n_unknown_val: int,
    load0: tuple[float, ...],
    load1: tuple[float, ...],
) -> str:
    import onnxruntime

    on, off = np.array(rates["on"]), np.array(rates["off"])
    ratio = on.sum() / off.sum()
    per_round = on / off
    lines = [
        "# Drift monitoring (`bench/bench_drift.py`)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `python bench/bench_drift.py --model {args.model} --data "
        f"{args.data} --clients {args.clients} --duration {args.duration:g} --rounds {args.rounds} --window "
        f"{args.window} --changed {args.changed}` on {os.cpu_count()} CPU cores ({platform.machine()}), no GPU, "
        f"ONNX Runtime {onnxruntime.__version__}, Python {platform.python_version()}. Load average (1/5/15 min) "
        f"before: {' / '.join(f'{x:.2f}' for x in load0)}, after: {' / '.join(f'{x:.2f}' for x in load1)}.",
        f"Model `{args.model.name}` ({dim}-d). Catalog on both servers: the train photos of the {n_products} even "
        f"fine class ids ({n_refs} references); the odd classes are products the catalog lacks. Both servers "
        "are `skulens serve` subprocesses on the same machine as the clients.",
        "",
        "## Cost on recognition throughput",
        "",
        f"{args.clients} clients, each its own channel and its own source, send 1-image `Recognize` calls back to "
        f"back for {args.duration:g} s to one server, then to the other (order alternating per round). Monitor "
        "on: default drift settings but `--drift-window-size` and `--drift-refit-seconds 5`; off: "
        "`--no-drift-monitor`.",
        "",
        "| round | monitor on (images/s) | monitor off (images/s) | on / off |",
        "|---:|---:|---:|---:|",
        *[f"| {i + 1} | {a:.1f} | {b:.1f} | {a / b:.3f} |" for i, (a, b) in enumerate(zip(on, off, strict=True))],
        f"| all | {on.mean():.1f} | {off.mean():.1f} | **{ratio:.3f}** |",
        "",
        f"Throughput with monitoring on / off over all rounds: {ratio:.3f} (goal: at least 0.97; the per-round "
        f"ratios, {per_round.min():.3f}-{per_round.max():.3f}, show how much the machine's own noise moves a round: "
        "other work shared these 2 cores).",
        "",
        f"Measured directly, without that noise (in-process, one thread, default options, {dim}-d, a reference of "
        f"{n_refs} random references, 16,384 1-query calls over 8 sources): the request path (`observe`) costs "
        f"**{cpu[0]:.1f} µs** per query and the aggregator thread **{cpu[1]:.1f} µs** per query; the server spent "
        f"{2e6 / off.mean() / 1000:.1f} ms of CPU per image in this run (2 cores / {off.mean():.1f} images/s with "
        f"monitoring off), so monitoring takes **{100 * (cpu[0] + cpu[1]) / (2e6 / off.mean()):.2f} %** of it.",
        "",
        f"Monitor memory after the run: "
        f"{final.memory_bytes / 1e6:.1f} MB for {len(final.sources)} sources (bound "
        f"{final.memory_bound_bytes / 1e6:.1f} MB at the default 64 sources, whatever the number of sources "
        "clients send).",
        "",
        "## States reached (Grocery Store val photos)",
        "",
        f"Window {args.window} queries (sliding by {args.window // 4}), baseline: each source's first "
        f"{2 * args.window} queries, jittered shots (crop 85-100 %, flip, brightness ±10 %) of the {n_known_val} val "
        f"photos of catalog products; then {args.changed} changed queries (for new-products: jittered shots of the "
        f"{n_unknown_val} val photos of the odd classes). Thresholds: defaults (WATCH at effect ≥ 0.2 and z ≥ 3, "
        "DRIFT at effect ≥ 0.5 and z ≥ 5). *first WATCH / DRIFT*: changed queries sent when the state first "
        "reached it (checked after every call). Top-1: share of queries whose best product is the photo's class "
        "(new-products: always 0 after the change, there is no right answer in the catalog).",
        "",
        "| source | change | state | first WATCH | first DRIFT | top-1 before → after | known share | "
        "median best score | mean shift | far share | signals at DRIFT (z) |",
        "|---|---|---|---:|---:|---|---|---|---:|---|---|",
    ]
    for lane in lanes:
        s = lane.report
        assert s is not None
        b, w = s.baseline, s.current
        at_drift = ", ".join(f"{g.name} {g.z:.1f}" for g in s.signals if g.state == pb.DRIFT_STATE_DRIFT) or "-"
        lines.append(
            f"| {lane.name} | {lane.change} | {STATE[s.state]} | {lane.first_watch or '-'} | "
            f"{lane.first_drift or '-'} | {lane.acc_before:.2f} → {lane.acc_after:.2f} | "
            f"{b.known_share:.2f} → {w.known_share:.2f} | {b.score_p50:.2f} → {w.score_p50:.2f} | "
            f"{w.mean_shift:.2f} | {b.far_share:.2f} → {w.far_share:.2f} | {at_drift} |"
        )
    clean = next(lane for lane in lanes if lane.name == "clean").report
    assert clean is not None
    bad_windows = sum(1 for h in clean.history if h.state >= pb.DRIFT_STATE_WATCH)
    ref = final.reference
    lines += [
        "",
        f"The untouched source (clean) was judged in {len(clean.history)} windows: {bad_windows} at WATCH or DRIFT.",
        "",
        "## Reference fit cost",
        "",
        f"The monitored server's last fit: {ref.references} catalog embeddings read (a random sample: all of them "
        f"here), {ref.clusters} centres, far cut {ref.far_cut:.3f}: **{ref.fit_seconds * 1000:.0f} ms** on the "
        f"refit thread ({ref.fits} fits during the run: the first at start on the empty catalog, then after the "
        f"enrolment). k-means alone on the largest sample the monitor ever reads (64 centres × 256 = 16,384 "
        f"embeddings of {dim} values, one OpenMP thread, 20 iterations): **{km:.2f} s** (median of 3); the read "
        "of the sample comes on top (`sample_embeddings`: reference ids drawn in SQL, then only the chosen rows).",
        "",
        "`bench/bench_drift.py` also draws the signals of this run over time (`skulens.client.monitor.plot`: the "
        "six sources above, one after the other; dots: each judged window's state) into "
        "`docs/img/drift-grocery.png`, which is generated, not committed.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
