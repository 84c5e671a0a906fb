"""Inference benchmark: decode+preprocess paths, the bare model per batch size, the model behind the batcher.

    python bench/bench_inference.py [--fp32 DIR] [--int8 DIR] [--seconds 8] [--out FILE.md]

Inputs are grocery photos (/work/shared/data/grocery) upscaled to phone sizes and re-encoded as JPEG q90
(1392×1392 ≈ 1.9 MP and 2016×1512 ≈ 3 MP), so decode sees real photo content at 1–3 MP. Prints markdown
tables and writes them, with the machine description, to `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), *(str(ROOT / d) for d in ("proto", "server", "catalog", "export"))]

import onnxruntime as ort  # noqa: E402

from bench.report import write_section  # noqa: E402
from skulens.imaging.preprocess import Preprocessor  # noqa: E402
from skulens.inference.batcher import MicroBatcher  # noqa: E402
from skulens.inference.encoder import OnnxEncoder  # noqa: E402
from skulens.inference.engine import Engine  # noqa: E402
from skulens.inference.options import BatcherOptions, EncoderOptions, EngineOptions  # noqa: E402
from skulens.model.preprocess_config import PreprocessConfig  # noqa: E402

DATA = Path("/work/shared/data/grocery")
MODELS = ROOT / ".cache" / "models"


def machine() -> str:
    """CPU model, logical cores, memory, versions."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{cpu}, {os.cpu_count()} logical cores{mem}, no GPU; Python {platform.python_version()}, "
        f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())}), "
        f"Pillow {Image.__version__}, numpy {np.__version__}"
    )


