from skulens.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TextSearchMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEXT_SEARCH_MODE_UNSPECIFIED: _ClassVar[TextSearchMode]
    TEXT_SEARCH_MODE_VECTOR: _ClassVar[TextSearchMode]
    TEXT_SEARCH_MODE_KEYWORD: _ClassVar[TextSearchMode]
    TEXT_SEARCH_MODE_HYBRID: _ClassVar[TextSearchMode]

class DriftState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DRIFT_STATE_UNSPECIFIED: _ClassVar[DriftState]
    DRIFT_STATE_LEARNING: _ClassVar[DriftState]
    DRIFT_STATE_OK: _ClassVar[DriftState]
    DRIFT_STATE_WATCH: _ClassVar[DriftState]
    DRIFT_STATE_DRIFT: _ClassVar[DriftState]
TEXT_SEARCH_MODE_UNSPECIFIED: TextSearchMode
TEXT_SEARCH_MODE_VECTOR: TextSearchMode
TEXT_SEARCH_MODE_KEYWORD: TextSearchMode
TEXT_SEARCH_MODE_HYBRID: TextSearchMode
DRIFT_STATE_UNSPECIFIED: DriftState
DRIFT_STATE_LEARNING: DriftState
DRIFT_STATE_OK: DriftState
DRIFT_STATE_WATCH: DriftState
DRIFT_STATE_DRIFT: DriftState

class ImageInput(_message.Message):
    __slots__ = ("id", "content", "regions")
    ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    id: str
    content: bytes
    regions: _containers.RepeatedCompositeFieldContainer[_common_pb2.Box]
    def __init__(self, id: _Optional[str] = ..., content: _Optional[bytes] = ..., regions: _Optional[_Iterable[_Union[_common_pb2.Box, _Mapping]]] = ...) -> None: ...

class RecognizeRequest(_message.Message):
    __slots__ = ("images", "options", "source")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[ImageInput]
    options: _common_pb2.SearchOptions
    source: str
    def __init__(self, images: _Optional[_Iterable[_Union[ImageInput, _Mapping]]] = ..., options: _Optional[_Union[_common_pb2.SearchOptions, _Mapping]] = ..., source: _Optional[str] = ...) -> None: ...

class Recognition(_message.Message):
    __slots__ = ("status", "matches", "verdict", "best_score", "confusable_product_ids")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    BEST_SCORE_FIELD_NUMBER: _ClassVar[int]
    CONFUSABLE_PRODUCT_IDS_FIELD_NUMBER: _ClassVar[int]
    status: _common_pb2.ItemStatus
    matches: _containers.RepeatedCompositeFieldContainer[_common_pb2.Match]
    verdict: _common_pb2.Verdict
    best_score: float
    confusable_product_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, status: _Optional[_Union[_common_pb2.ItemStatus, _Mapping]] = ..., matches: _Optional[_Iterable[_Union[_common_pb2.Match, _Mapping]]] = ..., verdict: _Optional[_Union[_common_pb2.Verdict, str]] = ..., best_score: _Optional[float] = ..., confusable_product_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RegionResult(_message.Message):
    __slots__ = ("index", "box", "recognition")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    RECOGNITION_FIELD_NUMBER: _ClassVar[int]
    index: int
    box: _common_pb2.Box
    recognition: Recognition
    def __init__(self, index: _Optional[int] = ..., box: _Optional[_Union[_common_pb2.Box, _Mapping]] = ..., recognition: _Optional[_Union[Recognition, _Mapping]] = ...) -> None: ...

class ImageResult(_message.Message):
    __slots__ = ("id", "status", "recognition", "regions", "timings")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RECOGNITION_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: _common_pb2.ItemStatus
    recognition: Recognition
    regions: _containers.RepeatedCompositeFieldContainer[RegionResult]
    timings: _common_pb2.Timings
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.ItemStatus, _Mapping]] = ..., recognition: _Optional[_Union[Recognition, _Mapping]] = ..., regions: _Optional[_Iterable[_Union[RegionResult, _Mapping]]] = ..., timings: _Optional[_Union[_common_pb2.Timings, _Mapping]] = ...) -> None: ...

