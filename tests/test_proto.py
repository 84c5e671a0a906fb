"""The gRPC contract: generated stubs match the .proto byte for byte, the contract is documented, buf lint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

REPO = Path(__file__).resolve().parents[1]
PROTO_DIR = REPO / "proto"
PKG_DIR = PROTO_DIR / "skulens" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _protos() -> list[Path]:
    return sorted(PKG_DIR.glob("*.proto"))


def _buf() -> str | None:
    local = REPO / ".cache" / "buf" / "node_modules" / ".bin" / "buf"
    return str(local) if local.exists() else shutil.which("buf")


def test_generated_stubs_match_proto(tmp_path: Path) -> None:
    """Regenerate with scripts/gen-proto into a temp dir: every generated file must be identical."""
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run([str(REPO / "scripts" / "gen-proto"), str(tmp_path)], check=True, env=env, cwd=REPO)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(
        p.relative_to(PROTO_DIR) for p in PKG_DIR.iterdir() if p.name.endswith(GENERATED_SUFFIXES)
    )
    assert fresh == committed, f"generated file set differs: fresh {fresh} vs committed {committed}"
    stale = [str(rel) for rel in fresh if (tmp_path / rel).read_bytes() != (PROTO_DIR / rel).read_bytes()]
    assert not stale, f"stubs out of date with the .proto: {stale}; run scripts/gen-proto"


def test_every_element_is_documented(tmp_path: Path) -> None:
    """Every service, rpc, message, field, enum and enum value carries a leading comment (buf's COMMENTS
    rules, checked here too so that the rule holds without buf installed)."""
    from grpc_tools import protoc

    out = tmp_path / "set.pb"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{Path(protoc.__file__).parent / '_proto'}",
        "--include_source_info",
        f"--descriptor_set_out={out}",
        *[str(p.relative_to(PROTO_DIR)) for p in _protos()],
    ]
    assert protoc.main(args) == 0
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    missing = []
    for f in fds.file:
        comments = {tuple(loc.path): loc.leading_comments.strip() for loc in f.source_code_info.location}

        def need(
            path: tuple[int, ...],
            name: str,
            f: descriptor_pb2.FileDescriptorProto = f,
            comments: dict[tuple[int, ...], str] = comments,
        ) -> None:
            if not comments.get(path):
                missing.append(f"{f.name}: {name}")

        def message(m: descriptor_pb2.DescriptorProto, path: tuple[int, ...], prefix: str) -> None:
            if m.options.map_entry:
                return
            need(path, prefix + m.name)
            for i, fld in enumerate(m.field):
                need((*path, 2, i), f"{prefix}{m.name}.{fld.name}")
            for i, nested in enumerate(m.nested_type):
                message(nested, (*path, 3, i), f"{prefix}{m.name}.")

        for i, m in enumerate(f.message_type):
            message(m, (4, i), "")
        for i, e in enumerate(f.enum_type):
            need((5, i), e.name)
            for j, val in enumerate(e.value):
                need((5, i, 2, j), f"{e.name}.{val.name}")
        for i, s in enumerate(f.service):
            need((6, i), s.name)
            for j, meth in enumerate(s.method):
                need((6, i, 2, j), f"{s.name}.{meth.name}")
    assert not missing, f"undocumented: {missing}"


def test_services_are_importable() -> None:
    from skulens.v1 import catalog_pb2, catalog_pb2_grpc, recognition_pb2, recognition_pb2_grpc

    assert set(recognition_pb2.DESCRIPTOR.services_by_name["RecognitionService"].methods_by_name) == {
        "Recognize",
        "RecognizeStream",
        "SearchByText",
        "Embed",
        "Evaluate",
        "GetServerInfo",
        "GetDriftReport",
    }
    assert set(catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"].methods_by_name) == {
        "UpsertProduct",
        "AddReferenceImages",
        "EnrollReferenceImages",
        "DeleteProduct",
        "DeleteReferenceImage",
        "GetProduct",
        "ListProducts",
        "GetCatalogStats",
    }
    assert recognition_pb2_grpc.RecognitionServiceStub and catalog_pb2_grpc.CatalogServiceStub


def test_buf_lint() -> None:
    """`buf lint` with buf.yaml (STANDARD + COMMENTS). Install buf with scripts/install-buf."""
    buf = _buf()
    if buf is None:
        pytest.skip("buf is not installed (scripts/install-buf puts it in .cache/buf)")
    proc = subprocess.run([buf, "lint"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"buf lint failed:\n{proc.stdout}{proc.stderr}"
