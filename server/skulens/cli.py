"""The `skulens` command: serve, enroll, recognize, search, evaluate, catalog, calibrate, reembed, export.

Client commands (enroll, recognize, search, catalog) talk to a running server (`--addr`, `SKULENS_ADDR`);
calibrate and reembed work offline on a catalog (`--data DIR` or `--catalog URL`) and a model directory; export
needs the `export` extra.
Exit status: 0 success, 1 failure (`catalog check`: the catalog is not healthy; `catalog doctor`: findings;
`reembed`: references block the switch), 2 usage or configuration error.
Commands that start a server or open a catalog offline (serve, calibrate, reembed, catalog check) report a
domain error (settings, model, manifest, catalog, a catalog file's OS error) as one line `skulens: error: ...`
on stderr with status 2, never a traceback.

Importing this module, `skulens --help` and the client commands need only the core dependencies: the serving
side (settings, catalog, inference; ONNX Runtime and FAISS, the `cpu`/`gpu` extra) is imported by the commands
that use it, and the export side (torch) only when an export runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeGuard

import grpc

from skulens.errors import ConfigError, SkulensError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
# Errors a starting command reports as one line, status 2: every domain error (one base, importable without the
# serving side), and OS / SQLite errors (a net under the catalog's own mapping, which names the file).
STARTUP_ERRORS: tuple[type[BaseException], ...] = (SkulensError, OSError, sqlite3.Error)
# Top-level modules of the runtime extras (`cpu` / `gpu`) that serving imports.
RUNTIME_MODULES = frozenset({"onnxruntime", "faiss"})


def _is_missing_runtime(exc: BaseException) -> TypeGuard[ModuleNotFoundError]:
    """Whether `exc` is a runtime extra's module (ONNX Runtime, FAISS) missing from this install."""
    return isinstance(exc, ModuleNotFoundError) and (exc.name or "").partition(".")[0] in RUNTIME_MODULES


def _missing_runtime(command: str, exc: ImportError) -> int:
    print(
        f"skulens: error: {command} needs a runtime extra: pip install 'skulens[cpu]' (or 'skulens[gpu]') ({exc})",
        file=sys.stderr,
    )
    return EXIT_USAGE


# ---------------------------------------------------------------------------------------------- serve
def _cmd_serve(args: argparse.Namespace) -> int:
    from skulens.service.app import serve
    from skulens.service.logs import configure_logging
    from skulens.service.settings import Settings

    settings = Settings.from_sources(args)
    configure_logging(settings.log_format, settings.log_level)
    import logging

    logging.getLogger("skulens.server").info("starting", extra={"fields": {"settings": settings.describe()}})
    asyncio.run(serve(settings))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- client side
def _add_client_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument(
        "--addr", help="server host:port [env SKULENS_ADDR; default 127.0.0.1:$SKULENS_PORT or :50051]"
    )
    g.add_argument("--token", help="bearer token [env SKULENS_TOKEN; prefer the variable: flags show in ps]")
    g.add_argument("--tls", action="store_true", default=None, help="use TLS with the system CA roots")
    g.add_argument("--tls-ca", type=Path, help="CA bundle to verify the server [env SKULENS_CLIENT_TLS_CA]")
    g.add_argument("--tls-cert", type=Path, help="client certificate for mutual TLS [env SKULENS_CLIENT_TLS_CERT]")
    g.add_argument("--tls-key", type=Path, help="client key for mutual TLS [env SKULENS_CLIENT_TLS_KEY]")
    g.add_argument(
        "--tls-server-name", help="expected server name in its certificate [env SKULENS_CLIENT_TLS_SERVER_NAME]"
    )
    g.add_argument("--timeout", type=float, default=None, help="seconds per call (default 60)")


def _client(args: argparse.Namespace) -> Any:
    from skulens.client.client import ClientConfig, SkulensClient

    cfg = ClientConfig.from_env(
        addr=args.addr,
        token=args.token,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_server_name=args.tls_server_name,
        tls=args.tls,
        timeout=args.timeout,
    )
    return SkulensClient(cfg)


