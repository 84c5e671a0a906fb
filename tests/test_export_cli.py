"""`skulens export` command line: parsing, summary, exit codes."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from skulens.export import cli

REPO_ROOT = Path(__file__).resolve().parents[1]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skulens")
    cli.add_export_parser(parser.add_subparsers(dest="command"))
    return parser


def test_defaults_and_options() -> None:
    args = _parser().parse_args(["export", "--out", "m"])
    assert (args.model, args.weights, args.seed, args.variant, args.opset, args.force) == (
        "ViT-B-32",
        None,  # the model's published weights
        0,
        "fp32",
        17,
        False,
    )
    assert args.checkpoint is None and args.func is cli.run_export
    args = _parser().parse_args(
        [
            "export",
            "--model",
            "efficientnet-lite0",
            "--weights",
            "random",
            "--seed",
            "3",
            "--variant",
            "int8",
            "--out",
            "m",
            "--opset",
            "18",
            "--force",
            "--checkpoint",
            "c.pt",
        ]
    )
    assert (args.model, args.weights, args.seed, args.variant, args.opset, args.force) == (
        "efficientnet-lite0",
        "random",
        3,
        "int8",
        18,
        True,
    )
    assert args.checkpoint == Path("c.pt")
    with pytest.raises(SystemExit):
        _parser().parse_args(["export", "--out", "m", "--variant", "int4"])
    for model in ("RN50", "dinov2-vits14", "dinov2-vitb14"):
        assert _parser().parse_args(["export", "--model", model, "--out", "m"]).model == model
    assert _parser().parse_args(["export", "--weights", "lvd142m", "--out", "m"]).weights == "lvd142m"


def test_effnet_export_via_skulens_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from skulens.cli import main

    out = tmp_path / "eff"
    assert main(["export", "--model", "efficientnet-lite0", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "efficientnet-lite0" in text and "image.onnx" in text and "max|Δ|" in text and "time" in text
    assert (out / "manifest.json").is_file()
    # Second run into the same non-empty directory fails without --force, succeeds with it.
    assert main(["export", "--model", "efficientnet-lite0", "--out", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert cli.main(["--model", "efficientnet-lite0", "--out", str(out), "--force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model_name"] == "efficientnet-lite0"


def test_effnet_rejects_clip_only_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        cli.main(["--model", "efficientnet-lite0", "--weights", "random", "--out", str(tmp_path / "x")]) == 1
    )
    assert "apply to ViT-B-32, RN50, dinov2-vits14, dinov2-vitb14 only" in capsys.readouterr().err


def test_checkpoint_and_weights_reach_the_dinov2_exporter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """DINOv2 takes --checkpoint and --weights (loading both checkpoint formats: tests/test_export_dinov2.py)."""
    out = tmp_path / "dino"
    missing = ["--checkpoint", str(tmp_path / "missing.pth")]
    assert cli.main(["--model", "dinov2-vits14", *missing, "--out", str(out)]) == 1
    assert "missing.pth does not exist" in capsys.readouterr().err
    assert cli.main(["--model", "dinov2-vitb14", "--weights", "openai", "--out", str(out)]) == 1
    assert "dinov2-vitb14 weights must be 'lvd142m' (published) or 'random'" in capsys.readouterr().err
    assert cli.main(["--model", "RN50", "--weights", "lvd142m", "--out", str(out)]) == 1
    assert "RN50 weights must be 'openai' (published) or 'random'" in capsys.readouterr().err
    assert not out.exists()


def test_offline_openai_exit_code_and_message(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "skulens.export.cli", "--out", str(tmp_path / "m")],
        cwd=REPO_ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1
    assert "--checkpoint PATH" in r.stderr and "--weights random" in r.stderr
