"""Options of the inference engine (encoder, batcher, engine); `skulens.service.settings.Settings` builds them."""

from __future__ import annotations

from dataclasses import dataclass, field

from skulens.imaging.limits import DecodeLimits

GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


@dataclass(frozen=True)
class EncoderOptions:
    """ONNX Runtime session options.

    `providers=None` means TensorRT → CUDA → CPU, keeping those this onnxruntime build has. `io_binding=None`
    means "on when a GPU provider is active". Thread counts of 0 leave the choice to onnxruntime.
    `spinning`: let onnxruntime's idle intra-op threads busy-wait for the next run (its default). Off here: in a
    server the decode threads, the gRPC loop and the model share the cores, and spinning threads starve them
    (docs/BENCHMARKS.md, service section).
    """

    providers: tuple[str, ...] | None = None
    require_gpu: bool = False
    device_id: int = 0
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    graph_optimization: str = "all"
    io_binding: bool | None = None
    warmup: bool = True
    spinning: bool = False

    def __post_init__(self) -> None:
        if self.graph_optimization not in GRAPH_OPTIMIZATION_LEVELS:
            raise ValueError(
                f"graph_optimization must be one of {GRAPH_OPTIMIZATION_LEVELS}, "
                f"got {self.graph_optimization!r}"
            )
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ValueError("thread counts must be >= 0")


@dataclass(frozen=True)
class BatcherOptions:
    """Micro-batching: flush at `max_batch` items or `max_wait_ms` after the oldest, whichever comes first."""

    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1 or self.max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1, max_wait_ms >= 0")


@dataclass(frozen=True)
class EngineOptions:
    """Everything `skulens.inference.engine.Engine.load` needs besides the model directory.

    `fast_decode`: decode JPEGs at a reduced DCT scale (1/2, 1/4, 1/8) while the shortest side stays
    ≥ `draft_factor` × the model's input size, then resize exactly as the exact path (docs/BENCHMARKS.md
    has the measured cosine against the exact path). `decode_workers=None` means `os.cpu_count()`.
    `decode_processes`: run the `decode_workers` decoders as worker processes instead of threads
    (`skulens.inference.decode_pool`; they are spawned, so a script that builds an engine with them needs the
    usual ``if __name__ == "__main__":`` guard). `work_nice`: decoders, the inference thread and onnxruntime's
    threads run that many nice steps below the serving loop (`skulens.inference.priority`).
    """

    decode: DecodeLimits = field(default_factory=DecodeLimits)
    encoder: EncoderOptions = field(default_factory=EncoderOptions)
    batcher: BatcherOptions = field(default_factory=BatcherOptions)
    text_batcher: BatcherOptions = field(default_factory=lambda: BatcherOptions(max_batch=64))
    fast_decode: bool = True
    draft_factor: float = 2.0
    decode_workers: int | None = None
    decode_processes: bool = False
    work_nice: int = 0
    random_weights_warn_interval_s: float = 60.0

    def __post_init__(self) -> None:
        if self.draft_factor < 1.0:
            raise ValueError(f"draft_factor must be >= 1.0, got {self.draft_factor}")
        if self.decode_workers is not None and self.decode_workers < 1:
            raise ValueError(f"decode_workers must be >= 1, got {self.decode_workers}")
        if not 0 <= self.work_nice <= 19:
            raise ValueError(f"work_nice must be in 0..19, got {self.work_nice}")
