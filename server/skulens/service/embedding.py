"""The embedding use case both servicers call: admit a batch of photos (cost read from sizes and headers,
before any decoding), then embed each whole image or each of its regions and regroup the flat results per
photo. Works on bytes; the servicers own the protobuf shapes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from skulens.errors import SkulensError, field_path
from skulens.imaging.errors import ImageTooLarge
from skulens.imaging.preprocess import Box
from skulens.imaging.quality import ImageQuality
from skulens.inference.protocol import Encoder
from skulens.service.admission import Ticket
from skulens.service.state import Runtime

#: How a request names image `i` (region None) or its region `j`: the field path an error of it carries.
FieldOf = Callable[[int, int | None], str]


def image_fields(i: int, j: int | None) -> str:
    """The fields of `ImageInput` number `i` of a request's `images` (the encoder's own names):
    ``images[i].content``, or ``images[i].regions[j]`` for its region `j`."""
    return field_path("images", i, "content") if j is None else field_path("images", i, "regions", j)


@dataclass
class Embedded:
    """Per image: its boxes (None = whole image) and its vectors or errors (one per box)."""

    boxes: list[Box] | None
    outputs: list[np.ndarray | SkulensError]
    #: With `embed_batch(measure=True)`: what decoding measured of each output's pixels (None where it failed).
    qualities: list[ImageQuality | None] = field(default_factory=list)


def _addressed(
    out: np.ndarray | SkulensError, i: int, j: int | None, field_of: FieldOf, stream_index: int | None
) -> np.ndarray | SkulensError:
    """An encoder error of image `i` (region `j`) re-addressed to the request's own field (`field_of`) and, in a
    stream, to its message (`stream_index`)."""
    if not isinstance(out, SkulensError):
        return out
    if out.field and field_of is not image_fields:
        whole = out.field == image_fields(i, None)  # the image itself failed (every box of it says so)
        out = out.with_field(field_of(i, None if whole else j))
    return out if stream_index is None else out.in_stream(stream_index)


async def embed_batch(
    encoder: Encoder,
    contents: Sequence[bytes],
    boxes: Sequence[list[Box] | None],
    deadline: float | None,
    max_bytes: int | None = None,
    caller: object | None = None,
    pixels: Sequence[int] | None = None,
    field_of: FieldOf = image_fields,
    stream_indexes: Sequence[int] | None = None,
    measure: bool = False,
    mirror: bool = False,
) -> list[Embedded]:
    """Embed images (each whole, or each of its boxes); regroup the encoder's flat results per image.

    Images over `max_bytes` (the server's limit; the encoder may be shared with other limits) are not handed
    to the encoder at all: they fail with ImageTooLarge naming the limit. Calls with the same `caller` share
    one turn of the decode threads (a stream's images). `pixels`: per image, as `admit_images` read them from
    the headers (so the encoder does not read them again). Errors name the request's fields as `field_of` says
    (default: a request's `images`, ``images[i].content`` / ``images[i].regions[j]``) and, in a stream, the
    message of each image (`stream_indexes[i]`). `measure`: also return what decoding measured of each image
    (`Embedded.qualities`, for the enrolment warnings). `mirror`: test-time augmentation of queries (each embedding
    the normalised mean of the image's and its mirror image's; `--query-mirror`).
    """
    sizes = [len(data) for data in contents]
    too_big = {i for i, size in enumerate(sizes) if max_bytes is not None and size > max_bytes}
    if too_big:
        contents = [b"" if i in too_big else data for i, data in enumerate(contents)]
        if pixels is not None:
            pixels = [0 if i in too_big else p for i, p in enumerate(pixels)]
    qualities: list[ImageQuality | None] | None = [] if measure else None
    extra: dict[str, Any] = {}  # only what is wanted is asked of the encoder (test wrappers pass keywords through)
    if qualities is not None:
        extra["qualities"] = qualities
    if mirror:
        extra["mirror"] = True
    flat = await encoder.embed_images(contents, regions=list(boxes), deadline=deadline, caller=caller, pixels=pixels,
                                      **extra)
    out, k = [], 0
    for i, b in enumerate(boxes):
        n = len(b) if b is not None else 1
        at = None if stream_indexes is None else stream_indexes[i]
        outputs = [_addressed(o, i, None if b is None else j, field_of, at) for j, o in enumerate(flat[k : k + n])]
        if i in too_big:
            err = ImageTooLarge(f"image is {sizes[i]} bytes; the limit is {max_bytes} bytes", field_of(i, None))
            outputs = [err if at is None else err.in_stream(at)] * n
        out.append(Embedded(b, outputs, [] if qualities is None else qualities[k : k + n]))
        k += n
    return out


def admit_images(
    runtime: Runtime,
    encoder: Encoder,
    contents: Sequence[bytes],
    boxes: Sequence[list[Box] | None],
    deadline: float | None,
    max_bytes: int,
    *,
    new_call: bool = True,
    field: str = "images",
    extra_items: int = 0,
) -> tuple[Ticket, list[int]]:
    """Admission for embedding `contents` (their boxes, plus `extra_items` other model inputs such as texts):
    cost from sizes and image headers, before decoding. Returns the ticket and each image's decoded pixels
    (0 over `max_bytes`), read once from the headers, for `embed_batch`.

    Raises `Shed` (RESOURCE_EXHAUSTED with a retry hint) or `TooMany` (the request's pixel budget)."""
    per_image: list[int] = []

    def pixels() -> int:
        per_image.extend(encoder.decode_pixels(data) if len(data) <= max_bytes else 0 for data in contents)
        return sum(per_image)

    ticket = runtime.admission.admit(
        encoder.costs,
        items=sum(1 if b is None else len(b) for b in boxes) + extra_items,
        nbytes=sum(len(data) for data in contents if len(data) <= max_bytes),
        pixels=pixels,
        deadline=deadline,
        new_call=new_call,
        field=field,
    )
    return ticket, per_image
