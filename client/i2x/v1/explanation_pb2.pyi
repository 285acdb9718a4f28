from i2x.v1 import common_pb2 as _common_pb2
from i2x.v1 import jobs_pb2 as _jobs_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PrototypeVerdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOTYPE_VERDICT_UNSPECIFIED: _ClassVar[PrototypeVerdict]
    PROTOTYPE_VERDICT_RELIABLE: _ClassVar[PrototypeVerdict]
    PROTOTYPE_VERDICT_UNCERTAIN: _ClassVar[PrototypeVerdict]
    PROTOTYPE_VERDICT_COMPENSATED: _ClassVar[PrototypeVerdict]
    PROTOTYPE_VERDICT_INACTIVE: _ClassVar[PrototypeVerdict]
    PROTOTYPE_VERDICT_ONE_CLASS: _ClassVar[PrototypeVerdict]
    PROTOTYPE_VERDICT_BACKGROUND: _ClassVar[PrototypeVerdict]
PROTOTYPE_VERDICT_UNSPECIFIED: PrototypeVerdict
PROTOTYPE_VERDICT_RELIABLE: PrototypeVerdict
PROTOTYPE_VERDICT_UNCERTAIN: PrototypeVerdict
PROTOTYPE_VERDICT_COMPENSATED: PrototypeVerdict
PROTOTYPE_VERDICT_INACTIVE: PrototypeVerdict
PROTOTYPE_VERDICT_ONE_CLASS: PrototypeVerdict
PROTOTYPE_VERDICT_BACKGROUND: PrototypeVerdict