def _add_search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--top-k", type=int, default=0, help="products per query (default: server default)")
    p.add_argument("--min-score", type=float, default=0.0, help="drop matches under this score")
    p.add_argument("--category", default="", help="only this category")
    p.add_argument(
        "--label", action="append", default=[], metavar="K=V", help="only products with this label"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _options(args: argparse.Namespace) -> Any:
    from skulens.client.client import search_options

    labels = {}
    for kv in args.label:
        if "=" not in kv:
            raise ConfigError(f"--label {kv!r} must be KEY=VALUE", field="--label")
        k, v = kv.split("=", 1)
        labels[k] = v
    return search_options(args.top_k, args.min_score, args.category, labels)


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _to_json(msg: Any) -> Any:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def _recognition_row(label: str, rec: Any) -> list[Any]:
    from skulens.errors import code_name
    from skulens.v1 import common_pb2

    if rec.status.code:
        return [label, code_name(rec.status.code), "", "", "", rec.status.message]
    best = rec.matches[0] if rec.matches else None
    verdict = common_pb2.Verdict.Name(rec.verdict).removeprefix("VERDICT_")
    others = ", ".join(f"{m.product_id} {m.score:.3f}" for m in rec.matches[1:])
    return [
        label,
        verdict,
        best.product_id if best else "-",
        best.display_name if best else "",
        f"{best.score:.3f}" if best else "",
        others,
    ]


def image_paths(inputs: Sequence[Path]) -> list[Path]:
    """Image files from files, folders (every image below, sorted) and list files (`.txt` / `.lst`: one path a
    line, relative to the list); checked before any call: a missing path raises ValueError naming it."""
    from skulens.client.enroll import IMAGE_SUFFIXES

    out: list[Path] = []
    for p in inputs:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.suffix.lower() in (".txt", ".lst") and p.is_file():
            lines = (ln.strip() for ln in p.read_text(encoding="utf-8").splitlines())
            out += [q if q.is_absolute() else p.parent / q for q in map(Path, lines) if str(q) and str(q)[0] != "#"]
        else:
            out.append(p)
    missing = [str(p) for p in out if not p.is_file()]
    if missing:
        raise ValueError(f"not an image file: {', '.join(missing[:3])}" + (f" and {len(missing) - 3} more"
                                                                         if len(missing) > 3 else ""))
    if not out:
        raise ValueError("no image files found in " + ", ".join(map(str, inputs)))
    return out


def _cmd_recognize(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from skulens.client.client import image_input
    from skulens.v1 import recognition_pb2

    paths = image_paths(args.images)
    options = _options(args)  # arguments checked before any call
    with _client(args) as c:
        try:  # batches as large as the server takes
            per_call = max(1, c.server_info().limits.max_images_per_request)
        except grpc.RpcError as exc:
            if exc.code() is not grpc.StatusCode.UNIMPLEMENTED:
                raise
            per_call = 16  # an older server: a size every server takes
        resp = recognition_pb2.RecognizeResponse()
        quiet = args.no_progress or len(paths) <= per_call
        with tqdm(total=len(paths), unit="img", desc="recognising", disable=quiet, dynamic_ncols=True) as bar:
            for at in range(0, len(paths), per_call):
                chunk = paths[at : at + per_call]
                part = c.recognize(
                    [image_input(q.read_bytes(), id=str(q)) for q in chunk], options, source=args.source
                )
                resp.results.extend(part.results)
                resp.model_fingerprint, resp.random_weights = part.model_fingerprint, part.random_weights
                resp.catalog_version = part.catalog_version
                bar.update(len(chunk))
    if args.json:
        print(json.dumps(_to_json(resp), indent=2))
    else:
        if resp.random_weights:
            print("warning: the server's model has RANDOM WEIGHTS: results are meaningless", file=sys.stderr)
        rows = []
        for r in resp.results:
            if r.regions:
                rows += [_recognition_row(f"{r.id}#{g.index}", g.recognition) for g in r.regions]
            else:
                row = _recognition_row(r.id, r.recognition if r.status.code == 0 else r)
                rows.append(row)
        print(_table(rows, ["image", "verdict", "product", "name", "score", "next / error"]))
    return EXIT_OK if all(r.status.code == 0 for r in resp.results) else EXIT_FAIL


def _cmd_monitor(args: argparse.Namespace) -> int:
    """GetDriftReport as a table (`skulens.client.monitor`), JSON, a PNG plot; `--watch` repeats the table."""
    import time

    from skulens.client import monitor

    if args.history < 0 or (args.watch is not None and args.watch <= 0):
        raise ConfigError("--history must be >= 0 and --watch > 0", field="--history")
    with _client(args) as c:
        while True:
            history = args.history if (args.plot or args.json) else 0
            report = c.drift_report(source=args.source, history=history)
            if args.json:
                print(json.dumps(_to_json(report), indent=2))
            else:
                print(monitor.table(report), flush=True)
            if args.plot is not None:
                points = monitor.plot(report, args.plot)
                print(f"plot: {args.plot} ({points} points)", file=sys.stderr)
            if args.watch is None or not report.enabled:
                return EXIT_OK if report.enabled else EXIT_FAIL
            time.sleep(args.watch)
            print()


def _cmd_search(args: argparse.Namespace) -> int:
    from skulens.v1 import recognition_pb2

    with _client(args) as c:
        mode = f"TEXT_SEARCH_MODE_{(args.mode or 'unspecified').upper()}"
        resp = c.search_text(args.texts, _options(args), mode=recognition_pb2.TextSearchMode.Value(mode))
    if args.json:
        print(json.dumps(_to_json(resp), indent=2))
    else:
        print(
            _table(
                [_recognition_row(r.text, r.recognition) for r in resp.results],
                ["text", "verdict", "product", "name", "score", "next"],
            )
        )
    return EXIT_OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a labelled set through the server (`skulens.client.evaluate`): table, JSON, PNG plot."""
    from tqdm import tqdm

    from skulens.client.evaluate import evaluate_photos, format_report, load_labelled, report_json
    from skulens.v1 import recognition_pb2

    photos = load_labelled(args.source, args.unknown_name, args.group_by)  # checked before any call
    if not 0.0 < args.target_false_accept < 1.0:
        raise ConfigError("--target-false-accept must be in (0, 1)", field="--target-false-accept")
    options = recognition_pb2.EvaluateOptions(
        search=_options(args), target_false_accept=args.target_false_accept, include_queries=args.per_photo
    )
    with _client(args) as c:
        per_message = max(1, min(32, c.server_info().limits.max_images_per_request))
        with tqdm(total=len(photos), unit="img", desc="evaluating", disable=args.no_progress,
                  dynamic_ncols=True) as bar:
            resp = evaluate_photos(c, photos, options, per_message=per_message, timeout=args.timeout or 86_400.0,
                                   progress=bar.update)
    print(format_report(resp))
    if args.json_file is not None:
        args.json_file.write_text(json.dumps(report_json(resp), indent=2) + "\n", encoding="utf-8")
        print(f"JSON written to {args.json_file}", file=sys.stderr)
    if args.plot is not None:
        from skulens.client.plot import plot_report

        plot_report(resp.report, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return EXIT_OK


def _cmd_enroll(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from skulens.client.enroll import enroll, format_warnings, load_plan

    plans = load_plan(args.source)
    files = sum(len(p.paths) for p in plans)
    bar = tqdm(total=files, unit="img", desc="checking", disable=args.no_progress, dynamic_ncols=True)
    with _client(args) as c:

        def total(n: int) -> None:  # the files are hashed and compared: now the sending
            bar.refresh()  # show the check's end before the bar turns to the sending
            bar.set_description("enrolling")
            bar.reset(total=n)

        try:
            report = enroll(
                c, plans, resume=not args.no_resume, batch=args.batch, progress=bar.update, on_total=total,
                checked=bar.update,
            )
        finally:
            bar.close()
    if args.json:
        print(json.dumps(report.__dict__, indent=2))
    else:
        print(
            f"products: {report.products} ({report.products_created} new); images: {report.images}; "
            f"already enrolled: {report.skipped}; added: {report.added}; duplicates: {report.duplicates}; "
            f"failed: {report.failed}"
        )
        for e in report.errors[:50]:
            print(f"  failed: {e}", file=sys.stderr)
        for line in format_warnings(report):
            print(line, file=sys.stderr)
    return EXIT_OK if report.failed == 0 else EXIT_FAIL


def _cmd_catalog(args: argparse.Namespace) -> int:
    if args.catalog_cmd == "check":
        return _cmd_catalog_check(args)
    if args.catalog_cmd == "copy":
        return _cmd_catalog_copy(args)
    if args.catalog_cmd == "doctor":
        return _cmd_catalog_doctor(args)
    if args.catalog_cmd == "purge":
        return _cmd_catalog_purge(args)
    with _client(args) as c:
        if args.catalog_cmd == "stats":
            st = c.stats()
            d = _to_json(st)
            print(json.dumps(d, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in d.items()))
        elif args.catalog_cmd == "list":
            products = list(c.list_products(category=args.category))
            if args.json:
                print(json.dumps([_to_json(p) for p in products], indent=2))
            else:
                print(
                    _table(
                        [
                            [
                                p.product_id,
                                p.display_name,
                                p.category,
                                p.reference_count,
                                ";".join(f"{k}={v}" for k, v in sorted(p.labels.items())),
                            ]
                            for p in products
                        ],
                        ["product_id", "name", "category", "refs", "labels"],
                    )
                )
        elif args.catalog_cmd == "get":
            got = c.get_product(args.product_id)
            if got is None:
                print(f"no product {args.product_id!r}", file=sys.stderr)
                return EXIT_FAIL
            print(json.dumps(_to_json(got), indent=2))
        elif args.catalog_cmd == "delete":
            for rid in args.reference or []:
                c.delete_reference(rid)
                print(f"deleted reference {rid}")
            for pid in args.product_ids:
                print(f"deleted product {pid} ({c.delete_product(pid)} references)")
    return EXIT_OK


def _migration_lines(st: Any) -> list[str]:
    """A MigrationStatus as `key: value` lines for people."""
    def space(sp: Any) -> str:
        where = f" from {sp.model_dir}" if sp.model_dir else ""
        return f"{sp.fingerprint} (dim {sp.dim}{where}; {'loaded' if sp.loaded_here else 'NOT loaded'} here)"

    lines = [f"phase: {st.phase}", f"serving: {space(st.serving)}"]
    if st.HasField("candidate"):
        lines.append(f"candidate: {space(st.candidate)}; shadow share {st.shadow_share:g}")
    if st.HasField("previous"):
        lines.append(f"previous: {space(st.previous)} (kept until `skulens migrate finish`; switch back to undo)")
    if st.HasField("backfill"):
        b = st.backfill
        pct = 100.0 * b.embedded / b.live_references if b.live_references else 100.0
        lines.append(f"back-fill: {b.embedded}/{b.live_references} references ({pct:.1f} %), {b.pending} pending, "
                     f"{b.unembeddable} without a stored image; here: {'running' if b.running_here else 'idle'}, "
                     f"{b.embedded_here} embedded, {b.images_per_second:.1f} images/s")
        if b.unembeddable_reference_ids:
            lines.append("  cannot back-fill (no stored image): reference ids "
                         + ", ".join(map(str, b.unembeddable_reference_ids)))
    sh = st.shadow
    if sh.compared:
        lines.append(f"shadow (this replica): {sh.compared} compared, top-1 agreement {100 * sh.top1_agreement:.1f} %, "
                     f"score shift mean {sh.mean_score_shift:+.4f} (p05 {sh.score_shift_p05:+.4f}, p50 "
                     f"{sh.score_shift_p50:+.4f}, p95 {sh.score_shift_p95:+.4f}); suggested unknown threshold for "
                     f"the candidate {sh.suggested_unknown_threshold:.4f} (keeps {100 * sh.unknown_share:.1f} % "
                     f"UNKNOWN); {sh.shadow_errors} errors")
    lines.append(f"catalog version: {st.catalog_version}")
    return lines


def _cmd_migrate_report(args: argparse.Namespace) -> int:
    """The shadow comparison, and with --labelled both models evaluated side by side on held-out photos."""
    from skulens.client.evaluate import evaluate_photos, format_side_by_side, load_labelled, report_json
    from skulens.v1 import recognition_pb2

    photos = load_labelled(args.labelled) if args.labelled is not None else []  # checked before any call
    reports = []
    with _client(args) as c:
        st = c.get_migration()
        other = st.candidate if st.HasField("candidate") else st.previous if st.HasField("previous") else None
        if photos and other is None:
            print("no migration: nothing to compare the serving model with", file=sys.stderr)
            return EXIT_FAIL
        if photos and other is not None:
            per_message = max(1, min(32, c.server_info().limits.max_images_per_request))
            name = "candidate" if st.HasField("candidate") else "previous"
            for label, fp in (("serving", st.serving.fingerprint), (name, other.fingerprint)):
                options = recognition_pb2.EvaluateOptions(model_fingerprint=fp)
                reports.append((label, evaluate_photos(c, photos, options, per_message=per_message,
                                                       timeout=args.timeout or 86_400.0)))
    if args.json:
        print(json.dumps({"status": _to_json(st), "evaluations": {n: report_json(r) for n, r in reports}}, indent=2))
    else:
        print("\n".join(_migration_lines(st)))
        if reports:
            print()
            print(format_side_by_side(reports))
    return EXIT_OK


def _cmd_migrate(args: argparse.Namespace) -> int:
    if args.migrate_cmd == "report":
        return _cmd_migrate_report(args)
    with _client(args) as c:
        if args.migrate_cmd == "start":
            st = c.start_migration(args.model_dir, args.shadow_share)
        elif args.migrate_cmd == "switch":
            st = c.switch_model(args.fingerprint or c.get_migration().candidate.fingerprint)
        elif args.migrate_cmd == "abort":
            st = c.abort_migration()
        elif args.migrate_cmd == "finish":
            st = c.finish_migration()
        else:
            st = c.get_migration()
            while args.wait and st.phase == "candidate" and st.backfill.pending > 0:
                if not args.json:
                    print(f"back-fill: {st.backfill.embedded}/{st.backfill.live_references}", file=sys.stderr)
                time.sleep(args.wait)
                st = c.get_migration()
        print(json.dumps(_to_json(st), indent=2) if args.json else "\n".join(_migration_lines(st)))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- offline
def _cmd_catalog_check(args: argparse.Namespace) -> int:
    """Offline full check of a catalog directory (server stopped): 0 healthy, 1 not."""
    from skulens.catalog.integrity import check_catalog

    fingerprint: str | None = None
    dim: int | None = None
    if args.model is not None:
        from skulens.model.manifest import load_manifest

        manifest = load_manifest(args.model)
        fingerprint, dim = manifest.fingerprint, manifest.embedding_dim
    report = check_catalog(args.data, fingerprint=fingerprint, dim=dim)
    if args.json:
        findings = [{"level": level, "text": text} for level, text in report.lines]
        print(json.dumps({"path": str(report.path), "healthy": report.healthy, "findings": findings}, indent=2))
    else:
        print(report.format())
    return EXIT_OK if report.healthy else EXIT_FAIL


def _cmd_catalog_copy(args: argparse.Namespace) -> int:
    """Offline copy of one catalog into another (embedded ⇄ PostgreSQL), resumable."""
    from tqdm import tqdm

    from skulens.catalog.copy import copy_catalog
    from skulens.catalog.location import open_catalog, parse_location
    from skulens.catalog.settings import CatalogSettings
    from skulens.model.manifest import load_manifest

    manifest = load_manifest(args.model)
    fp, dim = manifest.fingerprint, manifest.embedding_dim
    src_loc, dst_loc = parse_location(args.source, "--from"), parse_location(args.target, "--to")
    if src_loc == dst_loc:
        raise ConfigError("--from and --to name the same catalog", field="--to")
    source = open_catalog(src_loc, fingerprint=fp, dim=dim, settings=CatalogSettings())
    try:
        target = open_catalog(dst_loc, fingerprint=fp, dim=dim, settings=CatalogSettings())
        try:
            with tqdm(total=source.stats().references, unit="ref", desc="copying", disable=args.no_progress,
                      dynamic_ncols=True) as bar:
                report = copy_catalog(source, target, batch=args.batch, progress=bar.update)
        finally:
            target.close()
    finally:
        source.close()
    print(json.dumps(report.__dict__) if args.json else
          f"copied {src_loc.redacted()} → {dst_loc.redacted()}: {report.products} products; "
          f"{report.references} references read, {report.copied} written, {report.skipped} already there; "
          f"{report.seconds:.1f} s")
    return EXIT_OK


def _cmd_catalog_doctor(args: argparse.Namespace) -> int:
    """Offline look-alike products, products with few references (`skulens.catalog.doctor`): 0 clean, 1 findings."""
    from skulens.catalog.doctor import diagnose
    from skulens.catalog.location import open_catalog, parse_location
    from skulens.catalog.settings import CatalogSettings
    from skulens.model.manifest import load_manifest

    manifest = load_manifest(args.model)
    settings = CatalogSettings(snapshot=False, **({} if args.near_duplicate_threshold is None else
                                                  {"near_duplicate_threshold": args.near_duplicate_threshold}))
    catalog = open_catalog(parse_location(args.catalog, "--catalog"), fingerprint=manifest.fingerprint,
                           dim=manifest.embedding_dim, settings=settings)
    try:
        report = diagnose(catalog, pair_threshold=args.pair_threshold, min_references=args.min_references)
    finally:
        catalog.close()
    print(json.dumps(report.to_json(), indent=2) if args.json else report.format(args.limit))
    return EXIT_OK if report.clean else EXIT_FAIL


def _cmd_catalog_purge(args: argparse.Namespace) -> int:
    """Purge deletions older than --older-than seconds for good (`skulens.catalog.purge.purge_location`)."""
    from skulens.catalog.location import parse_location
    from skulens.catalog.purge import purge_location

    identity = None
    if args.model is not None:
        from skulens.model.manifest import load_manifest

        manifest = load_manifest(args.model)
        identity = (manifest.fingerprint, manifest.embedding_dim)
    location = parse_location(args.catalog, "--catalog")
    report = purge_location(location, older_than_seconds=args.older_than, limit=args.batch, vacuum=args.vacuum,
                            identity=identity)
    if args.json:
        print(json.dumps({**report.__dict__, "catalog": location.redacted()}))
    else:
        print(f"{location.redacted()}: {report.format()}")
    return EXIT_FAIL if report.skipped else EXIT_OK


def _calibration_settings(args: argparse.Namespace) -> Any:
    """The server settings `calibrate` uses (model, catalog, thresholds; environment included)."""
    from skulens.service.settings import Settings

    return Settings.from_sources(None, model_dir=args.model, data_dir=args.data, catalog=args.catalog or "")


def _open_calibration_catalog(args: argparse.Namespace) -> Any:
    """The catalog of `calibrate --data DIR` or `--catalog URL`, through the `CatalogBackend` protocol."""
    import importlib

    from skulens.catalog.location import open_catalog, parse_location
    from skulens.model.manifest import load_manifest

    settings = _calibration_settings(args)
    location = parse_location(args.catalog, "--catalog") if args.catalog else settings.catalog_location()
    # the backend first: a missing extra (faiss, psycopg) is named before anything else is checked
    importlib.import_module("skulens.catalog.postgres" if location.kind == "postgresql" else "skulens.catalog.catalog")
    manifest = load_manifest(args.model)
    return open_catalog(location, fingerprint=manifest.fingerprint, dim=manifest.embedding_dim,
                        settings=settings.catalog_settings())


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from skulens.catalog.calibrate import calibrate

    if not 0.0 < args.target_false_accept < 1.0:
        raise ConfigError(f"--target-false-accept must be in (0, 1), got {args.target_false_accept}",
                          field="--target-false-accept")
    if args.labelled is not None:
        return _calibrate_held_out(args)
    if args.apply:
        raise ConfigError("--apply needs --labelled: leave-one-out over the catalog's own references does not predict "
                          "how new photos score (they look far less alike), so its thresholds are not stored",
                          field="--apply")
    from skulens.catalog.reference_set import for_calibration

    cat = _open_calibration_catalog(args)
    try:
        report = calibrate(for_calibration(cat))
    finally:
        cat.close()
    print(report.format_table())
    return EXIT_OK


def _calibrate_held_out(args: argparse.Namespace) -> int:
    """`calibrate --labelled SET`: embed held-out labelled photos with the model, search the catalog, and suggest
    thresholds from how they scored (photos that fail to decode are left out, and counted)."""
    import numpy as np
    from tqdm import tqdm

    from skulens.catalog.calibrate import calibrate_held_out
    from skulens.catalog.evaluation import catalog_categories, held_out_scores, query_from_result
    from skulens.client.evaluate import load_labelled

    try:
        photos = load_labelled(args.labelled, args.unknown_name)
    except ValueError as exc:
        raise ConfigError(str(exc), field="--labelled") from None
    settings = _calibration_settings(args)

    async def embed_all() -> list[Any]:
        from skulens.inference.engine import Engine

        engine = await asyncio.to_thread(Engine.load, args.model, settings.engine_options())
        out: list[Any] = []
        try:
            with tqdm(total=len(photos), unit="img", desc="embedding", disable=args.no_progress) as bar:
                for at in range(0, len(photos), 64):
                    chunk = photos[at : at + 64]
                    out += await engine.embed_images([p.path.read_bytes() for p in chunk])
                    bar.update(len(chunk))
        finally:
            await engine.close()
        return out

    vectors = asyncio.run(embed_all())
    good = [(p, v) for p, v in zip(photos, vectors, strict=True) if isinstance(v, np.ndarray)]
    from skulens.catalog.adapted import AdaptedMatcher
    from skulens.catalog.thresholds import VerdictThresholds

    matcher = AdaptedMatcher(replace(settings.head_settings(), enabled=args.matching == "adapted"))
    cat = _open_calibration_catalog(args)
    try:
        categories = catalog_categories(cat)
        found = matcher.search(cat, np.stack([v for _, v in good]), top_k=cat.settings.max_top_k) if good else []
        labels = [p.product_id if p.product_id in categories else None for p, _ in good]
        own, other, out = held_out_scores([query_from_result(r, t) for r, t in zip(found, labels, strict=True)])
        in_force = matcher.thresholds(cat)
        report = calibrate_held_out(own, other, out, in_force, products=len(categories),
                                    target_false_accept=args.target_false_accept)
        print(f"matching: {matcher.matching}; thresholds in force: unknown {in_force.unknown_threshold:.3f}, "
              f"margin {in_force.ambiguity_margin:.3f} (from the {in_force.source})")
        print(report.format_table())
        if args.apply:
            if not len(out) or not len(own):
                raise ConfigError("--apply needs labelled photos of catalog products and of products outside the "
                                  "catalog (labelled --unknown-name): without both the false-accept / false-reject "
                                  "trade-off is not measured", field="--apply")
            entry = VerdictThresholds(
                matcher.matching, cat.fingerprint, report.suggested_unknown_threshold,
                report.suggested_ambiguity_margin,
                f"calibrate --labelled: {len(own)} catalog photos, {len(out)} outside, target false accepts "
                f"{100 * args.target_false_accept:g} %", time.time())
            cat.set_verdict_thresholds(entry)
            print(f"stored for {matcher.matching} matching with model {cat.fingerprint}: unknown_threshold "
                  f"{entry.unknown_threshold:.3f}, ambiguity_margin {entry.ambiguity_margin:.3f} (servers use them "
                  "within a second; a request's SearchOptions still override them)")
    finally:
        cat.close()
    if len(good) < len(photos):
        print(f"note: {len(photos) - len(good)} photos could not be embedded and were left out", file=sys.stderr)
    return EXIT_OK


def _cmd_reembed(args: argparse.Namespace) -> int:
    """Re-embed a catalog with a new model: the embedded catalog's staged swap, or (a shared catalog, a migration
    under way, --keep-previous) a migration done offline (`skulens.catalog.reembed_migration`)."""
    import importlib
    import threading

    from tqdm import tqdm

    from skulens.catalog.migration_state import ModelSpace
    from skulens.catalog.reembed_migration import (
        ReembedBlocked,
        StagedReembed,
        open_for_reembed,
        reembed_by_migration,
    )
    from skulens.service.settings import Settings

    settings = Settings.from_sources(None, model_dir=args.model, data_dir=args.data, catalog=args.catalog or "")
    location = settings.catalog_location()
    assert location is not None  # --data or --catalog is required
    # the backend first: a missing extra (faiss, psycopg) is named before the model loads
    importlib.import_module("skulens.catalog.postgres" if location.kind == "postgresql" else "skulens.catalog.catalog")

    async def run() -> Any:
        from skulens.inference.engine import Engine

        engine = await asyncio.to_thread(Engine.load, args.model, settings.engine_options())
        try:
            target = ModelSpace(engine.fingerprint, engine.dim, str(Path(args.model).resolve()))
            cat, migrate = await asyncio.to_thread(open_for_reembed, location, target, settings.catalog_settings(),
                                                   keep_previous=args.keep_previous)
            loop = asyncio.get_running_loop()
            stop = threading.Event()
            bar = tqdm(total=0, unit="img", desc="re-embedding", disable=args.no_progress)

            def embed(images: list[bytes], regions: list[Any] | None = None) -> list[Any]:
                from skulens.imaging.preprocess import Box

                boxes = [[Box(*r)] if r else None for r in regions] if regions else None
                return asyncio.run_coroutine_threadsafe(engine.embed_images(images, regions=boxes), loop).result()

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            try:
                if migrate or not isinstance(cat, StagedReembed):
                    return await asyncio.to_thread(reembed_by_migration, cat, target, embed, batch_size=args.batch,
                                                   keep_previous=args.keep_previous, progress=progress, stop=stop)
                return await asyncio.to_thread(
                    cat.reembed, engine.fingerprint, engine.dim, embed, batch_size=args.batch, progress=progress
                )
            finally:
                stop.set()
                bar.close()
                await asyncio.to_thread(cat.close)
        finally:
            await engine.close()

    try:
        report = asyncio.run(run())
    except ReembedBlocked as exc:
        for d in exc.references:
            print(f"  cannot re-embed reference {d.reference_id} of {d.product_id}: {d.reason}", file=sys.stderr)
        if exc.count > len(exc.references):
            print(f"  ... {exc.count - len(exc.references)} more", file=sys.stderr)
        print(f"skulens: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAIL
    print(
        f"re-embedded {report.reembedded} references ({report.resumed} resumed) "
        f"from {report.old_fingerprint} "
        f"to {report.new_fingerprint} in {report.seconds:.1f} s; dropped {len(report.dropped)}"
    )
    for d in report.dropped[:50]:
        print(f"  dropped reference {d.reference_id} of {d.product_id}: {d.reason}", file=sys.stderr)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser (`skulens.export.cli` imports torch only when an export runs; without a runtime
    extra, `serve` only says which extra it needs)."""
    parser = argparse.ArgumentParser(prog="skulens", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    try:
        from skulens.service.settings import add_serve_arguments
    except ModuleNotFoundError as exc:  # the settings load the catalog, which loads FAISS
        if not _is_missing_runtime(exc):
            raise
        p = sub.add_parser("serve", help="run the gRPC server (needs the 'cpu' or 'gpu' extra)")
        p.set_defaults(func=lambda _a, _e=exc: _missing_runtime("serve", _e))
    else:
        p = sub.add_parser(
            "serve",
            help="run the gRPC server",
            description="Run the gRPC server. Every option "
            "can also be set with its SKULENS_* environment variable; flags win.",
        )
        add_serve_arguments(p)
        p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("enroll", help="enrol a folder <product_id>/<images> or a CSV into a server")
    p.add_argument(
        "source",
        type=Path,
        help="folder of product folders, or CSV product_id,image_path[,name,"
        "category,labels] (labels k=v;k=v)",
    )
    p.add_argument("--batch", type=int, default=256, help="images per AddReferenceImages call (default 256)")
    p.add_argument("--no-resume", action="store_true", help="do not skip images the server already has")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_client_args(p)
    p.set_defaults(func=_cmd_enroll)

    p = sub.add_parser("recognize", help="recognise image files (files, folders, list files)")
    p.add_argument(
        "images", nargs="+", type=Path,
        help="image files, folders (every image below) or list files (.txt/.lst, one path a line); sent in "
        "batches of the server's per-request limit",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--source", default="", help="where the photos come from (lane, store, app), for drift monitoring")
    _add_search_args(p)
    _add_client_args(p)
    p.set_defaults(func=_cmd_recognize)

    p = sub.add_parser("monitor", help="drift and anomaly signals per source: a table, and a PNG plot over time")
    p.add_argument("--source", default="", help="only this source (default: every source)")
    p.add_argument("--plot", type=Path, metavar="PNG", help="also draw the signals over time into this PNG file")
    p.add_argument("--history", type=int, default=240, help="judged windows per source for --plot / --json")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="print the table again every SECONDS, until ^C")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    _add_client_args(p)
    p.set_defaults(func=_cmd_monitor)

    p = sub.add_parser("search", help="search the catalog by text")
    p.add_argument("texts", nargs="+", help="text queries")
    p.add_argument("--mode", choices=["vector", "keyword", "hybrid"], default=None,
                   help="text tower, full-text keywords, or both fused (default: hybrid with a text tower, "
                   "else keyword)")
    _add_search_args(p)
    _add_client_args(p)
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser(
        "evaluate",
        help="measure recognition on a labelled photo set (folder or CSV) through the server",
        description="Send labelled photos to the server's Evaluate call and print top-1 / top-5 (overall and per "
        "group), the verdict table, the AUROC of in- against out-of-catalog photos, the thresholds that meet a "
        "target false-accept rate, sampled curves and the most confused products. SET: a folder "
        "<product_id>/<images> at any depth (the folder an image lies in names its product; a folder named "
        "--unknown-name holds photos of products outside the catalog) or a CSV path,product_id[,group].",
    )
    p.add_argument("source", type=Path, metavar="SET", help="labelled folder or CSV")
    p.add_argument("--unknown-name", default="_unknown", help="folder name / CSV label of photos outside the catalog")
    p.add_argument(
        "--group-by", choices=("category", "folder"), default="category",
        help="per-group table by the product's catalog category, or by the first folder under SET",
    )
    p.add_argument("--target-false-accept", type=float, default=0.05, help="false-accept rate to meet (default 0.05)")
    p.add_argument("--json", dest="json_file", type=Path, metavar="FILE", help="also write the report as JSON")
    p.add_argument("--plot", type=Path, metavar="FILE", help="also draw the curves as a PNG")
    p.add_argument("--per-photo", action="store_true", help="include each photo's answer in the JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--top-k", type=int, default=0, help="products per photo (at least 5; default: server default)")
    p.add_argument("--min-score", type=float, default=0.0, help="drop matches under this score")
    p.add_argument("--category", default="", help="only this category")
    p.add_argument("--label", action="append", default=[], metavar="K=V", help="only products with this label")
    _add_client_args(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("catalog", help="catalog administration: stats, list, get, delete, check, copy, doctor, purge")
    csub = p.add_subparsers(dest="catalog_cmd", required=True, metavar="ACTION")
    c = csub.add_parser("stats", help="catalog statistics")
    c.add_argument("--json", action="store_true")
    _add_client_args(c)
    c = csub.add_parser("list", help="list products")
    c.add_argument("--category", default="")
    c.add_argument("--json", action="store_true")
    _add_client_args(c)
    c = csub.add_parser("get", help="one product and its references (JSON)")
    c.add_argument("product_id")
    _add_client_args(c)
    c = csub.add_parser("delete", help="delete products (and/or references with --reference)")
    c.add_argument("product_ids", nargs="*", help="products to delete")
    c.add_argument("--reference", type=int, action="append", help="a reference id to delete (repeatable)")
    _add_client_args(c)
    c = csub.add_parser(
        "check",
        help="offline: full integrity check of a catalog directory (server stopped)",
        description="Run SQLite's full integrity_check on catalog.db and compare the index snapshot with the "
        "store (checksum, reference ids, count, vectors). Exit 0 when healthy, 1 when not, 2 on usage errors.",
    )
    c.add_argument("--data", type=Path, required=True, help="catalog directory")
    c.add_argument("--model", type=Path, help="model directory to compare the catalog's model with (optional)")
    c.add_argument("--json", action="store_true", help="print the findings as JSON")
    c = csub.add_parser(
        "copy",
        help="offline: copy a catalog into another (embedded ⇄ PostgreSQL), resumable",
        description="Copy every product and reference (embedding, stored image, source, hash) of one catalog into "
        "another: sqlite:///DIR or a directory, or postgresql://... . Safe to run again after an interruption: "
        "what the target has already is skipped. Both must hold the --model's embeddings.",
    )
    c.add_argument("--from", dest="source", required=True, help="the catalog to read")
    c.add_argument("--to", dest="target", required=True, help="the catalog to write (created if new)")
    c.add_argument("--model", type=Path, required=True, help="model directory whose embeddings both catalogs hold")
    c.add_argument("--batch", type=int, default=256, help="references read per step")
    c.add_argument("--no-progress", action="store_true")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c = csub.add_parser(
        "doctor",
        help="offline: look-alike product pairs and products with too few references",
        description="Compare every reference of a catalog with every other one and list look-alike product pairs "
        "(centroid cosine >= --pair-threshold, a reference closer to the other product than to its own, or two "
        "references >= --near-duplicate-threshold apart), with their scores and closest references, and the "
        "products with fewer than --min-references references. Reads only (embedded catalog: stop the server "
        "first, as for `check`). Exit 0 when clean, 1 when there are findings, 2 on usage errors.",
    )
    c.add_argument("--catalog", "--data", dest="catalog", required=True,
                   help="the catalog: sqlite:///DIR or a directory, or postgresql://...")
    c.add_argument("--model", type=Path, required=True, help="model directory whose embeddings the catalog holds")
    c.add_argument("--pair-threshold", type=float, default=0.9,
                   help="centroid cosine from which two products look alike (default 0.9)")
    c.add_argument("--near-duplicate-threshold", type=float, default=None,
                   help="reference cosine from which two products' references are near-duplicates "
                   "(default: the catalog setting, 0.93)")
    c.add_argument("--min-references", type=int, default=3, help="fewer references than this is a finding (3)")
    c.add_argument("--limit", type=int, default=20, help="pairs and products printed (default 20; --json: all)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c = csub.add_parser(
        "purge",
        help="remove deleted products and references for good (shared catalog; safe while servers run)",
        description="A PostgreSQL catalog keeps deleted products and references as tombstones (and their vectors "
        "in the HNSW graph) until purged; servers purge them on their own (--purge-after-seconds, "
        "--purge-interval-seconds). This purges those deleted more than --older-than seconds ago now, in short "
        "transactions, without changing the catalog version. An embedded catalog deletes at once: nothing to do. "
        "Exit 0 when done, 1 when another process was purging (nothing done), 2 on usage errors.",
    )
    c.add_argument("--catalog", "--data", dest="catalog", required=True,
                   help="the catalog: postgresql://... (or sqlite:///DIR / a directory)")
    c.add_argument("--older-than", type=float, default=86_400.0, metavar="SECONDS",
                   help="purge what was deleted more than SECONDS ago (default 86400: one day)")
    c.add_argument("--batch", type=int, default=500, help="references (or products) per transaction (500)")
    c.add_argument("--vacuum", action="store_true",
                   help="VACUUM the tables afterwards (cleans the HNSW graph now rather than at autovacuum)")
    c.add_argument("--model", type=Path,
                   help="model directory to open the catalog for (optional; default: the catalog's own model)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_catalog)

    p = sub.add_parser(
        "migrate",
        help="zero-downtime model migration of a running server's catalog: start, status, switch, abort, finish",
        description="Move a serving catalog to another model without downtime: `start` back-fills the new model's "
        "embeddings beside the old ones while the old model serves (and a share of live calls is also answered by "
        "the candidate, for comparison); `status` shows progress and the shadow comparison; `switch` makes every "
        "replica serve the new model at once (switch back to undo); `finish` drops the old model's embeddings; "
        "`abort` drops the candidate. Needs scope catalog:write.",
    )
    msub = p.add_subparsers(dest="migrate_cmd", required=True, metavar="ACTION")
    m = msub.add_parser("start", help="load a model (a directory on the server) as candidate and back-fill it")
    m.add_argument("model_dir", help="the candidate model directory, as the server sees it")
    m.add_argument("--shadow-share", type=float, default=0.05,
                   help="share of live Recognize calls the candidate also answers (0..1; default 0.05)")
    m = msub.add_parser("status", help="state, back-fill progress and the shadow comparison")
    m.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="poll every SECONDS until the back-fill is done")
    m = msub.add_parser("switch", help="serve the candidate (or, with its fingerprint, the previous model: undo)")
    m.add_argument("fingerprint", nargs="?", default="", help="model to serve (default: the candidate)")
    m = msub.add_parser("report", help="the shadow comparison; with --labelled, both models evaluated side by side")
    m.add_argument("--labelled", type=Path, metavar="SET",
                   help="held-out labelled photos (a folder <product_id>/<images> or a CSV, as `skulens evaluate`)")
    msub.add_parser("abort", help="drop the candidate (before a switch)")
    msub.add_parser("finish", help="drop the previous model (after a switch; no undo from here)")
    for m in msub.choices.values():
        m.add_argument("--json", action="store_true")
        _add_client_args(m)
    p.set_defaults(func=_cmd_migrate)

    p = sub.add_parser(
        "calibrate",
        help="offline: suggest thresholds from the catalog's own references, or from held-out labelled photos",
    )
    p.add_argument("--model", type=Path, required=True, help="model directory the catalog was built with")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--data", type=Path, help="catalog directory (the embedded catalog)")
    where.add_argument("--catalog", help="the catalog: sqlite:///DIR or a directory, or postgresql://... "
                       "(leave-one-out on a shared catalog reads every live reference's embedding into memory: "
                       "references x dim x 4 bytes)")
    p.add_argument(
        "--labelled", type=Path, metavar="SET",
        help="held-out labelled photos (folder or CSV, as for `skulens evaluate`) instead of leave-one-out",
    )
    p.add_argument("--unknown-name", default="_unknown", help="with --labelled: label of photos outside the catalog")
    p.add_argument("--matching", choices=("adapted", "nearest"), default="adapted",
                   help="with --labelled: the matching mode to calibrate (the server's --matching; default adapted)")
    p.add_argument("--target-false-accept", type=float, default=0.01,
                   help="with --labelled: share of photos outside the catalog that may be accepted (default 0.01)")
    p.add_argument("--apply", action="store_true",
                   help="with --labelled: store the suggested thresholds in the catalog for this matching mode and "
                        "model (servers use them as their defaults)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser(
        "reembed", help="offline: re-embed the stored reference images with another model",
        description="Re-embed every stored reference image with a new model and switch the catalog to it. An "
        "embedded catalog (--data) is swapped in one transaction (references that cannot be re-embedded are dropped "
        "and listed). A shared catalog (--catalog postgresql://...), an embedded one with a migration under way, or "
        "--keep-previous run as a model migration done offline: the new model's space is back-filled from the "
        "stored images, then the catalog switches to it (and drops the old space unless --keep-previous); "
        "references without a stored image or whose image cannot be embedded block the switch: they are listed and "
        "the command exits 1, keeping what it back-filled. Either way a rerun after an interruption continues. Exit "
        "0 when switched, 1 when blocked, 2 on usage or catalog errors.",
    )
    p.add_argument("--model", type=Path, required=True, help="the NEW model directory")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--data", type=Path, help="catalog directory (the embedded catalog)")
    where.add_argument("--catalog", help="the catalog: sqlite:///DIR or a directory, or postgresql://...")
    p.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--keep-previous", action="store_true",
                   help="keep the old model's embeddings after the switch (a migration; `skulens migrate finish` "
                   "drops them, switching back undoes it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_reembed)

    try:
        from skulens.export import cli as export_cli
    except ImportError as exc:  # the export extra (torch) is not installed
        p = sub.add_parser("export", help="export a model (needs the 'export' extra)")
        p.set_defaults(func=lambda _a, _e=exc: _missing_export(_e))
    else:
        export_cli.add_export_parser(sub)
    return parser


def _missing_export(exc: ImportError) -> int:
    print(f"skulens export needs the export extra: pip install 'skulens[export]' ({exc})", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `skulens` console script; returns the exit status. Output piped into a reader that
    stops early (`| head`) ends the command quietly."""
    try:
        return _main(argv)
    except BrokenPipeError:
        with contextlib.suppress(OSError):  # Python's advice: point stdout at devnull so its flush at exit is quiet
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    offline = ("check", "copy", "doctor", "purge")
    if args.command in ("serve", "calibrate", "reembed") or getattr(args, "catalog_cmd", None) in offline:
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            return 130
        except Exception as exc:
            if isinstance(exc, STARTUP_ERRORS):
                print(f"skulens: error: {_one_line(exc)}", file=sys.stderr)
                return EXIT_USAGE
            if _is_missing_runtime(exc):
                command = args.command if args.command != "catalog" else f"catalog {args.catalog_cmd}"
                return _missing_runtime(command, exc)
            raise
    try:
        return int(args.func(args) or 0)
    except grpc.RpcError as exc:
        code = exc.code().name if isinstance(exc, grpc.Call) else "ERROR"
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        print(f"skulens: {code}: {details}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        raise  # main() ends quietly
    except Exception as exc:
        if isinstance(exc, ConfigError):
            print(f"skulens: {exc.message}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(exc, (OSError, ValueError, SkulensError)):
            print(f"skulens: {type(exc).__name__}: {exc}", file=sys.stderr)
            return EXIT_FAIL
        raise


def _one_line(exc: BaseException) -> str:
    """A domain error as one line (SQLite errors that escaped the catalog's mapping say what they are)."""
    raw = exc.message if isinstance(exc, SkulensError) else str(exc)
    text = " ".join(raw.splitlines()).strip() or type(exc).__name__
    return f"SQLite: {text}" if isinstance(exc, sqlite3.Error) else text


if __name__ == "__main__":
    sys.exit(main())