class RecognizeResponse(_message.Message):
    __slots__ = ("results", "model_fingerprint", "random_weights", "catalog_version", "stale_catalog")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    RANDOM_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    STALE_CATALOG_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ImageResult]
    model_fingerprint: str
    random_weights: bool
    catalog_version: int
    stale_catalog: _common_pb2.CatalogCache
    def __init__(self, results: _Optional[_Iterable[_Union[ImageResult, _Mapping]]] = ..., model_fingerprint: _Optional[str] = ..., random_weights: _Optional[bool] = ..., catalog_version: _Optional[int] = ..., stale_catalog: _Optional[_Union[_common_pb2.CatalogCache, _Mapping]] = ...) -> None: ...

class RecognizeStreamRequest(_message.Message):
    __slots__ = ("images", "options", "source")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[ImageInput]
    options: _common_pb2.SearchOptions
    source: str
    def __init__(self, images: _Optional[_Iterable[_Union[ImageInput, _Mapping]]] = ..., options: _Optional[_Union[_common_pb2.SearchOptions, _Mapping]] = ..., source: _Optional[str] = ...) -> None: ...

class RecognizeStreamResponse(_message.Message):
    __slots__ = ("result", "catalog_version", "message_index", "image_index", "stale_catalog")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    IMAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    STALE_CATALOG_FIELD_NUMBER: _ClassVar[int]
    result: ImageResult
    catalog_version: int
    message_index: int
    image_index: int
    stale_catalog: _common_pb2.CatalogCache
    def __init__(self, result: _Optional[_Union[ImageResult, _Mapping]] = ..., catalog_version: _Optional[int] = ..., message_index: _Optional[int] = ..., image_index: _Optional[int] = ..., stale_catalog: _Optional[_Union[_common_pb2.CatalogCache, _Mapping]] = ...) -> None: ...

class SearchByTextRequest(_message.Message):
    __slots__ = ("texts", "options", "mode")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    options: _common_pb2.SearchOptions
    mode: TextSearchMode
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., options: _Optional[_Union[_common_pb2.SearchOptions, _Mapping]] = ..., mode: _Optional[_Union[TextSearchMode, str]] = ...) -> None: ...

class TextResult(_message.Message):
    __slots__ = ("text", "recognition")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    RECOGNITION_FIELD_NUMBER: _ClassVar[int]
    text: str
    recognition: Recognition
    def __init__(self, text: _Optional[str] = ..., recognition: _Optional[_Union[Recognition, _Mapping]] = ...) -> None: ...

