"""`skulens evaluate` against a real server (EfficientNet-Lite0, port 0): a folder set at any depth with an
`_unknown` folder and a CSV set → table, JSON, PNG; then, with the server stopped, `skulens calibrate` on the
same catalog: leave-one-out with one reference per product says false rejects are not measured, `--labelled`
measures them on held-out photos."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from service_harness import SHARED, RunningServer, make_settings, pattern_image

from skulens.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE, main

N = 4


@pytest.fixture(scope="module")
def server(effnet_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    srv = RunningServer(make_settings(tmp_path_factory.mktemp("cli-eval") / "data"), SHARED.engine(effnet_model_dir))
    refs = tmp_path_factory.mktemp("refs")
    for p in range(N):
        (refs / f"sku-{p}").mkdir()
        (refs / f"sku-{p}" / "ref.png").write_bytes(pattern_image(300 + p))
    assert main(["enroll", str(refs), "--addr", srv.addr, "--no-progress"]) == EXIT_OK
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """groupA/sku-0, groupA/deeper/sku-1, groupB/sku-2, groupB/sku-3 (two photos each), _unknown (three)."""
    root = tmp_path_factory.mktemp("labelled")
    where = {0: "groupA/sku-0", 1: "groupA/deeper/sku-1", 2: "groupB/sku-2", 3: "groupB/sku-3"}
    for p, rel in where.items():
        (root / rel).mkdir(parents=True)
        for v in (1, 2):
            (root / rel / f"{v}.png").write_bytes(pattern_image(300 + p, variant=v))
    (root / "_unknown").mkdir()
    for j in range(3):
        (root / "_unknown" / f"{j}.png").write_bytes(pattern_image(900 + j))
    return root


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_evaluate_folder_writes_table_json_and_plot(
    server: RunningServer, labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json, out_png = tmp_path / "report.json", tmp_path / "curves.png"
    code, out, err = run(
        capsys,
        "evaluate",
        str(labelled),
        "--addr",
        server.addr,
        "--group-by",
        "folder",
        "--json",
        str(out_json),
        "--plot",
        str(out_png),
        "--per-photo",
        "--no-progress",
        "--target-false-accept",
        "0.34",
    )
    assert code == EXIT_OK, err
    assert "Evaluation: 11 photos (8 of catalog products, 3 of products not in the catalog; 0 failed)" in out
    assert "groupA" in out and "groupB" in out and "verdicts (thresholds in force" in out and "AUROC" in out
    data = json.loads(out_json.read_text())
    report = data["report"]
    assert report["queries"] == 11 and [g["group"] for g in report["groups"]] == ["groupA", "groupB"]
    assert len(data["queries"]) == 11 and {q["product_id"] for q in data["queries"]} == {
        "",
        "sku-0",
        "sku-1",
        "sku-2",
        "sku-3",
    }
    right = sum(q["correct"] for q in data["queries"])
    assert right == round(report["overall"]["top1"] * 8)
    assert report["operating_point"]["target_false_accept"] == pytest.approx(0.34)
    assert "unknown_threshold" in report["operating_point"]  # measurable: the set has _unknown photos
    with Image.open(out_png) as img:
        assert img.format == "PNG" and img.size == (1200, 520)


def test_evaluate_csv_and_bad_sets(
    server: RunningServer, labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listing = tmp_path / "set.csv"
    listing.write_text(
        f"path,product_id,group\n{labelled}/groupA/sku-0/1.png,sku-0,dairy\n{labelled}/_unknown/0.png,_unknown\n"
        f"{labelled}/groupB/sku-3/2.png,not-enrolled\n"
    )
    code, out, err = run(capsys, "evaluate", str(listing), "--addr", server.addr, "--no-progress")
    assert code == EXIT_OK, err
    assert "Evaluation: 3 photos (1 of catalog products, 2 of products not in the catalog; 0 failed)" in out
    assert "does not hold: 1" in out and "dairy" in out
    (tmp_path / "loose.png").write_bytes(pattern_image(1))
    code, _, err = run(capsys, "evaluate", str(tmp_path), "--addr", "127.0.0.1:1", "--no-progress")
    assert code == EXIT_FAIL and "holds image files itself" in err  # refused before any call
    code, _, err = run(capsys, "evaluate", str(listing), "--addr", server.addr, "--target-false-accept", "2")
    assert code == EXIT_USAGE and "--target-false-accept" in err


def test_calibrate_leave_one_out_then_held_out(
    server: RunningServer, effnet_model_dir: Path, labelled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.stop()  # the catalog is the server's: calibrate opens it offline
    assert server.settings.data_dir is not None
    data = str(server.settings.data_dir)
    code, out, err = run(capsys, "calibrate", "--model", str(effnet_model_dir), "--data", data)
    assert code == EXIT_OK, err
    assert "false reject NOT MEASURED" in out and "0 genuine queries" in out
    rows = [ln for ln in out.splitlines() if re.match(r"\| -?\d", ln)]  # both tables' data rows
    assert rows and all(ln.rstrip(" |").endswith("n/a") for ln in rows)  # never "0.0%" for what is not measured
    code, out, err = run(
        capsys,
        "calibrate",
        "--model",
        str(effnet_model_dir),
        "--data",
        data,
        "--labelled",
        str(labelled),
        "--no-progress",
    )
    assert code == EXIT_OK, err
    assert "Calibration: 11 held-out labelled photos (8 of 4 catalog products, 3 of products not in the catalog)" in out
    assert "NOT MEASURED" not in out
    code, _, err = run(
        capsys, "calibrate", "--model", str(effnet_model_dir), "--data", data, "--labelled", str(labelled / "nope")
    )
    assert code == EXIT_USAGE and "skulens: error:" in err
    code, _, err = run(capsys, "calibrate", "--model", str(effnet_model_dir), "--data", data, "--apply")
    assert code == EXIT_USAGE and "--apply needs --labelled" in err  # leave-one-out thresholds are never stored
    code, out, err = run(capsys, "calibrate", "--model", str(effnet_model_dir), "--data", data, "--labelled",
                         str(labelled), "--no-progress", "--apply", "--target-false-accept", "0.34")
    assert code == EXIT_OK, err
    assert "thresholds in force: unknown 0.700" in out and "(from the settings)" in out
    suggested = float(re.search(r"suggested unknown_threshold = (-?[0-9.]+)", out).group(1))  # type: ignore[union-attr]
    assert "stored for adapted matching with model " in out
    code, out, err = run(capsys, "calibrate", "--model", str(effnet_model_dir), "--data", data, "--labelled",
                         str(labelled), "--no-progress")
    assert code == EXIT_OK, err  # a second run finds them in force (stored in the catalog)
    assert f"thresholds in force: unknown {suggested:.3f}" in out and "(from the catalog)" in out


def test_calibrate_a_shared_catalog(
    server: RunningServer, effnet_model_dir: Path, labelled: Path, postgres_server: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    """The same catalog copied into PostgreSQL: `calibrate --catalog URL` leave-one-out, `--labelled` and `--apply`
    through the CatalogBackend protocol (the thresholds land in the shared catalog)."""
    from skulens.catalog.postgres import PostgresCatalog
    from skulens.model.manifest import load_manifest

    server.stop()  # the embedded catalog is the server's: copied offline
    assert server.settings.data_dir is not None
    url = postgres_server.new_database()
    try:
        code, _, err = run(capsys, "catalog", "copy", "--from", str(server.settings.data_dir), "--to", url,
                           "--model", str(effnet_model_dir), "--no-progress")
        assert code == EXIT_OK, err
        code, out, err = run(capsys, "calibrate", "--model", str(effnet_model_dir), "--catalog", url)
        assert code == EXIT_OK, err
        assert "false reject NOT MEASURED" in out and "0 genuine queries" in out  # one reference a product
        with pytest.raises(SystemExit) as exit_:  # one catalog: --data or --catalog
            main(["calibrate", "--model", str(effnet_model_dir), "--catalog", url, "--data", str(tmp_path)])
        assert exit_.value.code == EXIT_USAGE and "not allowed with argument" in capsys.readouterr().err
        code, out, err = run(capsys, "calibrate", "--model", str(effnet_model_dir), "--catalog", url, "--labelled",
                             str(labelled), "--no-progress", "--apply", "--target-false-accept", "0.34")
        assert code == EXIT_OK, err
        assert "Calibration: 11 held-out labelled photos (8 of 4 catalog products" in out
        suggested = float(re.search(r"suggested unknown_threshold = (-?[0-9.]+)", out).group(1))  # type: ignore[union-attr]
        m = load_manifest(effnet_model_dir)
        with PostgresCatalog.open(url, fingerprint=m.fingerprint, dim=m.embedding_dim) as cat:
            (entry,) = cat.verdict_thresholds()
            assert (entry.matching, entry.fingerprint) == ("adapted", m.fingerprint)
            assert entry.unknown_threshold == pytest.approx(suggested, abs=5e-4)
        code, out, err = run(capsys, "calibrate", "--model", str(effnet_model_dir), "--catalog", url, "--labelled",
                             str(labelled), "--no-progress")
        assert code == EXIT_OK, err
        assert f"thresholds in force: unknown {suggested:.3f}" in out and "(from the catalog)" in out
    finally:
        postgres_server.drop_database(url)
