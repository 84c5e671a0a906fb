"""Make `import open_clip` work beside a torchvision whose C++ extension cannot load.

A PyPI torchvision next to a CPU (or otherwise mismatched) torch fails to load its `_C` extension. torchvision
then still registers fake kernels for `torchvision::nms` and `torchvision::qnms` unconditionally (every other
fake is guarded by `_has_ops()`), which raises `RuntimeError: operator torchvision::nms does not exist` on
import.
open_clip and timm import torchvision (transforms, feature extraction), so the whole exporter would be unusable.

`ensure_torchvision_ops()` defines just those two op schemas when, and only when, they are missing; the ops
then have no kernel (calling them raises), which is fine: the exporter never runs detection ops.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

# Op schemas torchvision's _meta_registrations.py needs to exist at import time.
TORCHVISION_SCHEMAS: dict[str, str] = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}

# torch deregisters a Library's definitions when the object is garbage collected, so the shim must keep it
# alive for the life of the process; this is process state by nature (the op registry is process-global).
_KEEPALIVE: list[Any] = []


def _op_defined(name: str) -> bool:
    import torch

    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _try_load_extension() -> bool:
    """Load torchvision's C++ extension without importing torchvision; True when one loaded."""
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    loaded = False
    for pkg_dir in spec.submodule_search_locations:
        for lib in sorted(Path(pkg_dir).glob("_C*")):
            if lib.suffix not in (".so", ".pyd", ".dylib"):
                continue
            try:
                torch.ops.load_library(str(lib))
                loaded = True
            except (OSError, ImportError, RuntimeError) as exc:
                log.debug("torchvision extension %s does not load: %s", lib, exc)
    return loaded


def ensure_torchvision_ops() -> list[str]:
    """Define missing `torchvision::nms`/`qnms` schemas; returns the names patched (empty when none needed).

    Idempotent: a second call finds the ops defined and does nothing.
    """
    missing = [n for n in TORCHVISION_SCHEMAS if not _op_defined(n)]
    if missing and importlib.util.find_spec("torchvision") is not None:
        _try_load_extension()
        missing = [n for n in TORCHVISION_SCHEMAS if not _op_defined(n)]
    if not missing:
        return []
    import torch

    lib = torch.library.Library("torchvision", "DEF")
    for name in missing:
        lib.define(TORCHVISION_SCHEMAS[name])
    _KEEPALIVE.append(lib)
    log.warning(
        "torchvision C++ extension ops are not loadable (torch/torchvision mismatch); defined op schemas "
        "torchvision::%s without kernels so that torchvision/open_clip import. Detection ops will not work.",
        ", torchvision::".join(missing),
    )
    return missing


def import_open_clip() -> ModuleType:
    """Apply the torchvision shim if needed, then import and return `open_clip`."""
    ensure_torchvision_ops()
    import open_clip

    return open_clip


def import_timm() -> ModuleType:
    """Apply the torchvision shim if needed, then import and return `timm` (DINOv2's architecture)."""
    ensure_torchvision_ops()
    import timm

    return timm
