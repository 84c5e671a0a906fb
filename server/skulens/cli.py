"""The `skulens` command: serve, enroll, recognize, search, catalog, calibrate, reembed, export.

Client commands (enroll, recognize, search, catalog) talk to a running server (`--addr`, `SKULENS_ADDR`);
calibrate and reembed work offline on a data directory and a model directory; export needs the `export` extra.
Exit status: 0 success, 1 failure (`catalog check`: the catalog is not healthy), 2 usage or configuration error.
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
from collections.abc import Sequence
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
                part = c.recognize([image_input(q.read_bytes(), id=str(q)) for q in chunk], options)
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


def _cmd_search(args: argparse.Namespace) -> int:
    with _client(args) as c:
        resp = c.search_text(args.texts, _options(args))
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


def _cmd_enroll(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from skulens.client.enroll import enroll, load_plan

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
    return EXIT_OK if report.failed == 0 else EXIT_FAIL


def _cmd_catalog(args: argparse.Namespace) -> int:
    if args.catalog_cmd == "check":
        return _cmd_catalog_check(args)
    if args.catalog_cmd == "copy":
        return _cmd_catalog_copy(args)
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


def _open_catalog(model_dir: Path, data_dir: Path, allow_mismatch: bool = False) -> Any:
    from skulens.catalog.catalog import Catalog
    from skulens.model.manifest import load_manifest
    from skulens.service.settings import Settings

    manifest = load_manifest(model_dir)
    settings = Settings.from_sources(None, model_dir=model_dir, data_dir=data_dir)
    return Catalog.open(
        data_dir,
        fingerprint=manifest.fingerprint,
        dim=manifest.embedding_dim,
        settings=settings.catalog_settings(),
        allow_fingerprint_mismatch=allow_mismatch,
    )


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from skulens.catalog.calibrate import calibrate

    cat = _open_catalog(args.model, args.data)
    try:
        report = calibrate(cat)
    finally:
        cat.close()
    print(report.format_table())
    return EXIT_OK


def _cmd_reembed(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from skulens.service.settings import Settings

    settings = Settings.from_sources(None, model_dir=args.model, data_dir=args.data)

    async def run() -> Any:
        from skulens.inference.engine import Engine

        engine = await asyncio.to_thread(Engine.load, args.model, settings.engine_options())
        loop = asyncio.get_running_loop()
        cat = await asyncio.to_thread(_open_catalog, args.model, args.data, True)
        bar = tqdm(total=0, unit="img", desc="re-embedding", disable=args.no_progress)

        def embed(images: list[bytes]) -> list[Any]:
            return asyncio.run_coroutine_threadsafe(engine.embed_images(images), loop).result()

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        try:
            return await asyncio.to_thread(
                cat.reembed, engine.fingerprint, engine.dim, embed, batch_size=args.batch, progress=progress
            )
        finally:
            bar.close()
            await asyncio.to_thread(cat.close)
            await engine.close()

    report = asyncio.run(run())
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
    _add_search_args(p)
    _add_client_args(p)
    p.set_defaults(func=_cmd_recognize)

    p = sub.add_parser("search", help="search the catalog by text")
    p.add_argument("texts", nargs="+", help="text queries")
    _add_search_args(p)
    _add_client_args(p)
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("catalog", help="catalog administration: stats, list, get, delete, check")
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
    p.set_defaults(func=_cmd_catalog)

    p = sub.add_parser("calibrate", help="offline: suggest thresholds from the catalog's own references")
    p.add_argument("--model", type=Path, required=True, help="model directory the catalog was built with")
    p.add_argument("--data", type=Path, required=True, help="catalog directory")
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("reembed", help="offline: re-embed the stored reference images with another model")
    p.add_argument("--model", type=Path, required=True, help="the NEW model directory")
    p.add_argument("--data", type=Path, required=True, help="catalog directory")
    p.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
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
    if args.command in ("serve", "calibrate", "reembed") or getattr(args, "catalog_cmd", None) in ("check", "copy"):
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            return 130
        except Exception as exc:
            if isinstance(exc, STARTUP_ERRORS):
                print(f"skulens: error: {_one_line(exc)}", file=sys.stderr)
                return EXIT_USAGE
            if _is_missing_runtime(exc):
                command = args.command if args.command != "catalog" else "catalog check"
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
