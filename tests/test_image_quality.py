"""skulens.imaging.quality (size and luminance spread of decoded pixels) and the preprocessor's measured inputs:
the same tensors as the plain path, each with the quality of the very pixels it was made from."""

from __future__ import annotations

import numpy as np
import pytest
from inference_helpers import CLIP_MEAN, CLIP_STD, encode, photo
from PIL import Image

from skulens.imaging.errors import InvalidImage, InvalidRegion
from skulens.imaging.preprocess import Box, Preprocessor
from skulens.imaging.quality import ImageQuality, luminance_std, measure_quality
from skulens.model.preprocess_config import PreprocessConfig


def _luma_std(img: Image.Image) -> float:
    """By hand: Pillow's own luma (ITU-R 601-2, rounded to 8 bits), population standard deviation."""
    return float(np.asarray(img.convert("L"), dtype=np.float64).std())


def test_luminance_std_by_hand() -> None:
    assert luminance_std(Image.new("RGB", (50, 40), (200, 10, 90))) == 0.0
    half = Image.new("L", (10, 10), 0)
    half.paste(255, (0, 0, 10, 5))
    assert luminance_std(half.convert("RGB")) == pytest.approx(127.5)
    img = photo(120, 90, seed=3)
    assert luminance_std(img) == pytest.approx(_luma_std(img), abs=1e-9)


def test_measure_quality_keeps_the_full_resolution_size() -> None:
    shown = photo(32, 32, seed=1)
    assert measure_quality(shown, (4000, 3000)) == ImageQuality(4000, 3000, pytest.approx(_luma_std(shown)))


def test_measured_inputs_equal_the_plain_tensors() -> None:
    cfg = PreprocessConfig(size=(32, 32), mean=CLIP_MEAN, std=CLIP_STD)
    img = photo(200, 120, seed=4)
    data = encode(img, "PNG")
    pre = Preprocessor(cfg)
    [(tensor, q)] = pre.measured_inputs(data, None)  # type: ignore[misc]
    np.testing.assert_array_equal(tensor, pre.image_tensor(data))
    assert q == ImageQuality(200, 120, pytest.approx(_luma_std(pre.resize_crop(img))))
    boxes = [Box(10, 20, 64, 48), Box(150, 100, 60, 60)]  # the second one extends past the image
    out = pre.measured_inputs(data, boxes, field="images[0].content", field_prefix="images[0].regions")
    plain = pre.region_tensors(data, boxes, field="images[0].content", field_prefix="images[0].regions")
    first = out[0]
    assert isinstance(first, tuple)
    np.testing.assert_array_equal(first[0], plain[0])
    crop = img.crop((10, 20, 74, 68))
    assert first[1] == ImageQuality(64, 48, pytest.approx(_luma_std(pre.resize_crop(crop))))
    assert isinstance(out[1], InvalidRegion) and isinstance(plain[1], InvalidRegion)
    assert out[1].field == plain[1].field
    with pytest.raises(InvalidImage):
        pre.measured_inputs(b"not an image", None)


def test_blank_and_tiny_images_measure_as_such() -> None:
    cfg = PreprocessConfig(size=(32, 32), mean=CLIP_MEAN, std=CLIP_STD)
    pre = Preprocessor(cfg, fast=True)
    [(_, blank)] = pre.measured_inputs(encode(Image.new("RGB", (640, 480), (128, 128, 128)), "JPEG"), None)  # type: ignore[misc]
    assert blank.luminance_std < 1.0 and (blank.width, blank.height) == (640, 480)
    [(_, tiny)] = pre.measured_inputs(encode(photo(40, 24, seed=2), "PNG"), None)  # type: ignore[misc]
    assert (tiny.width, tiny.height) == (40, 24) and tiny.luminance_std > 20
