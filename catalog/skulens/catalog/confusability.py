"""Confusability of new references at enrolment (pure): which new reference is closer to another product than to
its own, a near-duplicate of another product's reference, or an unusable photo (tiny, nearly blank).

The warnings are computed, never stored, and never stop an enrolment. The servicer searches the catalog once
per enrolment batch with the batch's embeddings *before* committing it (so a reference never finds itself), and
hands `enrolment_warnings` the answers, the embeddings (the batch's references are compared with each other here:
a product enrolled in one batch still has "own" references) and what the decode step measured of each image.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from skulens.catalog.models import SearchResult
from skulens.catalog.settings import CatalogSettings

#: Products each new reference is searched for: its own product is found when it is among them (else the
#: catalog is asked whether the product has references at all, see `products_to_ask`).
NEIGHBOUR_PRODUCTS = 10


class WarningKind(str, enum.Enum):
    """What an enrolment warning says about a new reference."""

    CLOSER_TO_OTHER_PRODUCT = "CLOSER_TO_OTHER_PRODUCT"
    NEAR_DUPLICATE_OF_OTHER_PRODUCT = "NEAR_DUPLICATE_OF_OTHER_PRODUCT"
    UNUSABLE_IMAGE = "UNUSABLE_IMAGE"


@dataclass(frozen=True)
class ImageFacts:
    """What the decode step measured of an enrolled image (or of its region): full-resolution size in pixels and
    the standard deviation of the luminance (Rec. 601 luma, 0..255) of the pixels the model was given."""

    width: int
    height: int
    luminance_std: float


@dataclass(frozen=True)
class ConfusabilityThresholds:
    """When a new reference is flagged (`CatalogSettings` holds them; docs/USAGE.md, "Enrolment warnings").

    near_duplicate: cosine to another product's reference at or above which a reference is its near-duplicate.
    min_side: shortest side in pixels under which an image (or region) is tiny.
    min_luminance_std: luminance standard deviation under which an image is nearly blank.
    """

    near_duplicate: float = 0.93
    min_side: int = 64
    min_luminance_std: float = 8.0

    @classmethod
    def of(cls, settings: CatalogSettings) -> ConfusabilityThresholds:
        """The thresholds a catalog's settings name."""
        return cls(settings.near_duplicate_threshold, settings.unusable_min_side,
                   settings.unusable_min_luminance_std)


@dataclass(frozen=True)
class Neighbour:
    """A product's nearest reference to a new one: a catalog reference (`reference_id`), or another reference of
    the same batch (`batch_position`; its id is known once the batch is committed, then set in `reference_id`)."""

    product_id: str
    score: float
    reference_id: int = 0
    batch_position: int | None = None


@dataclass(frozen=True)
class EnrolmentWarning:
    """One warning about one new reference. `other`: the other product's nearest reference (both similarity
    kinds); `own_score`: cosine to the nearest reference of its own product (CLOSER_TO_OTHER_PRODUCT; None when
    that reference is not among the `NEIGHBOUR_PRODUCTS` nearest products, so only known to be lower);
    `threshold`: the near-duplicate threshold crossed; `reasons`: what makes an image unusable, in words."""

    kind: WarningKind
    other: Neighbour | None = None
    own_score: float | None = None
    threshold: float = 0.0
    reasons: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        """The warning in words, for people."""
        o = self.other
        ref = f"reference {o.reference_id}" if o is not None and o.reference_id else "a reference of this batch"
        if self.kind is WarningKind.CLOSER_TO_OTHER_PRODUCT and o is not None:
            own = (f"cosine {self.own_score:.3f}" if self.own_score is not None else
                   f"not among the {NEIGHBOUR_PRODUCTS} nearest products")
            return (f"closer to product {o.product_id!r} ({ref}, cosine {o.score:.3f}) than to its own product's "
                    f"nearest reference ({own})")
        if self.kind is WarningKind.NEAR_DUPLICATE_OF_OTHER_PRODUCT and o is not None:
            return (f"near-duplicate of product {o.product_id!r}'s {ref} (cosine {o.score:.3f} >= "
                    f"{self.threshold:.3f}): the same photo under two products?")
        return "unusable image: " + "; ".join(self.reasons)


def unusable_reasons(facts: ImageFacts, thresholds: ConfusabilityThresholds) -> tuple[str, ...]:
    """Why an image is unusable, in words (empty: it is usable): tiny, nearly blank."""
    out = []
    if min(facts.width, facts.height) < thresholds.min_side:
        out.append(f"tiny ({facts.width}x{facts.height} pixels, shortest side under {thresholds.min_side})")
    if facts.luminance_std < thresholds.min_luminance_std:
        out.append(f"nearly blank (luminance standard deviation {facts.luminance_std:.1f}, under "
                   f"{thresholds.min_luminance_std:g})")
    return tuple(out)


