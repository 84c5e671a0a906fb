"""Reduced-precision variants of an fp32 ONNX tower: fp16 weights (GPU), int8 dynamic quantisation (CPU)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

INT8_OP_TYPES = ("MatMul", "Gemm")


def to_fp16(src: Path, dst: Path) -> Path:
    """fp16 weights and compute, float32 inputs/outputs (`keep_io_types`), single file.

    Ops ONNX Runtime keeps in float32 by default (`float16.DEFAULT_OP_BLOCK_LIST`) stay float32, so the file
    still runs on the CPU provider, which is where the parity check runs.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    fp16 = convert_float_to_float16(model, keep_io_types=True)
    onnx.save_model(fp16, str(dst))
    return Path(dst)


def to_int8(src: Path, dst: Path) -> Path:
    """ORT dynamic quantisation: QInt8 weights for MatMul/Gemm, activations quantised at run time.

    The model is first run through ORT's quantisation pre-processing (shape inference + graph optimisation),
    as ORT recommends; when that step fails the raw model is quantised and the failure is logged.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="skulens-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        source = Path(src)
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            source = pre
        except Exception as exc:  # pre-processing is an optimisation, not a requirement
            log.warning("ORT quantisation pre-processing failed for %s (%r); quantising as is", src, exc)
        quantize_dynamic(
            source,
            Path(dst),
            op_types_to_quantize=list(INT8_OP_TYPES),
            weight_type=QuantType.QInt8,
            per_channel=False,
            reduce_range=False,
        )
    return Path(dst)
