"""The layout: one import package `skulens` nested in proto/, server/, catalog/, export/, and the rules on which
room may import which (docs/ARCHITECTURE.md, "Layout" and "Direction rules").

Every `.py` under the package folders is parsed with `ast` (no import runs), so every import counts: module
level, inside functions, under `if TYPE_CHECKING:`. A module belongs to the room named by its import name's
second part (`skulens.imaging.decode` → `imaging`, `skulens.cli` → `cli`).
"""

from __future__ import annotations

import ast
import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parent.parent
#: The top-level folders that hold the package; each nests it as `<folder>/skulens/...` (PEP 420 namespace).
PACKAGE_FOLDERS = ("proto", "server", "catalog", "export")

# ---------------------------------------------------------------------------------------------- the rules
#: room → the other rooms it may import (its own modules it always may). Data flows one way: a room never
#: imports a room that imports it. `cli` is the composition root and may import every room.
ALLOWED_IMPORTS: dict[str, set[str]] = {
    "errors": set(),
    "v1": set(),
    "model": {"errors"},
    "imaging": {"errors", "model"},
    "inference": {"errors", "model", "imaging"},
    "catalog": {"errors"},
    "service": {"errors", "v1", "model", "imaging", "inference", "catalog"},
    "client": {"errors", "v1"},
    "export": {"errors", "model"},
    "cli": {"errors", "v1", "model", "imaging", "inference", "catalog", "service", "client", "export"},
}
ROOMS = frozenset(ALLOWED_IMPORTS)

#: Rooms `skulens.cli` may import only inside a function (when the command that needs them runs), so that
#: `skulens --help` and the client commands load neither ONNX Runtime, FAISS, grpc's server side nor torch.
#: Imports under `if TYPE_CHECKING:` never run and do not count here.
CLI_LAZY_ROOMS = frozenset({"service", "inference", "catalog", "export"})

#: Rule names used in violations.
DIRECTION, CLI_LAZY, SERVICER = "direction", "cli-lazy", "servicer"

#: Violations of the rules in the code as it is, not fixed yet: (importer, imported, rule). The test fails on any
#: violation not listed here, and on an entry that no longer occurs (fix the code, then delete its line), so the
#: set only shrinks. Empty now: the layout commit (eb500f2) had four, since fixed in the code — `skulens.cli`
#: imported skulens.catalog.errors (which loads FAISS via skulens/catalog/__init__.py), skulens.inference.errors
#: and skulens.service.settings at module level, and servicer_catalog imported `embed_batch` from
#: servicer_recognition (now in skulens.service.embedding).
KNOWN_VIOLATIONS: set[tuple[str, str, str]] = set()


# ---------------------------------------------------------------------------------------------- scanning
@dataclass(frozen=True)
class Import:
    """One imported skulens module, as written in one module."""

    importer: str  # import name of the module that imports
    imported: str  # import name of the module imported (a submodule when `from pkg import submodule`)
    line: int
    runtime_module_level: bool  # runs when the importer is imported (not in a function, not TYPE_CHECKING)

    def where(self) -> str:
        return f"{module_files()[self.importer].relative_to(REPO)}:{self.line}"


def module_name(path: Path) -> str:
    """Import name of a file under one of PACKAGE_FOLDERS (proto/skulens/v1/common_pb2.py → skulens.v1.common_pb2)."""
    parts = list(path.relative_to(REPO).with_suffix("").parts[1:])
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room_of(name: str) -> str | None:
    """The room of a skulens import name (None for the bare namespace `skulens`)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def python_files(folder: Path) -> list[Path]:
    """Every .py below `folder`, caches and hidden folders left out."""
    return sorted(
        p
        for p in folder.rglob("*.py")
        if not any(part == "__pycache__" or part.startswith(".") for part in p.relative_to(folder).parts)
    )


@functools.cache
def module_files() -> dict[str, Path]:
    """import name → file, for every module of the package."""
    files: dict[str, Path] = {}
    for folder in PACKAGE_FOLDERS:
        for path in python_files(REPO / folder / "skulens"):
            name = module_name(path)
            assert name not in files, f"{name} is defined twice: {files[name]} and {path}"
            files[name] = path
    return files


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve_from(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module of `from <module> import ...` (relative imports resolved against the importer)."""
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def scan_source(
    importer: str, source: str, is_package: bool = False, known: frozenset[str] = frozenset()
) -> list[Import]:
    """Every import of a skulens module in `source` (the module `importer`); `known` names the existing
    modules, so that `from pkg import name` counts as an import of `pkg.name` when that is a module."""
    found: list[Import] = []

    def add(target: str, node: ast.stmt, runtime_module_level: bool) -> None:
        if target == "skulens" or target.startswith("skulens."):
            found.append(Import(importer, target, node.lineno, runtime_module_level))

    def visit(node: ast.AST, in_function: bool, type_only: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node, not (in_function or type_only))
        elif isinstance(node, ast.ImportFrom):
            module = _resolve_from(importer, is_package, node)
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                add(sub if sub in known else module, node, not (in_function or type_only))
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, in_function, True)
            for child in node.orelse:
                visit(child, in_function, type_only)
            return
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner, type_only)

    visit(ast.parse(source), False, False)
    return found


@functools.cache
def all_imports() -> tuple[Import, ...]:
    known = frozenset(module_files())
    out: list[Import] = []
    for name, path in module_files().items():
        out += scan_source(name, path.read_text(encoding="utf-8"), path.name == "__init__.py", known)
    return tuple(out)


def is_servicer(name: str) -> bool:
    return name.startswith("skulens.service.servicer_")