def jpegs(n: int, size: tuple[int, int]) -> list[bytes]:
    """`n` grocery photos resized to `size` (bicubic) as JPEG q90."""
    paths = sorted((DATA / "train").rglob("*.jpg"))[:: max(1, 2640 // n)][:n]
    out = []
    for p in paths:
        im = Image.open(p).convert("RGB").resize(size, Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def timed(fn: Callable[[], object], seconds: float, min_runs: int = 3) -> list[float]:
    """Run `fn` repeatedly for about `seconds` (at least `min_runs` times); per-run seconds."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def bench_decode(cfg: PreprocessConfig, seconds: float) -> list[str]:
    """ms per image single-threaded, and images/s with a pool of os.cpu_count() threads, per path and size."""
    rows = [
        f"| input | path | ms/image (1 thread, p50) | images/s (pool of {os.cpu_count()} threads) |",
        "|---|---|---|---|",
    ]
    for size in ((1392, 1392), (2016, 1512)):
        blobs = jpegs(16, size)
        for name, pre in (
            ("exact", Preprocessor(cfg, fast=False)),
            ("fast (draft, factor 2)", Preprocessor(cfg, fast=True)),
        ):
            k = iter(range(10**9))
            single = timed(lambda pre=pre, k=k, b=blobs: pre.image_tensor(b[next(k) % len(b)]), seconds / 2)
            with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
                t0 = time.perf_counter()
                n = 0
                while time.perf_counter() - t0 < seconds / 2:
                    list(pool.map(pre.image_tensor, blobs))
                    n += len(blobs)
                rate = n / (time.perf_counter() - t0)
            mp = size[0] * size[1] / 1e6
            rows.append(
                f"| {size[0]}×{size[1]} JPEG ({mp:.1f} MP) | {name} | {1000 * pct(single, 50):.1f} "
                f"| {rate:.0f} |"
            )
            print(rows[-1], flush=True)
    return rows


def bench_bare(
    encoders: dict[str, OnnxEncoder], seconds: float, sizes: tuple[int, ...]
) -> tuple[list[str], dict]:
    """images/s and ms/batch of `encoder.embed_images` per variant and batch size."""
    rows = ["| variant | batch | images/s | ms/batch p50 | ms/batch p95 |", "|---|---|---|---|---|"]
    rates: dict[tuple[str, int], float] = {}
    for variant, enc in encoders.items():
        for b in sizes:
            x = np.random.default_rng(0).standard_normal((b, 3, 224, 224)).astype(np.float32)
            enc.embed_images(x)
            t = timed(lambda x=x, enc=enc: enc.embed_images(x), seconds)
            rates[(variant, b)] = b * len(t) / sum(t)
            rows.append(
                f"| {variant} | {b} | {rates[(variant, b)]:.1f} | {1000 * pct(t, 50):.0f} "
                f"| {1000 * pct(t, 95):.0f} |"
            )
            print(rows[-1], flush=True)
    return rows, rates


async def _callers(
    n_callers: int, seconds: float, submit: Callable[[int], object]
) -> tuple[int, list[float], float]:
    """`n_callers` tasks each submitting one item at a time for `seconds`; (items, latencies, elapsed)."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def caller(k: int) -> None:
        i = k
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await submit(i)  # type: ignore[misc]
            latencies.append(time.perf_counter() - t0)
            i += n_callers

    t0 = time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(n_callers)))
    return len(latencies), latencies, time.perf_counter() - t0


async def bench_batched(
    model_dir: Path,
    enc: OnnxEncoder,
    cfg: PreprocessConfig,
    callers: tuple[int, ...],
    seconds: float,
    opts: BatcherOptions,
    rounds: int = 3,
) -> tuple[list[str], dict]:
    """Model only behind the batcher (callers submit preprocessed tensors), and end to end from JPEG bytes."""
    rows = [
        "| variant | mode | callers | images/s | latency p50 ms | latency p95 ms | mean batch |",
        "|---|---|---|---|---|---|---|",
    ]
    rates: dict[tuple[str, int], float] = {}
    variant = enc.manifest.variant
    pre = Preprocessor(cfg, fast=True)
    blobs = jpegs(16, (1392, 1392))
    tensors = [pre.image_tensor(b) for b in blobs]
    bare_sizes = (1, 8, 16, 32)
    for n in callers:
        batcher = MicroBatcher(enc.embed_images, opts, name="bench")
        await batcher.start()
        submit = batcher.submit

        def one(i: int, submit=submit) -> object:
            return submit(tensors[i % len(tensors)])

        await _callers(min(n, 4), 1.0, one)  # warm
        # Interleave with the bare model at the comparable batch size, so both see the same machine load.
        ref_b = max((s for s in bare_sizes if s <= min(n, opts.max_batch)), default=1)
        x = np.stack([tensors[i % len(tensors)] for i in range(ref_b)])
        items, lat, elapsed, bare_items, bare_elapsed = 0, [], 0.0, 0, 0.0
        before = batcher.stats()
        for _ in range(rounds):
            got, got_lat, got_s = await _callers(n, seconds / rounds, one)
            items, elapsed = items + got, elapsed + got_s
            lat += got_lat
            t = await asyncio.to_thread(timed, lambda x=x: enc.embed_images(x), seconds / rounds, 2)
            bare_items, bare_elapsed = bare_items + ref_b * len(t), bare_elapsed + sum(t)
        after = batcher.stats()
        await batcher.close()
        mean_batch = (after.items - before.items) / max(1, after.batches - before.batches)
        rates[("tensors", n)] = items / elapsed
        rates[("bare", n)] = bare_items / bare_elapsed
        rates[("ref_b", n)] = ref_b
        rows.append(
            f"| {variant} | model behind batcher | {n} | {items / elapsed:.1f} | {1000 * pct(lat, 50):.0f} | "
            f"{1000 * pct(lat, 95):.0f} | {mean_batch:.1f} |"
        )
        print(rows[-1], f"(bare batch {ref_b}: {rates[('bare', n)]:.1f}/s)", flush=True)
    engine_opts = EngineOptions(batcher=opts, encoder=EncoderOptions(warmup=False), fast_decode=True)
    engine = Engine(model_dir, engine_opts, enc, cfg, tokenizer=None)
    for n in callers:
        await _callers(min(n, 4), 1.0, lambda i: engine.embed_images([blobs[i % len(blobs)]]))
        before = engine.stats().image_batcher
        items, lat, elapsed = await _callers(
            n, seconds, lambda i: engine.embed_images([blobs[i % len(blobs)]])
        )
        after = engine.stats().image_batcher
        mean_batch = (after.items - before.items) / max(1, after.batches - before.batches)
        rates[("bytes", n)] = items / elapsed
        rows.append(
            f"| {variant} | end to end, 1392² JPEG, fast decode | {n} | {items / elapsed:.1f} | "
            f"{1000 * pct(lat, 50):.0f} | {1000 * pct(lat, 95):.0f} | {mean_batch:.1f} |"
        )
        print(rows[-1], flush=True)
    await engine.close()
    return rows, rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fp32", type=Path, default=MODELS / "clip-vit-b-32-random-s0-fp32")
    ap.add_argument("--int8", type=Path, default=MODELS / "clip-vit-b-32-random-s0-int8")
    ap.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    ap.add_argument("--callers", nargs="*", type=int, default=[1, 4, 16, 64])
    ap.add_argument("--batched-variants", nargs="*", default=["int8", "fp32"])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "BENCHMARKS.md", help="its section is replaced")
    args = ap.parse_args()
    desc = machine()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    print(desc, "load average", load_before, flush=True)
    cfg = PreprocessConfig.read(args.fp32)
    encoders = {
        "fp32": OnnxEncoder.load(args.fp32, EncoderOptions()),
        "int8": OnnxEncoder.load(args.int8, EncoderOptions()),
    }
    for enc in encoders.values():
        enc.warmup([1, 8])
    decode_rows = bench_decode(cfg, args.seconds)
    bare_rows, _ = bench_bare(encoders, args.seconds, (1, 8, 16, 32))
    opts = BatcherOptions(max_batch=32, max_wait_ms=5.0, max_queue=1024)
    batched_rows: list[str] = []
    ratio_rows = [
        "| variant | callers | mean batch → bare batch | batcher images/s | bare images/s | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for variant in args.batched_variants:
        rows, rates = asyncio.run(
            bench_batched(
                args.fp32 if variant == "fp32" else args.int8,
                encoders[variant],
                cfg,
                tuple(args.callers),
                args.seconds,
                opts,
            )
        )
        batched_rows += rows if not batched_rows else rows[2:]
        for n in args.callers:
            b, ref_b = min(n, opts.max_batch), int(rates[("ref_b", n)])
            ratio = rates[("tensors", n)] / rates[("bare", n)]
            ratio_rows.append(
                f"| {variant} | {n} | {b} → {ref_b} | {rates[('tensors', n)]:.1f} | "
                f"{rates[('bare', n)]:.1f} | {100 * ratio:.0f} % |"
            )
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    text = "\n".join(
        [
            "# Inference benchmarks",
            "",
            f"Machine: {desc}.",
            f"Load average (1/5/15 min) before the run: {' / '.join(load_before)}, after: "
            f"{' / '.join(load_after)} — anything above ~0.1 before means other work shared the "
            f"{os.cpu_count()} cores and the figures are low and noisy.",
            f"Run: `python bench/bench_inference.py` ({args.seconds:g} s per measurement), "
            f"{time.strftime('%Y-%m-%d')}. Models: ViT-B-32 random weights (seed 0) exported by "
            "`skulens.export.clip` (fp32 and int8 dynamic quantisation). fp16 is a GPU variant: not measured on this "
            "CPU-only machine.",
            "",
            "## Decode + preprocess (JPEG → float32 [3, 224, 224])",
            "",
            "Grocery photos upscaled to the size shown and re-encoded as JPEG q90.",
            "",
            *decode_rows,
            "",
            "## Bare model (`OnnxEncoder.embed_images`, one call per batch)",
            "",
            *bare_rows,
            "",
            f"## Behind the micro-batcher (max_batch {opts.max_batch}, max_wait_ms {opts.max_wait_ms:g})",
            "",
            'Each caller submits one image at a time and waits for it. "model behind batcher": callers',
            'submit preprocessed tensors; "end to end": callers submit JPEG bytes to `Engine.embed_images`',
            "(decode and preprocess in the engine's thread pool, on the same cores as the model).",
            "",
            *batched_rows,
            "",
            "### Batcher vs bare model",
            "",
            "Batcher throughput with tensors against the bare model at the largest measured batch size not",
            "above the callers' batch (one in-flight item per caller), measured in alternating rounds",
            "(3 × each) so that both see the same machine load.",
            "",
            *ratio_rows,
            "",
        ]
    )
    print("\n" + text)
    write_section(args.out, "inference", text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
