from google.protobuf import any_pb2 as _any_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_KNOWN: _ClassVar[Verdict]
    VERDICT_UNKNOWN: _ClassVar[Verdict]
    VERDICT_AMBIGUOUS: _ClassVar[Verdict]
VERDICT_UNSPECIFIED: Verdict
VERDICT_KNOWN: Verdict
VERDICT_UNKNOWN: Verdict
VERDICT_AMBIGUOUS: Verdict

class ItemStatus(_message.Message):
    __slots__ = ("code", "message", "field", "details")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    field: str
    details: _containers.RepeatedCompositeFieldContainer[_any_pb2.Any]
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., field: _Optional[str] = ..., details: _Optional[_Iterable[_Union[_any_pb2.Any, _Mapping]]] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x", "y", "width", "height")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    width: int
    height: int
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class Match(_message.Message):
    __slots__ = ("product_id", "display_name", "score", "reference_id")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ID_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    display_name: str
    score: float
    reference_id: int
    def __init__(self, product_id: _Optional[str] = ..., display_name: _Optional[str] = ..., score: _Optional[float] = ..., reference_id: _Optional[int] = ...) -> None: ...

class SearchOptions(_message.Message):
    __slots__ = ("top_k", "min_score", "category", "labels", "min_catalog_version", "unknown_threshold", "ambiguity_margin")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MIN_CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    AMBIGUITY_MARGIN_FIELD_NUMBER: _ClassVar[int]
    top_k: int
    min_score: float
    category: str
    labels: _containers.ScalarMap[str, str]
    min_catalog_version: int
    unknown_threshold: float
    ambiguity_margin: float
    def __init__(self, top_k: _Optional[int] = ..., min_score: _Optional[float] = ..., category: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., min_catalog_version: _Optional[int] = ..., unknown_threshold: _Optional[float] = ..., ambiguity_margin: _Optional[float] = ...) -> None: ...

class Product(_message.Message):
    __slots__ = ("product_id", "display_name", "category", "labels", "reference_count", "etag", "description")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_COUNT_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    display_name: str
    category: str
    labels: _containers.ScalarMap[str, str]
    reference_count: int
    etag: str
    description: str
    def __init__(self, product_id: _Optional[str] = ..., display_name: _Optional[str] = ..., category: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., reference_count: _Optional[int] = ..., etag: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("embed_ms", "search_ms", "total_ms")
    EMBED_MS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    embed_ms: float
    search_ms: float
    total_ms: float
    def __init__(self, embed_ms: _Optional[float] = ..., search_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class CatalogCache(_message.Message):
    __slots__ = ("kind", "primary_reachable", "cached_version", "primary_version", "seconds_since_sync", "last_error")
    KIND_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_REACHABLE_FIELD_NUMBER: _ClassVar[int]
    CACHED_VERSION_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    SECONDS_SINCE_SYNC_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    kind: str
    primary_reachable: bool
    cached_version: int
    primary_version: int
    seconds_since_sync: float
    last_error: str
    def __init__(self, kind: _Optional[str] = ..., primary_reachable: _Optional[bool] = ..., cached_version: _Optional[int] = ..., primary_version: _Optional[int] = ..., seconds_since_sync: _Optional[float] = ..., last_error: _Optional[str] = ...) -> None: ...
