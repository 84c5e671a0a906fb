"""catalog validation, catalog settings, catalog errors, catalog rwlock: limits, messages, tokens, locking."""

from __future__ import annotations

import hashlib
import re
import threading
import time

import numpy as np
import pytest

from skulens.catalog import validation as v
from skulens.catalog.errors import CatalogError, FingerprintMismatch, InvalidArgument
from skulens.catalog.models import HashedImage
from skulens.catalog.rwlock import RWLock
from skulens.catalog.settings import CatalogSettings


def test_text_limits_count_characters_not_bytes() -> None:
    assert v.product_id("é" * 128) == "é" * 128  # 256 UTF-8 bytes, 128 characters
    with pytest.raises(InvalidArgument, match="got 129"):
        v.product_id("é" * 129)
    with pytest.raises(InvalidArgument, match="must be a string"):
        v.product_id(12)
    assert v.labels(None) == {}
    with pytest.raises(InvalidArgument, match="at most 64 entries, got 65"):
        v.labels({str(i): "" for i in range(65)})
    with pytest.raises(InvalidArgument) as err:
        v.labels({"": "x"})
    assert err.value.field == "labels"  # an invalid key cannot be addressed: the map is named, the key quoted
    assert err.value.message.startswith("labels key '' must be 1-64")


def test_vectors_and_hashes() -> None:
    x = np.zeros(8, np.float32)
    x[0] = 1
    assert v.vectors(x, 8, 0.01, "q").shape == (1, 8)
    assert v.vectors([list(x)] * 3, 8, 0.01, "q").dtype == np.float32
    with pytest.raises(InvalidArgument, match=r"shape \[8\], got \[2, 8\]"):
        v.vectors(np.stack([x, x]), 8, 0.01, "e", single=True)
    with pytest.raises(InvalidArgument, match="row 1"):
        v.vectors(np.stack([x, 2 * x]), 8, 0.01, "q")
    with pytest.raises(InvalidArgument, match="float array"):
        v.vectors("nope", 8, 0.01, "q")
    img = b"\x89PNG..."
    digest = hashlib.sha256(img).hexdigest()
    assert v.image_and_sha(img, None, "r", 100) == (img, digest)
    assert v.image_and_sha(None, digest.upper(), "r", 100) == (None, digest)
    with pytest.raises(InvalidArgument, match="1-4 bytes, got 7"):
        v.image_and_sha(img, None, "r", 4)


