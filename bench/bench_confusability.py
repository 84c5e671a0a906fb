"""Enrolment warnings and `skulens catalog doctor` on the Grocery Store dataset, through the gRPC API.

1. Thresholds (offline, the model in-process): every train photo and three copies of it — JPEG re-encoded at
   quality 60, halved in size, 5 % cropped off each side — are embedded; the cosine of each photo with its copies
   ("same photo") is set against its nearest photo of another product, and against its nearest other photo of
   its own product. The near-duplicate threshold belongs between "nearest photo of another product" and "the same
   photo re-encoded". The luminance spread (`skulens.imaging.quality`, measured where the server measures it) of
   every real photo (train, val, packshots) is set against blank pictures, for the "nearly blank" threshold.
2. Cost: `skulens serve` on a fresh catalog, every train photo enrolled with the `skulens enroll` client code, the
   warnings off (`--no-enrolment-warnings`) and on, alternating (off, on, off, on) so machine noise hits both:
   enrolment images/s of each. Then the check alone (`check_batch`, batches of 32 against the full catalog).
3. Findings: the warnings of the first "on" run by kind (and the first few), then `catalog doctor` on that
   catalog: summary and the top look-alike pairs.

Usage:
    python bench/bench_confusability.py --model .cache/models/efficientnet-lite0-fp32 \
        --data /work/shared/data/grocery --out docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), *(str(REPO / d) for d in ("proto", "server", "catalog", "export"))]

from bench.bench_recognition import Dataset, Server, _by_class, load_dataset, plans  # noqa: E402
from bench.report import write_section  # noqa: E402
from skulens.client.enroll import enroll  # noqa: E402

COPIES = ("re-encoded (JPEG q60)", "halved", "5 % cropped off each side")


def _copies(data: bytes) -> list[bytes]:
    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size
    out = []
    for img, quality in ((im, 60), (im.resize((w // 2, h // 2), Image.Resampling.BILINEAR), 90),
                         (im.crop((w // 20, h // 20, w - w // 20, h - h // 20)), 90)):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


# ------------------------------------------------------------------------------------------------ thresholds
async def _embed(model: Path, images: Sequence[bytes]) -> np.ndarray:
    from skulens.inference.engine import Engine

    engine = Engine.load(model)
    try:
        out: list[Any] = []
        for i in range(0, len(images), 64):
            out += await engine.embed_images(images[i:i + 64])
        bad = [o for o in out if not isinstance(o, np.ndarray)]
        if bad:
            raise RuntimeError(f"{len(bad)} images failed: {bad[:2]}")
        return np.stack(out)
    finally:
        await engine.close()


def thresholds(model: Path, ds: Dataset) -> dict[str, Any]:
    """Same-photo vs nearest-other cosines, and luminance spreads of real and blank pictures."""
    from skulens.imaging.preprocess import Preprocessor
    from skulens.model.preprocess_config import PreprocessConfig

    datas = [p.path.read_bytes() for p in ds.train]
    fine = np.asarray([p.fine for p in ds.train])
    t0 = time.perf_counter()
    e = asyncio.run(_embed(model, datas))
    copies = asyncio.run(_embed(model, [c for d in datas for c in _copies(d)])).reshape(len(datas), 3, -1)
    embed_s = time.perf_counter() - t0
    same_photo = np.einsum("nd,nkd->nk", e, copies)
    sims = e @ e.T
    np.fill_diagonal(sims, -2.0)
    same = fine[:, None] == fine[None, :]
    cross = np.where(same, -2.0, sims)
    nearest_other = cross.max(axis=1)
    nearest_own = np.where(same, sims, -2.0).max(axis=1)
    pre = Preprocessor(PreprocessConfig.from_dict(json.loads((model / "preprocess.json").read_text())), fast=True)
    real = [p.path for p in ds.train + ds.val] + list(ds.iconic.values())
    stds, sides = [], []
    for path in real:
        [(_, q)] = pre.measured_inputs(path.read_bytes(), None)  # type: ignore[misc]
        stds.append(q.luminance_std)
        sides.append(min(q.width, q.height))
    # the measurement's own cost: the luma histogram of one model input crop
    from skulens.imaging.quality import luminance_std

    shown = pre.resize_crop(pre.decode(datas[0]).image)
    t1 = time.perf_counter()
    for _ in range(2000):
        luminance_std(shown)
    t_measure = (time.perf_counter() - t1) / 2000
    rng = np.random.default_rng(0)
    synthetic = {
        "flat grey (JPEG)": Image.new("RGB", (400, 300), (128, 128, 128)),
        "grey + noise sigma 4": Image.fromarray(
            np.clip(128 + rng.normal(0, 4, (300, 400, 3)), 0, 255).astype(np.uint8)),
        "train photo at 5 % brightness": Image.fromarray(
            (np.asarray(Image.open(ds.train[0].path).convert("RGB")) * 0.05).astype(np.uint8)),
    }
    blank = {}
    for name, img in synthetic.items():
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        [(_, q)] = pre.measured_inputs(buf.getvalue(), None)  # type: ignore[misc]
        blank[name] = q.luminance_std
    iu = np.triu_indices(len(e), 1)
    return {
        "photos": len(e), "embed_s": embed_s,
        "same_photo": {name: same_photo[:, k] for k, name in enumerate(COPIES)},
        "nearest_other": nearest_other, "nearest_own": nearest_own,
        "cross_pairs": cross[iu], "own_pairs": np.where(same, sims, -2.0)[iu],
        "luminance_std": np.asarray(stds), "shortest_side": min(sides), "blank": blank, "measure_s": t_measure,
    }


# ------------------------------------------------------------------------------------------------ enrolment
def enrol_run(model: Path, ds: Dataset, data: Path, warnings: bool) -> dict[str, Any]:
    server = Server(model, data, () if warnings else ("--no-enrolment-warnings",))
    try:
        with server.client() as c:
            t0 = time.perf_counter()
            report = enroll(c, plans(ds, _by_class(ds.train)), batch=256)
            seconds = time.perf_counter() - t0
    finally:
        server.stop()
    if report.failed:
        raise RuntimeError(f"enrolment failed: {report.errors[:3]}")
    return {"warnings_on": warnings, "images": report.added, "seconds": seconds, "ips": report.added / seconds,
            "counts": dict(report.warning_counts), "first": report.warnings[:8], "load": os.getloadavg()}


def check_cost(model: Path, data: Path) -> dict[str, float]:
    """The check alone, as the server runs it: every stored reference re-checked in batches of 32 against the full
    catalog (search + own-product look-ups + the pure function)."""
    from skulens.catalog.catalog import Catalog
    from skulens.catalog.doctor import read_catalog
    from skulens.catalog.settings import CatalogSettings
    from skulens.imaging.quality import ImageQuality
    from skulens.model.manifest import load_manifest
    from skulens.service.enrolment_warnings import NewRow, check_batch

    m = load_manifest(model)
    settings = CatalogSettings(snapshot=False)
    with Catalog.open(data, fingerprint=m.fingerprint, dim=m.embedding_dim, settings=settings) as cat:
        _, ids, pids, vecs = read_catalog(cat)
        q = ImageQuality(400, 300, 40.0)
        t0 = time.perf_counter()
        for i in range(0, len(ids), 32):
            check_batch(cat, m.fingerprint, [NewRow(k, pids[k], vecs[k], q) for k in range(i, min(i + 32, len(ids)))])
        seconds = time.perf_counter() - t0
    return {"references": float(len(ids)), "seconds": seconds, "ms_per_image": 1000 * seconds / len(ids)}


def plant(model: Path, ds: Dataset, data: Path) -> dict[str, Any]:
    """Known mistakes enrolled into the catalog of an "on" run, through the API: 10 train photos re-encoded (JPEG
    q60) under the next product's id, 3 blank pictures and 3 thumbnails (48 x 64 px) of train photos."""
    from skulens.client.enroll import warning_kind
    from skulens.v1 import catalog_pb2

    rng = np.random.default_rng(1)
    picks = [ds.train[int(i)] for i in rng.choice(len(ds.train), 10, replace=False)]
    ids = sorted({p.fine for p in ds.train})
    items: list[tuple[str, str, bytes]] = []
    for p in picks:
        wrong = ids[(ids.index(p.fine) + 1) % len(ids)]
        items.append(("mislabelled copy", str(wrong), _copies(p.path.read_bytes())[0]))
    dark = (np.asarray(Image.open(picks[0].path).convert("RGB")) * 0.05).astype(np.uint8)
    noise = np.clip(128 + rng.normal(0, 4, (300, 400, 3)), 0, 255).astype(np.uint8)
    for img in (Image.new("RGB", (400, 300), (128, 128, 128)), Image.fromarray(dark), Image.fromarray(noise)):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        items.append(("blank", str(picks[1].fine), buf.getvalue()))
    for p in picks[2:5]:
        buf = io.BytesIO()
        Image.open(p.path).convert("RGB").resize((48, 64)).save(buf, "JPEG", quality=90)
        items.append(("tiny", str(p.fine), buf.getvalue()))
    server = Server(model, data)
    try:
        with server.client() as c:
            resp = c.add_references(iter([catalog_pb2.AddReferenceImagesRequest(product_id=pid, content=data_,
                                                                               source=f"planted:{what}")
                                          for what, pid, data_ in items]))
    finally:
        server.stop()
    out: dict[str, dict[str, int]] = {}
    flagged: dict[str, int] = {}
    for (what, _, _), r in zip(items, resp.results, strict=True):
        if r.status.code != 0:
            raise RuntimeError(f"planted {what} failed: {r.status.message}")
        kinds = {warning_kind(w.kind) for w in r.warnings}
        flagged[what] = flagged.get(what, 0) + bool(kinds)
        for k in kinds:
            out.setdefault(what, {})[k] = out.setdefault(what, {}).get(k, 0) + 1
    sent = {what: sum(1 for w, _, _ in items if w == what) for what, _, _ in items}
    return {"sent": sent, "flagged": flagged, "kinds": out}


