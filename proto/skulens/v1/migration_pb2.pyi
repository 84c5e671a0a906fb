from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StartMigrationRequest(_message.Message):
    __slots__ = ("model_dir", "shadow_share")
    MODEL_DIR_FIELD_NUMBER: _ClassVar[int]
    SHADOW_SHARE_FIELD_NUMBER: _ClassVar[int]
    model_dir: str
    shadow_share: float
    def __init__(self, model_dir: _Optional[str] = ..., shadow_share: _Optional[float] = ...) -> None: ...

class GetMigrationRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SwitchModelRequest(_message.Message):
    __slots__ = ("fingerprint",)
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    def __init__(self, fingerprint: _Optional[str] = ...) -> None: ...

class AbortMigrationRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FinishMigrationRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StartMigrationResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: MigrationStatus
    def __init__(self, status: _Optional[_Union[MigrationStatus, _Mapping]] = ...) -> None: ...

class GetMigrationResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: MigrationStatus
    def __init__(self, status: _Optional[_Union[MigrationStatus, _Mapping]] = ...) -> None: ...

class SwitchModelResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: MigrationStatus
    def __init__(self, status: _Optional[_Union[MigrationStatus, _Mapping]] = ...) -> None: ...

class AbortMigrationResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: MigrationStatus
    def __init__(self, status: _Optional[_Union[MigrationStatus, _Mapping]] = ...) -> None: ...

class FinishMigrationResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: MigrationStatus
    def __init__(self, status: _Optional[_Union[MigrationStatus, _Mapping]] = ...) -> None: ...

class ModelSpace(_message.Message):
    __slots__ = ("fingerprint", "dim", "model_dir", "loaded_here")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIR_FIELD_NUMBER: _ClassVar[int]
    LOADED_HERE_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    dim: int
    model_dir: str
    loaded_here: bool
    def __init__(self, fingerprint: _Optional[str] = ..., dim: _Optional[int] = ..., model_dir: _Optional[str] = ..., loaded_here: _Optional[bool] = ...) -> None: ...

class BackfillProgress(_message.Message):
    __slots__ = ("live_references", "embedded", "pending", "unembeddable", "unembeddable_reference_ids", "running_here", "embedded_here", "images_per_second")
    LIVE_REFERENCES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDED_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    UNEMBEDDABLE_FIELD_NUMBER: _ClassVar[int]
    UNEMBEDDABLE_REFERENCE_IDS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_HERE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDED_HERE_FIELD_NUMBER: _ClassVar[int]
    IMAGES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    live_references: int
    embedded: int
    pending: int
    unembeddable: int
    unembeddable_reference_ids: _containers.RepeatedScalarFieldContainer[int]
    running_here: bool
    embedded_here: int
    images_per_second: float
    def __init__(self, live_references: _Optional[int] = ..., embedded: _Optional[int] = ..., pending: _Optional[int] = ..., unembeddable: _Optional[int] = ..., unembeddable_reference_ids: _Optional[_Iterable[int]] = ..., running_here: _Optional[bool] = ..., embedded_here: _Optional[int] = ..., images_per_second: _Optional[float] = ...) -> None: ...

class ShadowReport(_message.Message):
    __slots__ = ("compared", "top1_agree", "top1_agreement", "mean_score_shift", "score_shift_p05", "score_shift_p50", "score_shift_p95", "suggested_unknown_threshold", "unknown_share", "shadow_errors")
    COMPARED_FIELD_NUMBER: _ClassVar[int]
    TOP1_AGREE_FIELD_NUMBER: _ClassVar[int]
    TOP1_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    MEAN_SCORE_SHIFT_FIELD_NUMBER: _ClassVar[int]
    SCORE_SHIFT_P05_FIELD_NUMBER: _ClassVar[int]
    SCORE_SHIFT_P50_FIELD_NUMBER: _ClassVar[int]
    SCORE_SHIFT_P95_FIELD_NUMBER: _ClassVar[int]
    SUGGESTED_UNKNOWN_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_SHARE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_ERRORS_FIELD_NUMBER: _ClassVar[int]
    compared: int
    top1_agree: int
    top1_agreement: float
    mean_score_shift: float
    score_shift_p05: float
    score_shift_p50: float
    score_shift_p95: float
    suggested_unknown_threshold: float
    unknown_share: float
    shadow_errors: int
    def __init__(self, compared: _Optional[int] = ..., top1_agree: _Optional[int] = ..., top1_agreement: _Optional[float] = ..., mean_score_shift: _Optional[float] = ..., score_shift_p05: _Optional[float] = ..., score_shift_p50: _Optional[float] = ..., score_shift_p95: _Optional[float] = ..., suggested_unknown_threshold: _Optional[float] = ..., unknown_share: _Optional[float] = ..., shadow_errors: _Optional[int] = ...) -> None: ...

class MigrationStatus(_message.Message):
    __slots__ = ("phase", "serving", "candidate", "previous", "shadow_share", "backfill", "shadow", "catalog_version", "started_at", "switched_at")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_SHARE_FIELD_NUMBER: _ClassVar[int]
    BACKFILL_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    SWITCHED_AT_FIELD_NUMBER: _ClassVar[int]
    phase: str
    serving: ModelSpace
    candidate: ModelSpace
    previous: ModelSpace
    shadow_share: float
    backfill: BackfillProgress
    shadow: ShadowReport
    catalog_version: int
    started_at: float
    switched_at: float
    def __init__(self, phase: _Optional[str] = ..., serving: _Optional[_Union[ModelSpace, _Mapping]] = ..., candidate: _Optional[_Union[ModelSpace, _Mapping]] = ..., previous: _Optional[_Union[ModelSpace, _Mapping]] = ..., shadow_share: _Optional[float] = ..., backfill: _Optional[_Union[BackfillProgress, _Mapping]] = ..., shadow: _Optional[_Union[ShadowReport, _Mapping]] = ..., catalog_version: _Optional[int] = ..., started_at: _Optional[float] = ..., switched_at: _Optional[float] = ...) -> None: ...