def products_to_ask(product_ids: Sequence[str], found: Sequence[SearchResult], top_k: int) -> set[str]:
    """Products whose own references a search answer cannot tell about: missing from a full answer (`top_k`
    products), so the catalog must say whether they have references at all (a product missing from a shorter
    answer has none)."""
    out = set()
    for pid, res in zip(product_ids, found, strict=True):
        if len(res.matches) >= top_k and all(m.product_id != pid for m in res.matches):
            out.add(pid)
    return out


def _best_in_batch(sims: np.ndarray, product_ids: Sequence[str], i: int) -> tuple[Neighbour | None, Neighbour | None]:
    """(nearest other reference of the same product, of another product) among the batch's rows other than `i`."""
    own: Neighbour | None = None
    other: Neighbour | None = None
    for j in np.argsort(-sims[i], kind="stable"):
        j = int(j)
        if j == i:
            continue
        n = Neighbour(product_ids[j], float(sims[i, j]), batch_position=j)
        if product_ids[j] == product_ids[i]:
            own = own or n
        else:
            other = other or n
        if own is not None and other is not None:
            break
    return own, other


def _better(a: Neighbour | None, b: Neighbour | None) -> Neighbour | None:
    if a is None or (b is not None and b.score > a.score):
        return b
    return a


def enrolment_warnings(
    product_ids: Sequence[str],
    embeddings: np.ndarray,
    found: Sequence[SearchResult],
    facts: Sequence[ImageFacts | None],
    thresholds: ConfusabilityThresholds,
    has_references: Mapping[str, bool] | None = None,
) -> list[list[EnrolmentWarning]]:
    """The warnings of each new reference of one enrolment batch, in order.

    `product_ids[i]` / `embeddings[i]` (unit-norm rows) are the batch's new references; `found[i]` the catalog's
    answer for row i (top products, best reference each), searched before the batch was committed; `facts[i]`
    what the decode step measured (None: not measured); `has_references`: for the products of
    `products_to_ask`, whether the catalog held references of them before the batch.

    A reference is CLOSER_TO_OTHER_PRODUCT when another product's nearest reference (in the catalog or the batch)
    scores above its own product's nearest one — only when its product has another reference; a
    NEAR_DUPLICATE_OF_OTHER_PRODUCT when that score reaches `thresholds.near_duplicate`; an UNUSABLE_IMAGE when
    its shortest side is under `thresholds.min_side` or its luminance deviation under
    `thresholds.min_luminance_std`.
    """
    n = len(product_ids)
    if not (len(found) == len(facts) == n == len(embeddings)):
        raise ValueError(f"{n} product ids, {len(embeddings)} embeddings, {len(found)} answers, {len(facts)} facts")
    if n == 0:
        return []
    asked = has_references or {}
    e = np.asarray(embeddings, dtype=np.float32).reshape(n, -1)
    sims = e @ e.T
    out: list[list[EnrolmentWarning]] = []
    for i, pid in enumerate(product_ids):
        warnings: list[EnrolmentWarning] = []
        own_batch, other_batch = _best_in_batch(sims, product_ids, i)
        own_cat = other_cat = None
        for m in found[i].matches:  # best first
            if m.product_id == pid:
                own_cat = own_cat or Neighbour(pid, float(m.score), m.reference_id)
            else:
                other_cat = other_cat or Neighbour(m.product_id, float(m.score), m.reference_id)
        catalog_has_own = own_cat is not None or bool(asked.get(pid, False))
        own_known = own_cat is not None or not catalog_has_own  # else: lower than every product of the answer
        own = _better(own_cat, own_batch)
        other = _better(other_cat, other_batch)
        has_own = own is not None or catalog_has_own  # only a product with another reference has a nearest one
        if other is not None and has_own and (own is None or other.score > own.score):
            warnings.append(EnrolmentWarning(WarningKind.CLOSER_TO_OTHER_PRODUCT, other,
                                             own.score if own is not None and own_known else None))
        if other is not None and other.score >= thresholds.near_duplicate:
            warnings.append(EnrolmentWarning(WarningKind.NEAR_DUPLICATE_OF_OTHER_PRODUCT, other,
                                             threshold=thresholds.near_duplicate))
        fact = facts[i]
        reasons = unusable_reasons(fact, thresholds) if fact is not None else ()
        if reasons:
            warnings.append(EnrolmentWarning(WarningKind.UNUSABLE_IMAGE, reasons=reasons))
        out.append(warnings)
    return out
