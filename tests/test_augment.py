"""Augmented views of a reference image: how many, which crops, and that each is mirrored once."""

from __future__ import annotations

import numpy as np
from PIL import Image

from skulens.imaging.augment import CROP_FRACTIONS, augmented_views


def picture(w: int = 100, h: int = 60) -> Image.Image:
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0] = np.arange(w, dtype=np.uint8)[None, :]  # red grows left to right
    arr[..., 1] = np.arange(h, dtype=np.uint8)[:, None] * 2  # green grows top to bottom
    return Image.fromarray(arr)


def test_mirror_then_five_crops_per_fraction_each_with_its_mirror() -> None:
    img = picture()
    views = augmented_views(img)
    assert len(views) == 1 + 10 * len(CROP_FRACTIONS) == 21
    assert np.array_equal(np.asarray(views[0]), np.asarray(img)[:, ::-1])
    sizes = [v.size for v in views[1:]]
    assert sizes[:10] == [(80, 48)] * 10 and sizes[10:] == [(65, 39)] * 10
    crops, mirrors = views[1::2], views[2::2]
    for c, m in zip(crops, mirrors, strict=True):
        assert np.array_equal(np.asarray(m), np.asarray(c)[:, ::-1])
    # corners then centre: the top-left crop starts at red 0 / green 0, the bottom-right ends at the image's corner
    first = np.asarray(crops[0])
    assert first[0, 0, 0] == 0 and first[0, 0, 1] == 0
    bottom_right = np.asarray(crops[3])
    assert bottom_right[-1, -1, 0] == 99 and bottom_right[-1, -1, 1] == 118
    centre = np.asarray(crops[4])
    assert centre[0, 0, 0] == 10 and centre[0, 0, 1] == 12


def test_tiny_images_still_give_every_view() -> None:
    views = augmented_views(picture(2, 2), fractions=(0.5,))
    assert len(views) == 11 and all(min(v.size) >= 1 for v in views)
