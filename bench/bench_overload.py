"""Goodput under overload, time to refusal, and one costly request against many small ones.

Starts `skulens serve` (a subprocess, see bench_recognition.Server) with a small catalog of grocery packshots,
then, for 1-photo and 8-photo `Recognize` calls of grocery val photos:

1. capacity: closed loop with enough concurrent callers to keep the server busy → images/s answered OK;
2. open loop at 1× / 2× / 4× / 8× that capacity (Poisson arrivals, every call with a `--deadline` deadline):
   goodput (images/s answered OK within the deadline), calls refused with RESOURCE_EXHAUSTED and the time that
   refusal took (p50/p99), accepted-call latency (p50/p99) against the quiet value, and the server's peak RSS;
3. costly requests: p50/p99 of sequential 1-photo calls alone, then while `--costly-calls` concurrent calls of
   64 near-40 MP PNGs run (with the default pixel budget, which refuses them, and with the budget raised so
   they are admitted and the decode threads are shared round-robin).

The load generator runs in this process on the same cores as the server (2 on this project's machines), so
each table also gives the send rate it achieved. Usage:
    python bench/bench_overload.py --model .cache/models/efficientnet-lite0-fp32 \
        --data ../shared/data/grocery --out docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import asyncio
import io
import platform
import random
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), *(str(REPO / d) for d in ("proto", "server", "catalog", "export"))]

from bench.bench_recognition import Server, load_dataset  # noqa: E402
from bench.report import write_section  # noqa: E402
from skulens.v1 import catalog_pb2, recognition_pb2, recognition_pb2_grpc  # noqa: E402


def _children(pid: int) -> list[int]:
    """PIDs of `pid`'s child processes (decode worker processes)."""
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return out


def rss_mib(pid: int) -> float:
    """Resident set of `pid` and its child processes, in MiB (0 when it is gone)."""
    total = 0.0
    for p in (pid, *_children(pid)):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


