"""Enrolment warnings (`AddedReference.warnings`): one catalog search per enrolment batch, made before the batch
is committed, then the pure `skulens.catalog.confusability.enrolment_warnings`, then the warnings of the
references that were added, in protobuf form. A failure here is logged and costs the batch its warnings only:
an enrolment never fails for them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from skulens.catalog.confusability import (
    NEIGHBOUR_PRODUCTS,
    ConfusabilityThresholds,
    EnrolmentWarning,
    ImageFacts,
    WarningKind,
    enrolment_warnings,
    products_to_ask,
)
from skulens.catalog.errors import NotFound
from skulens.imaging.quality import ImageQuality
from skulens.v1 import catalog_pb2

if TYPE_CHECKING:
    from skulens.catalog.backend import CatalogBackend

log = logging.getLogger(__name__)

KIND_PB = {
    WarningKind.CLOSER_TO_OTHER_PRODUCT: catalog_pb2.ENROLMENT_WARNING_KIND_CLOSER_TO_OTHER_PRODUCT,
    WarningKind.NEAR_DUPLICATE_OF_OTHER_PRODUCT: catalog_pb2.ENROLMENT_WARNING_KIND_NEAR_DUPLICATE_OF_OTHER_PRODUCT,
    WarningKind.UNUSABLE_IMAGE: catalog_pb2.ENROLMENT_WARNING_KIND_UNUSABLE_IMAGE,
}


@dataclass(frozen=True)
class NewRow:
    """One reference of an enrolment batch about to be committed: its stream index, product, vector and what
    decoding measured of it."""

    index: int
    product_id: str
    embedding: np.ndarray
    quality: ImageQuality | None


def check_batch(catalog: CatalogBackend, space: str, rows: Sequence[NewRow]) -> dict[int, list[EnrolmentWarning]]:
    """The warnings of each row, by stream index (blocking: run it in a worker thread, before the commit).

    `space`: the fingerprint of the model that made the vectors. Other rows of the batch count as references
    (their `Neighbour.batch_position` is a stream index, resolved to a reference id by `attach`)."""
    if not rows:
        return {}
    try:
        k = min(NEIGHBOUR_PRODUCTS, catalog.settings.max_top_k)
        vectors = np.stack([r.embedding for r in rows]).astype(np.float32, copy=False)
        pids = [r.product_id for r in rows]
        found = catalog.search(vectors, top_k=k, trusted=True, space=space)
        has: dict[str, bool] = {}
        for pid in products_to_ask(pids, found, k):
            try:
                has[pid] = bool(catalog.get_product(pid).references)
            except NotFound:  # deleted meanwhile: the commit will say so
                has[pid] = False
        facts = [None if r.quality is None else ImageFacts(r.quality.width, r.quality.height, r.quality.luminance_std)
                 for r in rows]
        out = enrolment_warnings(pids, vectors, found, facts, ConfusabilityThresholds.of(catalog.settings), has)
    except Exception:  # warnings are advice: never fail an enrolment for them
        log.warning("enrolment warnings could not be computed for a batch of %d", len(rows), exc_info=True)
        return {}
    index_of = [r.index for r in rows]
    return {index_of[i]: [_to_index(w, index_of) for w in ws] for i, ws in enumerate(out) if ws}


def _to_index(w: EnrolmentWarning, index_of: Sequence[int]) -> EnrolmentWarning:
    """`w` with a batch neighbour's position turned into its stream index."""
    o = w.other
    if o is None or o.batch_position is None:
        return w
    return replace(w, other=replace(o, batch_position=index_of[o.batch_position]))


def warning_pb(w: EnrolmentWarning, reference_ids: Mapping[int, int]) -> catalog_pb2.EnrolmentWarning:
    """The protobuf form; a neighbour in the batch gets the reference id its stream index was added as (0 when
    it was not added)."""
    o = w.other
    if o is not None and o.batch_position is not None:
        o = replace(o, reference_id=reference_ids.get(o.batch_position, 0))
        w = replace(w, other=o)
    msg = catalog_pb2.EnrolmentWarning(kind=KIND_PB[w.kind], message=w.message)
    if o is not None:
        msg.other_product_id, msg.other_reference_id, msg.other_score = o.product_id, o.reference_id, o.score
    if w.own_score is not None:
        msg.own_score = w.own_score
    return msg


def attach(results: MutableMapping[int, catalog_pb2.AddedReference],
           warnings: Mapping[int, list[EnrolmentWarning]]) -> None:
    """Put the warnings on the results of the references that were added (not on failures or duplicates)."""
    ids = {i: r.reference_id for i, r in results.items() if r.status.code == 0}
    for i, ws in warnings.items():
        if i in ids and not results[i].duplicate:
            results[i].warnings.extend(warning_pb(w, ids) for w in ws)
