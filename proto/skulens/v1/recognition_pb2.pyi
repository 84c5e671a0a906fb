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
    __slots__ = ("result", "catalog_version")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    result: ImageResult
    catalog_version: int
    def __init__(self, result: _Optional[_Union[ImageResult, _Mapping]] = ..., catalog_version: _Optional[int] = ...) -> None: ...

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
