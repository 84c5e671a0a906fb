"""skulens.imaging.decode: formats, modes, EXIF orientation, limits and broken data."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import warnings
import zlib

import numpy as np
import pytest
from inference_helpers import encode, photo
from PIL import Image, ImageFile

from skulens.imaging.decode import decode_image, register_optional_plugins
from skulens.imaging.errors import ImageTooLarge, ImageTooSmall, InvalidImage
from skulens.imaging.limits import DecodeLimits

LIMITS = DecodeLimits()
AVAILABLE = register_optional_plugins()
LOSSLESS = {"PNG", "GIF", "BMP", "TIFF"}


def _formats() -> list[str]:
    out = ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"]
    out += [f for f in ("HEIF", "AVIF") if AVAILABLE.get(f)]
    return out


def _save(img: Image.Image, fmt: str, orientation: int | None = None) -> bytes:
    kwargs: dict[str, object] = {}
    if fmt in ("JPEG", "HEIF", "AVIF"):
        kwargs["quality"] = 95
    if fmt == "WEBP":
        kwargs["lossless"] = True
    if orientation is not None:
        if fmt == "TIFF":
            kwargs["tiffinfo"] = {0x0112: orientation}
        else:
            exif = Image.Exif()
            exif[0x0112] = orientation
            kwargs["exif"] = exif.tobytes()
    return encode(img, fmt, **kwargs)


# EXIF orientation n: how the stored pixels must be transformed for display (independent numpy definitions).
DISPLAY = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}
INVERSE = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}


@pytest.mark.parametrize("fmt", _formats())
def test_every_format_decodes_to_rgb(fmt: str) -> None:
    img = photo(64, 40)
    d = decode_image(_save(img, fmt), LIMITS)
    assert d.image.mode == "RGB"
    assert d.image.size == (64, 40) == d.original_size
    diff = np.abs(np.asarray(d.image, dtype=np.int16) - np.asarray(img, dtype=np.int16))
    if fmt == "GIF":  # 256-colour palette quantisation
        assert diff.mean() < 12
    elif fmt in LOSSLESS or fmt == "WEBP":
        assert diff.max() == 0
    else:
        assert diff.mean() < 6


@pytest.mark.parametrize("fmt", [f for f in _formats() if f not in ("GIF", "BMP")])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied(fmt: str, orientation: int) -> None:
    upright = photo(48, 32, seed=orientation)  # asymmetric: no transposition maps it to itself
    up = np.asarray(upright)
    stored = Image.fromarray(np.ascontiguousarray(DISPLAY[INVERSE[orientation]](up)))
    data = _save(stored, fmt, orientation)
    got = np.asarray(decode_image(data, LIMITS).image)
    assert got.shape == up.shape
    if fmt in LOSSLESS or fmt == "WEBP":
        np.testing.assert_array_equal(got, up)  # exactly the upright picture
    else:  # lossy codec: close to the upright picture (a wrong transposition differs by ~100 levels)
        assert np.abs(got.astype(int) - up.astype(int)).mean() <= 8


def test_sixteen_bit_greyscale_maps_to_eight_bit() -> None:
    values = np.linspace(0, 65535, 64 * 32).round().astype(np.uint16).reshape(32, 64)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    got = np.asarray(decode_image(data, LIMITS).image)
    expected = np.round(values / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(got[..., 0], expected)
    assert got[..., 0].max() == 255 and got[..., 0].min() == 0
    np.testing.assert_array_equal(got[..., 0], got[..., 2])


def test_alpha_is_composited_on_fill_colour() -> None:
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, :10, 3] = 255  # left opaque red, right fully transparent
    rgba[:, 10:15, 3] = 128
    data = encode(Image.fromarray(rgba, "RGBA"), "PNG")
    got = np.asarray(decode_image(data, DecodeLimits(alpha_fill=(0, 0, 255))).image).astype(int)
    assert tuple(got[5, 5]) == (200, 0, 0)
    assert tuple(got[5, 18]) == (0, 0, 255)  # transparent → fill, not the hidden red
    assert abs(got[5, 12, 0] - 100) <= 2 and abs(got[5, 12, 2] - 127) <= 2  # half alpha blends
    default = np.asarray(decode_image(data, LIMITS).image)
    assert tuple(default[5, 18]) == (255, 255, 255)


def test_palette_transparency_and_la_composited() -> None:
    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([10, 20, 30, 250, 0, 0] + [0] * 762)
    pal.paste(1, (0, 0, 10, 20))
    got = np.asarray(decode_image(encode(pal, "PNG", transparency=1), LIMITS).image)
    assert tuple(got[0, 0]) == (255, 255, 255) and tuple(got[0, 15]) == (10, 20, 30)
    la = Image.fromarray(np.dstack([np.full((20, 20), 50, np.uint8), np.zeros((20, 20), np.uint8)]), "LA")
    got = np.asarray(decode_image(encode(la, "PNG"), LIMITS).image)
    assert tuple(got[3, 3]) == (255, 255, 255)
    gif = np.asarray(decode_image(encode(pal, "GIF", transparency=1), LIMITS).image)
    assert tuple(gif[0, 0]) == (255, 255, 255) and tuple(gif[0, 15]) == (10, 20, 30)


def test_grey_cmyk_and_animated_gif_first_frame() -> None:
    grey = decode_image(encode(photo(32, 32).convert("L"), "JPEG"), LIMITS).image
    assert grey.mode == "RGB"
    cmyk = decode_image(encode(photo(32, 32).convert("CMYK"), "JPEG"), LIMITS).image
    assert cmyk.mode == "RGB"
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    first = np.asarray(decode_image(buf.getvalue(), LIMITS).image)
    assert tuple(first[16, 16]) == (255, 0, 0)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def jpeg_bomb(width: int, height: int) -> bytes:
    """A small valid JPEG with its SOF0 dimensions patched to `width` x `height`."""
    data = bytearray(encode(photo(16, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize("make", [png_bomb, jpeg_bomb])
def test_decompression_bomb_refused_from_header(make) -> None:
    data = make(50000, 50000)
    tracemalloc.start()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        with pytest.raises(ImageTooLarge) as err:
            decode_image(data, LIMITS, field="images[2]")
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 0.5 and peak < 20 * 1024 * 1024
    assert err.value.field == "images[2]"
    assert "2500000000 pixels (50000x50000), limit is 40000000" in err.value.message


def test_pixel_limit_names_value_and_limit() -> None:
    with pytest.raises(ImageTooLarge, match=r"image is 41951232 pixels \(8192x5121\), limit is 40000000"):
        decode_image(png_bomb(8192, 5121), LIMITS)
    # Below Pillow's own bomb threshold but over ours, and a custom limit.
    with pytest.raises(ImageTooLarge, match="limit is 1000"):
        decode_image(encode(photo(40, 40), "PNG"), DecodeLimits(max_pixels=1000))
    assert Image.MAX_IMAGE_PIXELS == 1024 * 1024 * 1024 // 4 // 3  # never mutated


def test_byte_limit_and_min_side() -> None:
    data = encode(photo(64, 64), "PNG")
    with pytest.raises(ImageTooLarge, match=rf"image is {len(data)} bytes; the limit is 100 bytes"):
        decode_image(data, DecodeLimits(max_bytes=100))
    with pytest.raises(ImageTooSmall, match=r"64x15 pixels, shortest side 15 is under the minimum 16"):
        decode_image(encode(photo(64, 15), "PNG"), LIMITS)
    assert decode_image(encode(photo(16, 16), "PNG"), LIMITS).image.size == (16, 16)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("empty", b""),
        ("text", b"Hello, I am definitely a JPEG photo of a milk carton.\n" * 4),
        ("html", b"<!DOCTYPE html><html><body>not an image</body></html>"),
        ("jpeg_magic_then_garbage", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4),
        ("png_magic_then_garbage", b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 50),
    ],
)
def test_garbage_is_invalid_image(name: str, data: bytes) -> None:
    with pytest.raises(InvalidImage) as err:
        decode_image(data, LIMITS, field="images[0]")
    assert err.value.field == "images[0]"
    assert str(len(data)) in err.value.message or name == "empty"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_data_is_an_error_not_grey_pixels(fmt: str, keep: float) -> None:
    data = encode(photo(96, 96, seed=3), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    with pytest.raises(InvalidImage, match="corrupt or truncated"):
        decode_image(data[: int(len(data) * keep)], LIMITS)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_draft_decodes_jpeg_at_reduced_scale() -> None:
    data = encode(photo(1600, 1200), "JPEG", quality=90)
    full = decode_image(data, LIMITS)
    assert full.image.size == (1600, 1200) and full.draft_scale == 1
    half = decode_image(data, LIMITS, draft_min_side=448)
    assert half.draft_scale == 2 and half.image.size == (800, 600) and half.original_size == (1600, 1200)
    eighth = decode_image(data, LIMITS, draft_min_side=100)
    assert eighth.draft_scale == 8 and eighth.image.size == (200, 150)
    capped = decode_image(data, LIMITS, draft_min_side=100, draft_max_scale=4)
    assert capped.draft_scale == 4
    png = decode_image(encode(photo(1600, 1200), "PNG"), LIMITS, draft_min_side=100)
    assert png.draft_scale == 1 and png.image.size == (1600, 1200)


def test_draft_with_rotation_reports_oriented_size() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(photo(1600, 1200), "JPEG", exif=exif.tobytes())
    d = decode_image(data, LIMITS, draft_min_side=448)
    assert d.original_size == (1200, 1600) and d.image.size == (600, 800)
    assert d.scale == (2.0, 2.0)


@pytest.mark.parametrize("fmt", _formats())
def test_fuzzed_bytes_raise_only_domain_errors(fmt: str) -> None:
    rng = np.random.default_rng(7)
    base = _save(photo(64, 48), fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about corrupt EXIF blocks
        for trial in range(40):
            data = bytearray(base)
            for _ in range(int(rng.integers(1, 8))):
                data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
            if trial % 3 == 0:
                data = data[: int(rng.integers(1, len(data)))]
            try:
                decoded = decode_image(bytes(data), LIMITS)
            except (InvalidImage, ImageTooLarge, ImageTooSmall):
                continue
            assert decoded.image.mode == "RGB"
