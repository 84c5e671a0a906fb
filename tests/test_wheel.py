"""The wheel as a calling application gets it: built from this tree, installed in a fresh virtualenv with the core
dependencies only (no `cpu`/`gpu` runtime extra, no `export` extra).

It installs one import name, `skulens`, and every source module; the `skulens` console script and the client
work without ONNX Runtime, FAISS and torch; the serving side fails to import there only where it needs a runtime
extra; and in the development venv (which has torch) serving and the CLI never import torch.

The fixture builds the wheel once from a copy of the source folders (so the tree's `build/` stays untouched),
creates one venv without pip and installs the wheel into it with this interpreter's pip (`pip --python`); the
core dependencies come from the index (or pip's cache). About 10 s with a warm pip cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
# The folders that nest the one import package `skulens` (pyproject [tool.setuptools.package-dir]).
PACKAGE_ROOTS = ("proto", "server", "catalog", "export")
SHIPPED_SUFFIXES = (".py", ".pyi", ".proto")
SUBCOMMANDS = (
    "serve", "enroll", "recognize", "search", "monitor", "evaluate", "catalog", "calibrate", "reembed", "migrate",
    "export",
)
RUNTIME_EXTRAS = ("onnxruntime", "faiss")
EXPORT_ONLY = ("torch", "open_clip", "torchvision", "onnx", "onnxscript", "timm")

# Modules of the wheel that cannot be imported without a runtime extra, with the module they miss
# (ModuleNotFoundError). Everything else, the client, the CLI, the service's modules and the catalog's errors,
# settings, models and Protocol included, must import with the core dependencies only: a module that starts to
# need a runtime extra (or torch) at import time fails the test, and so does a new module that needs one until it
# is listed here. (`skulens.catalog` resolves its exports lazily, so its light modules stay light.)
NEEDS_RUNTIME_EXTRA_PACKAGES: dict[str, str] = {}
NEEDS_RUNTIME_EXTRA = {
    **dict.fromkeys(
        [
            "skulens.catalog.catalog",
            "skulens.catalog.index",
            "skulens.catalog.integrity",
            "skulens.catalog.rebuild",
            "skulens.catalog.snapshot_file",
            "skulens.catalog.view",
        ],
        "faiss",
    ),
    "skulens.catalog.postgres": "psycopg",
    "skulens.catalog.postgres_pool": "psycopg",
    "skulens.catalog.postgres_schema": "psycopg",
    "skulens.catalog.postgres_search": "psycopg",
    "skulens.catalog.postgres_spaces": "psycopg",
    "skulens.catalog.postgres_head": "psycopg",
    "skulens.catalog.postgres_purge": "psycopg",
    "skulens.catalog.postgres_text": "psycopg",
    "skulens.catalog.postgres_feed": "psycopg",
    "skulens.catalog.postgres_binary": "psycopg",
    "skulens.catalog.postgres_bulk": "psycopg",
    "skulens.catalog.mirror": "psycopg",  # and faiss (the copy's index)
    "skulens.catalog.mirrored": "psycopg",
    "skulens.inference.encoder": "onnxruntime",
    "skulens.inference.engine": "onnxruntime",
}


def _needs_runtime_extra(module: str) -> str | None:
    for package, missing in NEEDS_RUNTIME_EXTRA_PACKAGES.items():
        if module == package or module.startswith(package + "."):
            return missing
    return NEEDS_RUNTIME_EXTRA.get(module)


@dataclass(frozen=True)
class Installed:
    source: Path  # the copy of the tree the wheel was built from
    wheel: Path
    venv: Path
    python: Path
    site_packages: Path
    env: dict[str, str]

    @property
    def script(self) -> Path:
        return self.python.parent / "skulens"

    def run(self, argv: Sequence[str | Path], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in argv], cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def python_json(self, code: str, cwd: Path) -> object:
        """Run `code` in the fresh venv (isolated mode); returns the JSON it prints last."""
        proc = self.run([self.python, "-I", "-c", textwrap.dedent(code)], cwd)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])


def _clean_env() -> dict[str, str]:
    """The environment without anything that would point a child interpreter at this tree or this venv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _check(argv: Sequence[str | Path], cwd: Path | None = None, timeout: float = 600) -> None:
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, argv))} failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "*.onnx", "*.onnx.data")
    for root in PACKAGE_ROOTS:
        shutil.copytree(REPO_ROOT / root / "skulens", src / root / "skulens", ignore=skip)
    dist = tmp / "dist"
    _check([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, src])
    (wheel,) = dist.glob("skulens-*.whl")

    venv = tmp / "venv"
    _check([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    # This interpreter's pip installs into the fresh venv: the wheel and its core dependencies, no extra.
    _check([sys.executable, "-m", "pip", "--python", python, "install", "-q", wheel])
    purelib = subprocess.run(
        [python, "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    yield Installed(source=src, wheel=wheel, venv=venv, python=python, site_packages=Path(purelib), env=_clean_env())


def _source_files(tree: Path) -> set[str]:
    """The files the wheel built from `tree` should ship, as wheel paths (`skulens/...`)."""
    found = set()
    for root in PACKAGE_ROOTS:
        base = tree / root
        for p in (base / "skulens").rglob("*"):
            if p.suffix in SHIPPED_SUFFIXES and p.is_file() and "__pycache__" not in p.parts:
                found.add(p.relative_to(base).as_posix())
    return found


def test_the_wheel_ships_one_import_name_and_every_source_file(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as zf:
        names = zf.namelist()
        (dist_info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        top_level = zf.read(f"{dist_info}/top_level.txt").decode().split()
    assert {n.split("/")[0] for n in names} - {dist_info} == {"skulens"}  # no .data, .pth or stray module
    assert top_level == ["skulens"]
    assert "skulens/__init__.py" not in names  # a PEP 420 namespace, as in the tree
    shipped = {n for n in names if n.endswith(SHIPPED_SUFFIXES)}
    expected = _source_files(installed.source)
    assert not expected - shipped, f"source files missing from the wheel: {sorted(expected - shipped)}"
    assert not shipped - expected, f"wheel files with no source: {sorted(shipped - expected)}"


def test_the_installed_distribution_adds_only_skulens(installed: Installed, tmp_path: Path) -> None:
    got = installed.python_json(
        """
        import json, skulens
        from importlib import metadata
        files = metadata.files("skulens")
        top = sorted({f.parts[0] for f in files if f.parts[0] != ".." and not f.parts[0].endswith(".dist-info")})
        print(json.dumps({"top": top, "path": list(skulens.__path__)}))
        """,
        tmp_path,
    )
    assert isinstance(got, dict)
    assert got["top"] == ["skulens"]
    # One folder, the installed one: no part of the package comes from the source tree.
    assert got["path"] == [str(installed.site_packages / "skulens")]


def test_console_script_help_lists_the_commands(installed: Installed, tmp_path: Path) -> None:
    proc = installed.run([installed.script, "--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for cmd in SUBCOMMANDS:
        assert cmd in proc.stdout, cmd


def test_console_script_commands_without_extras(installed: Installed, tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(b"not decoded by the client")
    # A client command runs (a bad argument is a usage error; an unreachable server an RPC failure).
    proc = installed.run([installed.script, "recognize", image, "--addr", "127.0.0.1:1", "--label", "bad"], tmp_path)
    assert (proc.returncode, proc.stderr.strip()) == (2, "skulens: --label 'bad' must be KEY=VALUE")
    proc = installed.run([installed.script, "search", "milk", "--addr", "127.0.0.1:1", "--timeout", "5"], tmp_path)
    assert proc.returncode == 1 and proc.stderr.startswith("skulens: UNAVAILABLE"), proc.stderr
    # Serving and offline commands name the extra they need, in one line.
    for argv, extra in (
        (["serve"], "skulens[cpu]"),
        (["calibrate", "--model", tmp_path, "--data", tmp_path], "skulens[cpu]"),
        (["catalog", "check", "--data", tmp_path], "skulens[cpu]"),
        (["export", "--out", tmp_path / "m"], "skulens[export]"),
    ):
        proc = installed.run([installed.script, *argv], tmp_path)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert extra in proc.stderr and "Traceback" not in proc.stderr, (argv, proc.stderr)


def test_client_imports_without_runtime_or_torch(installed: Installed, tmp_path: Path) -> None:
    got = installed.python_json(
        f"""
        import json, sys
        from importlib import util
        import skulens.client, skulens.client.enroll, skulens.client.healthcheck
        assert skulens.client.SkulensClient.__name__ == "SkulensClient"
        heavy = {[*RUNTIME_EXTRAS, *EXPORT_ONLY, "numpy"]!r}
        print(json.dumps({{
            "installed": sorted(m for m in heavy if util.find_spec(m) is not None),
            "imported": sorted(m for m in heavy if m in sys.modules),
        }}))
        """,
        tmp_path,
    )
    assert isinstance(got, dict)
    # The venv really lacks the extras (numpy is core), and the client loads none of them, not even numpy.
    assert got["installed"] == ["numpy"]
    assert got["imported"] == []


def test_every_module_imports_without_extras_except_the_runtime_ones(installed: Installed, tmp_path: Path) -> None:
    got = installed.python_json(
        """
        import importlib, json, sys
        from pathlib import Path
        import skulens
        (root,) = (Path(p) for p in skulens.__path__)
        modules = sorted(
            ".".join(("skulens", *p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
            for p in root.rglob("*.py")
        )
        failed = {}
        for name in modules:
            # Each module from a clean slate: drop what earlier imports left (the generated stubs may stay).
            for loaded in [m for m in sys.modules if m.startswith("skulens.") and not m.startswith("skulens.v1")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except Exception as exc:
                failed[name] = f"{type(exc).__name__}: {getattr(exc, 'name', None) or exc}"
        print(json.dumps({"modules": modules, "failed": failed}))
        """,
        tmp_path,
    )
    assert isinstance(got, dict)
    with zipfile.ZipFile(installed.wheel) as zf:
        wheel_modules = sorted(
            n.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
            for n in zf.namelist()
            if n.endswith(".py")
        )
    assert got["modules"] == wheel_modules
    expected = {
        name: f"ModuleNotFoundError: {missing}"
        for name in wheel_modules
        if (missing := _needs_runtime_extra(name)) is not None
    }
    assert set(NEEDS_RUNTIME_EXTRA) <= set(expected), "a listed module is not in the wheel"
    assert got["failed"] == expected


def test_serving_and_cli_never_import_torch() -> None:
    """In this (development) venv, where torch and open_clip are installed: importing the serving side and
    building or running the CLI's parser leaves them unloaded."""
    if util.find_spec("torch") is None:
        pytest.skip("torch is not installed here: nothing to prove")
    code = """
        import contextlib, io, json, sys
        import skulens.service.app, skulens.inference.engine, skulens.catalog, skulens.cli, skulens.client
        from skulens.cli import build_parser, main

        build_parser()
        helps = {}
        for argv in (["--help"], ["serve", "--help"], ["export", "--help"]):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                try:
                    main(argv)
                except SystemExit as exc:
                    assert exc.code == 0, (argv, exc.code)
            helps[argv[0]] = out.getvalue()
        heavy = [m for m in sys.modules if m.partition(".")[0] in ("torch", "open_clip", "torchvision", "onnx")]
        print(json.dumps({"heavy": sorted(heavy), "helps": helps}))
        """
    env = {**_clean_env(), "PYTHONPATH": os.pathsep.join(str(REPO_ROOT / r) for r in PACKAGE_ROOTS)}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["heavy"] == []
    assert all(cmd in got["helps"]["--help"] for cmd in SUBCOMMANDS)
    assert "--port" in got["helps"]["serve"]  # the real serve parser, not the "needs a runtime extra" stand-in
    assert "--out" in got["helps"]["export"]