class StartExplanationRequest(_message.Message):
    __slots__ = ("run_id", "params", "request_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    params: _common_pb2.ExplainParams
    request_id: str
    def __init__(self, run_id: _Optional[str] = ..., params: _Optional[_Union[_common_pb2.ExplainParams, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetExplanationRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class ExplanationSummary(_message.Message):
    __slots__ = ("run_id", "classes", "pair", "uncertain_prototype", "steps", "num_prototypes", "key", "artifact_keys")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    PAIR_FIELD_NUMBER: _ClassVar[int]
    UNCERTAIN_PROTOTYPE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    NUM_PROTOTYPES_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_KEYS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    classes: _containers.RepeatedScalarFieldContainer[str]
    pair: _containers.RepeatedScalarFieldContainer[int]
    uncertain_prototype: int
    steps: _containers.RepeatedScalarFieldContainer[int]
    num_prototypes: int
    key: str
    artifact_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run_id: _Optional[str] = ..., classes: _Optional[_Iterable[str]] = ..., pair: _Optional[_Iterable[int]] = ..., uncertain_prototype: _Optional[int] = ..., steps: _Optional[_Iterable[int]] = ..., num_prototypes: _Optional[int] = ..., key: _Optional[str] = ..., artifact_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class GetClassExplanationRequest(_message.Message):
    __slots__ = ("run_id", "class_index")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    class_index: int
    def __init__(self, run_id: _Optional[str] = ..., class_index: _Optional[int] = ...) -> None: ...

class SpecializedGroup(_message.Message):
    __slots__ = ("group", "prototypes", "fractions", "num_samples")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    PROTOTYPES_FIELD_NUMBER: _ClassVar[int]
    FRACTIONS_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    group: int
    prototypes: _containers.RepeatedScalarFieldContainer[int]
    fractions: _containers.RepeatedScalarFieldContainer[float]
    num_samples: int
    def __init__(self, group: _Optional[int] = ..., prototypes: _Optional[_Iterable[int]] = ..., fractions: _Optional[_Iterable[float]] = ..., num_samples: _Optional[int] = ...) -> None: ...

class Opponent(_message.Message):
    __slots__ = ("class_index", "weight")
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    class_index: int
    weight: float
    def __init__(self, class_index: _Optional[int] = ..., weight: _Optional[float] = ...) -> None: ...

class DrivingPrototype(_message.Message):
    __slots__ = ("prototype", "weight", "separates_from")
    PROTOTYPE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SEPARATES_FROM_FIELD_NUMBER: _ClassVar[int]
    prototype: int
    weight: float
    separates_from: _containers.RepeatedCompositeFieldContainer[Opponent]
    def __init__(self, prototype: _Optional[int] = ..., weight: _Optional[float] = ..., separates_from: _Optional[_Iterable[_Union[Opponent, _Mapping]]] = ...) -> None: ...

class KeyCheckpoint(_message.Message):
    __slots__ = ("step", "next_step", "confidence_change", "prototypes")
    STEP_FIELD_NUMBER: _ClassVar[int]
    NEXT_STEP_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    PROTOTYPES_FIELD_NUMBER: _ClassVar[int]
    step: int
    next_step: int
    confidence_change: float
    prototypes: _containers.RepeatedCompositeFieldContainer[DrivingPrototype]
    def __init__(self, step: _Optional[int] = ..., next_step: _Optional[int] = ..., confidence_change: _Optional[float] = ..., prototypes: _Optional[_Iterable[_Union[DrivingPrototype, _Mapping]]] = ...) -> None: ...

class ClassExplanation(_message.Message):
    __slots__ = ("run_id", "class_index", "class_name", "num_samples", "shared_prototypes", "specialized", "key_checkpoints", "statements", "json")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SHARED_PROTOTYPES_FIELD_NUMBER: _ClassVar[int]
    SPECIALIZED_FIELD_NUMBER: _ClassVar[int]
    KEY_CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    STATEMENTS_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    class_index: int
    class_name: str
    num_samples: int
    shared_prototypes: _containers.RepeatedScalarFieldContainer[int]
    specialized: _containers.RepeatedCompositeFieldContainer[SpecializedGroup]
    key_checkpoints: _containers.RepeatedCompositeFieldContainer[KeyCheckpoint]
    statements: _containers.RepeatedScalarFieldContainer[str]
    json: str
    def __init__(self, run_id: _Optional[str] = ..., class_index: _Optional[int] = ..., class_name: _Optional[str] = ..., num_samples: _Optional[int] = ..., shared_prototypes: _Optional[_Iterable[int]] = ..., specialized: _Optional[_Iterable[_Union[SpecializedGroup, _Mapping]]] = ..., key_checkpoints: _Optional[_Iterable[_Union[KeyCheckpoint, _Mapping]]] = ..., statements: _Optional[_Iterable[str]] = ..., json: _Optional[str] = ...) -> None: ...

class GetPairAnalysisRequest(_message.Message):
    __slots__ = ("run_id", "pair")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PAIR_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    pair: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, run_id: _Optional[str] = ..., pair: _Optional[_Iterable[int]] = ...) -> None: ...

class PrototypeRole(_message.Message):
    __slots__ = ("prototype", "verdict", "favours", "flips", "unsupported_flips", "score", "presence_a", "presence_b", "contribution")
    PROTOTYPE_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    FAVOURS_FIELD_NUMBER: _ClassVar[int]
    FLIPS_FIELD_NUMBER: _ClassVar[int]
    UNSUPPORTED_FLIPS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_A_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_B_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    prototype: int
    verdict: PrototypeVerdict
    favours: int
    flips: int
    unsupported_flips: int
    score: float
    presence_a: float
    presence_b: float
    contribution: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, prototype: _Optional[int] = ..., verdict: _Optional[_Union[PrototypeVerdict, str]] = ..., favours: _Optional[int] = ..., flips: _Optional[int] = ..., unsupported_flips: _Optional[int] = ..., score: _Optional[float] = ..., presence_a: _Optional[float] = ..., presence_b: _Optional[float] = ..., contribution: _Optional[_Iterable[float]] = ...) -> None: ...

class PairAnalysis(_message.Message):
    __slots__ = ("run_id", "class_a", "class_b", "names", "steps", "prototypes", "uncertain_prototypes", "reliable_prototypes", "uncertain_prototype", "a_to_b", "b_to_a", "json")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_A_FIELD_NUMBER: _ClassVar[int]
    CLASS_B_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    PROTOTYPES_FIELD_NUMBER: _ClassVar[int]
    UNCERTAIN_PROTOTYPES_FIELD_NUMBER: _ClassVar[int]
    RELIABLE_PROTOTYPES_FIELD_NUMBER: _ClassVar[int]
    UNCERTAIN_PROTOTYPE_FIELD_NUMBER: _ClassVar[int]
    A_TO_B_FIELD_NUMBER: _ClassVar[int]
    B_TO_A_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    class_a: int
    class_b: int
    names: _containers.RepeatedScalarFieldContainer[str]
    steps: _containers.RepeatedScalarFieldContainer[int]
    prototypes: _containers.RepeatedCompositeFieldContainer[PrototypeRole]
    uncertain_prototypes: _containers.RepeatedScalarFieldContainer[int]
    reliable_prototypes: _containers.RepeatedScalarFieldContainer[int]
    uncertain_prototype: int
    a_to_b: int
    b_to_a: int
    json: str
    def __init__(self, run_id: _Optional[str] = ..., class_a: _Optional[int] = ..., class_b: _Optional[int] = ..., names: _Optional[_Iterable[str]] = ..., steps: _Optional[_Iterable[int]] = ..., prototypes: _Optional[_Iterable[_Union[PrototypeRole, _Mapping]]] = ..., uncertain_prototypes: _Optional[_Iterable[int]] = ..., reliable_prototypes: _Optional[_Iterable[int]] = ..., uncertain_prototype: _Optional[int] = ..., a_to_b: _Optional[int] = ..., b_to_a: _Optional[int] = ..., json: _Optional[str] = ...) -> None: ...

class CurateRequest(_message.Message):
    __slots__ = ("run_id", "prototype", "scope", "pair")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOTYPE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    PAIR_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    prototype: int
    scope: _common_pb2.CurationScope
    pair: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, run_id: _Optional[str] = ..., prototype: _Optional[int] = ..., scope: _Optional[_Union[_common_pb2.CurationScope, str]] = ..., pair: _Optional[_Iterable[int]] = ...) -> None: ...

class CurationResult(_message.Message):
    __slots__ = ("run_id", "prototype", "size_before", "size_after", "removed_per_class", "key", "scope", "pair")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOTYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BEFORE_FIELD_NUMBER: _ClassVar[int]
    SIZE_AFTER_FIELD_NUMBER: _ClassVar[int]
    REMOVED_PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    PAIR_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    prototype: int
    size_before: int
    size_after: int
    removed_per_class: _containers.RepeatedScalarFieldContainer[int]
    key: str
    scope: _common_pb2.CurationScope
    pair: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, run_id: _Optional[str] = ..., prototype: _Optional[int] = ..., size_before: _Optional[int] = ..., size_after: _Optional[int] = ..., removed_per_class: _Optional[_Iterable[int]] = ..., key: _Optional[str] = ..., scope: _Optional[_Union[_common_pb2.CurationScope, str]] = ..., pair: _Optional[_Iterable[int]] = ...) -> None: ...

class StartReportRequest(_message.Message):
    __slots__ = ("run_id", "compare_run_id", "request_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    COMPARE_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    compare_run_id: str
    request_id: str
    def __init__(self, run_id: _Optional[str] = ..., compare_run_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...
