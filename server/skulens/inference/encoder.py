"""ONNX Runtime sessions for a model directory: checked against its manifest, providers reported, warmed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from skulens.inference.errors import ModelLoadError, Unsupported
from skulens.inference.options import EncoderOptions
from skulens.model.manifest import (
    ORT_CPU_FP16_DISABLED_OPTIMIZERS,
    Manifest,
    ManifestError,
    TensorSpec,
    TowerSpec,
    load_manifest,
)

log = logging.getLogger(__name__)

DEFAULT_PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = frozenset(
    {
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "ROCMExecutionProvider",
        "MIGraphXExecutionProvider",
        "DmlExecutionProvider",
        "CoreMLExecutionProvider",
        "OpenVINOExecutionProvider",
    }
)
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
}
_DTYPE_ALIASES = {
    "float": "float32",
    "fp32": "float32",
    "half": "float16",
    "fp16": "float16",
    "long": "int64",
}
_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class ProviderReport:
    """Which execution providers were asked for, exist in this onnxruntime build, and are actually in use.

    `fell_back` is True when a requested GPU provider is not active (onnxruntime drops a provider whose
    libraries are missing without raising); `gpu_active` when any GPU provider runs the session.
    """

    requested: tuple[str, ...]
    available: tuple[str, ...]
    active: tuple[str, ...]
    fell_back: bool
    gpu_active: bool

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict (for status endpoints)."""
        return {
            "requested": list(self.requested),
            "available": list(self.available),
            "active": list(self.active),
            "fell_back": self.fell_back,
            "gpu_active": self.gpu_active,
        }


def resolve_providers(requested: Sequence[str] | None, available: Sequence[str]) -> tuple[str, ...]:
    """The provider list to request: `requested`, or TensorRT → CUDA → CPU of those `available`."""
    if requested:
        return tuple(requested)
    chosen = tuple(p for p in DEFAULT_PROVIDER_ORDER if p in available)
    return chosen or ("CPUExecutionProvider",)


def _norm_dtype(name: str) -> str:
    name = name.lower()
    return _DTYPE_ALIASES.get(name, name)


def _check_io(kind: str, what: str, spec: TensorSpec, actual: ort.NodeArg | None, names: list[str]) -> None:
    """Raise `ModelLoadError` unless the session's input/output matches the manifest's TensorSpec."""
    if actual is None:
        raise ModelLoadError(
            f"{kind} tower {what} is named {names!r} in the ONNX graph, manifest says {spec.name!r}"
        )
    dtype = _ORT_TYPES.get(actual.type, actual.type)
    if dtype != _norm_dtype(spec.dtype):
        raise ModelLoadError(
            f"{kind} tower {what} {spec.name!r} has dtype {dtype}, manifest says {spec.dtype}"
        )
    shape = list(actual.shape)
    if len(shape) != len(spec.shape):
        raise ModelLoadError(
            f"{kind} tower {what} {spec.name!r} has rank {len(shape)} {shape}, manifest says rank "
            f"{len(spec.shape)} {list(spec.shape)}"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, shape, strict=True)):
        if isinstance(want, int) and want != got:
            raise ModelLoadError(
                f"{kind} tower {what} {spec.name!r} dim {axis} is {got}, manifest says {want} "
                f"(graph shape {shape}, manifest {list(spec.shape)})"
            )
        if not isinstance(want, int) and isinstance(got, int):
            raise ModelLoadError(
                f"{kind} tower {what} {spec.name!r} dim {axis} is fixed at {got} in the graph, manifest says "
                f"dynamic {want!r}"
            )


