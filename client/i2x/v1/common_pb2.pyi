from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TargetMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TARGET_MODE_UNSPECIFIED: _ClassVar[TargetMode]
    TARGET_MODE_PREDICTED: _ClassVar[TargetMode]
    TARGET_MODE_LABEL: _ClassVar[TargetMode]
    TARGET_MODE_CLASS: _ClassVar[TargetMode]

class CurationScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CURATION_SCOPE_UNSPECIFIED: _ClassVar[CurationScope]
    CURATION_SCOPE_ALL: _ClassVar[CurationScope]
    CURATION_SCOPE_PAIR: _ClassVar[CurationScope]

class FinetuneProtocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINETUNE_PROTOCOL_UNSPECIFIED: _ClassVar[FinetuneProtocol]
    FINETUNE_PROTOCOL_FULL: _ClassVar[FinetuneProtocol]
    FINETUNE_PROTOCOL_CURATED: _ClassVar[FinetuneProtocol]
    FINETUNE_PROTOCOL_FULL_FULL: _ClassVar[FinetuneProtocol]
    FINETUNE_PROTOCOL_CURATED_CURATED: _ClassVar[FinetuneProtocol]
    FINETUNE_PROTOCOL_CURATED_FULL: _ClassVar[FinetuneProtocol]
TARGET_MODE_UNSPECIFIED: TargetMode
TARGET_MODE_PREDICTED: TargetMode
TARGET_MODE_LABEL: TargetMode
TARGET_MODE_CLASS: TargetMode
CURATION_SCOPE_UNSPECIFIED: CurationScope
CURATION_SCOPE_ALL: CurationScope
CURATION_SCOPE_PAIR: CurationScope
FINETUNE_PROTOCOL_UNSPECIFIED: FinetuneProtocol
FINETUNE_PROTOCOL_FULL: FinetuneProtocol
FINETUNE_PROTOCOL_CURATED: FinetuneProtocol
FINETUNE_PROTOCOL_FULL_FULL: FinetuneProtocol
FINETUNE_PROTOCOL_CURATED_CURATED: FinetuneProtocol
FINETUNE_PROTOCOL_CURATED_FULL: FinetuneProtocol

class ModelSpec(_message.Message):
    __slots__ = ("arch", "in_channels", "num_classes", "input_size", "factory", "target_layer")
    ARCH_FIELD_NUMBER: _ClassVar[int]
    IN_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    FACTORY_FIELD_NUMBER: _ClassVar[int]
    TARGET_LAYER_FIELD_NUMBER: _ClassVar[int]
    arch: str
    in_channels: int
    num_classes: int
    input_size: int
    factory: str
    target_layer: str
    def __init__(self, arch: _Optional[str] = ..., in_channels: _Optional[int] = ..., num_classes: _Optional[int] = ..., input_size: _Optional[int] = ..., factory: _Optional[str] = ..., target_layer: _Optional[str] = ...) -> None: ...

class DatasetSpec(_message.Message):
    __slots__ = ("kind", "root", "image_size", "test_fraction", "split_seed")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    TEST_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SPLIT_SEED_FIELD_NUMBER: _ClassVar[int]
    kind: str
    root: str
    image_size: int
    test_fraction: float
    split_seed: int
    def __init__(self, kind: _Optional[str] = ..., root: _Optional[str] = ..., image_size: _Optional[int] = ..., test_fraction: _Optional[float] = ..., split_seed: _Optional[int] = ...) -> None: ...

class TrainConfig(_message.Message):
    __slots__ = ("preset", "epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay", "schedule", "checkpoint_every", "seed", "device", "include_initial")
    PRESET_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_INITIAL_FIELD_NUMBER: _ClassVar[int]
    preset: str
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    momentum: float
    weight_decay: float
    schedule: str
    checkpoint_every: int
    seed: int
    device: str
    include_initial: bool
    def __init__(self, preset: _Optional[str] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., lr: _Optional[float] = ..., optimizer: _Optional[str] = ..., momentum: _Optional[float] = ..., weight_decay: _Optional[float] = ..., schedule: _Optional[str] = ..., checkpoint_every: _Optional[int] = ..., seed: _Optional[int] = ..., device: _Optional[str] = ..., include_initial: bool = ...) -> None: ...

