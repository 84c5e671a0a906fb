"""Recognition quality through the gRPC API on the Grocery Store dataset, one column per server variant.

For each variant (a named list of `skulens serve` flags: "nn", plain nearest neighbour (`--matching nearest`);
"centroid", products scored by the centroid of their references; "head", centroid + the catalog-adapted ridge head;
"adapted", the server's defaults: the head plus background augmented views of small products) a server is started
on a fresh catalog, and three catalogs are enrolled in turn (product id =
fine class id, category = coarse class, label group = Fruit / Vegetables / Packages):

1. "train": every train photo as a reference; the val photos are evaluated with `Evaluate` (top-1, top-5,
   overall and per group);
2. "packshots": one iconic packshot per product; the same evaluation;
3. "open set": the train photos of the products with an even class id only; every val photo is evaluated, those
   of odd products being labelled with ids the catalog does not hold (so: out of the catalog). AUROC of the best
   score (in- against out-of-catalog) and "accepted and correct at 5 % false accepts" (share of in-catalog photos
   answered with the right product at the lowest unknown threshold that accepts at most 5 % of the others).

Enrolment and evaluation images/s are measured in the same run, so a variant that costs speed shows it. A later
improvement (a per-catalog linear head, augmentation) becomes one more entry of VARIANTS (or `--variant
NAME='FLAGS'`), hence one more column.

Usage:
    python bench/bench_quality.py --model .cache/models/efficientnet-lite0-fp32 --data /work/shared/data/grocery \
        --out docs/BENCHMARKS.md
    python bench/bench_quality.py --variant nn --variant 'wide=--default-top-k 10'
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), *(str(REPO / d) for d in ("proto", "server", "catalog", "export"))]

from bench.bench_recognition import Dataset, Photo, Server, _by_class, load_dataset, plans  # noqa: E402
from bench.report import write_section  # noqa: E402
from skulens.client.client import SkulensClient  # noqa: E402
from skulens.client.enroll import enroll  # noqa: E402
from skulens.client.evaluate import LabelledPhoto, evaluate_photos  # noqa: E402
from skulens.v1 import recognition_pb2  # noqa: E402

#: Server variants, one column each: name → `skulens serve` flags. Plain nearest neighbour is the server as it is.
VARIANTS: dict[str, tuple[str, ...]] = {
    "nn": ("--matching", "nearest"),
    "centroid": ("--head-weight", "0", "--no-augment-references"),
    "head": ("--no-augment-references",),
    "adapted": (),
    "adapted+mirror": ("--query-mirror",),
}
GROUPS = ("Fruit", "Vegetables", "Packages")
TARGET_FALSE_ACCEPT = 0.05


@dataclass
class RunResult:
    """One (variant, catalog) run."""

    references: int
    enroll_s: float
    evaluate_s: float
    queries: int
    report: recognition_pb2.EvaluationReport
    augment_s: float = 0.0  # waiting for the background augmented views after enrolment
    augmented: int = 0  # references with augmented views

    @property
    def enroll_ips(self) -> float:
        return self.references / self.enroll_s

    @property
    def evaluate_ips(self) -> float:
        return self.queries / self.evaluate_s


@dataclass
class VariantResult:
    name: str
    flags: tuple[str, ...]
    runs: dict[str, RunResult] = field(default_factory=dict)


def labelled(ds: Dataset, photos: Sequence[Photo]) -> list[LabelledPhoto]:
    """Val photos labelled with their fine class id, grouped by Fruit / Vegetables / Packages."""
    return [LabelledPhoto(p.path, str(p.fine), ds.group_of[p.fine]) for p in photos]


def run_catalog(c: SkulensClient, ds: Dataset, refs: dict[int, list[Path]]) -> RunResult:
    """Replace the catalog with `refs`, then evaluate every val photo through `Evaluate`."""
    for p in c.list_products():
        c.delete_product(p.product_id)
    t0 = time.perf_counter()
    report = enroll(c, plans(ds, refs), batch=512)
    enroll_s = time.perf_counter() - t0
    if report.failed:
        raise RuntimeError(f"enrolment failed: {report.errors[:5]}")
    t0 = time.perf_counter()
    while (st := c.stats()).augmentation_pending:  # adapted matching: background views of small products
        if time.perf_counter() - t0 > 1800:
            raise RuntimeError(f"augmented views still pending after 30 min: {st.augmentation_pending}")
        time.sleep(0.5)
    augment_s = time.perf_counter() - t0
    options = recognition_pb2.EvaluateOptions(target_false_accept=TARGET_FALSE_ACCEPT)
    t0 = time.perf_counter()
    resp = evaluate_photos(c, labelled(ds, ds.val), options, per_message=32, timeout=3600)
    evaluate_s = time.perf_counter() - t0
    if resp.report.failed:
        raise RuntimeError(f"{resp.report.failed} val photos failed: {resp.report.failures[:3]}")
    return RunResult(sum(len(v) for v in refs.values()), enroll_s, evaluate_s, len(ds.val), resp.report,
                     augment_s, st.augmented_references)


def run_variant(name: str, flags: tuple[str, ...], args: argparse.Namespace, ds: Dataset) -> VariantResult:
    train = _by_class(ds.train)
    catalogs = {
        "train": train,
        "packshots": {f: [p] for f, p in ds.iconic.items()},
        "open set": {f: paths for f, paths in train.items() if f % 2 == 0},
    }
    out = VariantResult(name, flags)
    with tempfile.TemporaryDirectory(prefix="skulens-quality-") as tmp:
        server = Server(args.model, Path(tmp) / "catalog", flags)
        try:
            with server.client() as c:
                for label, refs in catalogs.items():
                    print(f"== {name}: {label} ({sum(len(v) for v in refs.values())} references)", flush=True)
                    r = out.runs[label] = run_catalog(c, ds, refs)
                    rep = r.report
                    auroc = rep.auroc if rep.HasField("auroc") else float("nan")
                    at5 = rep.accepted_correct_at_target if rep.HasField("accepted_correct_at_target") else float("nan")
                    print(
                        f"   top-1 {100 * rep.overall.top1:.1f} top-5 {100 * rep.overall.top5:.1f} AUROC {auroc:.3f} "
                        f"accepted-and-correct at 5 % FA {100 * at5:.1f}; enrol {r.enroll_ips:.1f} img/s, evaluate "
                        f"{r.evaluate_ips:.1f} img/s",
                        flush=True,
                    )
        finally:
            server.stop()
    return out


# ------------------------------------------------------------------------------------------------ report
def _group(rep: recognition_pb2.EvaluationReport, group: str) -> str:
    for g in rep.groups:
        if g.group == group:
            return f"{100 * g.accuracy.top1:.1f} / {100 * g.accuracy.top5:.1f}"
    return "n/a"


def rows(results: Sequence[VariantResult]) -> list[tuple[str, list[str]]]:
    """(figure, one cell per variant) for the side-by-side table."""
    out: list[tuple[str, list[str]]] = []

    def add(label: str, cell: Callable[[VariantResult], str]) -> None:
        out.append((label, [cell(v) for v in results]))

    for cat in ("train", "packshots"):
        add(f"{cat}: top-1 %", lambda v, c=cat: f"{100 * v.runs[c].report.overall.top1:.1f}")
        add(f"{cat}: top-5 %", lambda v, c=cat: f"{100 * v.runs[c].report.overall.top5:.1f}")
        for g in GROUPS:
            add(f"{cat}: {g} top-1 / top-5 %", lambda v, c=cat, g=g: _group(v.runs[c].report, g))
    add("open set: AUROC (best score, in- vs out-of-catalog)", lambda v: f"{v.runs['open set'].report.auroc:.3f}")
    add(
        "open set: accepted and correct at 5 % false accepts, %",
        lambda v: f"{100 * v.runs['open set'].report.accepted_correct_at_target:.1f}",
    )
    add(
        "open set: unknown threshold for 5 % false accepts",
        lambda v: f"{v.runs['open set'].report.operating_point.unknown_threshold:.3f}",
    )
    add("open set: top-1 % over the in-catalog photos", lambda v: f"{100 * v.runs['open set'].report.overall.top1:.1f}")
    for cat in ("train", "packshots", "open set"):
        add(f"{cat}: enrolment images/s", lambda v, c=cat: f"{v.runs[c].enroll_ips:.1f}")
        add(f"{cat}: Evaluate images/s (val photos)", lambda v, c=cat: f"{v.runs[c].evaluate_ips:.1f}")
        add(f"{cat}: background augmented views: references / s waited",
            lambda v, c=cat: f"{v.runs[c].augmented} / {v.runs[c].augment_s:.1f}")
    return out


def verdict_lines(results: Sequence[VariantResult]) -> list[str]:
    """The verdicts the server gave with its default thresholds, per variant and catalog."""
    lines = [
        "| variant | catalog | KNOWN right / wrong / not in catalog | UNKNOWN | AMBIGUOUS | thresholds |",
        "|---|---|---|---|---|---|",
    ]
    for v in results:
        for cat, r in v.runs.items():
            cells = [f"{x.right} / {x.wrong} / {x.out_of_catalog}" for x in r.report.verdicts]
            t = r.report.thresholds
            lines.append(
                f"| {v.name} | {cat} | {' | '.join(cells)} | unknown {t.unknown_threshold:.2f}, "
                f"margin {t.ambiguity_margin:.3f} |"
            )
    return lines


def write_report(out: Path, args: argparse.Namespace, ds: Dataset, results: Sequence[VariantResult]) -> str:
    import onnxruntime

    from skulens.model.manifest import load_manifest

    m = load_manifest(args.model)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    variants = "; ".join(f"`{v.name}` = `skulens serve` defaults {' '.join(v.flags)}".rstrip() for v in results)
    table = rows(results)
    val_classes = {p.fine for p in ds.val}
    n_even = len({f for f in val_classes if f % 2 == 0})
    opened = results[0].runs["open set"].report
    pre = json.loads((args.model / "preprocess.json").read_text())
    preprocess = (
        f"{pre.get('resize_mode', '?')}-side resize to {pre.get('size')}, {pre.get('interpolation', 'bilinear')}, "
        f"crop fraction {pre.get('crop_fraction', 1.0)}"
    )
    lines = [
        "# Recognition quality through the gRPC API (Grocery Store dataset)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `python bench/bench_quality.py --model {args.model} --data "
        f"{args.data}` on {os.cpu_count()} CPU cores ({cpu}), no GPU, ONNX Runtime {onnxruntime.__version__}, "
        f"Python {platform.python_version()}. Model: `{m.model_name}` ({m.variant}, {m.embedding_dim}-d, real "
        f"ImageNet weights), fingerprint `{m.fingerprint}`, preprocessing: {preprocess}. Variants (columns): "
        f"{variants}. Load average at the end: {os.getloadavg()[0]:.1f} (other jobs shared the cores: images/s are "
        "noisy, compare them only within one run).",
        "",
        f"Queries: the {len(ds.val)} val photos, sent through `Evaluate` (labelled with their fine class id; "
        "product id = fine class id, 81 products). Catalogs: *train* = all "
        f"{len(ds.train)} train photos as references; *packshots* = one iconic packshot per product; *open set* = "
        f"the train photos of the products with an even class id only; all val photos are queries ({opened.in_catalog} "
        f"photos of {n_even} even products in the catalog, {opened.out_of_catalog} of {len(val_classes) - n_even} odd "
        "ones count as not in the catalog). *Accepted and correct at 5 % "
        "false accepts*: share of the in-catalog photos answered with the right product when the unknown threshold "
        "is the lowest that accepts at most 5 % of the out-of-catalog photos. Images/s: enrolment through "
        "`AddReferenceImages` (skulens enroll) and evaluation through `Evaluate` (32 photos a message), in this run.",
        "",
        "| figure | " + " | ".join(v.name for v in results) + " |",
        "|---|" + "---:|" * len(results),
        *(f"| {label} | " + " | ".join(cells) + " |" for label, cells in table),
        "",
        "Verdicts the server gave with its default thresholds (right / wrong product / photo of a product outside "
        "the catalog):",
        "",
        *verdict_lines(results),
        "",
    ]
    text = "\n".join(lines)
    write_section(out, "quality", text)
    return text


def parse_variants(given: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """`--variant NAME` (one of VARIANTS) or `--variant NAME=FLAGS`; none given: every registered variant."""
    if not given:
        return dict(VARIANTS)
    out: dict[str, tuple[str, ...]] = {}
    for item in given:
        name, sep, flags = item.partition("=")
        if sep:
            out[name] = tuple(flags.split())
        elif name in VARIANTS:
            out[name] = VARIANTS[name]
        else:
            raise SystemExit(f"unknown variant {name!r}: one of {sorted(VARIANTS)}, or NAME='serve flags'")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=REPO / ".cache" / "models" / "efficientnet-lite0-fp32")
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/grocery"))
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "BENCHMARKS.md", help="its section is replaced")
    ap.add_argument("--variant", action="append", default=[], help="NAME or NAME='serve flags' (repeatable)")
    args = ap.parse_args(argv)
    ds = load_dataset(args.data)
    results = [run_variant(name, flags, args, ds) for name, flags in parse_variants(args.variant).items()]
    print(write_report(args.out, args, ds, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