class TowerSession:
    """One ONNX graph (image or text tower) in an onnxruntime session, with its manifest spec."""

    def __init__(
        self,
        kind: str,
        model_dir: Path,
        spec: TowerSpec,
        embedding_dim: int,
        options: EncoderOptions,
        providers: tuple[str, ...],
        disabled_optimizers: Sequence[str] = (),
    ) -> None:
        self.kind = kind
        self.spec = spec
        self.embedding_dim = embedding_dim
        path = Path(model_dir) / spec.file
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = options.inter_op_threads
        so.graph_optimization_level = _OPT_LEVELS[options.graph_optimization]
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        spin = "1" if options.spinning else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        so.add_session_config_entry("session.inter_op.allow_spinning", spin)
        provider_args: list[str | tuple[str, dict[str, object]]] = []
        for p in providers:
            if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider"):
                provider_args.append((p, {"device_id": options.device_id}))
            else:
                provider_args.append(p)
        try:
            self.session = ort.InferenceSession(
                str(path),
                sess_options=so,
                providers=provider_args,
                disabled_optimizers=list(disabled_optimizers) or None,
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"cannot load {kind} tower {path}: {exc}") from exc
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        _check_io(kind, "input", spec.input, inputs.get(spec.input.name), list(inputs))
        _check_io(kind, "output", spec.output, outputs.get(spec.output.name), list(outputs))
        if len(inputs) != 1:
            raise ModelLoadError(f"{kind} tower must have exactly one input, the graph has {list(inputs)}")
        out_dim = spec.output.shape[-1]
        if isinstance(out_dim, int) and out_dim != embedding_dim:
            raise ModelLoadError(
                f"{kind} tower output dim is {out_dim}, manifest embedding_dim is {embedding_dim}"
            )
        self.input_dtype = np.dtype(_norm_dtype(spec.input.dtype))
        self.active_providers = tuple(self.session.get_providers())
        self.on_gpu = any(p in GPU_PROVIDERS for p in self.active_providers)
        self.use_io_binding = self.on_gpu if options.io_binding is None else options.io_binding
        self._device_id = options.device_id
        self._lock = threading.Lock()

    def run(self, batch: np.ndarray) -> np.ndarray:
        """[N, ...] input → [N, D] float32 unit-norm embeddings (renormalised here in float32)."""
        x = np.ascontiguousarray(batch, dtype=self.input_dtype)
        with self._lock:
            if self.use_io_binding:
                binding = self.session.io_binding()
                binding.bind_cpu_input(self.spec.input.name, x)
                device = "cuda" if self.on_gpu else "cpu"
                binding.bind_output(self.spec.output.name, device, self._device_id if self.on_gpu else 0)
                self.session.run_with_iobinding(binding)
                out = binding.copy_outputs_to_cpu()[0]
            else:
                out = self.session.run([self.spec.output.name], {self.spec.input.name: x})[0]
        emb = np.asarray(out, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != x.shape[0] or emb.shape[1] != self.embedding_dim:
            raise RuntimeError(
                f"{self.kind} tower returned shape {emb.shape} for a batch of {x.shape[0]}, "
                f"expected [{x.shape[0]}, {self.embedding_dim}]"
            )
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        return emb / np.maximum(norms, np.float32(1e-12))

    def dummy_input(self, batch: int, row: np.ndarray | None = None) -> np.ndarray:
        """A valid input of `batch` rows for warm-up: zeros, or `row` (e.g. the tokens of an empty text)."""
        shape = [batch] + [d if isinstance(d, int) else 1 for d in self.spec.input.shape[1:]]
        x = np.zeros(shape, dtype=self.input_dtype)
        if row is not None:
            x[:] = np.asarray(row, dtype=self.input_dtype).reshape(shape[1:])
        return x


class OnnxEncoder:
    """The image (and, for CLIP, text) tower of one model directory on onnxruntime."""

    def __init__(
        self,
        model_dir: Path,
        manifest: Manifest,
        image: TowerSession,
        text: TowerSession | None,
        provider_report: ProviderReport,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = manifest
        self.image = image
        self.text = text
        self.provider_report = provider_report

    @classmethod
    def load(cls, model_dir: Path, options: EncoderOptions | None = None, *, verify: bool = True) -> OnnxEncoder:
        """Verify the directory against its manifest (sha256 of every file), build the sessions, check their
        inputs/outputs against the manifest and report the providers. Raises `ModelLoadError`."""
        options = options or EncoderOptions()
        model_dir = Path(model_dir)
        try:
            manifest = load_manifest(model_dir, verify=verify)
        except ManifestError as exc:
            raise ModelLoadError(str(exc)) from exc
        available = tuple(ort.get_available_providers())
        requested = resolve_providers(options.providers, available)
        # Like onnxruntime itself, keep CPU as the last resort; the report and require_gpu judge the result.
        usable = tuple(p for p in requested if p in available)
        if "CPUExecutionProvider" not in usable:
            usable += ("CPUExecutionProvider",)
        # fp16 graphs crash onnxruntime's CPU NCHWc layout pass (see the manifest constant); the pass only
        # rewrites CPU kernels, so disabling it costs nothing on GPU.
        disabled = ORT_CPU_FP16_DISABLED_OPTIMIZERS if manifest.variant == "fp16" else ()
        image = TowerSession("image", model_dir, manifest.image, manifest.embedding_dim, options, usable, disabled)
        text = None
        if manifest.text is not None:
            text = TowerSession(
                "text", model_dir, manifest.text, manifest.embedding_dim, options, usable, disabled
            )
        report = _provider_report(requested, available, image.active_providers)
        _log_providers(report, model_dir)
        if options.require_gpu and not report.gpu_active:
            raise ModelLoadError(
                f"require_gpu is set but the session runs on {list(report.active)} (requested "
                f"{list(report.requested)}, available {list(report.available)}): install onnxruntime-gpu "
                "with matching CUDA/cuDNN libraries, or unset require_gpu"
            )
        return cls(model_dir, manifest, image, text, report)

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self.manifest.embedding_dim

    @property
    def has_text(self) -> bool:
        """True when the model has a text tower."""
        return self.text is not None

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        """float32 [N, 3, H, W] → float32 [N, D] unit-norm."""
        return self.image.run(pixels)

    def embed_texts(self, ids: np.ndarray) -> np.ndarray:
        """int64 [N, L] token ids → float32 [N, D] unit-norm; `Unsupported` on an image-only model."""
        if self.text is None:
            raise Unsupported(
                f"model {self.manifest.model_name} has no text tower; text search is unsupported"
            )
        return self.text.run(ids)

    def warmup(self, batch_sizes: Sequence[int] = (1,), text_row: np.ndarray | None = None) -> dict[int, float]:
        """Run each tower once per batch size (first-run allocations and kernel selection happen here).

        `text_row`: one tokenized text (from the model's tokenizer) for the text tower; zeros otherwise.
        Returns the image tower's seconds per batch size (a first cost estimate for admission control).
        """
        seconds: dict[int, float] = {}
        for n in batch_sizes:
            t0 = time.perf_counter()
            self.image.run(self.image.dummy_input(n))
            seconds[n] = time.perf_counter() - t0
            if self.text is not None:
                self.text.run(self.text.dummy_input(n, text_row))
        return seconds


def _provider_report(
    requested: Sequence[str], available: Sequence[str], active: Sequence[str]
) -> ProviderReport:
    wanted_gpu = [p for p in requested if p in GPU_PROVIDERS]
    return ProviderReport(
        requested=tuple(requested),
        available=tuple(available),
        active=tuple(active),
        fell_back=any(p not in active for p in wanted_gpu),
        gpu_active=any(p in GPU_PROVIDERS for p in active),
    )


def _log_providers(report: ProviderReport, model_dir: Path) -> None:
    log.info(
        "model %s: execution providers active %s (requested %s, available %s)",
        model_dir,
        list(report.active),
        list(report.requested),
        list(report.available),
    )
    if not report.fell_back:
        return
    missing = [p for p in report.requested if p in GPU_PROVIDERS and p not in report.active]
    if report.gpu_active:
        log.warning(
            "GPU provider(s) %s requested but not active; running on %s", missing, list(report.active)
        )
    else:
        log.error(
            "GPU FALLBACK: requested %s but onnxruntime is running on %s only (available in this build: %s); "
            "inference will be much slower. Check onnxruntime-gpu and the CUDA/cuDNN libraries.",
            missing,
            list(report.active),
            list(report.available),
        )
