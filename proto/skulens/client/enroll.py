"""Bulk enrolment from a folder `<product_id>/<images>` or a CSV
`product_id,image_path[,name,category,labels]` (labels `k=v;k=v`).

Resumable: before streaming, the content sha256 of every local file is compared with those the server
reports for the product (GetProduct), and images already enrolled are skipped; a re-run after an interruption
sends only what is missing. Safe to retry: every image is sent with its own request id (AIP-155), and a call that
fails with a transient status (the server unavailable, overloaded, the connection lost after the server committed
part or all of it) is sent again with the same ids; what the server had committed is answered as it was the
first time, never embedded or added twice.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from skulens.client.client import SkulensClient
from skulens.errors import code_name
from skulens.v1 import catalog_pb2

log = logging.getLogger("skulens.enroll")

#: Call statuses after which a batch is sent again (with the same request ids): nothing is lost or doubled.
RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED})

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)


@dataclass
class ProductPlan:
    """One product to enrol: metadata (None = leave the server's as is) and its image files."""

    product_id: str
    display_name: str | None = None
    category: str | None = None
    labels: dict[str, str] | None = None
    paths: list[Path] = field(default_factory=list)

    @property
    def has_metadata(self) -> bool:
        """True when the source gave a name, category or labels."""
        return any(v is not None for v in (self.display_name, self.category, self.labels))


@dataclass
class EnrollReport:
    """What an enrolment run did."""

    products: int = 0
    products_created: int = 0
    images: int = 0
    skipped: int = 0  # already enrolled (same sha256) before this run
    added: int = 0
    duplicates: int = 0
    failed: int = 0
    retries: int = 0  # calls sent again after a transient failure (same request ids)
    errors: list[str] = field(default_factory=list)
    #: Enrolment warnings (AddedReference.warnings) by kind (CLOSER_TO_OTHER_PRODUCT, ...), and each one in words.
    warning_counts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def parse_labels(text: str) -> dict[str, str]:
    """`k=v;k=v` → dict (blank → {}); ValueError on an entry without '='."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"label {part!r} must be key=value")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _images_in(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def plan_from_folder(root: Path) -> list[ProductPlan]:
    """One product per folder that holds images, at any depth (`<product_id>/<images>`, or deeper such as
    `<group>/<class>/<product_id>/<images>`): its name is the product id, its image files sorted by name.

    Checked before anything is written: ValueError for images lying in `root` itself, for two folders with the
    same name (one product id), or when no folder holds an image."""
    root = Path(root)
    if _images_in(root):
        raise ValueError(f"{root} holds image files itself: put each product's images in a folder named by its id")
    plans: dict[str, ProductPlan] = {}
    where: dict[str, Path] = {}
    for d in sorted(p for p in root.rglob("*") if p.is_dir() and not any(s.startswith(".") for s in p.parts)):
        files = _images_in(d)
        if not files:
            continue
        if d.name in plans:
            raise ValueError(f"two folders name product {d.name!r}: {where[d.name]} and {d}; rename one")
        plans[d.name], where[d.name] = ProductPlan(d.name, paths=files), d
    if not plans:
        raise ValueError(f"no folder under {root} holds images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return list(plans.values())


def plan_from_csv(path: Path) -> list[ProductPlan]:
    """Rows `product_id,image_path[,name,category,labels]` (an optional header row starting with product_id);
    relative image paths are relative to the CSV's folder; rows of one product are merged."""
    plans: dict[str, ProductPlan] = {}
    base = Path(path).parent
    with open(path, newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.reader(fh), 1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if lineno == 1 and row[0].strip().lower() in ("product_id", "product id", "id"):
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise ValueError(f"{path}:{lineno}: expected product_id,image_path[,name,category,labels]")
            pid, img = row[0].strip(), Path(row[1].strip()).expanduser()
            plan = plans.setdefault(pid, ProductPlan(pid))
            plan.paths.append(img if img.is_absolute() else base / img)
            if len(row) > 2 and row[2].strip() and plan.display_name is None:
                plan.display_name = row[2].strip()
            if len(row) > 3 and row[3].strip() and plan.category is None:
                plan.category = row[3].strip()
            if len(row) > 4 and row[4].strip() and plan.labels is None:
                try:
                    plan.labels = parse_labels(row[4])
                except ValueError as exc:
                    raise ValueError(f"{path}:{lineno}: {exc}") from None
    missing = [str(f) for plan in plans.values() for f in plan.paths if not f.is_file()]
    if missing:  # checked before anything is written: no product is created for a broken list
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ValueError(f"{path}: image files not found: {', '.join(missing[:3])}{more}")
    if not plans:
        raise ValueError(f"{path} lists no images")
    return list(plans.values())


def load_plan(source: Path) -> list[ProductPlan]:
    """A folder or a .csv file."""
    source = Path(source)
    if source.is_dir():
        return plan_from_folder(source)
    if source.is_file():
        return plan_from_csv(source)
    raise FileNotFoundError(f"{source} is neither a folder nor a CSV file")


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def enroll(
    client: SkulensClient,
    plans: Sequence[ProductPlan],
    *,
    resume: bool = True,
    batch: int = 256,
    progress: Callable[[int], object] | None = None,
    on_total: Callable[[int], object] | None = None,
    checked: Callable[[int], object] | None = None,
    retries: int = 3,
    retry_wait_s: float = 0.5,
) -> EnrollReport:
    """Upsert products, skip images the server has (by sha256), stream the rest in calls of `batch` images.

    Each image carries a request id of its own (a UUID); a call that fails with a status in `RETRY_CODES` is sent
    again, with the same ids, up to `retries` times (waiting `retry_wait_s`, doubling, or as long as the server's
    `grpc-retry-pushback-ms` says). `checked(1)` after each image file is hashed (the check before sending);
    `on_total(n)` is then told how many images will be sent, and `progress(k)` after each k images are handed to
    gRPC (the first time).
    """
    report = EnrollReport(products=len(plans))
    todo: list[tuple[str, Path, str, str]] = []  # product id, file, sha256, request id
    for plan in plans:
        existing = client.get_product(plan.product_id) if resume or not plan.has_metadata else None
        if existing is None or plan.has_metadata:
            given = {"display_name": plan.display_name, "category": plan.category, "labels": plan.labels}
            resp = client.upsert_product(  # the plan's fields only (an empty one clears it); the rest stays
                plan.product_id,
                display_name=plan.display_name or "",
                category=plan.category or "",
                labels=plan.labels or {},
                update_mask=[name for name, value in given.items() if value is not None],
            )
            report.products_created += int(resp.created)
        known = {r.content_sha256 for r in existing.references} if existing is not None and resume else set()
        for p in plan.paths:
            report.images += 1
            sha = sha256_of(p)
            if checked is not None:
                checked(1)
            if sha in known:
                report.skipped += 1
                continue
            known.add(sha)
            todo.append((plan.product_id, p, sha, str(uuid.uuid4())))
    if on_total is not None:
        on_total(len(todo))

    def requests(items: Sequence[tuple[str, Path, str, str]], first: bool
                 ) -> Iterator[catalog_pb2.AddReferenceImagesRequest]:
        for pid, p, _, request_id in items:
            yield catalog_pb2.AddReferenceImagesRequest(product_id=pid, content=p.read_bytes(), source=str(p),
                                                        request_id=request_id)
            if progress is not None and first:
                progress(1)

    for start in range(0, len(todo), batch):
        items = todo[start : start + batch]
        attempt = 0
        while True:
            try:
                resp = client.add_references(requests(items, attempt == 0), timeout=None)
                break
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                if code not in RETRY_CODES or attempt >= retries:
                    raise
                wait = _pushback_s(exc) or retry_wait_s * 2**attempt
                log.warning("enrolment call failed (%s); sending its %d images again in %.2f s (same request "
                            "ids: nothing is added twice)", code.name if code else code, len(items), wait)
                time.sleep(wait)
                attempt += 1
                report.retries += 1
        report.added += resp.added
        report.duplicates += resp.duplicates
        report.failed += resp.failed
        for r in resp.results:
            if r.status.code != 0:
                report.errors.append(f"{items[r.index][1]}: {code_name(r.status.code)}: {r.status.message}")
            for w in r.warnings:
                kind = warning_kind(w.kind)
                report.warning_counts[kind] = report.warning_counts.get(kind, 0) + 1
                report.warnings.append(f"{items[r.index][1]} (product {r.product_id}): {kind}: {w.message}")
    return report


def _pushback_s(exc: grpc.RpcError) -> float | None:
    """The server's retry hint (`grpc-retry-pushback-ms` trailer) in seconds, if it sent one."""
    trailing = exc.trailing_metadata() if isinstance(exc, grpc.Call) else None
    for key, value in trailing or ():
        if key == "grpc-retry-pushback-ms" and str(value).isdigit():
            return int(value) / 1000.0
    return None


def warning_kind(kind: int) -> str:
    """An `EnrolmentWarningKind` value as a short name (CLOSER_TO_OTHER_PRODUCT, ...)."""
    return catalog_pb2.EnrolmentWarningKind.Name(kind).removeprefix("ENROLMENT_WARNING_KIND_")


def format_warnings(report: EnrollReport, first: int = 10) -> list[str]:
    """The warnings for people: a summary line, then the first `first` of them (empty when there are none)."""
    if not report.warnings:
        return []
    kinds = ", ".join(f"{k}: {n}" for k, n in sorted(report.warning_counts.items()))
    lines = [f"warnings: {len(report.warnings)} ({kinds}); the references were added all the same"]
    lines += [f"  warning: {w}" for w in report.warnings[:first]]
    if len(report.warnings) > first:
        lines.append(f"  ... and {len(report.warnings) - first} more (--json lists them all)")
    return lines
