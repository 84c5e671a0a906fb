"""CLIP byte-level BPE tokenizer for serving, without torch or open_clip.

Reads the `tokenizer/` sidecar of a model directory (see docs/MANIFEST.md) and reproduces open_clip's
`SimpleTokenizer` (clean="lower") exactly: ftfy.fix_text, html.unescape twice, whitespace collapse,
lower case, the same pre-tokenisation regex, byte-to-unicode mapping and BPE merges; sequences are
`[sot] + tokens + [eot]`, truncated to the context length with eot kept last, zero padded.
"""

from __future__ import annotations

import gzip
import html
import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import ftfy
import numpy as np
import regex

DEFAULT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
SOT = "<start_of_text>"
EOT = "<end_of_text>"


class TokenizerError(ValueError):
    """The tokenizer sidecar is missing or inconsistent."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible map from the 256 byte values to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def clean_lower(text: str) -> str:
    """open_clip's `_clean_lower`: ftfy, double html unescape, strip, whitespace collapse, lower."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


class ClipTokenizer:
    """Text → int64 token ids [N, context_length] identical to `open_clip.get_tokenizer("ViT-B-32")`."""

    def __init__(
        self,
        merges: Sequence[tuple[str, str]],
        *,
        context_length: int = 77,
        pattern: str = DEFAULT_PATTERN,
        cache_size: int = 65536,
    ) -> None:
        self.byte_encoder = bytes_to_unicode()
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += [SOT, EOT]
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.bpe_ranks: dict[tuple[str, str], int] = {tuple(m): i for i, m in enumerate(merges)}  # type: ignore[misc]
        self.sot_token_id = self.encoder[SOT]
        self.eot_token_id = self.encoder[EOT]
        self.vocab_size = len(self.encoder)
        self.context_length = int(context_length)
        self._pat = regex.compile(f"{SOT}|{EOT}|{pattern}", regex.IGNORECASE)
        self._special = {SOT: SOT, EOT: EOT}
        # Per-instance LRU cache of word → BPE pieces (product names repeat a lot).
        self._bpe_cached = lru_cache(maxsize=cache_size)(self._bpe)

    @classmethod
    def from_files(cls, vocab_file: Path, config: dict[str, Any] | None = None) -> ClipTokenizer:
        """Build from the gzipped merges file and the parsed `tokenizer.json` (or defaults)."""
        config = config or {}
        n_merges = int(config.get("n_merges", 49152 - 256 - 2))
        try:
            with gzip.open(vocab_file) as fh:
                lines = fh.read().decode("utf-8").split("\n")
        except OSError as exc:
            raise TokenizerError(f"cannot read BPE vocab {vocab_file}: {exc}") from exc
        merges = [tuple(line.split()) for line in lines[1 : n_merges + 1]]
        if len(merges) != n_merges or any(len(m) != 2 for m in merges):
            raise TokenizerError(f"BPE vocab {vocab_file} does not hold {n_merges} merges")
        tok = cls(
            merges,  # type: ignore[arg-type]
            context_length=int(config.get("context_length", 77)),
            pattern=str(config.get("pattern", DEFAULT_PATTERN)),
        )
        for key, attr in (("sot_token_id", "sot_token_id"), ("eot_token_id", "eot_token_id")):
            if key in config and int(config[key]) != getattr(tok, attr):
                raise TokenizerError(
                    f"tokenizer.json {key}={config[key]} but the vocab gives {getattr(tok, attr)}"
                )
        if "vocab_size" in config and int(config["vocab_size"]) != tok.vocab_size:
            raise TokenizerError(
                f"tokenizer.json vocab_size={config['vocab_size']}, vocab gives {tok.vocab_size}"
            )
        return tok

    @classmethod
    def from_model_dir(cls, model_dir: Path, spec: Any = None) -> ClipTokenizer:
        """Build from a model dir; `spec` is the manifest's `TokenizerSpec` (None: default sidecar paths)."""
        model_dir = Path(model_dir)
        vocab_rel = getattr(spec, "vocab_file", "tokenizer/bpe_simple_vocab_16e6.txt.gz")
        config_rel = getattr(spec, "config_file", "tokenizer/tokenizer.json")
        config_path = model_dir / config_rel
        if not config_path.is_file():
            raise TokenizerError(
                f"tokenizer config {config_path} is missing (CLIP model dirs carry tokenizer/)"
            )
        config = json.loads(config_path.read_text())
        if config.get("type", "clip_bpe") != "clip_bpe":
            raise TokenizerError(f"unsupported tokenizer type {config.get('type')!r}; expected 'clip_bpe'")
        if spec is not None and int(spec.context_length) != int(config.get("context_length", 77)):
            raise TokenizerError("manifest and tokenizer.json disagree on context_length")
        return cls.from_files(model_dir / vocab_rel, config)

    def _bpe(self, token: str) -> tuple[str, ...]:
        if token in self._special:
            return (token,)
        word: tuple[str, ...] = (*token[:-1], token[-1] + "</w>")
        if len(word) == 1:
            return word
        ranks = self.bpe_ranks
        while True:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            bigram = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if bigram not in ranks:
                break
            first, second = bigram
            new_word: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
        return word

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without sot/eot."""
        ids: list[int] = []
        for piece in self._pat.findall(clean_lower(text)):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[p] for p in self._bpe_cached(mapped))
        return ids

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        """int64 [N, context_length]: sot + ids + eot, truncated keeping eot last, zero padded."""
        n = self.context_length
        out = np.zeros((len(texts), n), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > n:
                ids = ids[:n]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = ids
        return out

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode_batch(texts)