class SearchByTextResponse(_message.Message):
    __slots__ = ("results", "model_fingerprint", "catalog_version", "mode", "stale_catalog")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    STALE_CATALOG_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TextResult]
    model_fingerprint: str
    catalog_version: int
    mode: TextSearchMode
    stale_catalog: _common_pb2.CatalogCache
    def __init__(self, results: _Optional[_Iterable[_Union[TextResult, _Mapping]]] = ..., model_fingerprint: _Optional[str] = ..., catalog_version: _Optional[int] = ..., mode: _Optional[_Union[TextSearchMode, str]] = ..., stale_catalog: _Optional[_Union[_common_pb2.CatalogCache, _Mapping]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("images", "texts")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[ImageInput]
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, images: _Optional[_Iterable[_Union[ImageInput, _Mapping]]] = ..., texts: _Optional[_Iterable[str]] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("id", "region_index", "has_region", "status", "values")
    ID_FIELD_NUMBER: _ClassVar[int]
    REGION_INDEX_FIELD_NUMBER: _ClassVar[int]
    HAS_REGION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    id: str
    region_index: int
    has_region: bool
    status: _common_pb2.ItemStatus
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, id: _Optional[str] = ..., region_index: _Optional[int] = ..., has_region: _Optional[bool] = ..., status: _Optional[_Union[_common_pb2.ItemStatus, _Mapping]] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("images", "texts", "dim", "model_fingerprint")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Embedding]
    texts: _containers.RepeatedCompositeFieldContainer[Embedding]
    dim: int
    model_fingerprint: str
    def __init__(self, images: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., texts: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., dim: _Optional[int] = ..., model_fingerprint: _Optional[str] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "fingerprint", "dim", "modalities", "random_weights")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    RANDOM_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    fingerprint: str
    dim: int
    modalities: _containers.RepeatedScalarFieldContainer[str]
    random_weights: bool
    def __init__(self, name: _Optional[str] = ..., fingerprint: _Optional[str] = ..., dim: _Optional[int] = ..., modalities: _Optional[_Iterable[str]] = ..., random_weights: _Optional[bool] = ...) -> None: ...

class ServerLimits(_message.Message):
    __slots__ = ("max_images_per_request", "max_regions_per_image", "max_texts_per_request", "max_text_chars", "max_image_bytes", "max_message_bytes", "max_top_k", "default_top_k", "max_image_pixels", "min_image_side", "max_evaluation_images")
    MAX_IMAGES_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_REGIONS_PER_IMAGE_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXTS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_TOP_K_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MIN_IMAGE_SIDE_FIELD_NUMBER: _ClassVar[int]
    MAX_EVALUATION_IMAGES_FIELD_NUMBER: _ClassVar[int]
    max_images_per_request: int
    max_regions_per_image: int
    max_texts_per_request: int
    max_text_chars: int
    max_image_bytes: int
    max_message_bytes: int
    max_top_k: int
    default_top_k: int
    max_image_pixels: int
    min_image_side: int
    max_evaluation_images: int
    def __init__(self, max_images_per_request: _Optional[int] = ..., max_regions_per_image: _Optional[int] = ..., max_texts_per_request: _Optional[int] = ..., max_text_chars: _Optional[int] = ..., max_image_bytes: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_top_k: _Optional[int] = ..., default_top_k: _Optional[int] = ..., max_image_pixels: _Optional[int] = ..., min_image_side: _Optional[int] = ..., max_evaluation_images: _Optional[int] = ...) -> None: ...

class MatchThresholds(_message.Message):
    __slots__ = ("unknown_threshold", "text_unknown_threshold", "ambiguity_margin", "source", "matching")
    UNKNOWN_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TEXT_UNKNOWN_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    AMBIGUITY_MARGIN_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MATCHING_FIELD_NUMBER: _ClassVar[int]
    unknown_threshold: float
    text_unknown_threshold: float
    ambiguity_margin: float
    source: str
    matching: str
    def __init__(self, unknown_threshold: _Optional[float] = ..., text_unknown_threshold: _Optional[float] = ..., ambiguity_margin: _Optional[float] = ..., source: _Optional[str] = ..., matching: _Optional[str] = ...) -> None: ...

class GetServerInfoResponse(_message.Message):
    __slots__ = ("model", "limits", "thresholds", "catalog_backend", "catalog_version", "server_version", "text_search_modes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_BACKEND_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    TEXT_SEARCH_MODES_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    limits: ServerLimits
    thresholds: MatchThresholds
    catalog_backend: str
    catalog_version: int
    server_version: str
    text_search_modes: _containers.RepeatedScalarFieldContainer[TextSearchMode]
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ..., limits: _Optional[_Union[ServerLimits, _Mapping]] = ..., thresholds: _Optional[_Union[MatchThresholds, _Mapping]] = ..., catalog_backend: _Optional[str] = ..., catalog_version: _Optional[int] = ..., server_version: _Optional[str] = ..., text_search_modes: _Optional[_Iterable[_Union[TextSearchMode, str]]] = ...) -> None: ...

class LabelledImage(_message.Message):
    __slots__ = ("image", "product_id", "group")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    image: ImageInput
    product_id: str
    group: str
    def __init__(self, image: _Optional[_Union[ImageInput, _Mapping]] = ..., product_id: _Optional[str] = ..., group: _Optional[str] = ...) -> None: ...

class EvaluateOptions(_message.Message):
    __slots__ = ("search", "target_false_accept", "confused_pairs", "include_queries", "curve_points", "model_fingerprint")
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    TARGET_FALSE_ACCEPT_FIELD_NUMBER: _ClassVar[int]
    CONFUSED_PAIRS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_QUERIES_FIELD_NUMBER: _ClassVar[int]
    CURVE_POINTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    search: _common_pb2.SearchOptions
    target_false_accept: float
    confused_pairs: int
    include_queries: bool
    curve_points: int
    model_fingerprint: str
    def __init__(self, search: _Optional[_Union[_common_pb2.SearchOptions, _Mapping]] = ..., target_false_accept: _Optional[float] = ..., confused_pairs: _Optional[int] = ..., include_queries: _Optional[bool] = ..., curve_points: _Optional[int] = ..., model_fingerprint: _Optional[str] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("images", "options")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[LabelledImage]
    options: EvaluateOptions
    def __init__(self, images: _Optional[_Iterable[_Union[LabelledImage, _Mapping]]] = ..., options: _Optional[_Union[EvaluateOptions, _Mapping]] = ...) -> None: ...

class TopKAccuracy(_message.Message):
    __slots__ = ("queries", "top1", "top5")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    TOP1_FIELD_NUMBER: _ClassVar[int]
    TOP5_FIELD_NUMBER: _ClassVar[int]
    queries: int
    top1: float
    top5: float
    def __init__(self, queries: _Optional[int] = ..., top1: _Optional[float] = ..., top5: _Optional[float] = ...) -> None: ...

class GroupAccuracy(_message.Message):
    __slots__ = ("group", "accuracy")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    group: str
    accuracy: TopKAccuracy
    def __init__(self, group: _Optional[str] = ..., accuracy: _Optional[_Union[TopKAccuracy, _Mapping]] = ...) -> None: ...

class VerdictCounts(_message.Message):
    __slots__ = ("verdict", "right", "wrong", "out_of_catalog")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    RIGHT_FIELD_NUMBER: _ClassVar[int]
    WRONG_FIELD_NUMBER: _ClassVar[int]
    OUT_OF_CATALOG_FIELD_NUMBER: _ClassVar[int]
    verdict: _common_pb2.Verdict
    right: int
    wrong: int
    out_of_catalog: int
    def __init__(self, verdict: _Optional[_Union[_common_pb2.Verdict, str]] = ..., right: _Optional[int] = ..., wrong: _Optional[int] = ..., out_of_catalog: _Optional[int] = ...) -> None: ...

class CurvePoint(_message.Message):
    __slots__ = ("threshold", "coverage", "accuracy", "false_accept", "false_reject", "accepted_correct")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    FALSE_ACCEPT_FIELD_NUMBER: _ClassVar[int]
    FALSE_REJECT_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_CORRECT_FIELD_NUMBER: _ClassVar[int]
    threshold: float
    coverage: float
    accuracy: float
    false_accept: float
    false_reject: float
    accepted_correct: float
    def __init__(self, threshold: _Optional[float] = ..., coverage: _Optional[float] = ..., accuracy: _Optional[float] = ..., false_accept: _Optional[float] = ..., false_reject: _Optional[float] = ..., accepted_correct: _Optional[float] = ...) -> None: ...

class ConfusedPair(_message.Message):
    __slots__ = ("product_id", "taken_for", "count")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    TAKEN_FOR_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    taken_for: str
    count: int
    def __init__(self, product_id: _Optional[str] = ..., taken_for: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class OperatingPoint(_message.Message):
    __slots__ = ("target_false_accept", "unknown_threshold", "ambiguity_margin", "false_accept", "false_reject", "misidentified", "accepted_correct", "coverage")
    TARGET_FALSE_ACCEPT_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    AMBIGUITY_MARGIN_FIELD_NUMBER: _ClassVar[int]
    FALSE_ACCEPT_FIELD_NUMBER: _ClassVar[int]
    FALSE_REJECT_FIELD_NUMBER: _ClassVar[int]
    MISIDENTIFIED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_CORRECT_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    target_false_accept: float
    unknown_threshold: float
    ambiguity_margin: float
    false_accept: float
    false_reject: float
    misidentified: float
    accepted_correct: float
    coverage: float
    def __init__(self, target_false_accept: _Optional[float] = ..., unknown_threshold: _Optional[float] = ..., ambiguity_margin: _Optional[float] = ..., false_accept: _Optional[float] = ..., false_reject: _Optional[float] = ..., misidentified: _Optional[float] = ..., accepted_correct: _Optional[float] = ..., coverage: _Optional[float] = ...) -> None: ...

class EvaluationReport(_message.Message):
    __slots__ = ("queries", "in_catalog", "out_of_catalog", "unlisted_products", "failed", "overall", "groups", "verdicts", "curve", "auroc", "accepted_correct_at_target", "operating_point", "confused_pairs", "thresholds", "notes", "failures")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    IN_CATALOG_FIELD_NUMBER: _ClassVar[int]
    OUT_OF_CATALOG_FIELD_NUMBER: _ClassVar[int]
    UNLISTED_PRODUCTS_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    OVERALL_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    CURVE_FIELD_NUMBER: _ClassVar[int]
    AUROC_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_CORRECT_AT_TARGET_FIELD_NUMBER: _ClassVar[int]
    OPERATING_POINT_FIELD_NUMBER: _ClassVar[int]
    CONFUSED_PAIRS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    queries: int
    in_catalog: int
    out_of_catalog: int
    unlisted_products: int
    failed: int
    overall: TopKAccuracy
    groups: _containers.RepeatedCompositeFieldContainer[GroupAccuracy]
    verdicts: _containers.RepeatedCompositeFieldContainer[VerdictCounts]
    curve: _containers.RepeatedCompositeFieldContainer[CurvePoint]
    auroc: float
    accepted_correct_at_target: float
    operating_point: OperatingPoint
    confused_pairs: _containers.RepeatedCompositeFieldContainer[ConfusedPair]
    thresholds: MatchThresholds
    notes: _containers.RepeatedScalarFieldContainer[str]
    failures: _containers.RepeatedCompositeFieldContainer[QueryOutcome]
    def __init__(self, queries: _Optional[int] = ..., in_catalog: _Optional[int] = ..., out_of_catalog: _Optional[int] = ..., unlisted_products: _Optional[int] = ..., failed: _Optional[int] = ..., overall: _Optional[_Union[TopKAccuracy, _Mapping]] = ..., groups: _Optional[_Iterable[_Union[GroupAccuracy, _Mapping]]] = ..., verdicts: _Optional[_Iterable[_Union[VerdictCounts, _Mapping]]] = ..., curve: _Optional[_Iterable[_Union[CurvePoint, _Mapping]]] = ..., auroc: _Optional[float] = ..., accepted_correct_at_target: _Optional[float] = ..., operating_point: _Optional[_Union[OperatingPoint, _Mapping]] = ..., confused_pairs: _Optional[_Iterable[_Union[ConfusedPair, _Mapping]]] = ..., thresholds: _Optional[_Union[MatchThresholds, _Mapping]] = ..., notes: _Optional[_Iterable[str]] = ..., failures: _Optional[_Iterable[_Union[QueryOutcome, _Mapping]]] = ...) -> None: ...

class QueryOutcome(_message.Message):
    __slots__ = ("id", "product_id", "in_catalog", "group", "status", "matches", "verdict", "best_score", "correct")
    ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    IN_CATALOG_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    BEST_SCORE_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    id: str
    product_id: str
    in_catalog: bool
    group: str
    status: _common_pb2.ItemStatus
    matches: _containers.RepeatedCompositeFieldContainer[_common_pb2.Match]
    verdict: _common_pb2.Verdict
    best_score: float
    correct: bool
    def __init__(self, id: _Optional[str] = ..., product_id: _Optional[str] = ..., in_catalog: _Optional[bool] = ..., group: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.ItemStatus, _Mapping]] = ..., matches: _Optional[_Iterable[_Union[_common_pb2.Match, _Mapping]]] = ..., verdict: _Optional[_Union[_common_pb2.Verdict, str]] = ..., best_score: _Optional[float] = ..., correct: _Optional[bool] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("report", "queries", "model_fingerprint", "random_weights", "catalog_version")
    REPORT_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    RANDOM_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    report: EvaluationReport
    queries: _containers.RepeatedCompositeFieldContainer[QueryOutcome]
    model_fingerprint: str
    random_weights: bool
    catalog_version: int
    def __init__(self, report: _Optional[_Union[EvaluationReport, _Mapping]] = ..., queries: _Optional[_Iterable[_Union[QueryOutcome, _Mapping]]] = ..., model_fingerprint: _Optional[str] = ..., random_weights: _Optional[bool] = ..., catalog_version: _Optional[int] = ...) -> None: ...

class GetDriftReportRequest(_message.Message):
    __slots__ = ("source", "history")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    source: str
    history: int
    def __init__(self, source: _Optional[str] = ..., history: _Optional[int] = ...) -> None: ...

class DriftSignal(_message.Message):
    __slots__ = ("name", "value", "baseline", "effect", "z", "state")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    EFFECT_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    baseline: float
    effect: float
    z: float
    state: DriftState
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., baseline: _Optional[float] = ..., effect: _Optional[float] = ..., z: _Optional[float] = ..., state: _Optional[_Union[DriftState, str]] = ...) -> None: ...

class DriftWindow(_message.Message):
    __slots__ = ("end_unix", "queries", "known_share", "unknown_share", "ambiguous_share", "score_mean", "score_p10", "score_p50", "score_p90", "reference_distance", "mean_shift", "far_share", "state")
    END_UNIX_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    KNOWN_SHARE_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_SHARE_FIELD_NUMBER: _ClassVar[int]
    AMBIGUOUS_SHARE_FIELD_NUMBER: _ClassVar[int]
    SCORE_MEAN_FIELD_NUMBER: _ClassVar[int]
    SCORE_P10_FIELD_NUMBER: _ClassVar[int]
    SCORE_P50_FIELD_NUMBER: _ClassVar[int]
    SCORE_P90_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    MEAN_SHIFT_FIELD_NUMBER: _ClassVar[int]
    FAR_SHARE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    end_unix: float
    queries: int
    known_share: float
    unknown_share: float
    ambiguous_share: float
    score_mean: float
    score_p10: float
    score_p50: float
    score_p90: float
    reference_distance: float
    mean_shift: float
    far_share: float
    state: DriftState
    def __init__(self, end_unix: _Optional[float] = ..., queries: _Optional[int] = ..., known_share: _Optional[float] = ..., unknown_share: _Optional[float] = ..., ambiguous_share: _Optional[float] = ..., score_mean: _Optional[float] = ..., score_p10: _Optional[float] = ..., score_p50: _Optional[float] = ..., score_p90: _Optional[float] = ..., reference_distance: _Optional[float] = ..., mean_shift: _Optional[float] = ..., far_share: _Optional[float] = ..., state: _Optional[_Union[DriftState, str]] = ...) -> None: ...

class SourceDrift(_message.Message):
    __slots__ = ("source", "state", "queries", "baseline_queries", "baseline_target", "baseline", "current", "signals", "history", "last_seen_unix")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    BASELINE_QUERIES_FIELD_NUMBER: _ClassVar[int]
    BASELINE_TARGET_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_FIELD_NUMBER: _ClassVar[int]
    source: str
    state: DriftState
    queries: int
    baseline_queries: int
    baseline_target: int
    baseline: DriftWindow
    current: DriftWindow
    signals: _containers.RepeatedCompositeFieldContainer[DriftSignal]
    history: _containers.RepeatedCompositeFieldContainer[DriftWindow]
    last_seen_unix: float
    def __init__(self, source: _Optional[str] = ..., state: _Optional[_Union[DriftState, str]] = ..., queries: _Optional[int] = ..., baseline_queries: _Optional[int] = ..., baseline_target: _Optional[int] = ..., baseline: _Optional[_Union[DriftWindow, _Mapping]] = ..., current: _Optional[_Union[DriftWindow, _Mapping]] = ..., signals: _Optional[_Iterable[_Union[DriftSignal, _Mapping]]] = ..., history: _Optional[_Iterable[_Union[DriftWindow, _Mapping]]] = ..., last_seen_unix: _Optional[float] = ...) -> None: ...

class DriftReference(_message.Message):
    __slots__ = ("catalog_version", "references", "clusters", "far_cut", "fitted_unix", "fit_seconds", "fits", "error")
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    FAR_CUT_FIELD_NUMBER: _ClassVar[int]
    FITTED_UNIX_FIELD_NUMBER: _ClassVar[int]
    FIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FITS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    catalog_version: int
    references: int
    clusters: int
    far_cut: float
    fitted_unix: float
    fit_seconds: float
    fits: int
    error: str
    def __init__(self, catalog_version: _Optional[int] = ..., references: _Optional[int] = ..., clusters: _Optional[int] = ..., far_cut: _Optional[float] = ..., fitted_unix: _Optional[float] = ..., fit_seconds: _Optional[float] = ..., fits: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class DriftSettings(_message.Message):
    __slots__ = ("window_size", "window_seconds", "slices", "baseline_queries", "watch_effect", "watch_z", "alert_effect", "alert_z", "max_sources")
    WINDOW_SIZE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SLICES_FIELD_NUMBER: _ClassVar[int]
    BASELINE_QUERIES_FIELD_NUMBER: _ClassVar[int]
    WATCH_EFFECT_FIELD_NUMBER: _ClassVar[int]
    WATCH_Z_FIELD_NUMBER: _ClassVar[int]
    ALERT_EFFECT_FIELD_NUMBER: _ClassVar[int]
    ALERT_Z_FIELD_NUMBER: _ClassVar[int]
    MAX_SOURCES_FIELD_NUMBER: _ClassVar[int]
    window_size: int
    window_seconds: float
    slices: int
    baseline_queries: int
    watch_effect: float
    watch_z: float
    alert_effect: float
    alert_z: float
    max_sources: int
    def __init__(self, window_size: _Optional[int] = ..., window_seconds: _Optional[float] = ..., slices: _Optional[int] = ..., baseline_queries: _Optional[int] = ..., watch_effect: _Optional[float] = ..., watch_z: _Optional[float] = ..., alert_effect: _Optional[float] = ..., alert_z: _Optional[float] = ..., max_sources: _Optional[int] = ...) -> None: ...

class GetDriftReportResponse(_message.Message):
    __slots__ = ("enabled", "sources", "reference", "settings", "folded_queries", "dropped_queries", "memory_bytes", "memory_bound_bytes")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    FOLDED_QUERIES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_QUERIES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BOUND_BYTES_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    sources: _containers.RepeatedCompositeFieldContainer[SourceDrift]
    reference: DriftReference
    settings: DriftSettings
    folded_queries: int
    dropped_queries: int
    memory_bytes: int
    memory_bound_bytes: int
    def __init__(self, enabled: _Optional[bool] = ..., sources: _Optional[_Iterable[_Union[SourceDrift, _Mapping]]] = ..., reference: _Optional[_Union[DriftReference, _Mapping]] = ..., settings: _Optional[_Union[DriftSettings, _Mapping]] = ..., folded_queries: _Optional[int] = ..., dropped_queries: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., memory_bound_bytes: _Optional[int] = ...) -> None: ...
