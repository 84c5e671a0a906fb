"""Cosine between fast-path (JPEG draft) and exact-path embeddings over the grocery photos.

    python bench/fastpath_cosine.py [--models DIR ...] [--every N] [--upscale 4] [--factors 2 1]

The models default to the fp32 exports of bench/bench_backbones.py (run it first): CLIP ViT-B/32 and RN50, DINOv2
ViT-S/14 and ViT-B/14, EfficientNet-Lite0 — each with its own `preprocess.json` (crop fraction, interpolation).
For every photo (train + val of /work/shared/data/grocery, every N-th when `--every` > 1) it embeds the exact
path and the fast path at each draft factor and reports min / mean / p01 cosine per model. The photos are
348×348 (a few 348×464), so at native size the draft never engages for a 224 input (halving needs a shortest
side ≥ factor × 224 × 2). Two larger sets are therefore measured too:
- "upscaled ×k": each photo resized ×k (bicubic) and re-encoded JPEG q90 — phone-sized, but smooth;
- "mosaic m×m": m×m consecutive photos tiled into one JPEG q90 (all photos, not every N-th) — full camera
  detail at every pixel, like a shelf shot.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), *(str(ROOT / d) for d in ("proto", "server", "catalog", "export"))]

from bench.report import write_section  # noqa: E402
from skulens.imaging.preprocess import Preprocessor  # noqa: E402
from skulens.inference.encoder import OnnxEncoder  # noqa: E402
from skulens.model.preprocess_config import PreprocessConfig  # noqa: E402

DATA = Path("/work/shared/data/grocery")
DEFAULT_MODELS = [
    ROOT / ".cache" / "bench-backbones" / f"{name}-fp32"
    for name in ("ViT-B-32", "RN50", "dinov2-vits14", "dinov2-vitb14", "efficientnet-lite0")
]
# The fast path is the server's default only while every model's minimum cosine at the default factor stays above this.
GATE_MIN_COSINE = 0.995
DEFAULT_FACTOR = 2.0


def photo_paths(every: int) -> list[Path]:
    """Train + val photos listed in train.txt / val.txt, every `every`-th."""
    paths: list[Path] = []
    for split in ("train.txt", "val.txt"):
        for line in (DATA / split).read_text().splitlines():
            if line.strip():
                paths.append(DATA / line.split(",")[0].strip())
    return paths[::every]


def upscaled_jpeg(path: Path, factor: int) -> bytes:
    """The photo resized ×factor (bicubic) and re-encoded as JPEG q90, like a phone-sized upload."""
    im = Image.open(path).convert("RGB")
    if factor > 1:
        im = im.resize((im.width * factor, im.height * factor), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def mosaic_jpeg(paths: list[Path], m: int, tile: int = 348) -> bytes:
    """`m`×`m` photos (centre-cropped to `tile`²) tiled into one JPEG q90."""
    canvas = Image.new("RGB", (m * tile, m * tile))
    for k, path in enumerate(paths[: m * m]):
        im = Image.open(path).convert("RGB")
        left, top = (im.width - tile) // 2, (im.height - tile) // 2
        canvas.paste(im.crop((left, top, left + tile, top + tile)), ((k % m) * tile, (k // m) * tile))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of unit vectors (renormalised to be safe)."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def measure(
    model_dir: Path, blobs: list[bytes], factors: list[float], batch: int, pool: ThreadPoolExecutor
) -> dict:
    """{label: cosines} for each draft factor against the exact path, plus how many photos were drafted."""
    enc = OnnxEncoder.load(model_dir)
    cfg = PreprocessConfig.read(model_dir)
    exact = Preprocessor(cfg, fast=False)
    fast = {f: Preprocessor(cfg, fast=True, draft_factor=f) for f in factors}
    out: dict = {f: [] for f in factors}
    drafted = dict.fromkeys(factors, 0)
    for start in range(0, len(blobs), batch):
        chunk = blobs[start : start + batch]
        ref_px = np.stack(list(pool.map(exact.image_tensor, chunk)))
        ref = enc.embed_images(ref_px)
        for f in factors:
            px = np.stack(list(pool.map(fast[f].image_tensor, chunk)))
            drafted[f] += sum(fast[f].decode(b).draft_scale > 1 for b in chunk)
            same = np.all(px == ref_px, axis=(1, 2, 3))
            cos = np.ones(len(chunk))
            if not same.all():
                cos[~same] = cosines(enc.embed_images(px[~same]), ref[~same])
            out[f].append(cos)
    return {f: (np.concatenate(v), drafted[f]) for f, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", type=Path, default=DEFAULT_MODELS)
    ap.add_argument("--every", type=int, default=1, help="use every N-th photo")
    ap.add_argument("--upscale", type=int, default=4)
    ap.add_argument("--factors", nargs="*", type=float, default=[2.0, 1.0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--mosaic", type=int, default=3, help="tile m×m photos (0: skip this set)")
    ap.add_argument("--native", action="store_true", help="also measure the photos at native size")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "BENCHMARKS.md", help="its section is replaced")
    args = ap.parse_args()
    paths = photo_paths(args.every)
    everything = photo_paths(1)
    m = args.mosaic
    groups = [everything[i : i + m * m] for i in range(0, len(everything) - m * m + 1, m * m)] if m else []
    rows = []
    with ThreadPoolExecutor() as pool:
        sets = [(f"upscaled ×{args.upscale}", args.upscale)] if args.upscale else []
        sets += [(f"mosaic {m}×{m}", -1)] if m else []
        sets += [("native", 1)] if args.native else []
        for set_name, up in sets:
            t0 = time.perf_counter()
            if up == -1:
                blobs = list(pool.map(lambda g: mosaic_jpeg(g, m), groups))
            else:
                blobs = list(pool.map(lambda p, up=up: upscaled_jpeg(p, up), paths))
            size = Image.open(io.BytesIO(blobs[0])).size
            print(
                f"{set_name}: {len(blobs)} photos (e.g. {size[0]}x{size[1]}), prepared in "
                f"{time.perf_counter() - t0:.0f} s",
                flush=True,
            )
            for model_dir in args.models:
                t0 = time.perf_counter()
                res = measure(model_dir, blobs, args.factors, args.batch, pool)
                for f, (cos, drafted) in res.items():
                    row = (
                        model_dir.name,
                        set_name,
                        f,
                        len(cos),
                        drafted,
                        float(cos.min()),
                        float(cos.mean()),
                        float(np.percentile(cos, 1)),
                    )
                    rows.append(row)
                    print(
                        f"  {model_dir.name} factor {f}: n={len(cos)} drafted={drafted} min={row[5]:.5f} "
                        f"mean={row[6]:.6f} p01={row[7]:.5f} ({time.perf_counter() - t0:.0f} s)",
                        flush=True,
                    )
    cmd = " ".join(["python bench/fastpath_cosine.py", *sys.argv[1:]])
    lines = [
        "# Fast JPEG decode path vs exact preprocessing",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `{cmd}` over the grocery photos (train + val). Cosine between",
        "the embedding of the fast path (JPEG `draft()` at reduced scale, keeping the shortest side ≥ factor × the",
        "model's resize size, then the exact resize) and the exact path (full decode, the model's own transform from",
        "its `preprocess.json`). `drafted`: photos where the draft actually engaged.",
        "",
        "| model | photos | draft factor | n | drafted | min cosine | mean cosine | 1st percentile |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]} | {r[2]:g} | {r[3]} | {r[4]} | {r[5]:.5f} | {r[6]:.6f} | {r[7]:.5f} |")
    at_default = [r for r in rows if r[2] == DEFAULT_FACTOR]
    worst = {
        name: min(r[5] for r in at_default if r[0] == name)
        for name in dict.fromkeys(r[0] for r in at_default)
    }
    gate = all(v >= GATE_MIN_COSINE for v in worst.values())
    lines += [
        "",
        f"Gate: the fast path (factor {DEFAULT_FACTOR:g}) stays the server's default only while every model's minimum "
        f"cosine is ≥ {GATE_MIN_COSINE}: "
        + ", ".join(f"{name} {v:.5f}" for name, v in worst.items())
        + (
            " — **passed**." if gate else " — **failed**: serve the failing model with `--fast-decode false`."
        ),
    ]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    write_section(args.out, "fastpath", text)


if __name__ == "__main__":
    main()
