"""The `manifest.json` of an exported model: what the model is, its files and their checksums (torch-free).

The server reads a model directory only through this module and `skulens.model.preprocess_config`; the format is
documented in docs/MANIFEST.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from skulens.errors import SkulensError

MANIFEST_FILE = "manifest.json"
FORMAT = "skulens-model"
FORMAT_VERSION = 1
VARIANTS = ("fp32", "fp16", "int8")
# ONNX Runtime graph optimisers a *CPU* session of an fp16 model must disable: the CPU NchwcTransformer
# dereferences a null op schema on the Casts the CPU provider inserts around fp16 ops it has no kernel
# for, and the process segfaults at session creation (onnxruntime issue #28392; ORT 1.32). fp16 is for CUDA.
ORT_CPU_FP16_DISABLED_OPTIMIZERS: tuple[str, ...] = ("NchwcTransformer",)


class ManifestError(SkulensError, ValueError):
    """A model directory is missing, malformed or does not match its manifest (`field`: the manifest key or
    file concerned, when one is)."""


@dataclass(frozen=True)
class TensorSpec:
    """One ONNX input or output: name, shape (str for dynamic axes) and element type."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(name=str(d["name"]), shape=tuple(d["shape"]), dtype=str(d["dtype"]))


@dataclass(frozen=True)
class TowerSpec:
    """One ONNX graph (image or text tower) and its single input and output."""

    file: str
    input: TensorSpec
    output: TensorSpec

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TowerSpec:
        return cls(
            file=str(d["file"]),
            input=TensorSpec.from_dict(d["input"]),
            output=TensorSpec.from_dict(d["output"]),
        )


@dataclass(frozen=True)
class TokenizerSpec:
    """Serve-time tokenizer: type `clip_bpe`, files relative to the model dir, context length."""

    type: str
    vocab_file: str
    config_file: str
    context_length: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenizerSpec:
        return cls(
            type=str(d["type"]),
            vocab_file=str(d["vocab_file"]),
            config_file=str(d["config_file"]),
            context_length=int(d["context_length"]),
        )


@dataclass(frozen=True)
class Manifest:
    """Everything the server needs to know about an exported model."""

    model_name: str
    family: str
    weights: str
    variant: str
    embedding_dim: int
    opset: int
    image: TowerSpec
    fingerprint: str
    files: dict[str, str]
    text: TowerSpec | None = None
    tokenizer: TokenizerSpec | None = None
    preprocess_file: str = "preprocess.json"
    embedding: dict[str, str] = field(default_factory=dict)
    seed: int | None = None
    parity: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def random_weights(self) -> bool:
        """True when the towers carry seeded random weights (tests only; never for real recognition)."""
        return self.weights == "random"

    @property
    def has_text(self) -> bool:
        """True when the model has a text tower and tokenizer."""
        return self.text is not None and self.tokenizer is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        """Parse a manifest dict; raises `ManifestError` on a malformed or unsupported one."""
        try:
            if d.get("format") != FORMAT or int(d.get("format_version", -1)) != FORMAT_VERSION:
                raise ManifestError(
                    f"unsupported manifest format {d.get('format')!r} v{d.get('format_version')!r}; "
                    f"expected {FORMAT!r} v{FORMAT_VERSION}"
                )
            variant = str(d["variant"])
            if variant not in VARIANTS:
                raise ManifestError(f"manifest.variant must be one of {VARIANTS}, got {variant!r}")
            return cls(
                model_name=str(d["model_name"]),
                family=str(d["family"]),
                weights=str(d["weights"]),
                variant=variant,
                embedding_dim=int(d["embedding_dim"]),
                opset=int(d["opset"]),
                image=TowerSpec.from_dict(d["image"]),
                text=TowerSpec.from_dict(d["text"]) if d.get("text") else None,
                tokenizer=TokenizerSpec.from_dict(d["tokenizer"]) if d.get("tokenizer") else None,
                preprocess_file=str(d.get("preprocess_file", "preprocess.json")),
                embedding={str(k): str(v) for k, v in d.get("embedding", {}).items()},
                fingerprint=str(d["fingerprint"]),
                files={str(k): str(v) for k, v in d["files"].items()},
                seed=None if d.get("seed") is None else int(d["seed"]),
                parity=dict(d.get("parity", {})),
                tools={str(k): str(v) for k, v in d.get("tools", {}).items()},
                created_at=str(d.get("created_at", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ManifestError):
                raise
            raise ManifestError(f"malformed manifest: {exc!r}") from exc


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def embedding_fingerprint(model_name: str, weights: str, weights_id: str, embedding_dim: int) -> str:
    """Identity of the embedding *space*: same for every variant (fp32/fp16/int8) of the same weights.

    Variants are parity-checked against the same PyTorch reference (cosine ≥ 0.995), so a catalog built with
    one variant can be searched with another; different weights (or seeds) give a different fingerprint.
    `weights_id` is e.g. the seed for random weights or the checkpoint's sha256.
    """
    key = json.dumps([model_name, weights, weights_id, int(embedding_dim)], separators=(",", ":"))
    return f"{model_name}/{weights}/{embedding_dim}:{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def write_manifest(model_dir: Path, manifest: Manifest) -> Path:
    """Write `manifest.json` into `model_dir`."""
    path = Path(model_dir) / MANIFEST_FILE
    path.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


def load_manifest(model_dir: Path, verify: bool = True) -> Manifest:
    """Read `manifest.json`; with `verify`, check that every listed file exists with its sha256."""
    path = Path(model_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_FILE} in model directory {model_dir} (run `skulens export` first)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
    manifest = Manifest.from_dict(data)
    if verify:
        verify_files(model_dir, manifest)
    return manifest


def verify_files(model_dir: Path, manifest: Manifest) -> None:
    """Raise `ManifestError` naming the first file that is missing or whose sha256 differs."""
    for rel, expected in sorted(manifest.files.items()):
        p = Path(model_dir) / rel
        if not p.is_file():
            raise ManifestError(f"model file {rel} listed in the manifest is missing from {model_dir}")
        actual = sha256_file(p)
        if actual != expected:
            raise ManifestError(
                f"model file {rel} has sha256 {actual}, manifest says {expected}: the file was changed or "
                "damaged; re-export the model"
            )
