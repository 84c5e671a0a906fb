"""torch → ONNX helpers: export one single-input/single-output tower, check it, describe its IO."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from skulens.model.manifest import ORT_CPU_FP16_DISABLED_OPTIMIZERS, TensorSpec

log = logging.getLogger(__name__)

BATCH_AXIS = "batch"
MIN_OPSET = 17

# See skulens.model.manifest.ORT_CPU_FP16_DISABLED_OPTIMIZERS (CPU sessions of fp16 models segfault without it).
CPU_FP16_DISABLED_OPTIMIZERS: tuple[str, ...] = ORT_CPU_FP16_DISABLED_OPTIMIZERS

_ONNX_DTYPES = {1: "float32", 7: "int64", 10: "float16", 6: "int32", 11: "float64"}


class OnnxExportError(RuntimeError):
    """The torch → ONNX conversion or its structural check failed."""


def export_tower(
    module: Any,
    example: Any,
    path: Path,
    *,
    input_name: str,
    output_name: str = "embedding",
    opset: int = MIN_OPSET,
) -> Path:
    """Export `module(example)` to a self-contained ONNX file with a dynamic batch axis.

    Uses the TorchScript exporter (`dynamo=False`): with torch 2.x it is the most robust path for these
    models (argmax pooling, MultiheadAttention) and writes a single file for < 2 GB models.
    """
    import onnx
    import torch

    if opset < MIN_OPSET:
        raise OnnxExportError(f"opset must be >= {MIN_OPSET}, got {opset}")
    path = Path(path)
    module.eval()
    # nn.MultiheadAttention's inference fast path (aten::_native_multi_head_attention) has no ONNX symbolic.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            out_shape = tuple(module(example).shape)
            _export(module, example, path, input_name, output_name, opset)
    except Exception as exc:
        raise OnnxExportError(_short(exc)) from exc
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    model = onnx.load(str(path))
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise OnnxExportError(f"{path.name} has external data for {len(external)} tensors; expected one file")
    _pin_output_dims(model, out_shape)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def _pin_output_dims(model: Any, shape: tuple[int, ...]) -> None:
    """Give the output its static non-batch dims (the exporter names them e.g. `Divembedding_dim_1`)."""
    dims = model.graph.output[0].type.tensor_type.shape.dim
    for i, d in enumerate(dims):
        if i > 0 and i < len(shape):
            d.Clear()
            d.dim_value = int(shape[i])


def _short(exc: BaseException, limit: int = 400) -> str:
    """First line of an exception (the TorchScript exporter appends whole graphs)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "…"


def _export(module: Any, example: Any, path: Path, input_name: str, output_name: str, opset: int) -> None:
    import torch

    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=[input_name],
        output_names=[output_name],
        dynamic_axes={input_name: {0: BATCH_AXIS}, output_name: {0: BATCH_AXIS}},
        opset_version=opset,
        do_constant_folding=True,
        dynamo=False,
    )


def _dims(value_info: Any) -> tuple[int | str, ...]:
    dims: list[int | str] = []
    for d in value_info.type.tensor_type.shape.dim:
        dims.append(d.dim_param if d.dim_param else int(d.dim_value))
    return tuple(dims)


def io_specs(path: Path) -> tuple[TensorSpec, TensorSpec]:
    """(input, output) TensorSpec of a single-input/single-output ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    init_names = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init_names]
    outputs = list(model.graph.output)
    if len(inputs) != 1 or len(outputs) != 1:
        raise OnnxExportError(f"{path} must have exactly one input and one output")

    def spec(vi: Any) -> TensorSpec:
        et = vi.type.tensor_type.elem_type
        return TensorSpec(name=vi.name, shape=_dims(vi), dtype=_ONNX_DTYPES.get(et, str(et)))

    return spec(inputs[0]), spec(outputs[0])


def ort_session(path: Path, *, disabled_optimizers: tuple[str, ...] = (), threads: int = 0) -> Any:
    """A CPU ONNX Runtime session (the parity check runs on CPU everywhere)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(
        str(path),
        sess_options=opts,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(disabled_optimizers) or None,
    )


def run_onnx(
    path: Path, x: np.ndarray, *, batch: int = 8, disabled_optimizers: tuple[str, ...] = ()
) -> np.ndarray:
    """Run a single-input ONNX file on CPU on `x` in chunks of `batch`; float32 output."""
    sess = ort_session(path, disabled_optimizers=disabled_optimizers)
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(outs, axis=0).astype(np.float32)
