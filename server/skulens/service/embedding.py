"""The embedding use case both servicers call: admit a batch of photos (cost read from sizes and headers,
before any decoding), then embed each whole image or each of its regions and regroup the flat results per
photo. Works on bytes; the servicers own the protobuf shapes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from skulens.errors import SkulensError
from skulens.imaging.errors import ImageTooLarge
from skulens.imaging.preprocess import Box
from skulens.inference.protocol import Encoder
from skulens.service.admission import Ticket
from skulens.service.state import Runtime


@dataclass
class Embedded:
    """Per image: its boxes (None = whole image) and its vectors or errors (one per box)."""

    boxes: list[Box] | None
    outputs: list[np.ndarray | SkulensError]


async def embed_batch(
    encoder: Encoder,
    contents: Sequence[bytes],
    boxes: Sequence[list[Box] | None],
    deadline: float | None,
    max_bytes: int | None = None,
    caller: object | None = None,
    pixels: Sequence[int] | None = None,
) -> list[Embedded]:
    """Embed images (each whole, or each of its boxes); regroup the encoder's flat results per image.

    Images over `max_bytes` (the server's limit; the encoder may be shared with other limits) are not handed
    to the encoder at all: they fail with ImageTooLarge naming the limit. Calls with the same `caller` share
    one turn of the decode threads (a stream's images). `pixels`: per image, as `admit_images` read them from
    the headers (so the encoder does not read them again). Errors name the encoder's fields (``images[i]``,
    ``regions[i][j]``); a servicer with other field names renames them.
    """
    sizes = [len(data) for data in contents]
    too_big = {i for i, size in enumerate(sizes) if max_bytes is not None and size > max_bytes}
    if too_big:
        contents = [b"" if i in too_big else data for i, data in enumerate(contents)]
        if pixels is not None:
            pixels = [0 if i in too_big else p for i, p in enumerate(pixels)]
    flat = await encoder.embed_images(
        contents, regions=list(boxes), deadline=deadline, caller=caller, pixels=pixels
    )
    out, k = [], 0
    for i, b in enumerate(boxes):
        n = len(b) if b is not None else 1
        outputs = flat[k : k + n]
        if i in too_big:
            err = ImageTooLarge(f"image is {sizes[i]} bytes; the limit is {max_bytes} bytes", f"images[{i}]")
            outputs = [err] * n
        out.append(Embedded(b, outputs))
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
