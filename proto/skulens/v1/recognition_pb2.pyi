from skulens.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

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
    __slots__ = ("images", "options")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[ImageInput]
    options: _common_pb2.SearchOptions
    def __init__(self, images: _Optional[_Iterable[_Union[ImageInput, _Mapping]]] = ..., options: _Optional[_Union[_common_pb2.SearchOptions, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("results", "model_fingerprint", "random_weights", "catalog_version")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    RANDOM_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ImageResult]
    model_fingerprint: str
    random_weights: bool
    catalog_version: int
    def __init__(self, results: _Optional[_Iterable[_Union[ImageResult, _Mapping]]] = ..., model_fingerprint: _Optional[str] = ..., random_weights: _Optional[bool] = ..., catalog_version: _Optional[int] = ...) -> None: ...

class RecognizeStreamRequest(_message.Message):
    __slots__ = ("images", "options")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[ImageInput]
    options: _common_pb2.SearchOptions
    def __init__(self, images: _Optional[_Iterable[_Union[ImageInput, _Mapping]]] = ..., options: _Optional[_Union[_common_pb2.SearchOptions, _Mapping]] = ...) -> None: ...

class RecognizeStreamResponse(_message.Message):
    __slots__ = ("result", "catalog_version", "message_index", "image_index")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    IMAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    result: ImageResult
    catalog_version: int
    message_index: int
    image_index: int
    def __init__(self, result: _Optional[_Union[ImageResult, _Mapping]] = ..., catalog_version: _Optional[int] = ..., message_index: _Optional[int] = ..., image_index: _Optional[int] = ...) -> None: ...

class SearchByTextRequest(_message.Message):
    __slots__ = ("texts", "options")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    options: _common_pb2.SearchOptions
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., options: _Optional[_Union[_common_pb2.SearchOptions, _Mapping]] = ...) -> None: ...

class TextResult(_message.Message):
    __slots__ = ("text", "recognition")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    RECOGNITION_FIELD_NUMBER: _ClassVar[int]
    text: str
    recognition: Recognition
    def __init__(self, text: _Optional[str] = ..., recognition: _Optional[_Union[Recognition, _Mapping]] = ...) -> None: ...

class SearchByTextResponse(_message.Message):
    __slots__ = ("results", "model_fingerprint", "catalog_version")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TextResult]
    model_fingerprint: str
    catalog_version: int
    def __init__(self, results: _Optional[_Iterable[_Union[TextResult, _Mapping]]] = ..., model_fingerprint: _Optional[str] = ..., catalog_version: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("max_images_per_request", "max_regions_per_image", "max_texts_per_request", "max_text_chars", "max_image_bytes", "max_message_bytes", "max_top_k", "default_top_k", "max_image_pixels", "min_image_side")
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
    def __init__(self, max_images_per_request: _Optional[int] = ..., max_regions_per_image: _Optional[int] = ..., max_texts_per_request: _Optional[int] = ..., max_text_chars: _Optional[int] = ..., max_image_bytes: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_top_k: _Optional[int] = ..., default_top_k: _Optional[int] = ..., max_image_pixels: _Optional[int] = ..., min_image_side: _Optional[int] = ...) -> None: ...

class MatchThresholds(_message.Message):
    __slots__ = ("unknown_threshold", "text_unknown_threshold", "ambiguity_margin")
    UNKNOWN_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TEXT_UNKNOWN_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    AMBIGUITY_MARGIN_FIELD_NUMBER: _ClassVar[int]
    unknown_threshold: float
    text_unknown_threshold: float
    ambiguity_margin: float
    def __init__(self, unknown_threshold: _Optional[float] = ..., text_unknown_threshold: _Optional[float] = ..., ambiguity_margin: _Optional[float] = ...) -> None: ...

class GetServerInfoResponse(_message.Message):
    __slots__ = ("model", "limits", "thresholds", "catalog_backend", "catalog_version", "server_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_BACKEND_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    limits: ServerLimits
    thresholds: MatchThresholds
    catalog_backend: str
    catalog_version: int
    server_version: str
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ..., limits: _Optional[_Union[ServerLimits, _Mapping]] = ..., thresholds: _Optional[_Union[MatchThresholds, _Mapping]] = ..., catalog_backend: _Optional[str] = ..., catalog_version: _Optional[int] = ..., server_version: _Optional[str] = ...) -> None: ...
