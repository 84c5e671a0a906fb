"""The `skulens` CLI against a real server: enroll (folder, CSV, resumable) → recognize (top-1 is the image's
own product), search, catalog stats/list/get/delete; offline reembed and calibrate; serve's exposure rule."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_harness import SHARED, RunningServer, make_settings, pattern_image

from skulens.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE, main
from skulens.client.client import ClientConfig
from skulens.client.enroll import parse_labels, plan_from_csv

N_PRODUCTS = 5


@pytest.fixture(scope="module")
def server(clip_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    srv = RunningServer(make_settings(tmp_path_factory.mktemp("cli") / "data"), SHARED.engine(clip_model_dir))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("enroll")
    for p in range(N_PRODUCTS):
        d = root / f"sku-{p}"
        d.mkdir()
        for v in range(2):
            (d / f"{v}.png").write_bytes(pattern_image(100 + p, variant=v))
    (root / "notes.txt").write_text("ignored: not a folder")
    return root


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def enrolled(server: RunningServer, folder: Path) -> tuple[int, str, str]:
    """`skulens enroll FOLDER` into the module's server, once: (exit code, stdout, stderr). Every test that needs
    the folder's products asks for it, so each also passes alone (`-k`)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["enroll", str(folder), "--addr", server.addr])
    return code, out.getvalue(), err.getvalue()


