"""manifest / preprocess_config contracts, on synthetic model dirs and the exported CLIP dir."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from skulens.model.manifest import (
    MANIFEST_FILE,
    Manifest,
    ManifestError,
    TensorSpec,
    TowerSpec,
    embedding_fingerprint,
    load_manifest,
    sha256_file,
    verify_files,
    write_manifest,
)
from skulens.model.preprocess_config import PreprocessConfig


def _synthetic(model_dir: Path) -> Manifest:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "image.onnx").write_bytes(b"not really onnx")
    PreprocessConfig(size=(224, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)).write(model_dir)
    files = {p.name: sha256_file(p) for p in model_dir.iterdir()}
    m = Manifest(
        model_name="tiny",
        family="image_only",
        weights="random",
        variant="fp32",
        embedding_dim=4,
        opset=17,
        image=TowerSpec(
            "image.onnx",
            TensorSpec("pixel_values", ("batch", 3, 224, 224), "float32"),
            TensorSpec("embedding", ("batch", 4), "float32"),
        ),
        fingerprint=embedding_fingerprint("tiny", "random", "0", 4),
        files=files,
        seed=0,
    )
    write_manifest(model_dir, m)
    return m


def test_round_trip(tmp_path: Path) -> None:
    m = _synthetic(tmp_path)
    assert load_manifest(tmp_path) == m
    assert m.random_weights and not m.has_text


def test_embedding_description_round_trips_and_is_optional(tmp_path: Path) -> None:
    """`embedding` says what the vector is; manifests written before the key read as an empty one."""
    m = _synthetic(tmp_path)
    assert m.embedding == {}
    data = json.loads((tmp_path / MANIFEST_FILE).read_text())
    data["embedding"] = {"pooling": "cls_token", "description": "the CLS token"}
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
    assert load_manifest(tmp_path).embedding == {"pooling": "cls_token", "description": "the CLS token"}
    del data["embedding"]
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
    assert load_manifest(tmp_path) == m


def test_tampered_file_is_named(tmp_path: Path) -> None:
    _synthetic(tmp_path)
    (tmp_path / "image.onnx").write_bytes(b"changed")
    with pytest.raises(ManifestError, match=r"image\.onnx"):
        load_manifest(tmp_path)
    load_manifest(tmp_path, verify=False)


def test_missing_file_is_named(tmp_path: Path) -> None:
    _synthetic(tmp_path)
    (tmp_path / "preprocess.json").unlink()
    with pytest.raises(ManifestError, match=r"preprocess\.json .*missing"):
        load_manifest(tmp_path)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.update(format="other"), "unsupported manifest format"),
        (lambda d: d.update(variant="int4"), "variant"),
        (lambda d: d.pop("image"), "malformed"),
    ],
)
def test_malformed_manifest(tmp_path: Path, mutate: object, match: str) -> None:
    _synthetic(tmp_path)
    data = json.loads((tmp_path / MANIFEST_FILE).read_text())
    mutate(data)  # type: ignore[operator]
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=match):
        load_manifest(tmp_path)


def test_no_manifest_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="skulens export"):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text("{nope")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path)


def test_fingerprint_depends_on_weights_not_variant() -> None:
    a = embedding_fingerprint("ViT-B-32", "random", "0", 512)
    assert a == embedding_fingerprint("ViT-B-32", "random", "0", 512)
    assert a != embedding_fingerprint("ViT-B-32", "random", "1", 512)
    assert a != embedding_fingerprint("ViT-B-32", "openai", "openai", 512)


def test_file_hashes_cover_sidecars_not_manifest(tmp_path: Path) -> None:
    from skulens.export.common import file_hashes

    _synthetic(tmp_path)
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer.json").write_text("{}")
    assert set(file_hashes(tmp_path)) == {"image.onnx", "preprocess.json", "tokenizer/tokenizer.json"}


def test_exported_clip_manifest_is_complete(clip_model_dir: Path, tmp_path: Path) -> None:
    m = load_manifest(clip_model_dir)
    listed = {p.relative_to(clip_model_dir).as_posix() for p in clip_model_dir.rglob("*") if p.is_file()}
    assert set(m.files) == listed - {MANIFEST_FILE}
    raw = json.loads((clip_model_dir / MANIFEST_FILE).read_text())
    for key in (
        "model_name",
        "family",
        "weights",
        "seed",
        "embedding_dim",
        "image",
        "text",
        "tokenizer",
        "opset",
        "variant",
        "files",
        "parity",
        "tools",
        "created_at",
        "fingerprint",
        "embedding",
        "format",
        "format_version",
    ):
        assert key in raw, key
    # A copy with one tokenizer file damaged fails verification, naming the file.
    copy = tmp_path / "copy"
    shutil.copytree(clip_model_dir, copy, ignore=shutil.ignore_patterns("*.onnx"))
    for name in ("image.onnx", "text.onnx"):
        (copy / name).symlink_to(clip_model_dir / name)
    verify_files(copy, m)
    (copy / "tokenizer" / "tokenizer.json").write_text("{}")
    with pytest.raises(ManifestError, match=r"tokenizer/tokenizer\.json"):
        verify_files(copy, m)
