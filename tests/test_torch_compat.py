"""The torchvision op-schema shim, exercised in subprocesses (op registration is process-global)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# Make every torchvision extension library fail to load, as with a PyPI torchvision beside a CPU torch.
BREAK_EXTENSION = """
import torch
def _refuse(path):
    raise OSError(f"simulated: cannot load {path}")
torch.ops.load_library = _refuse
"""


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_broken_extension_makes_open_clip_import_fail_without_shim() -> None:
    r = _run(BREAK_EXTENSION + "import open_clip\n")
    assert r.returncode != 0
    assert "torchvision::nms" in r.stderr


def test_shim_defines_schemas_and_open_clip_imports() -> None:
    r = _run(
        BREAK_EXTENSION
        + """
import logging
logging.basicConfig(level=logging.WARNING)
from skulens.export.torch_compat import ensure_torchvision_ops, import_open_clip
oc = import_open_clip()
assert hasattr(oc, "create_model")
print("SECOND", ensure_torchvision_ops())
print("SCHEMA", torch.ops.torchvision.nms.default._schema)
"""
    )
    assert r.returncode == 0, r.stderr
    assert "SECOND []" in r.stdout  # idempotent: nothing left to patch
    assert "torchvision::nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor" in r.stdout
    assert "torchvision::nms, torchvision::qnms" in r.stderr  # the warning names what was patched


def test_shim_is_a_no_op_when_extension_loads() -> None:
    r = _run(
        """
import torchvision  # loads the real extension when it is compatible
from skulens.export.torch_compat import ensure_torchvision_ops
print("PATCHED", ensure_torchvision_ops())
"""
    )
    if r.returncode != 0:  # this environment's torchvision cannot import at all: covered by the tests above
        assert "torchvision::nms" in r.stderr
        return
    assert "PATCHED []" in r.stdout
    assert "defined op schemas" not in r.stderr
