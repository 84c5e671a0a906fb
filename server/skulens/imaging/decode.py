"""Image bytes → RGB `PIL.Image` with EXIF orientation applied, under `DecodeLimits`.

Opening goes through Pillow's format plugins directly (restricted to `FORMATS`) so that the pixel limit is
checked on the header's width × height *before* any pixel is decoded, without Pillow's process-global
`Image.MAX_IMAGE_PIXELS` (never mutated here) and without its DecompressionBombWarning. Truncated data is an
error: `ImageFile.LOAD_TRUNCATED_IMAGES` is left False.
"""

from __future__ import annotations

import functools
import io
import logging
import re
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError, features

from skulens.imaging.errors import ImageTooLarge, ImageTooSmall, InvalidImage
from skulens.imaging.limits import DecodeLimits

log = logging.getLogger(__name__)

#: Pillow format ids we accept (JPEG covers MPO, the multi-picture JPEGs many phones write).
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")
DRAFT_SCALES = (8, 4, 2, 1)
_EXIF_ORIENTATION = 0x0112
# What Pillow and its plugins raise on malformed input (libavif/libheif bindings raise RuntimeError).
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    RuntimeError,
    struct.error,
    zlib.error,
)
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


@dataclass(frozen=True)
class DecodedImage:
    """A decoded, EXIF-oriented RGB image.

    `original_size` is the oriented (width, height) at full resolution; `image.size` is smaller when a
    JPEG was decoded at a reduced DCT scale (`draft_scale` 2, 4 or 8).
    """

    image: Image.Image
    original_size: tuple[int, int]
    format: str
    draft_scale: int = 1

    @property
    def scale(self) -> tuple[float, float]:
        """Full-resolution pixels per decoded pixel, (x, y)."""
        return (self.original_size[0] / self.image.width, self.original_size[1] / self.image.height)


@functools.cache
def register_optional_plugins() -> dict[str, bool]:
    """Register the HEIF (pillow_heif) and AVIF (pillow_avif, when Pillow has no native AVIF) openers if
    importable; returns which formats are available. Idempotent."""
    available: dict[str, bool] = {}
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        available["HEIF"] = True
    except Exception as exc:  # optional plugin: absent or broken
        log.info("HEIC/HEIF decoding unavailable: %r", exc)
        available["HEIF"] = False
    if features.check("avif"):
        available["AVIF"] = True
    else:
        try:
            import pillow_avif  # noqa: F401  (registers on import)

            available["AVIF"] = True
        except Exception as exc:
            log.info("AVIF decoding unavailable: %r", exc)
            available["AVIF"] = False
    Image.init()
    return available


def _open_header(data: bytes, field: str | None) -> ImageFile.ImageFile:
    """Identify the format and parse the header only (no pixels), like `Image.open` minus its bomb check."""
    register_optional_plugins()
    fp = io.BytesIO(data)
    prefix = data[:16]
    failure: tuple[str, Exception] | None = None
    for fmt in FORMATS:
        entry = Image.OPEN.get(fmt)
        if entry is None:
            continue
        factory, accept = entry
        try:
            ok = True if accept is None else accept(prefix)
            if not ok or isinstance(ok, str):
                continue
            fp.seek(0)
            im = factory(fp, "")
        except Image.DecompressionBombError as exc:  # a plugin's own check while parsing (e.g. GIF frames)
            raise _bomb_error(exc, field) from exc
        except _DECODE_ERRORS as exc:
            failure = failure or (fmt, exc)
            continue
        if isinstance(im, ImageFile.ImageFile):
            return im
    if failure is not None:
        failed_fmt, cause = failure
        raise InvalidImage(
            f"{failed_fmt} image header could not be parsed (corrupt or truncated data, {len(data)} bytes): "
            f"{cause}",
            field,
        ) from cause
    raise InvalidImage(
        f"image data ({len(data)} bytes, starting {data[:8]!r}) is not a supported image format; "
        f"supported: {', '.join(f for f in FORMATS if f in Image.OPEN)}",
        field,
    )


def _bomb_error(exc: Exception, field: str | None) -> ImageTooLarge:
    m = _BOMB_PIXELS.search(str(exc))
    value = f"{m.group(1)} pixels" if m else "too many pixels"
    return ImageTooLarge(f"image is {value}, over the decompression-bomb limit", field)


