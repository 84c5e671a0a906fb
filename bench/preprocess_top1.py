"""Top-1 on the grocery val split with a model's own preprocessing vs the one it replaced (issue 13, part 1).

    python bench/preprocess_top1.py [--model .cache/models/efficientnet-lite0-fp32] [--out FILE.md]

"before": the model's `preprocess.json` with `crop_fraction` 1 and bilinear resizing (what the EfficientNet-Lite0
export wrote until its reference transform could be expressed: shortest side to 224, centre crop 224);
"after": the model's `preprocess.json` as exported now (EfficientNet-Lite0: the centre 224/256, bicubic).
For each, every photo is embedded by the exported ONNX model through the server's own `Preprocessor` (exact path;
the photos are 348 px, too small for the fast JPEG path to change anything) and ranked offline exactly as the
server ranks (`bench_recognition.offline_rank`: a product scores its best reference). References: the train photos
(2,640) or the one iconic packshot per product (81); queries: the 296 val photos. `--ablation` adds each change
alone, and the same crop in TensorFlow's order (Google's EfficientNet evaluation: cut the centre int(f × shortest
side) square out of the photo, then resize it bicubic to 224), which the server does not implement.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), *(str(ROOT / d) for d in ("proto", "server", "catalog", "export"))]

from bench.bench_recognition import Dataset, _by_class, breakdown, load_dataset, offline_rank, score  # noqa: E402
from bench.report import write_section  # noqa: E402
from skulens.imaging.preprocess import Preprocessor  # noqa: E402
from skulens.inference.encoder import OnnxEncoder  # noqa: E402
from skulens.model.preprocess_config import PreprocessConfig  # noqa: E402

DATA = Path("/work/shared/data/grocery")
GROUPS = ("Fruit", "Vegetables", "Packages")


Transform = Callable[[bytes], np.ndarray]


def crop_then_resize(cfg: PreprocessConfig) -> Transform:
    """TensorFlow's order: the centre int(crop_fraction × shortest side) square, then bicubic to `cfg.size`."""
    pre = Preprocessor(cfg, fast=False)

    def run(data: bytes) -> np.ndarray:
        img = pre.decode(data).image
        c = int(cfg.crop_fraction * min(img.size))
        left, top = (img.width - c + 1) // 2, (img.height - c + 1) // 2
        square = img.crop((left, top, left + c, top + c))
        return pre.normalise(square.resize((cfg.size[1], cfg.size[0]), Image.Resampling.BICUBIC))

    return run


def embed(
    enc: OnnxEncoder, transform: Transform, paths: Sequence[Path], pool: ThreadPoolExecutor
) -> np.ndarray:
    """Unit-norm embeddings of the files at `paths`, 32 at a time."""
    out = []
    for i in range(0, len(paths), 32):
        blobs = [p.read_bytes() for p in paths[i : i + 32]]
        out.append(enc.embed_images(np.stack(list(pool.map(transform, blobs)))))
    return np.concatenate(out)


def evaluate(enc: OnnxEncoder, pre: Transform, ds: Dataset, pool: ThreadPoolExecutor) -> list[list[str]]:
    """Table cells per reference set: top-1, top-5 and top-1 per group."""
    queries = embed(enc, pre, [p.path for p in ds.val], pool)
    truth = [p.fine for p in ds.val]
    rows = []
    for refs_name, refs in (
        ("train photos", _by_class(ds.train)),
        ("iconic packshots", {f: [p] for f, p in ds.iconic.items()}),
    ):
        paths = [p for f in sorted(refs) for p in refs[f]]
        labels = np.asarray([f for f in sorted(refs) for _ in refs[f]])
        ranked = offline_rank(queries, embed(enc, pre, paths, pool), labels)
        s = score(ranked, truth)
        groups = breakdown(ranked, ds.val, lambda p: ds.group_of[p.fine])
        rows.append(
            [
                refs_name,
                str(len(paths)),
                f"{s.top1:.1f}",
                f"{s.top5:.1f}",
                *(f"{groups[g].top1:.1f}" for g in GROUPS),
            ]
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / ".cache" / "models" / "efficientnet-lite0-fp32")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--ablation", action="store_true", help="also each change alone (interpolation, crop)")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "BENCHMARKS.md", help="its section is replaced"
    )
    args = ap.parse_args()
    ds = load_dataset(args.data)
    enc = OnnxEncoder.load(args.model)
    after = PreprocessConfig.read(args.model)
    before = dataclasses.replace(after, crop_fraction=1.0, interpolation="bilinear")
    configs: list[tuple[str, Transform]] = [("before", Preprocessor(before).image_tensor)]
    if args.ablation:  # each change alone
        configs += [
            (
                f"{after.interpolation} only",
                Preprocessor(dataclasses.replace(after, crop_fraction=1.0)).image_tensor,
            ),
            (
                f"crop {after.crop_fraction:.4g} only",
                Preprocessor(dataclasses.replace(after, interpolation="bilinear")).image_tensor,
            ),
        ]
    configs.append(("after", Preprocessor(after).image_tensor))
    if args.ablation and after.crop_fraction < 1.0:
        configs.append(("after, crop then resize (TF order; not served)", crop_then_resize(after)))
    lines = [
        "# Preprocessing fidelity: top-1 before / after",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `python bench/preprocess_top1.py {' '.join(sys.argv[1:])}` on the "
        f"grocery val split ({len(ds.val)} photos; product = fine class). Embeddings from the exported ONNX model "
        "through the server's `Preprocessor`, ranked as the server ranks (a product scores its best reference).",
        "before: shortest side to 224 (bilinear), centre crop 224; after: the model's `preprocess.json` "
        f"(crop fraction {after.crop_fraction:.4g} → resize to {after.resize_size[0]}, {after.interpolation}, "
        "crop 224).",
        "",
        "| preprocessing | references | n refs | top-1 % | top-5 % | Fruit top-1 | Vegetables top-1 | Packages top-1 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    with ThreadPoolExecutor() as pool:
        for name, transform in configs:
            t0 = time.perf_counter()
            for cells in evaluate(enc, transform, ds, pool):
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
                print(lines[-1], f"({time.perf_counter() - t0:.0f} s)", flush=True)
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    write_section(args.out, "preprocess-top1", text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
