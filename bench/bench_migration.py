"""Zero-downtime model migration: back-fill speed, and what it costs live recognition, in one run.

One `skulens serve` process (embedded catalog) serving `--model`, with `--refs` grocery train photos enrolled.
Then, in one run on one machine:
1. idle: closed-loop Recognize load (`--clients` threads, 1-image calls, grocery val photos) for `--seconds`;
2. `skulens migrate start --candidate` (shadow share 0) and the same load for `--seconds` while the back-fill runs:
   recognition images/s and latency, and back-fill images/s (embedded references over the window);
3. the load stops: back-fill images/s alone, until it is done (or `--seconds`);
4. switch, then the same load on the new model (its own speed, for reference).

    python bench/bench_migration.py --model .cache/models/efficientnet-lite0-fp32 \\
        --candidate .cache/models/clip-vit-b-32-random-s0-int8 --out docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_REPO), *(str(_REPO / d) for d in ("proto", "server", "catalog", "export"))]

from bench.bench_catalog import machine  # noqa: E402
from bench.bench_recognition import Server, SpeedRow, load_dataset, load_test  # noqa: E402
from bench.report import write_section  # noqa: E402
from skulens.v1 import catalog_pb2  # noqa: E402


@dataclass
class Phase:
    name: str
    load: SpeedRow | None
    backfilled: int
    seconds: float

    @property
    def backfill_rate(self) -> float:
        return self.backfilled / self.seconds if self.seconds else 0.0


def enrol(server: Server, photos: Sequence[tuple[int, Path]]) -> int:
    with server.client() as c:
        by_product: dict[int, list[Path]] = {}
        for fine, path in photos:
            by_product.setdefault(fine, []).append(path)
        for fine, paths in sorted(by_product.items()):
            c.upsert_product(str(fine))
            c.add_references(
                catalog_pb2.AddReferenceImagesRequest(product_id=str(fine), content=p.read_bytes()) for p in paths
            )
        return int(c.get_migration().serving.dim)


def embedded(server: Server) -> int:
    with server.client() as c:
        return int(c.get_migration().backfill.embedded)


def run(args: argparse.Namespace) -> tuple[list[Phase], dict[str, float]]:
    ds = load_dataset(args.data)
    step = max(1, len(ds.train) // args.refs)
    refs = [(p.fine, p.path) for p in ds.train[::step][: args.refs]]
    payloads = [p.path.read_bytes() for p in ds.val]
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="bench-migration-") as tmp:
        server = Server(args.model, Path(tmp) / "catalog", [
            "--migration-poll-seconds", "0.2", "--backfill-batch", str(args.backfill_batch)])
        try:
            enrol(server, refs)
            idle = load_test(server, payloads, args.clients, 1, args.seconds)
            phases.append(Phase("idle (no migration)", idle, 0, args.seconds))
            with server.client() as c:
                status = c.start_migration(str(args.candidate.resolve()), shadow_share=0.0)
            candidate = status.candidate.fingerprint
            e0 = embedded(server)
            t0 = time.perf_counter()
            busy = load_test(server, payloads, args.clients, 1, args.seconds)
            e1, t1 = embedded(server), time.perf_counter()
            phases.append(Phase("during back-fill", busy, e1 - e0, t1 - t0))
            while True:  # the load stopped: back-fill alone
                time.sleep(0.5)
                e2, t2 = embedded(server), time.perf_counter()
                with server.client() as c:
                    pending = c.get_migration().backfill.pending
                if pending == 0 or t2 - t1 >= args.seconds:
                    break
            phases.append(Phase("back-fill alone", None, e2 - e1, t2 - t1))
            with server.client() as c:
                while c.get_migration().backfill.pending:
                    time.sleep(0.5)
                total_backfill = time.perf_counter() - t0
                switch0 = time.perf_counter()
                c.switch_model(candidate)
                switch_ms = (time.perf_counter() - switch0) * 1000
            after = load_test(server, payloads, args.clients, 1, args.seconds)
            phases.append(Phase("after switch (candidate serving)", after, 0, args.seconds))
            info = {"references": len(refs), "switch_ms": switch_ms, "total_backfill_s": total_backfill}
        finally:
            server.stop()
    return phases, info


def report(args: argparse.Namespace, phases: list[Phase], info: dict[str, float]) -> str:
    idle = phases[0].load
    assert idle is not None
    lines = [
        "# Model migration: back-fill speed and live recognition during it",
        "",
        f"`python bench/bench_migration.py --model {args.model} --candidate {args.candidate} --refs {args.refs} "
        f"--clients {args.clients} --seconds {args.seconds} --backfill-batch {args.backfill_batch}` — {machine()}, "
        f"{time.strftime('%Y-%m-%d')}. One `skulens serve` process (embedded catalog, {info['references']} grocery "
        "train photos enrolled); the load generator (closed loop, 1-image Recognize calls on grocery val photos) "
        "runs on the same cores, so compare the rows with each other, not with other runs.",
        "",
        "| phase | recognition images/s | vs idle | p50 ms | p95 ms | back-fill images/s |",
        "|---|---|---|---|---|---|",
    ]
    for ph in phases:
        if ph.load is None:
            lines.append(f"| {ph.name} | – | – | – | – | {ph.backfill_rate:.1f} |")
            continue
        r = ph.load
        bf = f"{ph.backfill_rate:.1f}" if ph.backfilled else "–"
        lines.append(f"| {ph.name} | {r.images_per_s:.1f} | {r.images_per_s / idle.images_per_s:.2f} | "
                     f"{r.pct(50):.1f} | {r.pct(95):.1f} | {bf} |")
    lines += ["", f"Back-fill of all {info['references']} references took {info['total_backfill_s']:.1f} s from "
              f"`migrate start`; `migrate switch` answered in {info['switch_ms']:.0f} ms (index rebuilt from the "
              "candidate's vectors, one SQLite transaction)."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="the serving model directory")
    ap.add_argument("--candidate", type=Path, required=True, help="the model to migrate to")
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/grocery"))
    ap.add_argument("--refs", type=int, default=600, help="train photos enrolled as references")
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--backfill-batch", type=int, default=32)
    ap.add_argument("--out", type=Path, help="write the table into this markdown file (section 'migration')")
    args = ap.parse_args(argv)
    phases, info = run(args)
    text = report(args, phases, info)
    print(text)
    if args.out:
        write_section(args.out, "migration", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