def _check_limits(width: int, height: int, limits: DecodeLimits, field: str | None) -> None:
    pixels = width * height
    if pixels > limits.max_pixels:
        raise ImageTooLarge(
            f"image is {pixels} pixels ({width}x{height}), limit is {limits.max_pixels}", field
        )
    if min(width, height) < limits.min_side:
        raise ImageTooSmall(
            f"image is {width}x{height} pixels, shortest side {min(width, height)} is under the minimum "
            f"{limits.min_side}",
            field,
        )


def _draft_scale(width: int, height: int, draft_min_side: int | None, draft_max_scale: int) -> int:
    if draft_min_side is None or draft_min_side < 1:
        return 1
    short = min(width, height)
    for s in DRAFT_SCALES:
        if s <= draft_max_scale and short // s >= draft_min_side:
            return s
    return 1


def _sixteen_bit_to_rgb(im: Image.Image) -> Image.Image:
    """16/32-bit greyscale ('I;16*', 'I') → 8-bit RGB: 0..65535 maps linearly onto 0..255 (round(v / 257))."""
    arr = np.asarray(im).astype(np.uint32)
    np.minimum(arr, 65535, out=arr)
    grey = ((arr + 128) // 257).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def to_rgb(im: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode → 'RGB'; transparency (alpha channel, palette or tRNS key) is composited on `fill`."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode.startswith("I;16") or mode == "I":
        return _sixteen_bit_to_rgb(im)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if mode == "P" and im.palette is not None and im.palette.mode == "RGBA":
        has_alpha = True
    if not has_alpha:
        return im.convert("RGB")
    rgba = im.convert("RGBA")
    out = Image.new("RGB", rgba.size, fill)
    out.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return out


def decode_image(
    data: bytes,
    limits: DecodeLimits,
    *,
    draft_min_side: int | None = None,
    draft_max_scale: int = 8,
    field: str | None = None,
) -> DecodedImage:
    """Decode `data` into an EXIF-oriented RGB image.

    With `draft_min_side`, a JPEG is decoded at the largest DCT scale (1/2, 1/4, 1/8, at most
    1/`draft_max_scale`) that keeps its shortest side ≥ `draft_min_side` pixels. Raises `InvalidImage`,
    `ImageTooLarge` or `ImageTooSmall` (each naming `field`).
    """
    if len(data) == 0:
        raise InvalidImage("image is empty (0 bytes)", field)
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"image is {len(data)} bytes; the limit is {limits.max_bytes} bytes", field)
    im = _open_header(data, field)
    fmt = im.format or "unknown"
    try:
        width, height = im.size
        _check_limits(width, height, limits, field)
        scale = 1
        if fmt in ("JPEG", "MPO"):
            scale = _draft_scale(width, height, draft_min_side, draft_max_scale)
            if scale > 1:
                im.draft("RGB", (width // scale, height // scale))
        if getattr(im, "n_frames", 1) > 1:
            im.seek(0)
        im.load()
        # Read after load: some plugins (TIFF) apply the orientation themselves while loading, drop the tag.
        orientation = _orientation(im)
        if scale == 1:  # a plugin may grow the canvas while loading (GIF frames, TIFF tiles): check again
            _check_limits(im.width, im.height, limits, field)
        oriented = ImageOps.exif_transpose(im) if 2 <= orientation <= 8 else im
        rgb = to_rgb(oriented, limits.alpha_fill)
    except (ImageTooLarge, ImageTooSmall):
        raise
    except Image.DecompressionBombError as exc:
        raise _bomb_error(exc, field) from exc
    except (*_DECODE_ERRORS, UnidentifiedImageError) as exc:
        raise InvalidImage(
            f"{fmt} image could not be decoded (corrupt or truncated data): {exc}", field
        ) from exc
    original = (width, height) if orientation not in (5, 6, 7, 8) else (height, width)
    return DecodedImage(image=rgb, original_size=original, format=fmt, draft_scale=scale)


def _orientation(im: Image.Image) -> int:
    """EXIF orientation 1..8 (1 when absent or unreadable: a damaged EXIF block does not fail the image)."""
    try:
        value = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


def peek_size(data: bytes) -> tuple[int, int, str] | None:
    """(width, height, format) from the header alone, no pixel decoded; None when the header is unreadable
    (such data fails fast at decode, so it costs nothing worth admitting for)."""
    if not data:
        return None
    try:
        im = _open_header(data, None)
    except (InvalidImage, ImageTooLarge):
        return None
    width, height = im.size
    return int(width), int(height), im.format or "unknown"