def doctor(model: Path, data: Path, ds: Dataset) -> Any:
    from skulens.catalog.doctor import diagnose
    from skulens.catalog.location import open_catalog, parse_location
    from skulens.catalog.settings import CatalogSettings
    from skulens.model.manifest import load_manifest

    m = load_manifest(model)
    cat = open_catalog(parse_location(str(data)), fingerprint=m.fingerprint, dim=m.embedding_dim,
                       settings=CatalogSettings(snapshot=False))
    try:
        return diagnose(cat)
    finally:
        cat.close()


# ------------------------------------------------------------------------------------------------ report
def _q(x: np.ndarray, qs: Sequence[float]) -> str:
    return " / ".join(f"{v:.4f}" for v in np.quantile(x, qs))


def write_report(args: argparse.Namespace, t: dict[str, Any], runs: list[dict[str, Any]], cost: dict[str, float],
                 doc: Any, ds: Dataset, planted: dict[str, Any], after: Any) -> str:
    near = 0.93
    lines = [
        "# Enrolment warnings and catalog doctor (`bench/bench_confusability.py`)",
        "",
        f"`python bench/bench_confusability.py --model {args.model.name} --data {args.data}`; {platform.machine()}, "
        f"{os.cpu_count()} cores shared with other work (load average at the end of each run below). Grocery "
        f"Store train photos ({t['photos']}, 81 products), EfficientNet-Lite0 fp32.",
        "",
        "## Near-duplicate threshold (default 0.93)",
        "",
        "Cosine of each train photo with a copy of itself, against its nearest photo of another product "
        "(quantiles min / 1 % / 5 % / 50 %; for the nearest other product 50 % / 99 % / 99.9 % / max):",
        "",
        "| pair | quantiles | at or above 0.93 |",
        "|---|---|---|",
    ]
    for name, v in t["same_photo"].items():
        lines.append(f"| same photo, {name} | {_q(v, [0, 0.01, 0.05, 0.5])} | "
                     f"{100 * np.mean(v >= near):.1f} % of photos |")
    lines += [
        f"| nearest photo of another product | {_q(t['nearest_other'], [0.5, 0.99, 0.999, 1])} | "
        f"{int(np.sum(t['cross_pairs'] >= near))} of {len(t['cross_pairs'])} cross-product pairs |",
        f"| nearest other photo of the same product | {_q(t['nearest_own'], [0.5, 0.99, 0.999, 1])} | "
        f"{int(np.sum(t['own_pairs'] >= near))} same-product pairs |",
        "",
        f"The closest two photos of different products score {t['nearest_other'].max():.4f}; every re-encoded copy "
        f"scores at least {t['same_photo'][COPIES[0]].min():.4f}. 0.93 sits between the two; a smaller copy or a "
        "crop of a photo moves further (the model sees other pixels), so it is caught less often. The scale is the "
        "model's: measure again for another backbone (`--near-duplicate-threshold`).",
        "",
        "## Nearly blank (luminance standard deviation under 8) and tiny (shortest side under 64 px)",
        "",
        f"Real photos (train, val and packshots, {len(t['luminance_std'])}): luminance standard deviation of the "
        f"model's input crop min / 0.1 % / 1 % / 50 % = {_q(t['luminance_std'], [0, 0.001, 0.01, 0.5])} (the "
        "lowest is a packshot on white). Blank pictures: "
        + ", ".join(f"{k} {v:.2f}" for k, v in t["blank"].items())
        + f". Measuring it costs {1e6 * t['measure_s']:.1f} µs per image (luma histogram of the 224 x 224 crop). "
        f"The shortest side of every dataset photo is at least {t['shortest_side']} px: none is tiny.",
        "",
        "## Cost at enrolment (through the gRPC API, same run)",
        "",
        "| run | warnings | images | seconds | images/s | load average (1, 5, 15 min) |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(runs, 1):
        lines.append(f"| {i} | {'on' if r['warnings_on'] else 'off'} | {r['images']} | {r['seconds']:.1f} | "
                     f"{r['ips']:.1f} | {', '.join(f'{x:.2f}' for x in r['load'])} |")
    on = [r["ips"] for r in runs if r["warnings_on"]]
    off = [r["ips"] for r in runs if not r["warnings_on"]]
    lines += [
        "",
        f"Median images/s: off {np.median(off):.1f}, on {np.median(on):.1f} "
        f"({100 * (np.median(on) / np.median(off) - 1):+.1f} %); mean: off {np.mean(off):.1f}, on {np.mean(on):.1f} "
        f"({100 * (np.mean(on) / np.mean(off) - 1):+.1f} %); the runs of one setting differ by up to "
        f"{100 * (max(max(on) / min(on), max(off) / min(off)) - 1):.0f} % among themselves (the other work on the "
        f"cores). Measured alone: the check (search of 10 products per new reference, own-product look-ups, the pure "
        f"function), every one of the {int(cost['references'])} references again in batches of 32 against the full "
        f"catalog, {cost['seconds']:.2f} s = {cost['ms_per_image']:.3f} ms per image, plus "
        f"{1e3 * t['measure_s']:.3f} ms per image for the luminance; embedding alone (the model in-process, "
        f"decode included, batches of 64) took {1e3 * t['embed_s'] / (4 * t['photos']):.2f} ms per image in the same "
        f"run.",
        "",
        "## Warnings when enrolling the train photos (products in class-id order, 256 images per call)",
        "",
    ]
    first = next(r for r in runs if r["warnings_on"])
    counts = first["counts"]
    lines.append(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none")
    lines += ["", "First ones:", ""] + [f"- {w}" for w in first["first"][:5]]
    lines += [
        "",
        "## `skulens catalog doctor` on that catalog (defaults: pair threshold 0.9, near-duplicate 0.93, 3 references)",
        "",
        f"{doc.products} products, {doc.references} references, {doc.seconds:.2f} s; look-alike pairs: "
        f"{len(doc.look_alikes)}; references closer to another product than to their own: {doc.closer_to_other}; "
        f"near-duplicate cross-product pairs: {doc.near_duplicates}; products with fewer than 3 references: "
        f"{len(doc.few_references)}. Top 10 by centroid cosine:",
        "",
        "| centroid cosine | closest references (cosine) | confused (a / b) | product a | product b |",
        "|---|---|---|---|---|",
    ]
    for p in doc.look_alikes[:10]:
        lines.append(f"| {p.centroid_cosine:.4f} | {p.closest_reference_a} ~ {p.closest_reference_b} "
                     f"({p.closest_score:.4f}) | {p.confused_a} / {p.confused_b} | {p.name_a} | {p.name_b} |")
    lines += [
        "",
        "## Planted mistakes (enrolled through the API into that catalog afterwards)",
        "",
        "| planted | sent | flagged | warnings by kind |",
        "|---|---|---|---|",
    ]
    for what, n in planted["sent"].items():
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(planted["kinds"].get(what, {}).items())) or "none"
        lines.append(f"| {what} | {n} | {planted['flagged'].get(what, 0)} | {kinds} |")
    lines += [
        "",
        f"`catalog doctor` afterwards: look-alike pairs {len(after.look_alikes)}, near-duplicate cross-product pairs "
        f"{after.near_duplicates}, references closer to another product than to their own {after.closer_to_other}.",
    ]
    md = "\n".join(lines) + "\n"
    write_section(args.out, "confusability", md)
    return md


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=REPO / ".cache" / "models" / "efficientnet-lite0-fp32")
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/grocery"))
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "BENCHMARKS.md", help="its section is replaced")
    ap.add_argument("--rounds", type=int, default=3, help="off/on enrolment pairs")
    args = ap.parse_args(argv)
    ds = load_dataset(args.data)
    print("== thresholds", flush=True)
    t = thresholds(args.model, ds)
    runs = []
    with tempfile.TemporaryDirectory(prefix="skulens-confusability-") as tmp:
        kept = None
        for r in range(args.rounds):
            for on in (False, True):
                data = Path(tmp) / f"run-{r}-{'on' if on else 'off'}" / "catalog"
                print(f"== enrol round {r + 1}, warnings {'on' if on else 'off'}", flush=True)
                runs.append(enrol_run(args.model, ds, data, on))
                print(f"   {runs[-1]['ips']:.1f} images/s, warnings {runs[-1]['counts']}", flush=True)
                kept = kept or (data if on else None)
        assert kept is not None
        cost = check_cost(args.model, kept)
        doc = doctor(args.model, kept, ds)
        print("== planted mistakes", flush=True)
        planted = plant(args.model, ds, kept)
        after = doctor(args.model, kept, ds)
    print(write_report(args, t, runs, cost, doc, ds, planted, after))
    return 0


if __name__ == "__main__":
    sys.exit(main())
