"""The client side of `Evaluate`: a labelled photo set from a folder or a CSV, streamed to the server, and the
report it answers as text and JSON.

A folder set is `<product_id>/<images>` at any depth: the folder an image lies in names its product, and a folder
named `_unknown` (configurable) holds photos of products that are not in the catalog. A CSV set has rows
`path,product_id[,group]` (an optional header row starting with `path`); an empty product id, or the unknown
name, marks a photo of a product outside the catalog; relative paths are relative to the CSV's folder.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skulens.client.client import SkulensClient, image_input
from skulens.client.enroll import IMAGE_SUFFIXES
from skulens.v1 import common_pb2, recognition_pb2

UNKNOWN_FOLDER = "_unknown"
GROUP_BY = ("category", "folder")


@dataclass(frozen=True)
class LabelledPhoto:
    """A photo file, its true product id ("" = not in the catalog) and its group ("" = the product's category)."""

    path: Path
    product_id: str
    group: str = ""


def labelled_from_folder(root: Path, unknown: str = UNKNOWN_FOLDER, group_by: str = "category") -> list[LabelledPhoto]:
    """Every image below `root`: product id = the name of its folder (`unknown` → not in the catalog). With
    `group_by="folder"` the group is the first folder under `root` (`<group>/.../<product_id>/<images>`); with
    "category" the server uses the product's catalog category. ValueError for images in `root` itself or none."""
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by must be one of {GROUP_BY}, got {group_by!r}")
    root = Path(root)
    files = sorted(
        f
        for f in root.rglob("*")
        if f.is_file()
        and f.suffix.lower() in IMAGE_SUFFIXES
        and not any(s.startswith(".") for s in f.relative_to(root).parts)
    )
    loose = [f for f in files if f.parent == root]
    if loose:
        raise ValueError(
            f"{root} holds image files itself ({loose[0].name}): put each in a folder named by its product"
        )
    if not files:
        raise ValueError(f"no image files below {root} ({', '.join(sorted(IMAGE_SUFFIXES))})")
    out = []
    for f in files:
        rel = f.relative_to(root).parts
        label = "" if f.parent.name == unknown else f.parent.name
        group = rel[0] if group_by == "folder" and len(rel) > 2 else ""
        out.append(LabelledPhoto(f, label, group))
    return out


def labelled_from_csv(path: Path, unknown: str = UNKNOWN_FOLDER) -> list[LabelledPhoto]:
    """Rows `path,product_id[,group]`; every file is checked before any call (ValueError names the first ones)."""
    base = Path(path).parent
    out: list[LabelledPhoto] = []
    with open(path, newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.reader(fh), 1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if lineno == 1 and row[0].strip().lower() in ("path", "image", "image_path"):
                continue
            if len(row) < 2 or not row[0].strip():
                raise ValueError(f"{path}:{lineno}: expected path,product_id[,group]")
            p = Path(row[0].strip()).expanduser()
            label = row[1].strip()
            group = row[2].strip() if len(row) > 2 else ""
            out.append(LabelledPhoto(p if p.is_absolute() else base / p, "" if label == unknown else label, group))
    missing = [str(p.path) for p in out if not p.path.is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ValueError(f"{path}: image files not found: {', '.join(missing[:3])}{more}")
    if not out:
        raise ValueError(f"{path} lists no images")
    return out


def load_labelled(source: Path, unknown: str = UNKNOWN_FOLDER, group_by: str = "category") -> list[LabelledPhoto]:
    """A folder set or a CSV set (see the module docstring)."""
    source = Path(source)
    if source.is_dir():
        return labelled_from_folder(source, unknown, group_by)
    if source.is_file():
        return labelled_from_csv(source, unknown)
    raise FileNotFoundError(f"{source} is neither a folder nor a CSV file")


def evaluate_photos(
    client: SkulensClient,
    photos: Sequence[LabelledPhoto],
    options: recognition_pb2.EvaluateOptions | None = None,
    *,
    per_message: int = 32,
    timeout: float | None = None,
    progress: Callable[[int], object] | None = None,
) -> recognition_pb2.EvaluateResponse:
    """Stream `photos` (read lazily, `per_message` to a message; at most the server's images-per-request limit)
    in one Evaluate call. `progress(k)` after each k photos are handed to gRPC."""

    def requests() -> Iterator[recognition_pb2.EvaluateRequest]:
        for at in range(0, len(photos), per_message):
            chunk = photos[at : at + per_message]
            msg = recognition_pb2.EvaluateRequest(
                images=[
                    recognition_pb2.LabelledImage(
                        image=image_input(p.path.read_bytes(), id=str(p.path)), product_id=p.product_id, group=p.group
                    )
                    for p in chunk
                ]
            )
            if at == 0 and options is not None:
                msg.options.CopyFrom(options)
            yield msg
            if progress is not None:
                progress(len(chunk))

    return client.evaluate(requests(), timeout=timeout)


# ---------------------------------------------------------------------------------------------- output
def _pct(msg: Any, name: str) -> str:
    """A share field as a percentage, "n/a" when unset."""
    return f"{100 * getattr(msg, name):.1f} %" if msg.HasField(name) else "n/a"


def _table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> list[str]:
    cells = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_report(resp: recognition_pb2.EvaluateResponse, curve_rows: int = 11) -> str:
    """The report as text: counts, accuracy (overall, per group), verdicts, AUROC, the operating point for the
    target, a sample of the curves, the most confused pairs and the notes."""
    r = resp.report
    op = r.operating_point
    lines = []
    if resp.random_weights:
        lines.append("warning: the server's model has RANDOM WEIGHTS: the figures are meaningless")
    lines += [
        f"Evaluation: {r.queries} photos ({r.in_catalog} of catalog products, {r.out_of_catalog} of products not in "
        f"the catalog; {r.failed} failed); catalog version {resp.catalog_version}",
        f"top-1 {100 * r.overall.top1:.1f} %  top-5 {100 * r.overall.top5:.1f} %  over {r.overall.queries} photos "
        "of catalog products",
        "",
    ]
    if r.groups:
        rows = [
            [g.group, g.accuracy.queries, f"{100 * g.accuracy.top1:.1f}", f"{100 * g.accuracy.top5:.1f}"]
            for g in r.groups
        ]
        lines += [*_table(rows, ["group", "photos", "top-1 %", "top-5 %"]), ""]
    lines.append(
        f"verdicts (thresholds in force: unknown {r.thresholds.unknown_threshold:.3f}, "
        f"ambiguity margin {r.thresholds.ambiguity_margin:.3f})"
    )
    rows = [
        [common_pb2.Verdict.Name(v.verdict).removeprefix("VERDICT_"), v.right, v.wrong, v.out_of_catalog]
        for v in r.verdicts
    ]
    lines += [*_table(rows, ["verdict", "right product", "wrong product", "not in catalog"]), ""]
    lines.append(
        f"AUROC, catalog products against the others (best score): {f'{r.auroc:.3f}' if r.HasField('auroc') else 'n/a'}"
    )
    target = f"{100 * op.target_false_accept:.1f} %"
    if op.HasField("unknown_threshold"):
        lines.append(
            f"at {target} false accepts: unknown_threshold {op.unknown_threshold:.4f}, accepted and correct "
            f"{_pct(r, 'accepted_correct_at_target')}"
        )
    else:
        lines.append(f"at {target} false accepts: not measurable (no photo of a product outside the catalog)")
    margin = f"{op.ambiguity_margin:.4f}" if op.HasField("ambiguity_margin") else "n/a"
    lines += [
        f"suggested: unknown_threshold "
        f"{f'{op.unknown_threshold:.4f}' if op.HasField('unknown_threshold') else 'n/a'}, ambiguity_margin {margin} "
        f"→ KNOWN answers: false accept {_pct(op, 'false_accept')}, false reject {_pct(op, 'false_reject')}, "
        f"misidentified {_pct(op, 'misidentified')}, accepted and correct {_pct(op, 'accepted_correct')}",
        "",
    ]
    if r.curve:
        step = max(1, (len(r.curve) - 1) // max(1, curve_rows - 1))
        sample = [r.curve[i] for i in range(0, len(r.curve), step)]
        if sample[-1] is not r.curve[-1]:
            sample.append(r.curve[-1])
        rows = [
            [
                f"{c.threshold:.3f}",
                f"{100 * c.coverage:.1f} %",
                _pct(c, "accuracy"),
                _pct(c, "false_accept"),
                _pct(c, "false_reject"),
                _pct(c, "accepted_correct"),
            ]
            for c in sample
        ]
        lines += [
            *_table(rows, ["threshold", "coverage", "accuracy", "false accept", "false reject", "accepted & correct"]),
            "",
        ]
    if r.confused_pairs:
        lines.append(
            "most confused (true product → taken for: photos): "
            + "; ".join(f"{c.product_id} → {c.taken_for}: {c.count}" for c in r.confused_pairs)
        )
    lines += [f"note: {n}" for n in r.notes]
    lines += [f"failed: {f.id}: {f.status.message}" for f in r.failures[:20]]
    return "\n".join(lines)


def format_side_by_side(reports: Sequence[tuple[str, recognition_pb2.EvaluateResponse]]) -> str:
    """Several evaluations of one labelled set (e.g. the serving model and a migration's candidate) as one table:
    accuracy overall and per group, AUROC and the operating point at the target false-accept rate."""
    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    def row(name: str, get: Any) -> list[object]:
        return [name, *(get(resp.report) for _, resp in reports)]

    rows = [
        row("photos of catalog products", lambda r: r.overall.queries),
        row("top-1 %", lambda r: pct(r.overall.top1)),
        row("top-5 %", lambda r: pct(r.overall.top5)),
    ]
    groups = sorted({g.group for _, resp in reports for g in resp.report.groups})
    for group in groups:
        rows.append(row(f"top-1 % {group}", lambda r, g=group: next(
            (pct(x.accuracy.top1) for x in r.groups if x.group == g), "–")))
    rows += [
        row("AUROC", lambda r: f"{r.auroc:.3f}" if r.HasField("auroc") else "n/a"),
        row("suggested unknown_threshold", lambda r: f"{r.operating_point.unknown_threshold:.4f}"
            if r.operating_point.HasField("unknown_threshold") else "n/a"),
        row("accepted & correct at target %", lambda r: _pct(r, "accepted_correct_at_target")),
    ]
    header = ["", *(f"{name} ({resp.model_fingerprint[:24]})" for name, resp in reports)]
    return "\n".join(_table(rows, header))


def report_json(resp: recognition_pb2.EvaluateResponse) -> dict[str, Any]:
    """The whole response as JSON-ready data (proto field names; unset shares absent)."""
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(resp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