def violations() -> dict[tuple[str, str, str], list[Import]]:
    """(importer, imported, rule) → the imports that break the rule."""
    found: dict[tuple[str, str, str], list[Import]] = {}
    for imp in all_imports():
        src, dst = room_of(imp.importer), room_of(imp.imported)
        if src is None or dst is None:
            continue
        rules = []
        if dst != src and dst not in ALLOWED_IMPORTS.get(src, set()):
            rules.append(DIRECTION)
        if src == "cli" and dst in CLI_LAZY_ROOMS and imp.runtime_module_level:
            rules.append(CLI_LAZY)
        if is_servicer(imp.importer) and is_servicer(imp.imported) and imp.imported != imp.importer:
            rules.append(SERVICER)
        for rule in rules:
            found.setdefault((imp.importer, imp.imported, rule), []).append(imp)
    return found


def _describe(items: Any) -> str:
    return "\n".join(f"  {key}  at {', '.join(i.where() for i in imps)}" for key, imps in items)


# ---------------------------------------------------------------------------------------------- direction tests
def test_the_scanner_sees_every_kind_of_import() -> None:
    source = (
        "from __future__ import annotations\n"
        "import skulens.errors\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from skulens.catalog.catalog import Catalog\n"
        "class A:\n"
        "    from skulens.model import manifest\n"
        "def f():\n"
        "    from skulens.export import cli\n"
        "    async def g():\n"
        "        import skulens.service.app as app\n"
        "from . import calllog\n"
        "from .. import errors\n"
    )
    known = frozenset({"skulens.model.manifest", "skulens.export.cli", "skulens.service.calllog", "skulens.errors"})
    got = {(i.imported, i.runtime_module_level) for i in scan_source("skulens.service.x", source, known=known)}
    assert got == {
        ("skulens.errors", True),
        ("skulens.catalog.catalog", False),
        ("skulens.model.manifest", True),  # a class body runs at import
        ("skulens.export.cli", False),
        ("skulens.service.app", False),
        ("skulens.service.calllog", True),
    }


def test_every_module_and_every_import_is_in_a_known_room() -> None:
    assert set(module_files()), "no module found: is the layout gone?"
    unknown = sorted(
        f"{name} ({path.relative_to(REPO)})" for name, path in module_files().items() if room_of(name) not in ROOMS
    )
    assert not unknown, "modules outside every room (add the room to ALLOWED_IMPORTS and the docs):\n" + "\n".join(
        unknown
    )
    strays = sorted(
        f"{i.where()}: {i.imported}"
        for i in all_imports()
        if room_of(i.imported) not in ROOMS and i.imported != "skulens"
    )
    assert not strays, "imports of a skulens module outside every room:\n" + "\n".join(strays)


def test_imports_follow_the_direction_rules() -> None:
    new = sorted((k, v) for k, v in violations().items() if k not in KNOWN_VIOLATIONS)
    assert not new, (
        "imports against the direction rules (ALLOWED_IMPORTS, CLI_LAZY_ROOMS, servicer ↛ servicer); "
        "(importer, imported, rule):\n" + _describe(new)
    )


def test_known_violations_still_occur() -> None:
    gone = sorted(KNOWN_VIOLATIONS - set(violations()))
    assert not gone, "fixed: remove from KNOWN_VIOLATIONS:\n" + "\n".join(f"  {k}" for k in gone)


def test_known_violations_name_real_rooms() -> None:
    for importer, imported, rule in KNOWN_VIOLATIONS:
        assert room_of(importer) in ROOMS and room_of(imported) in ROOMS, (importer, imported)
        assert rule in (DIRECTION, CLI_LAZY, SERVICER), rule


# ---------------------------------------------------------------------------------------------- folder tests
def _setuptools() -> dict[str, Any]:
    with (REPO / "pyproject.toml").open("rb") as f:
        return dict(tomllib.load(f)["tool"]["setuptools"])


def test_every_package_folder_is_in_pyproject() -> None:
    config = _setuptools()
    packages, package_dir = set(config["packages"]), dict(config["package-dir"])
    folders = {path.parent for folder in PACKAGE_FOLDERS for path in python_files(REPO / folder / "skulens")}
    problems = []
    for folder in sorted(folders):
        rel = folder.relative_to(REPO)
        name = ".".join(rel.parts[1:])
        if name not in packages:
            problems.append(f"{rel}: package {name!r} is missing from [tool.setuptools].packages")
        if package_dir.get(name) != rel.as_posix():
            problems.append(f"{rel}: [tool.setuptools.package-dir] maps {name!r} to {package_dir.get(name)!r}")
    for name in sorted(packages):
        where = package_dir.get(name)
        if where is None or not (REPO / where).is_dir():
            problems.append(f"package {name!r} has no folder (package-dir: {where!r})")
    assert not problems, "\n".join(problems)


def test_no_python_outside_the_skulens_subfolders() -> None:
    strays = [
        str(path.relative_to(REPO))
        for folder in PACKAGE_FOLDERS
        for path in python_files(REPO / folder)
        if path.relative_to(REPO / folder).parts[0] != "skulens"
    ]
    assert not strays, "Python files outside <folder>/skulens/: " + ", ".join(strays)


@pytest.mark.parametrize("folder", PACKAGE_FOLDERS)
def test_the_package_is_a_namespace(folder: str) -> None:
    for init in (REPO / folder / "__init__.py", REPO / folder / "skulens" / "__init__.py"):
        assert not init.exists(), f"{init.relative_to(REPO)} would end the PEP 420 namespace `skulens`"


def test_catalog_package_exports_are_lazy_and_complete() -> None:
    """`skulens.catalog` names every export once in `__all__` and resolves each on first use."""
    import skulens.catalog as pkg

    assert sorted(pkg.__all__) == sorted(pkg._MODULE_OF)
    for name in pkg.__all__:
        assert getattr(pkg, name) is not None