def test_enroll_folder_then_recognize_each_image(
    server: RunningServer, folder: Path, enrolled: tuple[int, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = enrolled
    assert code == EXIT_OK, err
    assert (
        f"products: {N_PRODUCTS} ({N_PRODUCTS} new); images: {2 * N_PRODUCTS}; already enrolled: 0; "
        f"added: {2 * N_PRODUCTS}" in out
    )
    assert "img/s" in err  # the tqdm bar shows the rate
    assert "checking: 100%" in err and f"{2 * N_PRODUCTS}/{2 * N_PRODUCTS}" in err  # hashing shows progress too
    images = sorted(folder.glob("*/*.png"))
    code, out, _ = run(capsys, "recognize", *map(str, images), "--json", "--addr", server.addr)
    assert code == EXIT_OK
    for path, result in zip(images, json.loads(out)["results"], strict=True):
        assert result["id"] == str(path)
        assert result["recognition"]["matches"][0]["product_id"] == path.parent.name


def test_enroll_is_resumable(
    server: RunningServer, folder: Path, enrolled: tuple[int, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "enroll", str(folder), "--addr", server.addr, "--no-progress")
    assert code == EXIT_OK and f"already enrolled: {2 * N_PRODUCTS}; added: 0" in out
    with server.client() as c:  # lose one reference: a re-run sends exactly that one again
        got = c.get_product("sku-1")
        assert got is not None
        c.delete_reference(got.references[0].reference_id)
    code, out, _ = run(capsys, "enroll", str(folder), "--addr", server.addr, "--no-progress", "--json")
    report = json.loads(out)
    assert (report["skipped"], report["added"], report["failed"]) == (2 * N_PRODUCTS - 1, 1, 0)


def test_enroll_csv_with_metadata(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(pattern_image(200))
    (tmp_path / "imgs" / "b.png").write_bytes(pattern_image(201))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    csv_path = tmp_path / "catalog.csv"
    csv_path.write_text(
        "product_id,image_path,name,category,labels\n"
        "oat-1l,imgs/a.png,Oat drink 1 l,drinks,brand=oatly;size=1l\n"
        "oat-1l,imgs/b.png,,,\n"
        "broken,bad.png,Broken,,\n"
    )
    plans = plan_from_csv(csv_path)
    assert [(p.product_id, len(p.paths)) for p in plans] == [("oat-1l", 2), ("broken", 1)]
    code, out, err = run(capsys, "enroll", str(csv_path), "--addr", server.addr, "--no-progress")
    assert code == EXIT_FAIL and "added: 2" in out and "failed: 1" in out and "bad.png" in err
    code, out, _ = run(capsys, "catalog", "get", "oat-1l", "--addr", server.addr)
    got = json.loads(out)
    assert got["product"]["display_name"] == "Oat drink 1 l" and got["product"]["category"] == "drinks"
    assert got["product"]["labels"] == {"brand": "oatly", "size": "1l"}
    assert len(got["references"]) == 2


def test_parse_labels() -> None:
    assert parse_labels("a=1; b = x=y ;") == {"a": "1", "b": "x=y"}
    with pytest.raises(ValueError):
        parse_labels("novalue")


def test_recognize_table_and_bad_image(
    server: RunningServer, folder: Path, enrolled: tuple[int, str, str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    code, out, err = run(
        capsys, "recognize", str(folder / "sku-0" / "0.png"), str(bad), "--top-k", "2", "--addr", server.addr
    )
    assert code == EXIT_FAIL
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["image", "verdict", "product"]
    assert "sku-0" in lines[2] and "INVALID_ARGUMENT" in lines[3]
    assert "RANDOM WEIGHTS" in err


def test_search(server: RunningServer, enrolled: tuple[int, str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "search", "oat drink", "--top-k", "2", "--json", "--addr", server.addr)
    assert code == EXIT_OK
    assert len(json.loads(out)["results"][0]["recognition"]["matches"]) == 2


def test_search_modes(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    with server.client() as c:
        c.upsert_product("kw-1", "Zebra crackers", description="Crunchy, salted")
    try:
        code, out, _ = run(capsys, "search", "zebra crunchy", "--mode", "keyword", "--json", "--addr", server.addr)
        got = json.loads(out)
        assert code == EXIT_OK and got["mode"] == "TEXT_SEARCH_MODE_KEYWORD"
        assert [m["product_id"] for m in got["results"][0]["recognition"]["matches"]] == ["kw-1"]
        code, out, _ = run(capsys, "search", "zebra", "--mode", "vector", "--json", "--addr", server.addr)
        assert code == EXIT_OK and json.loads(out)["mode"] == "TEXT_SEARCH_MODE_VECTOR"
    finally:
        with server.client() as c:
            c.delete_product("kw-1")


def test_catalog_commands(
    server: RunningServer, enrolled: tuple[int, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "catalog", "stats", "--json", "--addr", server.addr)
    stats = json.loads(out)
    assert code == EXIT_OK and int(stats["product_count"]) >= N_PRODUCTS and stats["dim"] == 512
    code, out, _ = run(capsys, "catalog", "list", "--addr", server.addr)
    assert code == EXIT_OK and "sku-3" in out
    code, out, _ = run(capsys, "catalog", "delete", "sku-4", "--addr", server.addr)
    assert code == EXIT_OK and "deleted product sku-4 (2 references)" in out
    code, _, err = run(capsys, "catalog", "delete", "sku-4", "--addr", server.addr)
    assert code == EXIT_FAIL and "NOT_FOUND" in err
    code, _, err = run(capsys, "catalog", "get", "sku-4", "--addr", server.addr)
    assert code == EXIT_FAIL


def test_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "catalog", "stats", "--addr", "127.0.0.1:1", "--timeout", "2")
    assert code == EXIT_FAIL and "UNAVAILABLE" in err


def test_reembed_and_calibrate_offline(
    server: RunningServer, enrolled: tuple[int, str, str], effnet_model_dir: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Copy the CLI catalog (ViT-B/32 space) and re-embed it with EfficientNet-Lite0, then calibrate it."""
    import shutil

    from skulens.catalog.catalog import Catalog

    data = tmp_path / "copy"
    with server.client() as c:
        before = c.stats()
    assert server.settings.data_dir is not None
    _checkpoint(server.settings.data_dir)
    shutil.copytree(server.settings.data_dir, data)
    code, out, err = run(
        capsys, "reembed", "--model", str(effnet_model_dir), "--data", str(data), "--no-progress"
    )
    assert code == EXIT_OK, err
    assert f"re-embedded {before.reference_count} references" in out
    from skulens.model.manifest import load_manifest

    m = load_manifest(effnet_model_dir)
    with Catalog.open(data, fingerprint=m.fingerprint, dim=m.embedding_dim) as cat:
        assert cat.stats().references == before.reference_count and cat.dim == 1280
    code, out, err = run(capsys, "calibrate", "--model", str(effnet_model_dir), "--data", str(data))
    assert code == EXIT_OK, err
    assert out.strip()


def _checkpoint(data_dir: Path) -> None:
    """Make the live catalog's files safe to copy (SQLite WAL checkpoint through a second connection)."""
    import sqlite3

    con = sqlite3.connect(data_dir / "catalog.db")
    try:
        con.execute("PRAGMA wal_checkpoint(FULL)")
    finally:
        con.close()


def test_serve_refuses_public_bind_without_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        code, _, err = run(
            capsys,
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--model",
            str(tmp_path),
            "--data",
            str(tmp_path / "d"),
        )
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)
    assert code == EXIT_USAGE and "refusing to listen on non-loopback" in err and "--insecure" in err


def test_serve_help_names_environment_variables(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for var in (
        "SKULENS_MODEL_DIR",
        "SKULENS_DATA_DIR",
        "SKULENS_PORT",
        "SKULENS_METRICS_PORT",
        "SKULENS_TOKENS_FILE",
        "SKULENS_TLS_CERT",
    ):
        assert var in out
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("serve", "enroll", "recognize", "search", "catalog", "calibrate", "reembed", "export"):
        assert cmd in out


def test_client_tls_environment_is_separate_from_the_server_s() -> None:
    server_side = {"SKULENS_TLS_CERT": "/srv/cert.pem", "SKULENS_TLS_KEY": "/srv/key.pem", "SKULENS_PORT": "6000"}
    cfg = ClientConfig.from_env(server_side)
    assert cfg.tls_cert is None and cfg.tls_key is None and cfg.addr == "127.0.0.1:6000"
    client_side = {
        "SKULENS_CLIENT_TLS_CA": "/c/ca.pem",
        "SKULENS_CLIENT_TLS_CERT": "/c/cert.pem",
        "SKULENS_CLIENT_TLS_KEY": "/c/key.pem",
        "SKULENS_CLIENT_TLS_SERVER_NAME": "skulens.example.com",
    }
    cfg = ClientConfig.from_env({**server_side, **client_side}, tls_key=Path("/flag/key.pem"))
    assert (cfg.tls_ca, cfg.tls_cert, cfg.tls_key) == (Path("/c/ca.pem"), Path("/c/cert.pem"), Path("/flag/key.pem"))
    assert cfg.tls_server_name == "skulens.example.com"


# ---------------------------------------------------------------------------------------------- integrity
CHECK_FP, CHECK_DIM = "test-model/random/32:0123456789abcdef", 32


def _small_catalog(path: Path) -> bytes:
    """A real closed catalog (12 references) with its index snapshot; returns the stored vectors' bytes."""
    from catalog_helpers import product_refs

    from skulens.catalog import Catalog, NewReference

    _, refs = product_refs(4, 3, CHECK_DIM, seed=5)
    with Catalog.open(path, fingerprint=CHECK_FP, dim=CHECK_DIM) as cat:
        for i in range(4):
            cat.upsert_product(f"sku-{i}")
            cat.add_references(f"sku-{i}", [NewReference(refs[i, j]) for j in range(3)])
    return refs.reshape(-1, CHECK_DIM).astype("<f4").tobytes()


def test_catalog_check_reports_and_exits_by_health(
    tmp_path: Path, effnet_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "cat"
    block = _small_catalog(data)
    code, out, err = run(capsys, "catalog", "check", "--data", str(data))
    assert code == EXIT_OK, out + err
    assert out.startswith(f"catalog check of {data}\n") and "integrity_check passed" in out
    assert "12 references" in out and out.rstrip().endswith("result: healthy")
    code, out, _ = run(capsys, "catalog", "check", "--data", str(data), "--model", str(effnet_model_dir))
    assert code == EXIT_FAIL and "but the model is efficientnet" in out and "skulens reembed" in out
    snap = data / "index.snapshot"  # the drill: vector bytes overwritten, header and size intact
    raw = snap.read_bytes()
    at = raw.index(block)
    snap.write_bytes(raw[:at] + block[::-1] + raw[at + len(block):])
    code, out, _ = run(capsys, "catalog", "check", "--data", str(data), "--json")
    report = json.loads(out)
    assert code == EXIT_FAIL and report["healthy"] is False
    (problem,) = [f["text"] for f in report["findings"] if f["level"] == "PROBLEM"]
    assert problem.startswith(f"{snap} fails its checksum")
    (data / "catalog.db").write_bytes(b"")
    code, out, _ = run(capsys, "catalog", "check", "--data", str(data))
    assert code == EXIT_FAIL and f"{data / 'catalog.db'} is empty (0 bytes), yet {snap} exists" in out
    assert "restore" in out.splitlines()[-1]
    code, _, err = run(capsys, "catalog", "check", "--data", str(data), "--model", str(tmp_path / "nope"))
    assert code == EXIT_USAGE and err.startswith("skulens: error: ") and "Traceback" not in err


@pytest.mark.parametrize("damage, says", [
    ("truncate", "is empty (0 bytes), yet"),
    ("garbage", "is damaged (file is not a database); restore"),
    ("directory", "(unable to open database file): check that"),
])
def test_offline_commands_report_a_damaged_catalog_in_one_line(
    tmp_path: Path, effnet_model_dir: Path, capsys: pytest.CaptureFixture[str], damage: str, says: str
) -> None:
    data = tmp_path / "cat"
    _small_catalog(data)
    db = data / "catalog.db"
    if damage == "truncate":
        db.write_bytes(b"")
    elif damage == "garbage":
        db.write_bytes(b"\x5a" * 8192)
    else:
        db.unlink()
        db.mkdir()
    code, out, err = run(capsys, "calibrate", "--model", str(effnet_model_dir), "--data", str(data))
    assert code == EXIT_USAGE and out == ""
    assert err.count("\n") == 1 and err.startswith("skulens: error: ") and str(db) in err and says in err
    assert "Traceback" not in err


def test_serve_refuses_a_damaged_catalog_without_a_traceback(
    tmp_path: Path, effnet_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "cat"
    _small_catalog(data)
    (data / "catalog.db").write_bytes(b"")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        code, _, err = run(capsys, "serve", "--host", "127.0.0.1", "--port", "0", "--model", str(effnet_model_dir),
                           "--data", str(data), "--log-format", "text")
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)
    assert code == EXIT_USAGE and "Traceback" not in err
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith(f"skulens: error: catalog store {data / 'catalog.db'} is empty (0 bytes)")
    assert f"skulens catalog check --data {data}" in last


def test_enroll_takes_any_depth_and_checks_its_input_first(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`<group>/<class>/<product>/<images>` enrols one product per leaf folder; two leaves of one name, images in
    the root, or a CSV naming a missing file fail before anything is written (exit 1, no junk product)."""
    root = tmp_path / "grocery"
    for group, cls, pid, seed in (("Packages", "Juice", "juice-apple", 300), ("Fruit", "Apple", "apple-pink", 301)):
        d = root / group / cls / pid
        d.mkdir(parents=True)
        (d / "a.png").write_bytes(pattern_image(seed))
    code, out, _ = run(capsys, "enroll", str(root), "--addr", server.addr, "--no-progress", "--json")
    assert code == EXIT_OK and json.loads(out)["products"] == 2 and json.loads(out)["added"] == 2
    with server.client() as c:
        assert c.get_product("juice-apple") is not None and c.get_product("apple-pink") is not None
    twin = root / "Other" / "juice-apple"
    twin.mkdir(parents=True)
    (twin / "b.png").write_bytes(pattern_image(302))
    (root / "Fruit" / "Apple" / "pear-1").mkdir()
    (root / "Fruit" / "Apple" / "pear-1" / "p.png").write_bytes(pattern_image(303))
    code, _, err = run(capsys, "enroll", str(root), "--addr", server.addr, "--no-progress")
    assert code == EXIT_FAIL and "two folders name product 'juice-apple'" in err
    csv_path = tmp_path / "broken.csv"
    csv_path.write_text(f"ghost-1,{root / 'nope.png'}\n")
    code, _, err = run(capsys, "enroll", str(csv_path), "--addr", server.addr, "--no-progress")
    assert code == EXIT_FAIL and "image files not found" in err
    with server.client() as c:
        assert c.get_product("pear-1") is None and c.get_product("ghost-1") is None  # nothing written


def test_recognize_takes_folders_and_lists_and_batches_by_the_server_limit(
    clip_model_dir: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """10 images from a folder and a list file, a server that takes 3 per call: every image answered once."""
    srv = RunningServer(make_settings(tmp_path / "data", max_images_per_request=3), SHARED.engine(clip_model_dir))
    try:
        listed = tmp_path / "some.txt"
        listed.write_text(f"# two of them\n{folder / 'sku-0' / '0.png'}\n{folder / 'sku-1' / '1.png'}\n")
        code, out, _ = run(capsys, "recognize", str(folder), str(listed), "--json", "--addr", srv.addr)
        assert code == EXIT_OK
        ids = [r["id"] for r in json.loads(out)["results"]]
        assert len(ids) == 2 * N_PRODUCTS + 2 and ids[-2:] == [str(folder / "sku-0" / "0.png"),
                                                            str(folder / "sku-1" / "1.png")]
        code, _, err = run(capsys, "recognize", str(tmp_path / "missing.png"), "--addr", srv.addr)
        assert code == EXIT_FAIL and "not an image file" in err
    finally:
        srv.stop()


def test_output_into_a_closed_pipe_ends_quietly(server: RunningServer, folder: Path) -> None:
    """`skulens recognize ... | head`: output into a pipe whose reader is gone (closed before the first write,
    so the write surely fails) ends with no BrokenPipeError traceback and a clean exit."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "skulens.cli", "recognize", str(folder), "--addr", server.addr, "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader goes away at once
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_enroll_prints_warnings_and_keeps_the_references(
    clip_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One photo under two products (cosine 1) and a flat grey picture: a summary, then the warnings."""
    import io

    from PIL import Image

    root = tmp_path / "set"
    grey = io.BytesIO()
    Image.new("RGB", (200, 150), (90, 90, 90)).save(grey, "PNG")
    for pid, files in {"twin-a": {"same.png": pattern_image(900)}, "twin-b": {"same.png": pattern_image(900)},
                       "plain": {"grey.png": grey.getvalue()}}.items():
        (root / pid).mkdir(parents=True)
        for name, data in files.items():
            (root / pid / name).write_bytes(data)
    srv = RunningServer(make_settings(tmp_path / "data", near_duplicate_threshold=0.9999),
                        SHARED.engine(clip_model_dir))
    try:
        code, out, err = run(capsys, "enroll", str(root), "--addr", srv.addr, "--no-progress")
        assert code == EXIT_OK and "added: 3" in out  # warnings are no failure
        summary = next(line for line in err.splitlines() if line.startswith("warnings: "))
        assert "NEAR_DUPLICATE_OF_OTHER_PRODUCT: 2" in summary and "UNUSABLE_IMAGE: 1" in summary
        assert f"{root / 'twin-b' / 'same.png'} (product twin-b): NEAR_DUPLICATE_OF_OTHER_PRODUCT: " in err
        assert "nearly blank" in err
        code, out, _ = run(capsys, "enroll", str(root), "--addr", srv.addr, "--no-progress", "--json", "--no-resume")
        report = json.loads(out)  # sent again: duplicates, which carry no warnings
        assert report["duplicates"] == 3 and report["warnings"] == [] and report["warning_counts"] == {}
    finally:
        srv.stop()
