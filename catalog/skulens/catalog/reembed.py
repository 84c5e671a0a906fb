"""`Reembedder`: every stored reference image through a new model, then one transaction switches the store.

New embeddings are staged in their own table (an interrupted run resumes from there); one transaction then
swaps them in together with the new fingerprint and dimension, so the store never mixes models. References
that cannot be re-embedded are deleted in that transaction and reported. `Catalog.reembed` runs this under its
write lock and then reloads its in-memory state from the switched store.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from skulens.catalog import validation as v
from skulens.catalog.errors import CatalogClosed, CatalogError, InvalidArgument
from skulens.catalog.models import DroppedReference
from skulens.catalog.store import Store

#: embed_images(list of encoded images) -> one unit-norm vector or Exception per image. When some of the references
#: are crops, it is called as embed_images(images, regions) with one (x, y, width, height) or None per image.
EmbedImages = Callable[..., Sequence[np.ndarray | Exception]]

#: (reference_id, float32 embedding bytes or None, error or None): one staged result.
Staged = tuple[int, bytes | None, str | None]


@dataclass(frozen=True)
class Swapped:
    """What a re-embedding run did to the store."""

    reembedded: int
    resumed: int  # embeddings reused from an interrupted earlier run with the same new fingerprint
    dropped: list[DroppedReference]


class Reembedder:
    """Re-embeds one store's reference images; `closing` set (the catalog closes) aborts between batches."""

    def __init__(self, store: Store, norm_tolerance: float, closing: threading.Event) -> None:
        self._store = store
        self._norm_tolerance = norm_tolerance
        self._closing = closing

    def run(self, fingerprint: str, dim: int, embed_images: EmbedImages, batch_size: int,
            progress: Callable[[int, int], None] | None = None) -> Swapped:
        """Stage a new embedding of every stored image (validated arguments), then switch the store to them.

        An exception raised by `embed_images` aborts the run; staged batches are kept for a rerun.
        """
        store = self._store
        resumed = store.staging_prepare(fingerprint)
        total = store.counts()[2]
        done = resumed
        while True:
            if self._closing.is_set():
                raise CatalogClosed("catalog closed during reembed; run it again to resume")
            todo = store.images_to_reembed(fingerprint, batch_size)
            if not todo:
                break
            regions = [region for _, _, region in todo]
            images = [img for _, img, _ in todo]
            outs = list(embed_images(images, regions) if any(regions) else embed_images(images))
            if len(outs) != len(todo):
                raise CatalogError(f"embed_images returned {len(outs)} results for {len(todo)} images")
            store.staging_put(fingerprint, [self._staged(rid, out, dim)
                                            for (rid, _, _), out in zip(todo, outs, strict=True)])
            done += len(todo)
            if progress is not None:
                progress(done, total)
        dropped, count, _ = store.reembed_swap(fingerprint, dim)
        return Swapped(count, resumed, [DroppedReference(r, p, why) for r, p, why in dropped])

    def _staged(self, rid: int, out: np.ndarray | Exception, dim: int) -> Staged:
        """The staged row of one embed result: its vector, or why it cannot be used."""
        if isinstance(out, Exception):
            return rid, None, f"embedding failed: {out}"
        try:
            vec = v.vectors(out, dim, self._norm_tolerance, "embedding", single=True)[0]
        except InvalidArgument as exc:
            return rid, None, f"invalid embedding: {exc}"
        return rid, vec.astype("<f4").tobytes(), None
