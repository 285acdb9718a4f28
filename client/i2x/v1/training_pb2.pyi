from i2x.v1 import common_pb2 as _common_pb2
from i2x.v1 import jobs_pb2 as _jobs_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateRunRequest(_message.Message):
    __slots__ = ("run_id", "model", "dataset", "train", "explanation_fraction", "explanation_seed", "overwrite")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FRACTION_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_SEED_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    model: _common_pb2.ModelSpec
    dataset: _common_pb2.DatasetSpec
    train: _common_pb2.TrainConfig
    explanation_fraction: float
    explanation_seed: int
    overwrite: bool
    def __init__(self, run_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelSpec, _Mapping]] = ..., dataset: _Optional[_Union[_common_pb2.DatasetSpec, _Mapping]] = ..., train: _Optional[_Union[_common_pb2.TrainConfig, _Mapping]] = ..., explanation_fraction: _Optional[float] = ..., explanation_seed: _Optional[int] = ..., overwrite: bool = ...) -> None: ...

class StartTrainingRequest(_message.Message):
    __slots__ = ("run_id", "request_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    request_id: str
    def __init__(self, run_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class CheckpointRef(_message.Message):
    __slots__ = ("step", "key")
    STEP_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    step: int
    key: str
    def __init__(self, step: _Optional[int] = ..., key: _Optional[str] = ...) -> None: ...

class RegisterCheckpointsRequest(_message.Message):
    __slots__ = ("run_id", "checkpoints", "request_id", "overwrite", "live", "finish")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    checkpoints: _containers.RepeatedCompositeFieldContainer[CheckpointRef]
    request_id: str
    overwrite: bool
    live: bool
    finish: bool
    def __init__(self, run_id: _Optional[str] = ..., checkpoints: _Optional[_Iterable[_Union[CheckpointRef, _Mapping]]] = ..., request_id: _Optional[str] = ..., overwrite: bool = ..., live: bool = ..., finish: bool = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("run_ids", "next_page_token")
    RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    run_ids: _containers.RepeatedScalarFieldContainer[str]
    next_page_token: str
    def __init__(self, run_ids: _Optional[_Iterable[str]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class StartFinetuneRequest(_message.Message):
    __slots__ = ("run_id", "params", "request_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    params: _common_pb2.FinetuneParams
    request_id: str
    def __init__(self, run_id: _Optional[str] = ..., params: _Optional[_Union[_common_pb2.FinetuneParams, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetFinetuneTableRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class MeanStd(_message.Message):
    __slots__ = ("mean", "std", "ci95_low", "ci95_high")
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    CI95_LOW_FIELD_NUMBER: _ClassVar[int]
    CI95_HIGH_FIELD_NUMBER: _ClassVar[int]
    mean: float
    std: float
    ci95_low: float
    ci95_high: float
    def __init__(self, mean: _Optional[float] = ..., std: _Optional[float] = ..., ci95_low: _Optional[float] = ..., ci95_high: _Optional[float] = ...) -> None: ...

class WelchTest(_message.Message):
    __slots__ = ("metric", "compared", "t", "p", "df", "significant", "text")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    COMPARED_FIELD_NUMBER: _ClassVar[int]
    T_FIELD_NUMBER: _ClassVar[int]
    P_FIELD_NUMBER: _ClassVar[int]
    DF_FIELD_NUMBER: _ClassVar[int]
    SIGNIFICANT_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    metric: str
    compared: _containers.RepeatedScalarFieldContainer[str]
    t: float
    p: float
    df: float
    significant: bool
    text: str
    def __init__(self, metric: _Optional[str] = ..., compared: _Optional[_Iterable[str]] = ..., t: _Optional[float] = ..., p: _Optional[float] = ..., df: _Optional[float] = ..., significant: bool = ..., text: _Optional[str] = ...) -> None: ...

class FinetuneRow(_message.Message):
    __slots__ = ("protocol", "accuracy", "a_to_b", "b_to_a", "sum", "repeats")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    A_TO_B_FIELD_NUMBER: _ClassVar[int]
    B_TO_A_FIELD_NUMBER: _ClassVar[int]
    SUM_FIELD_NUMBER: _ClassVar[int]
    REPEATS_FIELD_NUMBER: _ClassVar[int]
    protocol: str
    accuracy: MeanStd
    a_to_b: MeanStd
    b_to_a: MeanStd
    sum: MeanStd
    repeats: int
    def __init__(self, protocol: _Optional[str] = ..., accuracy: _Optional[_Union[MeanStd, _Mapping]] = ..., a_to_b: _Optional[_Union[MeanStd, _Mapping]] = ..., b_to_a: _Optional[_Union[MeanStd, _Mapping]] = ..., sum: _Optional[_Union[MeanStd, _Mapping]] = ..., repeats: _Optional[int] = ...) -> None: ...

class FinetuneTable(_message.Message):
    __slots__ = ("run_id", "class_a", "class_b", "rows", "key", "markdown_key", "tests", "removed_fraction_per_class")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_A_FIELD_NUMBER: _ClassVar[int]
    CLASS_B_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    MARKDOWN_KEY_FIELD_NUMBER: _ClassVar[int]
    TESTS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FRACTION_PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    class_a: int
    class_b: int
    rows: _containers.RepeatedCompositeFieldContainer[FinetuneRow]
    key: str
    markdown_key: str
    tests: _containers.RepeatedCompositeFieldContainer[WelchTest]
    removed_fraction_per_class: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, run_id: _Optional[str] = ..., class_a: _Optional[int] = ..., class_b: _Optional[int] = ..., rows: _Optional[_Iterable[_Union[FinetuneRow, _Mapping]]] = ..., key: _Optional[str] = ..., markdown_key: _Optional[str] = ..., tests: _Optional[_Iterable[_Union[WelchTest, _Mapping]]] = ..., removed_fraction_per_class: _Optional[_Iterable[float]] = ...) -> None: ...

class GetEvaluationRequest(_message.Message):
    __slots__ = ("run_id", "step")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    step: int
    def __init__(self, run_id: _Optional[str] = ..., step: _Optional[int] = ...) -> None: ...

class Evaluation(_message.Message):
    __slots__ = ("run_id", "accuracy", "num_classes", "confusion", "key", "step")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    accuracy: float
    num_classes: int
    confusion: _containers.RepeatedScalarFieldContainer[int]
    key: str
    step: int
    def __init__(self, run_id: _Optional[str] = ..., accuracy: _Optional[float] = ..., num_classes: _Optional[int] = ..., confusion: _Optional[_Iterable[int]] = ..., key: _Optional[str] = ..., step: _Optional[int] = ...) -> None: ...
