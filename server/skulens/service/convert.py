"""Conversions between protobuf messages and domain objects, and request-shape validation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from skulens.catalog import validation
from skulens.catalog.backend import CatalogBackend
from skulens.catalog.models import CacheState, Match, Product, SearchResult, Verdict
from skulens.errors import field_path
from skulens.imaging.preprocess import Box
from skulens.service.errors_grpc import BadRequest, TooMany, item_status
from skulens.service.settings import Settings
from skulens.v1 import common_pb2, recognition_pb2

_VERDICTS: dict[str, common_pb2.Verdict] = {  # by the verdict's name
    Verdict.KNOWN.value: common_pb2.VERDICT_KNOWN,
    Verdict.UNKNOWN.value: common_pb2.VERDICT_UNKNOWN,
    Verdict.AMBIGUOUS.value: common_pb2.VERDICT_AMBIGUOUS,
}


def cache_pb(state: CacheState) -> common_pb2.CatalogCache:
    """The local copy's state, as answers and GetCatalogStats report it."""
    return common_pb2.CatalogCache(
        kind=state.kind, primary_reachable=state.reachable, cached_version=max(0, state.version),
        primary_version=max(0, state.primary_version), seconds_since_sync=round(state.seconds_since_sync, 3),
        last_error=state.last_error,
    )


def stale_catalog(catalog: CatalogBackend) -> common_pb2.CatalogCache | None:
    """The copy's state when an answer came from a local copy that cannot reach the shared catalog; else None."""
    state = catalog.cache_state()
    return cache_pb(state) if state is not None and not state.reachable else None


@dataclass(frozen=True)
class SearchParams:
    """Validated SearchOptions."""

    top_k: int
    min_score: float | None
    category: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    min_catalog_version: int = 0
    unknown_threshold: float | None = None  # None: the server's (or the call's own default, e.g. text search)
    ambiguity_margin: float | None = None


def search_params(
    options: common_pb2.SearchOptions, settings: Settings, prefix: str = "options"
) -> SearchParams:
    """Validate SearchOptions against the server limits (BadRequest / InvalidArgument names the field, as a path
    under `prefix`, and the limit); the category and label filters come back in NFC."""
    top_k = options.top_k or settings.default_top_k
    if top_k > settings.max_top_k:
        field = field_path(prefix, "top_k")
        raise BadRequest(f"{field} must be <= {settings.max_top_k}, got {options.top_k}", field=field)
    min_score = float(options.min_score)
    if not math.isfinite(min_score) or not -1.0 <= min_score <= 1.0:
        field = field_path(prefix, "min_score")
        raise BadRequest(f"{field} must be in [-1, 1], got {options.min_score}", field=field)
    threshold = margin = None
    if options.HasField("unknown_threshold"):
        threshold = float(options.unknown_threshold)
        if not math.isfinite(threshold) or not -1.0 <= threshold <= 1.0:
            field = field_path(prefix, "unknown_threshold")
            raise BadRequest(f"{field} must be in [-1, 1], got {options.unknown_threshold}", field=field)
    if options.HasField("ambiguity_margin"):
        margin = float(options.ambiguity_margin)
        if not math.isfinite(margin) or not 0.0 <= margin <= 2.0:
            field = field_path(prefix, "ambiguity_margin")
            raise BadRequest(f"{field} must be in [0, 2], got {options.ambiguity_margin}", field=field)
    category = validation.category(options.category, field_path(prefix, "category"))
    labels = validation.labels(dict(options.labels), field_path(prefix, "labels"))
    return SearchParams(
        top_k, min_score or None, category, labels, int(options.min_catalog_version), threshold, margin,
    )


def boxes_of(image: recognition_pb2.ImageInput, index: int, settings: Settings) -> list[Box] | None:
    """The image's regions as Boxes (None = whole image); TooMany past the per-image limit."""
    if not image.regions:
        return None
    if len(image.regions) > settings.max_regions_per_image:
        field = field_path("images", index, "regions")
        raise TooMany(
            f"{field} holds {len(image.regions)} boxes; the limit is {settings.max_regions_per_image} per image",
            field=field,
        )
    return [Box(r.x, r.y, r.width, r.height) for r in image.regions]


def check_images(images: object, settings: Settings, field: str = "images", *, required: bool = False) -> None:
    """TooMany when a request carries more images than allowed; BadRequest when `required` and there are none."""
    n = len(images)  # type: ignore[arg-type]
    if required and n == 0:
        raise BadRequest(
            f"{field} is empty: send 1 to {settings.max_images_per_request} images per request", field=field
        )
    if n > settings.max_images_per_request:
        raise TooMany(
            f"{field} holds {n} images; the limit is {settings.max_images_per_request} per request "
            "(split the batch)",
            field=field,
        )


def check_texts(texts: object, settings: Settings, field: str = "texts", *, required: bool = False) -> None:
    """TooMany / BadRequest for too many or too long texts (or none, when `required`)."""
    seq = list(texts)  # type: ignore[call-overload]
    if required and not seq:
        raise BadRequest(
            f"{field} is empty: send 1 to {settings.max_texts_per_request} texts per request", field=field
        )
    if len(seq) > settings.max_texts_per_request:
        raise TooMany(
            f"{field} holds {len(seq)} texts; the limit is {settings.max_texts_per_request} per request",
            field=field,
        )
    for i, t in enumerate(seq):
        item = field_path(field, i)
        if not t.strip():
            raise BadRequest(f"{item} is empty", field=item)
        if len(t) > settings.max_text_chars:
            raise BadRequest(f"{item} has {len(t)} characters; the limit is {settings.max_text_chars}", field=item)


def recognition_pb(result: SearchResult) -> recognition_pb2.Recognition:
    """A catalog SearchResult as a Recognition message (status OK)."""
    return recognition_pb2.Recognition(
        status=item_status(None),
        matches=matches_pb(result.matches),
        verdict=verdict_pb(result.verdict),
        best_score=clamped(result.best_score),
        confusable_product_ids=list(result.confusable),
    )


def failed_recognition(exc: BaseException) -> recognition_pb2.Recognition:
    """A Recognition carrying only the error status of `exc` (best_score -1: nothing was compared)."""
    return recognition_pb2.Recognition(status=item_status(exc), best_score=-1.0)


def matches_pb(matches: Sequence[Match]) -> list[common_pb2.Match]:
    """Catalog matches as messages (scores clamped)."""
    return [
        common_pb2.Match(
            product_id=m.product_id,
            display_name=m.display_name,
            score=clamped(m.score),
            reference_id=int(m.reference_id),
        )
        for m in matches
    ]


def verdict_pb(verdict: Verdict | str) -> common_pb2.Verdict:
    """A catalog verdict (or its name) as the enum value."""
    name = verdict.value if isinstance(verdict, Verdict) else verdict
    return _VERDICTS.get(name, common_pb2.VERDICT_UNSPECIFIED)


def clamped(score: float) -> float:
    """A cosine similarity inside [-1, 1] (float32 rounding can land a hair outside)."""
    return min(1.0, max(-1.0, float(score)))


def product_pb(p: Product) -> common_pb2.Product:
    """A catalog Product as a message."""
    return common_pb2.Product(
        product_id=p.product_id,
        display_name=p.display_name,
        category=p.category,
        labels=dict(p.labels),
        reference_count=int(p.reference_count),
        etag=p.etag,
        description=p.description,
    )
