"""skulens.imaging.preprocess: the exact path equals open_clip's transform; the fast path; regions."""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from inference_helpers import CLIP_MEAN, CLIP_STD, encode, photo
from PIL import Image

from skulens.imaging.errors import ImageTooSmall, InvalidImage, InvalidRegion
from skulens.imaging.limits import DecodeLimits
from skulens.imaging.preprocess import Box, Preprocessor
from skulens.model.preprocess_config import PreprocessConfig

SIZES = [(224, 224), (224, 160), (200, 256)]
SHAPES = [
    (224, 224),
    (300, 200),
    (199, 401),
    (1000, 333),
    (100, 50),
    (640, 480),
    (225, 224),
    (223, 301),
    (17, 900),
]


@pytest.fixture(scope="module")
def open_clip_transform() -> Callable[..., Any]:
    try:
        from skulens.export.torch_compat import import_open_clip

        open_clip = import_open_clip()
    except ImportError:
        import open_clip
    return open_clip.transform.image_transform


@pytest.mark.parametrize(
    ("mode", "size", "interp"),
    list(itertools.product(["shortest", "longest", "squash"], SIZES, ["bicubic", "bilinear"])),
)
def test_exact_path_equals_open_clip(
    open_clip_transform, mode: str, size: tuple[int, int], interp: str
) -> None:
    cfg = PreprocessConfig(
        size=size, mean=CLIP_MEAN, std=CLIP_STD, resize_mode=mode, interpolation=interp, fill_color=17
    )
    pre = Preprocessor(cfg)
    ref_t = open_clip_transform(
        size if size[0] != size[1] else size[0],
        is_train=False,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        resize_mode=mode,
        interpolation=interp,
        fill_color=17,
    )
    rng = np.random.default_rng(zlib.crc32(f"{mode}{size}{interp}".encode()))
    for w, h in SHAPES:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) if w < 500 else photo(w, h)
        ref = ref_t(img).numpy()
        got = pre.transform(img)
        assert got.dtype == np.float32 and got.shape == ref.shape == (3, *size)
        assert np.abs(got - ref).max() <= 1e-5, (w, h)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def torchvision_transforms() -> Any:
    """torchvision.transforms (reference only: the server itself never imports torch)."""
    from skulens.export.torch_compat import ensure_torchvision_ops

    ensure_torchvision_ops()
    from torchvision import transforms

    return transforms


