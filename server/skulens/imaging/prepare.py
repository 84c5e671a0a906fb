"""One image's decode + preprocess as a self-contained job: picklable arguments in, a picklable `Prepared` out, so
the same function runs in a decode thread or in a decode worker process (`skulens.inference.decode_pool`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from skulens.errors import SkulensError, field_path
from skulens.imaging.preprocess import Box, Preprocessor
from skulens.imaging.quality import ImageQuality


@dataclass(frozen=True)
class Prepared:
    """The model inputs of one image: one tensor or error per result (the whole image, or each box), their
    `ImageQuality` when measured (None where the result is an error), and the seconds decoding took (0 when the
    image itself failed: such a failure says nothing about decode speed)."""

    inputs: list[np.ndarray | SkulensError]
    qualities: list[ImageQuality | None] | None
    seconds: float


def prepare_image(
    preprocessor: Preprocessor, data: bytes, boxes: Sequence[Box] | None, index: int, measure: bool
) -> Prepared:
    """Decode + preprocess `images[index]` (`boxes` None: the whole image; an empty list: nothing). Errors name
    ``images[index].content`` (the image) or ``images[index].regions[j]`` (a box); `measure` adds qualities."""
    field = field_path("images", index, "content")
    prefix = field_path("images", index, "regions")
    t0 = time.perf_counter()
    try:
        if measure:
            measured = preprocessor.measured_inputs(data, boxes, field=field, field_prefix=prefix)
            inputs: list[np.ndarray | SkulensError] = [r if isinstance(r, SkulensError) else r[0] for r in measured]
            qualities: list[ImageQuality | None] | None = [
                None if isinstance(r, SkulensError) else r[1] for r in measured
            ]
        elif boxes is None:
            inputs, qualities = [preprocessor.image_tensor(data, field=field)], None
        else:
            inputs = preprocessor.region_tensors(data, boxes, field=field, field_prefix=prefix)
            qualities = None
    except SkulensError as exc:
        n = 1 if boxes is None else len(boxes)
        return Prepared([exc] * n, [None] * n if measure else None, 0.0)
    return Prepared(inputs, qualities, time.perf_counter() - t0)