class InterpretParams(_message.Message):
    __slots__ = ("target_layer", "target_mode", "target_class", "batch_size", "device", "precision")
    TARGET_LAYER_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODE_FIELD_NUMBER: _ClassVar[int]
    TARGET_CLASS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    target_layer: str
    target_mode: TargetMode
    target_class: int
    batch_size: int
    device: str
    precision: str
    def __init__(self, target_layer: _Optional[str] = ..., target_mode: _Optional[_Union[TargetMode, str]] = ..., target_class: _Optional[int] = ..., batch_size: _Optional[int] = ..., device: _Optional[str] = ..., precision: _Optional[str] = ...) -> None: ...

class PrototypeParams(_message.Message):
    __slots__ = ("n_prototypes", "n_components", "max_fit_vectors", "random_state")
    N_PROTOTYPES_FIELD_NUMBER: _ClassVar[int]
    N_COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_FIT_VECTORS_FIELD_NUMBER: _ClassVar[int]
    RANDOM_STATE_FIELD_NUMBER: _ClassVar[int]
    n_prototypes: int
    n_components: int
    max_fit_vectors: int
    random_state: int
    def __init__(self, n_prototypes: _Optional[int] = ..., n_components: _Optional[int] = ..., max_fit_vectors: _Optional[int] = ..., random_state: _Optional[int] = ...) -> None: ...

class ClusterParams(_message.Message):
    __slots__ = ("min_cluster_size", "min_samples", "cluster_selection_epsilon")
    MIN_CLUSTER_SIZE_FIELD_NUMBER: _ClassVar[int]
    MIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_SELECTION_EPSILON_FIELD_NUMBER: _ClassVar[int]
    min_cluster_size: int
    min_samples: int
    cluster_selection_epsilon: float
    def __init__(self, min_cluster_size: _Optional[int] = ..., min_samples: _Optional[int] = ..., cluster_selection_epsilon: _Optional[float] = ...) -> None: ...

class ExplainParams(_message.Message):
    __slots__ = ("tau", "lam", "pair", "curation_scope", "extra_json")
    TAU_FIELD_NUMBER: _ClassVar[int]
    LAM_FIELD_NUMBER: _ClassVar[int]
    PAIR_FIELD_NUMBER: _ClassVar[int]
    CURATION_SCOPE_FIELD_NUMBER: _ClassVar[int]
    EXTRA_JSON_FIELD_NUMBER: _ClassVar[int]
    tau: float
    lam: float
    pair: _containers.RepeatedScalarFieldContainer[int]
    curation_scope: CurationScope
    extra_json: str
    def __init__(self, tau: _Optional[float] = ..., lam: _Optional[float] = ..., pair: _Optional[_Iterable[int]] = ..., curation_scope: _Optional[_Union[CurationScope, str]] = ..., extra_json: _Optional[str] = ...) -> None: ...

class FinetuneParams(_message.Message):
    __slots__ = ("protocols", "repeats", "lr", "batch_size", "seed", "device")
    PROTOCOLS_FIELD_NUMBER: _ClassVar[int]
    REPEATS_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    protocols: _containers.RepeatedScalarFieldContainer[FinetuneProtocol]
    repeats: int
    lr: float
    batch_size: int
    seed: int
    device: str
    def __init__(self, protocols: _Optional[_Iterable[_Union[FinetuneProtocol, str]]] = ..., repeats: _Optional[int] = ..., lr: _Optional[float] = ..., batch_size: _Optional[int] = ..., seed: _Optional[int] = ..., device: _Optional[str] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("step", "key", "epoch", "loss", "accuracy")
    STEP_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    step: int
    key: str
    epoch: float
    loss: float
    accuracy: float
    def __init__(self, step: _Optional[int] = ..., key: _Optional[str] = ..., epoch: _Optional[float] = ..., loss: _Optional[float] = ..., accuracy: _Optional[float] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("run_id", "model", "dataset", "train", "classes", "checkpoints", "metadata_json", "live")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    model: ModelSpec
    dataset: DatasetSpec
    train: TrainConfig
    classes: _containers.RepeatedScalarFieldContainer[str]
    checkpoints: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    metadata_json: str
    live: bool
    def __init__(self, run_id: _Optional[str] = ..., model: _Optional[_Union[ModelSpec, _Mapping]] = ..., dataset: _Optional[_Union[DatasetSpec, _Mapping]] = ..., train: _Optional[_Union[TrainConfig, _Mapping]] = ..., classes: _Optional[_Iterable[str]] = ..., checkpoints: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ..., metadata_json: _Optional[str] = ..., live: bool = ...) -> None: ...