def _resize_crop_reference(transforms: Any, resize: int, crop: int, interp: str) -> Any:
    mode = {
        "bicubic": transforms.InterpolationMode.BICUBIC,
        "bilinear": transforms.InterpolationMode.BILINEAR,
    }
    return transforms.Compose(
        [
            transforms.Resize(resize, interpolation=mode[interp]),
            transforms.CenterCrop(crop),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


@pytest.mark.parametrize("interp", ["bicubic", "bilinear"])
def test_crop_fraction_equals_torchvision_resize_then_center_crop(
    torchvision_transforms: Any, interp: str
) -> None:
    """224/256 = DINOv2's and EfficientNet-Lite's eval transform: Resize(256) + CenterCrop(224)."""
    cfg = PreprocessConfig(
        size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation=interp, crop_fraction=224 / 256
    )
    assert cfg.resize_size == (256, 256)
    ref_t = _resize_crop_reference(torchvision_transforms, 256, 224, interp)
    pre = Preprocessor(cfg)
    rng = np.random.default_rng(zlib.crc32(interp.encode()))
    for w, h in SHAPES:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) if w < 500 else photo(w, h)
        ref = ref_t(img).numpy()
        got = pre.transform(img)
        assert got.shape == ref.shape == (3, 224, 224)
        assert np.abs(got - ref).max() <= 1e-5, (w, h)


@pytest.mark.parametrize("fraction", [0.875, 0.9, 0.95])
def test_crop_fraction_resize_rule_is_timms(fraction: float) -> None:
    """⌊size / f⌋, as timm's eval transform (`crop_pct`) computes it."""
    from skulens.export.torch_compat import ensure_torchvision_ops

    ensure_torchvision_ops()
    from timm.data import create_transform

    ref_t = create_transform(
        224,
        is_training=False,
        crop_pct=fraction,
        interpolation="bicubic",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    pre = Preprocessor(
        PreprocessConfig(size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_fraction=fraction)
    )
    for w, h in [(300, 200), (640, 480), (257, 1000)]:
        img = photo(w, h, seed=w)
        assert np.abs(pre.transform(img) - ref_t(img).numpy()).max() <= 1e-5, (fraction, w, h)


def test_crop_fraction_in_squash_and_longest_modes() -> None:
    """Other modes resize to `resize_size` by their own rule, then crop (or pad) the centre to `size`."""
    img = photo(400, 100, seed=9)
    base: dict[str, Any] = {"size": (64, 64), "mean": CLIP_MEAN, "std": CLIP_STD, "crop_fraction": 0.8}
    squash = Preprocessor(PreprocessConfig(**base, resize_mode="squash"))  # 400x100 → 80x80 → centre 64x64
    assert squash.config.resize_size == (80, 80)
    want = img.resize((80, 80), Image.Resampling.BICUBIC).crop((8, 8, 72, 72))
    np.testing.assert_array_equal(squash.transform(img), squash.normalise(want))
    # longest side to 80: 80x20; the width is cropped to 64 and the height padded to 64 with fill_color
    longest = Preprocessor(PreprocessConfig(**base, resize_mode="longest", fill_color=7))
    got = np.asarray(longest.resize_crop(img))
    small = np.asarray(img.resize((80, 20), Image.Resampling.BICUBIC))
    assert got.shape == (64, 64, 3)
    np.testing.assert_array_equal(got[22:42], small[:, 8:72])
    assert (got[:22] == 7).all() and (got[42:] == 7).all()


def test_crop_fraction_is_checked_and_defaults_for_old_files() -> None:
    old = {"size": [224, 224], "mean": list(CLIP_MEAN), "std": list(CLIP_STD)}  # an export before the key
    cfg = PreprocessConfig.from_dict(old)
    assert cfg.crop_fraction == 1.0 and cfg.resize_size == (224, 224)
    new = PreprocessConfig.from_dict({**old, "crop_fraction": 0.875, "interpolation": "bilinear"})
    assert PreprocessConfig.from_dict(new.to_dict()) == new and new.resize_size == (256, 256)
    for bad in (0.0, -0.5, 1.01):
        with pytest.raises(ValueError, match="crop_fraction"):
            PreprocessConfig.from_dict({**old, "crop_fraction": bad})


def test_fast_path_draft_keeps_resize_size_not_crop_size() -> None:
    """With a crop fraction the image is resized to ⌊size / f⌋ first: the draft must keep factor × that."""
    data = encode(photo(2048, 2048, seed=3), "JPEG", quality=90)
    plain = PreprocessConfig(size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    cropped = PreprocessConfig(size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_fraction=0.5)
    # factor 2: plain keeps ≥ 448 (2048/4 = 512 is enough), cropped keeps ≥ 2 × 448 = 896 (2048/2 = 1024)
    assert Preprocessor(plain, fast=True).decode(data).draft_scale == 4
    assert Preprocessor(cropped, fast=True).decode(data).draft_scale == 2


def test_exact_path_from_jpeg_bytes_equals_open_clip(open_clip_transform) -> None:
    import io

    cfg = PreprocessConfig(size=(224, 224), mean=CLIP_MEAN, std=CLIP_STD)
    data = encode(photo(1024, 768, seed=5), "JPEG", quality=90)
    ref = open_clip_transform(224, is_train=False, mean=CLIP_MEAN, std=CLIP_STD)(
        Image.open(io.BytesIO(data)).convert("RGB")
    )
    got = Preprocessor(cfg, fast=False).image_tensor(data)
    assert np.abs(got - ref.numpy()).max() <= 1e-5


def test_normalisation_is_scale_mean_std() -> None:
    cfg = PreprocessConfig(size=(16, 16), mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
    arr = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    got = Preprocessor(cfg).normalise(Image.fromarray(arr))
    want = (arr.transpose(2, 0, 1).astype(np.float64) - 127.0) / 128.0
    assert np.abs(got - want).max() < 1e-6


def test_fast_path_decodes_smaller_and_stays_close() -> None:
    cfg = PreprocessConfig(size=(224, 224), mean=CLIP_MEAN, std=CLIP_STD)
    data = encode(photo(2016, 1512, seed=2), "JPEG", quality=90)
    fast = Preprocessor(cfg, fast=True, draft_factor=2.0)
    exact = Preprocessor(cfg, fast=False)
    assert fast.decode(data).draft_scale == 2  # 1512 / 2 = 756 >= 448; / 4 = 378 < 448
    a, b = fast.image_tensor(data), exact.image_tensor(data)
    assert a.shape == b.shape == (3, 224, 224)
    cos = float(a.ravel() @ b.ravel() / np.linalg.norm(a) / np.linalg.norm(b))
    assert cos > 0.999
    small = encode(photo(400, 300), "JPEG")
    np.testing.assert_array_equal(fast.image_tensor(small), exact.image_tensor(small))


def test_regions_crop_in_oriented_pixels() -> None:
    cfg = PreprocessConfig(size=(32, 32), mean=CLIP_MEAN, std=CLIP_STD)
    img = photo(200, 120, seed=4)
    data = encode(img, "PNG")
    pre = Preprocessor(cfg)
    boxes = [Box(10, 20, 64, 48), Box(0, 0, 200, 120)]
    got = pre.region_tensors(data, boxes, field="images[0]", field_prefix="regions[0]")
    np.testing.assert_array_equal(got[0], pre.transform(img.crop((10, 20, 74, 68))))
    np.testing.assert_array_equal(got[1], pre.transform(img))


def test_regions_fast_path_limits_draft_by_smallest_box() -> None:
    cfg = PreprocessConfig(size=(32, 32), mean=CLIP_MEAN, std=CLIP_STD)
    img = photo(1600, 1200, seed=6)
    data = encode(img, "JPEG", quality=92)
    fast, exact = Preprocessor(cfg, fast=True), Preprocessor(cfg, fast=False)
    boxes = [Box(100, 100, 256, 256), Box(800, 400, 640, 480)]
    for a, b in zip(fast.region_tensors(data, boxes), exact.region_tensors(data, boxes), strict=True):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
        assert np.abs(a - b).mean() < 0.05


def test_bad_regions_fail_alone_with_their_field() -> None:
    cfg = PreprocessConfig(size=(32, 32), mean=CLIP_MEAN, std=CLIP_STD)
    data = encode(photo(100, 80), "PNG")
    pre = Preprocessor(cfg, DecodeLimits(min_side=16))
    out = pre.region_tensors(
        data,
        [Box(0, 0, 50, 50), Box(60, 40, 50, 50), Box(-1, 0, 20, 20), Box(0, 0, 8, 40), Box(0, 0, 0, 10)],
        field="images[3]",
        field_prefix="regions[3]",
    )
    assert isinstance(out[0], np.ndarray)
    assert isinstance(out[1], InvalidRegion) and out[1].field == "regions[3][1]"
    assert "extends past the image (100x80" in out[1].message
    assert isinstance(out[2], InvalidRegion) and out[2].field == "regions[3][2]"
    assert isinstance(out[3], ImageTooSmall) and "8x40" in out[3].message and out[3].field == "regions[3][3]"
    assert isinstance(out[4], InvalidRegion)
    with pytest.raises(InvalidImage) as err:
        pre.region_tensors(b"not an image at all", [Box(0, 0, 20, 20)], field="images[3]")
    assert err.value.field == "images[3]"