def test_hashed_image_is_hashed_once_and_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A HashedImage carries the sha256 its constructor made; validation uses it without hashing again, and
    still refuses a different declared hash or an image over the size limit."""
    img = b"\x89PNG..."
    digest = hashlib.sha256(img).hexdigest()
    hashed = HashedImage(img)
    assert (hashed.data, hashed.sha256, len(hashed)) == (img, digest, len(img))
    with pytest.raises(AttributeError):
        hashed._sha256 = "0" * 64  # type: ignore[misc]
    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(v.hashlib, "sha256", lambda *a: calls.append(a) or real(*a))
    assert v.image_and_sha(hashed, None, "r", 100) == (img, digest)
    assert v.image_and_sha(hashed, digest.upper(), "r", 100) == (img, digest)
    assert calls == []
    with pytest.raises(InvalidArgument, match="does not match") as err:
        v.image_and_sha(hashed, "0" * 64, "references[2]", 100)
    assert err.value.field == "references[2].content_sha256"
    with pytest.raises(InvalidArgument, match="1-4 bytes, got 7"):
        v.image_and_sha(hashed, None, "r", 4)


def test_page_tokens_round_trip() -> None:
    token = v.encode_page_token("sku-é/1", "drinks")
    assert "=" not in token and v.decode_page_token(token, "drinks") == "sku-é/1"
    assert v.decode_page_token("", "x") == ""
    for bad in ("%%%", "e30", v.encode_page_token("a", "b")[:-2]):
        with pytest.raises(InvalidArgument) as err:
            v.decode_page_token(bad, "b")
        assert err.value.field == "page_token"


def test_settings_validation_and_index_config() -> None:
    s = CatalogSettings()
    assert s.synchronous == "FULL" and s.use_gpu == "auto" and s.blas_threshold == 16
    assert set(s.index_config()) == {"approximate_threshold", "approximate_kind", "hnsw_m",
                                     "hnsw_ef_construction", "ivf_nlist", "hnsw_ef_search", "ivf_nprobe",
                                     "recall_target", "hnsw_max_ef_search", "ivf_max_nprobe"}
    for kwargs, field in [({"max_top_k": 0}, "max_top_k"), ({"approximate_kind": "lsh"}, "approximate_kind"),
                          ({"unknown_threshold": 1.5}, "unknown_threshold"), ({"use_gpu": "yes"}, "use_gpu"),
                          ({"ambiguity_margin": -0.1}, "ambiguity_margin"), ({"ivf_nlist": -1}, "ivf_nlist"),
                          ({"recall_target": 1.5}, "recall_target"), ({"search_threads": -1}, "search_threads")]:
        with pytest.raises(InvalidArgument) as err:
            CatalogSettings(**kwargs)  # type: ignore[arg-type]
        assert err.value.field == field


def test_error_classes() -> None:
    err = FingerprintMismatch.between("a/1:x", 512, "b/1:y", 768)
    assert isinstance(err, CatalogError) and err.field == "fingerprint"
    assert "a/1:x" in str(err) and "b/1:y" in str(err) and "skulens reembed" in str(err)
    assert (err.stored_dim, err.requested_dim) == (512, 768)
    assert str(InvalidArgument("m", field="f")) == "f: m" and InvalidArgument("m", field="f").message == "m"


def test_rwlock_readers_share_writer_excludes() -> None:
    lock = RWLock()
    inside = [0]
    peak = [0]
    violations: list[str] = []
    guard = threading.Lock()

    def reader() -> None:
        for _ in range(50):
            with lock.read():
                with guard:
                    inside[0] += 1
                    peak[0] = max(peak[0], inside[0])
                time.sleep(0.0005)
                with guard:
                    inside[0] -= 1

    def writer() -> None:
        for _ in range(20):
            with lock.write():
                with guard:
                    if inside[0]:
                        violations.append("writer with readers")
                time.sleep(0.0005)

    threads = [threading.Thread(target=reader) for _ in range(4)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not violations and peak[0] > 1


def test_identifiers_are_nfc() -> None:
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    assert v.product_id(nfd) == nfc and v.product_id(nfc) == nfc
    assert v.category(nfd) == nfc and v.category("") == ""
    assert v.labels({nfd: "i\u0302le"}) == {nfc: "\u00eele"}  # keys and values compare in NFC
    with pytest.raises(InvalidArgument, match="twice") as err:
        v.labels({nfc: "a", nfd: "b"})
    assert err.value.field == "labels"
    assert v.product_id("e\u0301" * 128) == "\u00e9" * 128  # the limit applies to the stored (NFC) form
    assert v.product_id("milk 1 l") == "milk 1 l"


@pytest.mark.parametrize(
    ("ch", "kind", "name"),
    [
        ("\u202e", "Cf", "RIGHT-TO-LEFT OVERRIDE"),
        ("\u200b", "Cf", "ZERO WIDTH SPACE"),
        ("\ufeff", "Cf", "ZERO WIDTH NO-BREAK SPACE"),
        ("\u2028", "Zl", "LINE SEPARATOR"),
        ("\u2029", "Zp", "PARAGRAPH SEPARATOR"),
        ("\x00", "Cc", ""),
        ("\x85", "Cc", ""),
        ("\u0378", "Cn", ""),
    ],
)
def test_identifiers_refuse_unprintable_code_points(ch: str, kind: str, name: str) -> None:
    for check, field in ((v.product_id, "product_id"), (v.category, "category")):
        with pytest.raises(InvalidArgument) as err:
            check("ab" + ch + "c")
        msg = str(err.value)
        assert err.value.field == field and msg.startswith(field)
        assert f"({kind}): U+{ord(ch):04X}" in msg and name in msg and "at position 2" in msg
    with pytest.raises(InvalidArgument) as err:
        v.labels({"k" + ch: "x"})
    assert err.value.field == "labels" and err.value.message.startswith(f"labels key {'k' + ch!r} must not")


def test_label_values_are_named_by_their_map_entry() -> None:
    cases = (("brand", "labels.brand"), ("brand name", "labels.`brand name`"), ("caf\u00e9", "labels.`caf\u00e9`"),
             ("a`b\\c", "labels.`a\\`b\\\\c`"), ("2024", "labels.`2024`"))
    for key, path in cases:
        with pytest.raises(InvalidArgument) as err:
            v.labels({key: "v" * 257})
        assert err.value.field == path and err.value.message.startswith(f"{path} must be 0-256")
    with pytest.raises(InvalidArgument) as err:
        v.labels({"ok": "a\x00b"}, "options.labels")
    assert err.value.field == "options.labels.ok"


def test_request_ids_are_uuids() -> None:
    assert v.request_id("") is None and v.request_id(None) is None
    assert v.request_id("0F8E2B4C-1D2A-4B3C-8D9E-0A1B2C3D4E5F") == "0f8e2b4c-1d2a-4b3c-8d9e-0a1b2c3d4e5f"
    for bad in ("0f8e2b4c1d2a4b3c8d9e0a1b2c3d4e5f", "0f8e2b4c-1d2a-4b3c-8d9e-0a1b2c3d4e5", "x" * 36,
                "0f8e2b4c-1d2a-4b3c-8d9e-0a1b2c3d4e5f0", 5):
        with pytest.raises(InvalidArgument, match="must be a UUID") as err:
            v.request_id(bad, "request_id")
        assert err.value.field == "request_id"
    with pytest.raises(InvalidArgument) as err:
        v.request_ids(["0f8e2b4c-1d2a-4b3c-8d9e-0a1b2c3d4e5f", "nope"])
    assert err.value.field == "request_ids[1]"


def test_identifiers_refuse_outer_and_only_whitespace() -> None:
    for bad, what in ((" a", "leading whitespace: U+0020 SPACE at position 0"),
                      ("a\u3000", "trailing whitespace: U+3000 IDEOGRAPHIC SPACE at position 1"),
                      ("   ", "whitespace only"), ("\u00a0", "whitespace only")):
        with pytest.raises(InvalidArgument, match=re.escape(what)):
            v.product_id(bad)
    with pytest.raises(InvalidArgument, match="whitespace only"):
        v.category(" ")
    with pytest.raises(InvalidArgument, match="unpaired surrogate at 1"):
        v.product_id("a\ud800")
    assert v.display_name(" any text\u200b ") == " any text\u200b "  # free text keeps the old rule (no Cc)


def test_trusted_vectors_skip_the_norm_check_but_not_the_shape() -> None:
    """Rows an encoder made are taken as they are (no per-row norm pass); their type and shape still count,
    and anything not a float32 C-contiguous [N, dim] array gets the full check."""
    rows = np.full((2, 8), 0.5, dtype=np.float32)  # norm 1.414: refused untrusted, taken as is when trusted
    with pytest.raises(InvalidArgument, match="L2-normalised"):
        v.vectors(rows, 8, 0.01, "q")
    assert v.vectors(rows, 8, 0.01, "q", trusted=True) is rows
    with pytest.raises(InvalidArgument, match=r"shape \[N, 4\]"):
        v.vectors(rows, 4, 0.01, "q", trusted=True)
    with pytest.raises(InvalidArgument, match="L2-normalised"):
        v.vectors(rows.astype(np.float64), 8, 0.01, "q", trusted=True)
    with pytest.raises(InvalidArgument, match="L2-normalised"):
        v.vectors(np.full((2, 16), 0.5, dtype=np.float32)[:, ::2], 8, 0.01, "q", trusted=True)
