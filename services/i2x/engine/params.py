"""Parameters of each stage, as plain dataclasses (they round-trip through JSON and protobuf)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from i2x.core.errors import check_fields


class _Params:
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None):
        return cls(**check_fields(cls, data or {}, cls.__name__))


@dataclass
class InterpretParams(_Params):
    target_layer: str | None = None   # None: the architecture's default layer
    target: str = "predicted"         # "predicted" | "label" | a class index as text ("7")
    batch_size: int = 64              # images per pass; 0: sized to the device's free memory
    device: str = "auto"              # cpu | cuda | cuda:N | auto (i2x.core.device); a Ray unit's cuda is its GPU
    precision: str = "fp32"           # fp32 | bf16 | fp16 (autocast of the forward pass; fp16 needs a GPU)


@dataclass
class PrototypeParams(_Params):
    n_prototypes: int = 32            # M (paper: 32 on MNIST, 128 on CIFAR-10)
    n_components: int = 32            # PCA components before KMeans
    max_fit_vectors: int = 100_000    # PCA is fitted on a seeded sample of this many vectors
    random_state: int = 0


@dataclass
class ClusterParams(_Params):
    min_cluster_size: int = 5         # HDBSCAN over the confidence changes of one step (hdbscan's default)
    min_samples: int | None = None
    cluster_selection_epsilon: float = 0.0


@dataclass
class ExplainParams(_Params):
    tau: float = 0.0                  # Eq. 7: |dI| <= tau is set to 0
    lam: float = 1.0                  # Eq. 8: ridge lambda, relative to mean(diag(dI^T dI)) (docs/METHOD.md)
    pair: list[int] | None = None     # [a, b]; None: the most confused pair on the test split
    curation_scope: str = "all"       # "all" | "pair": which samples curation may remove
    extra: dict = field(default_factory=dict)  # further keyword parameters of i2x.core.explain.build_explanation


@dataclass
class FinetuneParams(_Params):
    protocols: list[str] = field(default_factory=lambda: ["full", "curated", "full->full", "curated->curated", "curated->full"])
    repeats: int = 5
    lr: float | None = None           # None: the core's default fine-tuning learning rate
    batch_size: int | None = None
    seed: int = 0
    device: str | None = None         # None: the run's training device (TrainConfig.device)
