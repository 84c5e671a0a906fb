"""Input checks: every failure is an `InvalidArgument` naming the field, the limit and the value."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from skulens.catalog.errors import InvalidArgument
from skulens.catalog.models import HashedImage, NewReference
from skulens.errors import Key, field_path

PRODUCT_ID_MAX = 128
DISPLAY_NAME_MAX = 512
DESCRIPTION_MAX = 4096
CATEGORY_MAX = 128
LABELS_MAX = 64
LABEL_KEY_MAX = 64
LABEL_VALUE_MAX = 256
SOURCE_MAX = 1024
FINGERPRINT_MAX = 256
DIM_MAX = 65536
_SHA_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
REQUEST_ID_LENGTH = 36


def _text(value: object, field: str, lo: int, hi: int, name: str | None = None) -> str:
    name = name or field
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a string, got {type(value).__name__}", field=field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(f"{name} must be valid UTF-8 (unpaired surrogate at {exc.start})",
                              field=field) from None
    if not lo <= len(value) <= hi:
        raise InvalidArgument(f"{name} must be {lo}-{hi} UTF-8 characters, got {len(value)}", field=field)
    for i, ch in enumerate(value):
        if unicodedata.category(ch) == "Cc":
            raise InvalidArgument(f"{name} must not contain control characters (U+{ord(ch):04X} at {i})",
                                  field=field)
    return value


# Identifiers (product ids, categories, label keys) are compared and stored in NFC, and must be printable:
# these general categories are refused (control, format such as U+200B / U+202E / U+FEFF, line and paragraph
# separators, code points unassigned in the server's Unicode version); unpaired surrogates fail the UTF-8 check.
_ID_FORBIDDEN = {
    "Cc": "control characters",
    "Cf": "format characters",
    "Zl": "line separators",
    "Zp": "paragraph separators",
    "Cn": "unassigned code points",
}


def _code_point(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return f"U+{ord(ch):04X}" + (f" {name}" if name else "")


def identifier(value: object, field: str, lo: int, hi: int, name: str | None = None) -> str:
    """An identifier in NFC: printable code points only (see `_ID_FORBIDDEN`), no leading/trailing whitespace.

    Code points are checked as sent (positions refer to the client's string); the length limit applies to the
    NFC form, which is what is stored and compared, so NFC and NFD spellings name the same object. Errors name
    `field` (a field path); their message calls the value `name` (default: the field).
    """
    name = name or field
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a string, got {type(value).__name__}", field=field)
    for i, ch in enumerate(value):
        kind = unicodedata.category(ch)
        if kind in _ID_FORBIDDEN:
            raise InvalidArgument(f"{name} must not contain {_ID_FORBIDDEN[kind]} ({kind}): {_code_point(ch)} "
                                  f"at position {i}", field=field)
    value = unicodedata.normalize("NFC", value)
    if value and value.isspace():
        raise InvalidArgument(f"{name} must not be whitespace only ({len(value)} characters)", field=field)
    for i in (0, len(value) - 1) if value else ():
        if value[i].isspace():
            where = "leading" if i == 0 else "trailing"
            raise InvalidArgument(f"{name} must not have {where} whitespace: {_code_point(value[i])} at "
                                  f"position {i}", field=field)
    return _text(value, field, lo, hi, name)


def product_id(value: object, field: str = "product_id") -> str:
    """A product id: 1-128 characters under the identifier rule (`identifier`), returned in NFC."""
    return identifier(value, field, 1, PRODUCT_ID_MAX)


def display_name(value: object) -> str:
    return _text(value, "display_name", 0, DISPLAY_NAME_MAX)


_LINE_BREAKS = {9: " ", 10: " ", 13: " "}  # tab, LF, CR: allowed in a description (other controls are not)


def description(value: object) -> str:
    """A product description (free text for keyword search, may be empty): 0-4,096 characters, checked like
    display_name except that line breaks and tabs are allowed; returned as given."""
    if isinstance(value, str):
        _text(value.translate(_LINE_BREAKS), "description", 0, DESCRIPTION_MAX)
        return value
    return _text(value, "description", 0, DESCRIPTION_MAX)


def category(value: object, field: str = "category") -> str:
    """A category (may be empty) under the identifier rule, returned in NFC."""
    return identifier(value, field, 0, CATEGORY_MAX)


def source(value: object, field: str) -> str:
    return _text(value, field, 0, SOURCE_MAX)


def fingerprint(value: object, field: str = "fingerprint") -> str:
    return _text(value, field, 1, FINGERPRINT_MAX)


def dim(value: object, field: str = "dim") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= int(value) <= DIM_MAX:
        raise InvalidArgument(f"{field} must be an integer in 1-{DIM_MAX}, got {value!r}", field=field)
    return int(value)


def labels(value: Mapping[str, str] | None, field: str = "labels") -> dict[str, str]:
    """Labels in NFC. Errors name a value by its map entry (``labels.brand``, ``labels.`brand name```); a key that is
    itself invalid cannot be addressed, so its error names the map (``labels``) and quotes the key."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"{field} must be a mapping of string to string, got {type(value).__name__}",
                              field=field)
    if len(value) > LABELS_MAX:
        raise InvalidArgument(f"{field} must hold at most {LABELS_MAX} entries, got {len(value)}",
                              field=field)
    out: dict[str, str] = {}
    for k, v in value.items():
        key = identifier(k, field, 1, LABEL_KEY_MAX, name=f"{field} key {k!r}")
        if key in out:
            raise InvalidArgument(f"{field} has the key {key!r} twice (its spellings are equal in NFC)",
                                  field=field)
        value_ = v if not isinstance(v, str) else unicodedata.normalize("NFC", v)
        out[key] = _text(value_, field_path(field, Key(key)), 0, LABEL_VALUE_MAX)
    return out


