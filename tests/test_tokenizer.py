"""skulens.inference.tokenizer must give exactly open_clip's ViT-B-32 token ids, without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from skulens.inference.tokenizer import ClipTokenizer, TokenizerError, clean_lower

REPO_ROOT = Path(__file__).resolve().parents[1]

CORPUS = [
    "a photo of a can of soda",
    "Coca-Cola Zero 330ml, 6-pack!",
    "Crème brûlée au café — 250 g",
    "Ünïcödé ßtraße ﬁligree naïve façade",
    "有機緑茶 500ml ペットボトル",
    "신라면 120g 멀티팩",
    "шоколад молочный 100 г",
    "chocolate 🍫🍫 with almonds 👍🏽 and 🇫🇷 flag",
    "",
    "   ",
    "\t\n  \u3000 ",
    "Tom &amp; Jerry &lt;b&gt;bold&lt;/b&gt; &amp;amp; &#39;quoted&#39; &eacute;",
    "don't I'll we've they're she'd it's I'm",
    "<start_of_text> special <END_OF_TEXT> tokens",
    "Ａｂｃ full-width ＡＢＣ １２３",
    "zero\u200bwidth and soft\u00adhyphen",
    "numbers 1234567890 3.14 1/2 ½",
    "mojibake cafÃ© and â€œquotesâ€\x9d",
    "an extremely long product description " * 12,
    "x" * 600,
    " ".join(str(i) for i in range(200)),
    "UPPER lower MiXeD",
]


@pytest.fixture(scope="module")
def open_clip_tokenizer() -> Any:
    from skulens.export.torch_compat import import_open_clip

    return import_open_clip().get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module")
def sidecar_dir(tmp_path_factory: pytest.TempPathFactory, open_clip_tokenizer: Any) -> Path:
    from skulens.export.clip import write_tokenizer

    d = tmp_path_factory.mktemp("tokdir")
    write_tokenizer(d, open_clip_tokenizer)
    return d


@pytest.fixture(scope="module")
def tokenizer(sidecar_dir: Path) -> ClipTokenizer:
    return ClipTokenizer.from_model_dir(sidecar_dir)


def test_matches_open_clip_on_corpus(tokenizer: ClipTokenizer, open_clip_tokenizer: Any) -> None:
    ref = open_clip_tokenizer(CORPUS).numpy()
    got = tokenizer.encode_batch(CORPUS)
    assert got.dtype == np.int64 and got.shape == (len(CORPUS), 77)
    mismatched = [CORPUS[i][:40] for i in range(len(CORPUS)) if not np.array_equal(ref[i], got[i])]
    assert not mismatched
    np.testing.assert_array_equal(got, ref)


def test_truncation_keeps_eot_last(tokenizer: ClipTokenizer) -> None:
    ids = tokenizer.encode_batch(["word " * 200])[0]
    assert ids[0] == tokenizer.sot_token_id == 49406
    assert ids[-1] == tokenizer.eot_token_id == 49407
    assert (ids != 0).all()


def test_empty_and_whitespace_are_sot_eot(tokenizer: ClipTokenizer) -> None:
    ids = tokenizer.encode_batch(["", "  \t\n "])
    for row in ids:
        assert list(row[:2]) == [49406, 49407] and not row[2:].any()


def test_empty_batch(tokenizer: ClipTokenizer) -> None:
    assert tokenizer.encode_batch([]).shape == (0, 77)


def test_bpe_lru_cache_is_used(tokenizer: ClipTokenizer) -> None:
    tokenizer.encode_batch(["cache probe cache probe"])
    info = tokenizer._bpe_cached.cache_info()
    assert info.hits >= 2 and info.maxsize and info.maxsize > 0


def test_clean_lower() -> None:
    assert clean_lower("  A &amp;amp; B\n\tC  ") == "a & b c"


def test_sidecar_config(sidecar_dir: Path) -> None:
    cfg = json.loads((sidecar_dir / "tokenizer" / "tokenizer.json").read_text())
    assert cfg["type"] == "clip_bpe"
    assert cfg["context_length"] == 77
    assert (cfg["sot_token_id"], cfg["eot_token_id"], cfg["vocab_size"]) == (49406, 49407, 49408)
    assert (sidecar_dir / "tokenizer" / cfg["vocab_file"]).is_file()


def test_inconsistent_sidecar_is_rejected(sidecar_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer"
    bad.mkdir()
    (bad / "bpe_simple_vocab_16e6.txt.gz").write_bytes(
        (sidecar_dir / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz").read_bytes()
    )
    cfg = json.loads((sidecar_dir / "tokenizer" / "tokenizer.json").read_text())
    cfg["eot_token_id"] = 7
    (bad / "tokenizer.json").write_text(json.dumps(cfg))
    with pytest.raises(TokenizerError, match="eot_token_id"):
        ClipTokenizer.from_model_dir(tmp_path)


def test_missing_sidecar_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="missing"):
        ClipTokenizer.from_model_dir(tmp_path)


def test_server_tokenizer_imports_no_torch(sidecar_dir: Path) -> None:
    code = (
        "import sys; from skulens.inference.tokenizer import ClipTokenizer; "
        f"t = ClipTokenizer.from_model_dir({str(sidecar_dir)!r}); t.encode_batch(['hi']); "
        "bad = [m for m in ('torch', 'open_clip', 'onnx') if m in sys.modules]; print(bad); "
        "raise SystemExit(1 if bad else 0)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr
