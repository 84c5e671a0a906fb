from google.protobuf import field_mask_pb2 as _field_mask_pb2
from skulens.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnrolmentWarningKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENROLMENT_WARNING_KIND_UNSPECIFIED: _ClassVar[EnrolmentWarningKind]
    ENROLMENT_WARNING_KIND_CLOSER_TO_OTHER_PRODUCT: _ClassVar[EnrolmentWarningKind]
    ENROLMENT_WARNING_KIND_NEAR_DUPLICATE_OF_OTHER_PRODUCT: _ClassVar[EnrolmentWarningKind]
    ENROLMENT_WARNING_KIND_UNUSABLE_IMAGE: _ClassVar[EnrolmentWarningKind]
ENROLMENT_WARNING_KIND_UNSPECIFIED: EnrolmentWarningKind
ENROLMENT_WARNING_KIND_CLOSER_TO_OTHER_PRODUCT: EnrolmentWarningKind
ENROLMENT_WARNING_KIND_NEAR_DUPLICATE_OF_OTHER_PRODUCT: EnrolmentWarningKind
ENROLMENT_WARNING_KIND_UNUSABLE_IMAGE: EnrolmentWarningKind

class UpsertProductRequest(_message.Message):
    __slots__ = ("product_id", "display_name", "category", "labels", "create_only", "update_mask", "etag", "description")
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
    CREATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    display_name: str
    category: str
    labels: _containers.ScalarMap[str, str]
    create_only: bool
    update_mask: _field_mask_pb2.FieldMask
    etag: str
    description: str
    def __init__(self, product_id: _Optional[str] = ..., display_name: _Optional[str] = ..., category: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., create_only: _Optional[bool] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., etag: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class UpsertProductResponse(_message.Message):
    __slots__ = ("product", "created", "catalog_version")
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    product: _common_pb2.Product
    created: bool
    catalog_version: int
    def __init__(self, product: _Optional[_Union[_common_pb2.Product, _Mapping]] = ..., created: _Optional[bool] = ..., catalog_version: _Optional[int] = ...) -> None: ...

class AddReferenceImagesRequest(_message.Message):
    __slots__ = ("product_id", "content", "source", "region", "request_id")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    content: bytes
    source: str
    region: _common_pb2.Box
    request_id: str
    def __init__(self, product_id: _Optional[str] = ..., content: _Optional[bytes] = ..., source: _Optional[str] = ..., region: _Optional[_Union[_common_pb2.Box, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class AddedReference(_message.Message):
    __slots__ = ("index", "product_id", "status", "reference_id", "duplicate", "content_sha256", "warnings")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    index: int
    product_id: str
    status: _common_pb2.ItemStatus
    reference_id: int
    duplicate: bool
    content_sha256: str
    warnings: _containers.RepeatedCompositeFieldContainer[EnrolmentWarning]
    def __init__(self, index: _Optional[int] = ..., product_id: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.ItemStatus, _Mapping]] = ..., reference_id: _Optional[int] = ..., duplicate: _Optional[bool] = ..., content_sha256: _Optional[str] = ..., warnings: _Optional[_Iterable[_Union[EnrolmentWarning, _Mapping]]] = ...) -> None: ...

class EnrolmentWarning(_message.Message):
    __slots__ = ("kind", "other_product_id", "other_reference_id", "other_score", "own_score", "message")
    KIND_FIELD_NUMBER: _ClassVar[int]
    OTHER_PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    OTHER_REFERENCE_ID_FIELD_NUMBER: _ClassVar[int]
    OTHER_SCORE_FIELD_NUMBER: _ClassVar[int]
    OWN_SCORE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    kind: EnrolmentWarningKind
    other_product_id: str
    other_reference_id: int
    other_score: float
    own_score: float
    message: str
    def __init__(self, kind: _Optional[_Union[EnrolmentWarningKind, str]] = ..., other_product_id: _Optional[str] = ..., other_reference_id: _Optional[int] = ..., other_score: _Optional[float] = ..., own_score: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class EnrollReferenceImagesRequest(_message.Message):
    __slots__ = ("product_id", "content", "source", "region", "request_id")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    content: bytes
    source: str
    region: _common_pb2.Box
    request_id: str
    def __init__(self, product_id: _Optional[str] = ..., content: _Optional[bytes] = ..., source: _Optional[str] = ..., region: _Optional[_Union[_common_pb2.Box, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class EnrollReferenceImagesResponse(_message.Message):
    __slots__ = ("results", "catalog_version")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[AddedReference]
    catalog_version: int
    def __init__(self, results: _Optional[_Iterable[_Union[AddedReference, _Mapping]]] = ..., catalog_version: _Optional[int] = ...) -> None: ...

class AddReferenceImagesResponse(_message.Message):
    __slots__ = ("results", "added", "duplicates", "failed", "catalog_version")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[AddedReference]
    added: int
    duplicates: int
    failed: int
    catalog_version: int
    def __init__(self, results: _Optional[_Iterable[_Union[AddedReference, _Mapping]]] = ..., added: _Optional[int] = ..., duplicates: _Optional[int] = ..., failed: _Optional[int] = ..., catalog_version: _Optional[int] = ...) -> None: ...

class DeleteProductRequest(_message.Message):
    __slots__ = ("product_id", "allow_missing", "etag")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    allow_missing: bool
    etag: str
    def __init__(self, product_id: _Optional[str] = ..., allow_missing: _Optional[bool] = ..., etag: _Optional[str] = ...) -> None: ...

class DeleteProductResponse(_message.Message):
    __slots__ = ("deleted_references", "catalog_version")
    DELETED_REFERENCES_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    deleted_references: int
    catalog_version: int
    def __init__(self, deleted_references: _Optional[int] = ..., catalog_version: _Optional[int] = ...) -> None: ...

class DeleteReferenceImageRequest(_message.Message):
    __slots__ = ("reference_id", "allow_missing")
    REFERENCE_ID_FIELD_NUMBER: _ClassVar[int]
    ALLOW_MISSING_FIELD_NUMBER: _ClassVar[int]
    reference_id: int
    allow_missing: bool
    def __init__(self, reference_id: _Optional[int] = ..., allow_missing: _Optional[bool] = ...) -> None: ...

class DeleteReferenceImageResponse(_message.Message):
    __slots__ = ("catalog_version",)
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    catalog_version: int
    def __init__(self, catalog_version: _Optional[int] = ...) -> None: ...

class GetProductRequest(_message.Message):
    __slots__ = ("product_id", "min_catalog_version")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    min_catalog_version: int
    def __init__(self, product_id: _Optional[str] = ..., min_catalog_version: _Optional[int] = ...) -> None: ...

class ReferenceImage(_message.Message):
    __slots__ = ("reference_id", "source", "content_sha256", "has_image", "region")
    REFERENCE_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    HAS_IMAGE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    reference_id: int
    source: str
    content_sha256: str
    has_image: bool
    region: _common_pb2.Box
    def __init__(self, reference_id: _Optional[int] = ..., source: _Optional[str] = ..., content_sha256: _Optional[str] = ..., has_image: _Optional[bool] = ..., region: _Optional[_Union[_common_pb2.Box, _Mapping]] = ...) -> None: ...

class GetProductResponse(_message.Message):
    __slots__ = ("product", "references", "catalog_version")
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    product: _common_pb2.Product
    references: _containers.RepeatedCompositeFieldContainer[ReferenceImage]
    catalog_version: int
    def __init__(self, product: _Optional[_Union[_common_pb2.Product, _Mapping]] = ..., references: _Optional[_Iterable[_Union[ReferenceImage, _Mapping]]] = ..., catalog_version: _Optional[int] = ...) -> None: ...

class ListProductsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "category", "min_catalog_version")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    MIN_CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    category: str
    min_catalog_version: int
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., category: _Optional[str] = ..., min_catalog_version: _Optional[int] = ...) -> None: ...

class ListProductsResponse(_message.Message):
    __slots__ = ("products", "next_page_token", "catalog_version")
    PRODUCTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    products: _containers.RepeatedCompositeFieldContainer[_common_pb2.Product]
    next_page_token: str
    catalog_version: int
    def __init__(self, products: _Optional[_Iterable[_Union[_common_pb2.Product, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., catalog_version: _Optional[int] = ...) -> None: ...

class GetCatalogStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCatalogStatsResponse(_message.Message):
    __slots__ = ("product_count", "reference_count", "references_with_image", "dim", "model_fingerprint", "index_type", "index_device", "db_size_bytes", "rebuild_in_progress", "index_recall_at_10", "index_search_width", "catalog_version", "backend", "migration_phase", "migration_model_fingerprint", "migration_embedded", "matching", "head_fitted_version", "head_products", "augmentation_pending", "augmented_references", "cache")
    PRODUCT_COUNT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_COUNT_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_WITH_IMAGE_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    INDEX_TYPE_FIELD_NUMBER: _ClassVar[int]
    INDEX_DEVICE_FIELD_NUMBER: _ClassVar[int]
    DB_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    REBUILD_IN_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    INDEX_RECALL_AT_10_FIELD_NUMBER: _ClassVar[int]
    INDEX_SEARCH_WIDTH_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_PHASE_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_EMBEDDED_FIELD_NUMBER: _ClassVar[int]
    MATCHING_FIELD_NUMBER: _ClassVar[int]
    HEAD_FITTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEAD_PRODUCTS_FIELD_NUMBER: _ClassVar[int]
    AUGMENTATION_PENDING_FIELD_NUMBER: _ClassVar[int]
    AUGMENTED_REFERENCES_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    product_count: int
    reference_count: int
    references_with_image: int
    dim: int
    model_fingerprint: str
    index_type: str
    index_device: str
    db_size_bytes: int
    rebuild_in_progress: bool
    index_recall_at_10: float
    index_search_width: int
    catalog_version: int
    backend: str
    migration_phase: str
    migration_model_fingerprint: str
    migration_embedded: int
    matching: str
    head_fitted_version: int
    head_products: int
    augmentation_pending: int
    augmented_references: int
    cache: _common_pb2.CatalogCache
    def __init__(self, product_count: _Optional[int] = ..., reference_count: _Optional[int] = ..., references_with_image: _Optional[int] = ..., dim: _Optional[int] = ..., model_fingerprint: _Optional[str] = ..., index_type: _Optional[str] = ..., index_device: _Optional[str] = ..., db_size_bytes: _Optional[int] = ..., rebuild_in_progress: _Optional[bool] = ..., index_recall_at_10: _Optional[float] = ..., index_search_width: _Optional[int] = ..., catalog_version: _Optional[int] = ..., backend: _Optional[str] = ..., migration_phase: _Optional[str] = ..., migration_model_fingerprint: _Optional[str] = ..., migration_embedded: _Optional[int] = ..., matching: _Optional[str] = ..., head_fitted_version: _Optional[int] = ..., head_products: _Optional[int] = ..., augmentation_pending: _Optional[int] = ..., augmented_references: _Optional[int] = ..., cache: _Optional[_Union[_common_pb2.CatalogCache, _Mapping]] = ...) -> None: ...