def positive_int(value: object, field: str, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= int(value) <= hi:
        raise InvalidArgument(f"{field} must be an integer in 1-{hi}, got {value!r}", field=field)
    return int(value)


def reference_id(value: object) -> int:
    return positive_int(value, "reference_id", (1 << 63) - 1)


def score(value: float | None, field: str) -> float | None:
    if value is None:
        return None
    number = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or not -1.0 <= float(value) <= 1.0:
        raise InvalidArgument(f"{field} must be a number in [-1, 1], got {value!r}", field=field)
    return float(value)


def request_id(value: object, field: str = "request_id") -> str | None:
    """An enrolment request id (AIP-155): None for "" or None, else a UUID in its 36-character text form
    (8-4-4-4-12 hexadecimal digits, any case), returned in lower case."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _UUID_RE.match(value):
        shown = f"{len(value)} characters" if isinstance(value, str) else type(value).__name__
        raise InvalidArgument(f"{field} must be a UUID ({REQUEST_ID_LENGTH} characters: 8-4-4-4-12 hexadecimal "
                              f"digits), got {shown}", field=field)
    return value.lower()


def request_ids(values: Sequence[object], field: str = "request_ids") -> list[str]:
    """Request ids to look up (`requested_references`): each checked by `request_id`, empty ones left out."""
    out = [request_id(x, field_path(field, i)) for i, x in enumerate(values)]
    return [x for x in out if x is not None]


def sha256_hex(value: object, field: str) -> str:
    if not isinstance(value, str) or not _SHA_RE.match(value):
        shown = value if not isinstance(value, str) else f"{len(value)} characters"
        raise InvalidArgument(f"{field} must be 64 hexadecimal characters, got {shown!r}", field=field)
    return value.lower()


def image_and_sha(image: object, sha: object, field: str, max_bytes: int) -> tuple[bytes | None, str | None]:
    """Validate a reference's image bytes and content hash; compute the hash from the image if missing (a
    `HashedImage` brings its own, made from its bytes: not computed again)."""
    if isinstance(image, HashedImage):
        if not 1 <= len(image) <= max_bytes:
            raise InvalidArgument(f"{field}.image must be 1-{max_bytes} bytes, got {len(image)}",
                                  field=f"{field}.image")
        if sha is not None and sha256_hex(sha, f"{field}.content_sha256") != image.sha256:
            raise InvalidArgument(f"{field}.content_sha256 {sha} does not match the image's sha256 "
                                  f"{image.sha256}", field=f"{field}.content_sha256")
        return image.data, image.sha256
    if image is not None:
        if not isinstance(image, (bytes, bytearray, memoryview)):
            raise InvalidArgument(f"{field}.image must be bytes, got {type(image).__name__}",
                                  field=f"{field}.image")
        image = bytes(image)
        if not 1 <= len(image) <= max_bytes:
            raise InvalidArgument(f"{field}.image must be 1-{max_bytes} bytes, got {len(image)}",
                                  field=f"{field}.image")
    digest = None if sha is None else sha256_hex(sha, f"{field}.content_sha256")
    if image is not None:
        actual = hashlib.sha256(image).hexdigest()
        if digest is not None and digest != actual:
            raise InvalidArgument(f"{field}.content_sha256 {digest} does not match the image's sha256 "
                                  f"{actual}", field=f"{field}.content_sha256")
        digest = actual
    return image, digest


def vectors(value: object, dim_: int, tolerance: float, field: str, *, single: bool = False,
            trusted: bool = False) -> np.ndarray:
    """float32 C-contiguous [N, dim] of finite unit-norm rows (a [dim] vector is taken as [1, dim]).

    `trusted`: an encoder made the rows (finite, unit-norm by construction); a float32 C-contiguous [N, dim]
    array is taken as it is, anything else is checked in full."""
    if (trusted and isinstance(value, np.ndarray) and value.dtype == np.float32 and value.ndim == 2
            and value.shape[1] == dim_ and value.flags.c_contiguous and not single):
        return value
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{field} must be a float array of dimension {dim_}", field=field) from None
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != dim_ or (single and arr.shape[0] != 1):
        want = f"[{dim_}]" if single else f"[N, {dim_}]"
        raise InvalidArgument(f"{field} must have shape {want}, got {list(np.shape(arr))}", field=field)
    if not np.isfinite(arr).all():
        raise InvalidArgument(f"{field} must hold only finite values", field=field)
    if len(arr):
        norms = np.linalg.norm(arr, axis=1)
        worst = int(np.argmax(np.abs(norms - 1.0)))
        if abs(float(norms[worst]) - 1.0) > tolerance:
            where = "" if single else f" (row {worst})"
            raise InvalidArgument(f"{field} must be L2-normalised (norm 1 ± {tolerance}), got norm "
                                  f"{float(norms[worst]):.6g}{where}", field=field)
    return np.ascontiguousarray(arr)


def encode_page_token(after: str, category_: str) -> str:
    raw = json.dumps({"a": after, "c": category_}, ensure_ascii=False, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: object, category_: str) -> str:
    """The product_id to continue after ("" for the first page)."""
    if not isinstance(token, str):
        raise InvalidArgument(f"page_token must be a string, got {type(token).__name__}", field="page_token")
    if token == "":
        return ""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        after, cat = data["a"], data["c"]
        if not isinstance(after, str) or not isinstance(cat, str):
            raise ValueError
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InvalidArgument("page_token is not a token returned by list_products",
                              field="page_token") from None
    if cat != category_:
        raise InvalidArgument(f"page_token was issued for category {cat!r}, not {category_!r}",
                              field="page_token")
    return after


@dataclass(frozen=True)
class CheckedReference:
    """A reference that passed `references`: its float32 unit embedding, source, content hash and kept image."""

    embedding: np.ndarray
    source: str
    content_sha256: str | None
    image: bytes | None
    region: tuple[int, int, int, int] | None = None
    request_id: str | None = None


def region(value: object, field: str) -> tuple[int, int, int, int] | None:
    """A reference's region: None, or (x, y, width, height) ints with x, y >= 0 and width, height >= 1 (at most
    2^31 - 1 each)."""
    if value is None:
        return None
    parts = list(value) if isinstance(value, tuple | list) else []
    ok = len(parts) == 4 and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**31 for x in parts)
    if not ok or parts[2] < 1 or parts[3] < 1:
        raise InvalidArgument(f"{field} must be (x, y, width, height) with x, y >= 0 and width, height >= 1, "
                              f"got {value!r}", field=field)
    return int(parts[0]), int(parts[1]), int(parts[2]), int(parts[3])


def references(refs: object, dim_: int, *, max_items: int, tolerance: float, max_image_bytes: int,
               keep_images: bool) -> list[CheckedReference]:
    """Validate the references of one enrolment (every backend's `add_references`); InvalidArgument names the
    item (``references[i].embedding`` / ``.image`` / ``.content_sha256`` / ``.source`` / ``.region`` /
    ``.request_id``). A request id needs a content hash (it is remembered with the content it was used for)."""
    if not isinstance(refs, Sequence) or not 1 <= len(refs) <= max_items:
        got = len(refs) if isinstance(refs, Sequence) else type(refs).__name__
        raise InvalidArgument(f"references must hold 1-{max_items} items, got {got}", field="references")
    out: list[CheckedReference] = []
    for i, ref in enumerate(refs):
        f = field_path("references", i)
        if not isinstance(ref, NewReference):
            raise InvalidArgument(f"{f} must be a NewReference, got {type(ref).__name__}", field=f)
        vec = vectors(ref.embedding, dim_, tolerance, f"{f}.embedding", single=True)[0]
        image, sha = image_and_sha(ref.image, ref.content_sha256, f, max_image_bytes)
        rid = request_id(ref.request_id, f"{f}.request_id")
        if rid is not None and sha is None:
            raise InvalidArgument(f"{f}.request_id needs the reference's image or content_sha256",
                                  field=f"{f}.request_id")
        out.append(CheckedReference(vec, source(ref.source, f"{f}.source"), sha, image if keep_images else None,
                                    region(ref.region, f"{f}.region"), rid))
    return out


def space_vectors(refs: Sequence[NewReference], fingerprint: str, dim_: int,
                  tolerance: float) -> list[np.ndarray | None]:
    """Each reference's vector in a migration's other model space `fingerprint` (None where none was given);
    InvalidArgument names the item."""
    out: list[np.ndarray | None] = []
    for i, ref in enumerate(refs):
        vec = ref.space_embeddings.get(fingerprint) if ref.space_embeddings else None
        field = field_path("references", i, "space_embeddings")
        out.append(None if vec is None else vectors(vec, dim_, tolerance, field, single=True)[0])
    return out


def space_rows(reference_ids: Sequence[object], vectors_: object, dim_: int,
               tolerance: float) -> tuple[list[int], np.ndarray]:
    """`put_space_embeddings` arguments checked alike on every backend: (reference ids, float32 unit rows)."""
    ids = [reference_id(x) for x in reference_ids]
    vecs = vectors(vectors_, dim_, tolerance, "vectors")
    if len(vecs) != len(ids):
        raise InvalidArgument(f"vectors has {len(vecs)} rows for {len(ids)} reference ids", field="vectors")
    return ids, vecs


@dataclass(frozen=True)
class SearchRequest:
    """A search's checked arguments: query rows, k, score floor, filters, and the verdict's thresholds."""

    queries: np.ndarray
    top_k: int
    min_score: float | None
    category: str
    labels: dict[str, str]
    unknown_threshold: float
    ambiguity_margin: float


def search_request(queries: object, dim_: int, *, tolerance: float, max_top_k: int, default_threshold: float,
                   default_margin: float, top_k: object, min_score: float | None, category_: object,
                   labels_: Mapping[str, str] | None, unknown_threshold: float | None,
                   ambiguity_margin: float | None, trusted: bool) -> SearchRequest:
    """Check every backend's `search` arguments alike (thresholds left None take the catalog's defaults)."""
    q = vectors(queries, dim_, tolerance, "queries", trusted=trusted)
    threshold = score(unknown_threshold, "unknown_threshold")
    margin = default_margin if ambiguity_margin is None else float(ambiguity_margin)
    if not 0.0 <= margin <= 2.0:
        raise InvalidArgument(f"ambiguity_margin must be in [0, 2], got {ambiguity_margin!r}",
                              field="ambiguity_margin")
    return SearchRequest(q, positive_int(top_k, "top_k", max_top_k), score(min_score, "min_score"),
                         category(category_), labels(labels_), default_threshold if threshold is None else threshold,
                         margin)


#: The product fields an update may name (`upsert_product(update_fields=...)`, the API's update_mask paths).
PRODUCT_FIELDS = ("display_name", "category", "labels", "description")


def update_fields(value: object, field: str = "update_mask") -> frozenset[str] | None:
    """None (every field), or the named product fields; InvalidArgument for a name that is not one."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        raise InvalidArgument(f"{field} must be a collection of field names, got {type(value).__name__}", field)
    unknown = sorted(str(f) for f in value if f not in PRODUCT_FIELDS)
    if unknown:
        raise InvalidArgument(f"{field} names {', '.join(map(repr, unknown))}; a product update may name "
                              f"{', '.join(PRODUCT_FIELDS)}", field)
    return frozenset(value)