class PeakRss:
    """Samples a process's RSS every 50 ms in a thread; `peak` is the largest seen since `reset`."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mib(self.pid))

    def reset(self) -> None:
        self.peak = rss_mib(self.pid)

    def stop(self) -> None:
        self._stop.set()


def pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


@dataclass
class Outcome:
    code: str
    seconds: float
    images: int


@dataclass
class LoadRow:
    label: str
    size: int
    offered_ips: float
    sent_cps: float
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss: float = 0.0
    deadline: float = 10.0

    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.code == "OK" and o.seconds <= self.deadline]

    @property
    def goodput(self) -> float:
        return sum(o.images for o in self.ok()) / self.seconds if self.seconds else 0.0

    def share(self, code: str) -> float:
        return sum(o.code == code for o in self.outcomes) / max(1, len(self.outcomes))

    def latencies(self, code: str) -> list[float]:
        return [o.seconds * 1000 for o in self.outcomes if o.code == code]


async def one_call(stub: recognition_pb2_grpc.RecognitionServiceStub, req: recognition_pb2.RecognizeRequest,
                   deadline: float | None) -> Outcome:
    t0 = time.perf_counter()
    try:
        resp = await stub.Recognize(req, timeout=deadline)
        bad = sum(r.status.code != 0 for r in resp.results)
        return Outcome("OK" if not bad else "ITEM_ERRORS", time.perf_counter() - t0, len(resp.results) - bad)
    except grpc.aio.AioRpcError as exc:
        return Outcome(exc.code().name, time.perf_counter() - t0, 0)


def requests_of(photos: Sequence[bytes], size: int, n: int, seed: int) -> list[recognition_pb2.RecognizeRequest]:
    rng = random.Random(seed)
    return [
        recognition_pb2.RecognizeRequest(
            images=[recognition_pb2.ImageInput(content=rng.choice(photos)) for _ in range(size)]
        )
        for _ in range(n)
    ]


async def closed_loop(addr: str, reqs: Sequence[recognition_pb2.RecognizeRequest], callers: int,
                      seconds: float) -> tuple[float, list[Outcome], float]:
    """`callers` clients calling back to back for `seconds`: (images/s answered OK, outcomes, elapsed)."""
    async with grpc.aio.insecure_channel(addr, options=_OPTS) as ch:
        stub = recognition_pb2_grpc.RecognitionServiceStub(ch)
        outcomes: list[Outcome] = []
        stop = time.perf_counter() + seconds
        t0 = time.perf_counter()

        async def caller(k: int) -> None:
            i = k
            while time.perf_counter() < stop:
                outcomes.append(await one_call(stub, reqs[i % len(reqs)], 60.0))
                i += callers

        await asyncio.gather(*(caller(k) for k in range(callers)))
        elapsed = time.perf_counter() - t0
    return sum(o.images for o in outcomes if o.code == "OK") / elapsed, outcomes, elapsed


async def open_loop(addr: str, reqs: Sequence[recognition_pb2.RecognizeRequest], rate_cps: float, seconds: float,
                    deadline: float, seed: int) -> tuple[list[Outcome], float, float]:
    """Poisson arrivals at `rate_cps` calls/s for `seconds`, each call with `deadline`: (outcomes, elapsed
    until the last answer, achieved send rate)."""
    rng = random.Random(seed)
    async with grpc.aio.insecure_channel(addr, options=_OPTS) as ch:
        stub = recognition_pb2_grpc.RecognitionServiceStub(ch)
        tasks: list[asyncio.Task[Outcome]] = []
        t0 = time.perf_counter()
        next_at = t0
        i = 0
        while next_at - t0 < seconds:
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one_call(stub, reqs[i % len(reqs)], deadline)))
            i += 1
            next_at += rng.expovariate(rate_cps)
        sent_for = time.perf_counter() - t0
        outcomes = await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
    return list(outcomes), elapsed, len(tasks) / sent_for


_OPTS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


def costly_png(seed: int, side: int = 6300) -> bytes:
    """A ~39.7 MP PNG that compresses well (a few KB on the wire, full cost to decode)."""
    rng = np.random.default_rng(seed)
    tile = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(tile).resize((side, side), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


async def costly_run(addr: str, small: Sequence[recognition_pb2.RecognizeRequest],
                     costly: recognition_pb2.RecognizeRequest | None, n_costly: int,
                     seconds: float) -> tuple[list[float], list[Outcome]]:
    """Sequential 1-photo calls for `seconds` while `n_costly` costly calls run (again and again)."""
    async with grpc.aio.insecure_channel(addr, options=_OPTS) as ch:
        stub = recognition_pb2_grpc.RecognitionServiceStub(ch)
        stop = time.perf_counter() + seconds
        big: list[Outcome] = []

        async def costly_caller() -> None:
            assert costly is not None
            while time.perf_counter() < stop:
                big.append(await one_call(stub, costly, 120.0))

        bg = [asyncio.create_task(costly_caller()) for _ in range(n_costly if costly is not None else 0)]
        await asyncio.sleep(0.5 if bg else 0)
        lat: list[float] = []
        i = 0
        while time.perf_counter() < stop:
            o = await one_call(stub, small[i % len(small)], 30.0)
            if o.code == "OK":
                lat.append(o.seconds * 1000)
            i += 1
        await asyncio.gather(*bg)
    return lat, big


def enrol(server: Server, data: Path) -> int:
    ds = load_dataset(data)
    with server.client() as c:
        for fine, _path in sorted(ds.iconic.items()):
            c.upsert_product(str(fine), display_name=ds.fine_name[fine])
        resp = c.add_references([
            catalog_pb2.AddReferenceImagesRequest(product_id=str(fine), content=path.read_bytes())
            for fine, path in sorted(ds.iconic.items())
        ])
    return int(resp.added)


def machine() -> str:
    import onnxruntime

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return f"{cpu}, {len(__import__('os').sched_getaffinity(0))} cores; Python {platform.python_version()}, " \
           f"onnxruntime {onnxruntime.__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "grocery")
    ap.add_argument("--seconds", type=float, default=15.0, help="length of each load phase")
    ap.add_argument("--loads", default="1,2,4,8")
    ap.add_argument("--sizes", default="1,8")
    ap.add_argument("--deadline", type=float, default=10.0)
    ap.add_argument("--costly-calls", type=int, default=2)
    ap.add_argument("--server-args", default="", help="extra `skulens serve` flags, space-separated")
    ap.add_argument("--out", type=Path, default=None, help="write the section into this markdown file")
    ap.add_argument("--section", default="overload")
    args = ap.parse_args(argv)

    ds = load_dataset(args.data)
    photos = [p.path.read_bytes() for p in ds.val[::4]]
    loads = [float(x) for x in args.loads.split(",")]
    sizes = [int(x) for x in args.sizes.split(",")]
    lines = [
        "# Overload: goodput, refusals, costly requests",
        "",
        f"`python bench/bench_overload.py --model {args.model} --seconds {args.seconds:g} --loads {args.loads} "
        f"--sizes {args.sizes} --deadline {args.deadline:g} --costly-calls {args.costly_calls}"
        + (f" --server-args '{args.server_args}'" if args.server_args else "") + "`",
        "",
        f"Machine: {machine()}. Model `{args.model.name}`; catalog: the {len(ds.iconic)} grocery packshots; "
        f"queries: {len(photos)} grocery val photos (JPEG). The load generator shares the server's cores.",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(args.model, Path(tmp) / "data", args.server_args.split())
        rss = PeakRss(server.proc.pid)
        try:
            enrolled = enrol(server, args.data)
            lines += [f"Server ready in {server.ready_s:.1f} s; {enrolled} references enrolled; RSS idle "
                      f"{rss_mib(server.proc.pid):.0f} MiB.", ""]
            rows: list[LoadRow] = []
            quiet: dict[int, float] = {}
            for size in sizes:
                reqs = requests_of(photos, size, 100, seed=size)
                lat = [o.seconds * 1000 for o in asyncio.run(closed_loop(server.addr, reqs[:20], 1, 3.0))[1]
                       if o.code == "OK"]
                quiet[size] = pct(lat, 99)
                callers = max(4, 32 // size)
                rss.reset()
                cap, outs, elapsed = asyncio.run(closed_loop(server.addr, reqs, callers, args.seconds))
                row = LoadRow(f"capacity ({callers} callers, closed loop)", size, cap, 0.0, outs, elapsed,
                              rss.peak, args.deadline)
                rows.append(row)
                print(f"size {size}: capacity {cap:.1f} images/s, quiet p99 {quiet[size]:.1f} ms", flush=True)
                for load in loads:
                    rss.reset()
                    rate = load * cap / size
                    outs, elapsed, sent = asyncio.run(
                        open_loop(server.addr, reqs, rate, args.seconds, args.deadline, seed=int(load * 10) + size)
                    )
                    row = LoadRow(f"{load:g}×", size, load * cap, sent, outs, elapsed, rss.peak, args.deadline)
                    rows.append(row)
                    print(
                        f"  {load:g}×: goodput {row.goodput:.1f} images/s ({row.goodput / cap:.0%}), refused "
                        f"{row.share('RESOURCE_EXHAUSTED'):.0%}, deadline {row.share('DEADLINE_EXCEEDED'):.0%}",
                        flush=True,
                    )
                    time.sleep(1.0)
            lines += render_load(rows, quiet, args)
            lines += costly_section(server, photos, args)
        finally:
            rss.stop()
            server.stop()
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        write_section(args.out, args.section, text)
    return 0


def render_load(rows: Sequence[LoadRow], quiet: dict[int, float], args: argparse.Namespace) -> list[str]:
    out = [
        "| photos/call | load | offered images/s | calls sent/s | goodput images/s | goodput ÷ capacity | OK calls | "
        "RESOURCE_EXHAUSTED | DEADLINE_EXCEEDED | refusal p50 / p99 ms | accepted p50 / p99 ms | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    cap = {r.size: r.offered_ips for r in rows if r.label.startswith("capacity")}
    for r in rows:
        refused = r.latencies("RESOURCE_EXHAUSTED")
        ok = r.latencies("OK")
        out.append(
            f"| {r.size} | {r.label} | {r.offered_ips:.1f} | {r.sent_cps:.1f} | {r.goodput:.1f} | "
            f"{r.goodput / cap[r.size]:.2f} | {len(r.ok())} | {r.share('RESOURCE_EXHAUSTED'):.1%} | "
            f"{r.share('DEADLINE_EXCEEDED'):.1%} | "
            + (f"{pct(refused, 50):.1f} / {pct(refused, 99):.1f}" if refused else "—")
            + f" | {pct(ok, 50):.1f} / {pct(ok, 99):.1f} | {r.peak_rss:.0f} |"
        )
    out += ["", "Quiet p99 (one caller, back to back): "
            + ", ".join(f"{s}-photo calls {q:.1f} ms" for s, q in quiet.items()) + ".", ""]
    return out


def costly_section(server: Server, photos: Sequence[bytes], args: argparse.Namespace) -> list[str]:
    small = requests_of(photos, 1, 100, seed=7)
    png = costly_png(0)
    costly = recognition_pb2.RecognizeRequest(images=[recognition_pb2.ImageInput(content=png)] * 64)
    seconds = max(10.0, args.seconds)
    alone, _ = asyncio.run(costly_run(server.addr, small, None, 0, seconds))
    refused, big_refused = asyncio.run(costly_run(server.addr, small, costly, args.costly_calls, seconds))
    out = [
        f"Costly requests: {args.costly_calls} concurrent callers each sending calls of 64 PNGs of "
        f"6300×6300 = 39.69 MP ({len(png)} bytes each, {64 * len(png)} bytes per call), again and again, while "
        f"one caller sends 1-photo calls back to back for {seconds:g} s.",
        "",
        "| server | 1-photo calls | p50 ms | p99 ms | costly calls answered (codes) |",
        "|---|---|---|---|---|",
        f"| as started | alone: {len(alone)} | {pct(alone, 50):.1f} | {pct(alone, 99):.1f} | — |",
        f"| as started (pixel budget 1000 MP per request) | {len(refused)} | {pct(refused, 50):.1f} | "
        f"{pct(refused, 99):.1f} | {_codes(big_refused)} |",
    ]
    server2 = Server(args.model, Path(tempfile.mkdtemp()) / "data",
                     [*args.server_args.split(), "--max-request-megapixels", "4000"])
    try:
        enrol(server2, args.data)
        admitted, big = asyncio.run(costly_run(server2.addr, small, costly, args.costly_calls, seconds))
    finally:
        server2.stop()
    out.append(f"| `--max-request-megapixels 4000` (costly calls admitted) | {len(admitted)} | "
               f"{pct(admitted, 50):.1f} | {pct(admitted, 99):.1f} | {_codes(big)} |")
    return [*out, ""]


def _codes(outs: Sequence[Outcome]) -> str:
    counts: dict[str, int] = {}
    for o in outs:
        counts[o.code] = counts.get(o.code, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none finished"


if __name__ == "__main__":
    raise SystemExit(main())
