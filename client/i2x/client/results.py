"""Typed results of the SDK: plain dataclasses built from the service messages.

Arrays never travel in messages: a result names its object keys, and `Client.load(key)`
reads them from the store (docs/ARTIFACTS.md lists every array).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from google.protobuf.json_format import MessageToDict

from i2x.v1 import explanation_pb2


def _dict(message) -> dict:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


@dataclass
class Run:
    run_id: str
    model: dict
    dataset: dict
    train: dict | None
    classes: list[str]
    checkpoints: list[dict]  # step, key, epoch, loss, accuracy
    metadata: dict           # run.json as stored
    live: bool = False       # checkpoints still being registered (live analysis)

    @property
    def steps(self) -> list[int]:
        return [int(c["step"]) for c in self.checkpoints]

    @classmethod
    def from_proto(cls, m) -> "Run":
        return cls(run_id=m.run_id, model=MessageToDict(m.model, preserving_proto_field_name=True),
                   dataset=MessageToDict(m.dataset, preserving_proto_field_name=True),
                   train=MessageToDict(m.train, preserving_proto_field_name=True) if m.HasField("train") else None,
                   classes=list(m.classes),
                   checkpoints=[{**_dict(c), "step": int(c.step)} for c in m.checkpoints],
                   metadata=json.loads(m.metadata_json) if m.metadata_json else {}, live=m.live)


@dataclass
class Evaluation:
    run_id: str
    accuracy: float
    confusion: list[list[int]]  # rows = true class, columns = predicted
    key: str
    step: int = 0  # the checkpoint evaluated

    @classmethod
    def from_proto(cls, m) -> "Evaluation":
        k = m.num_classes
        flat = list(m.confusion)
        return cls(m.run_id, m.accuracy, [flat[i * k:(i + 1) * k] for i in range(k)], m.key, m.step)


@dataclass
class ExplanationSummary:
    run_id: str
    classes: list[str]
    pair: tuple[int, int] | None
    uncertain_prototype: int | None
    steps: list[int]
    num_prototypes: int
    key: str
    artifact_keys: list[str]

    @classmethod
    def from_proto(cls, m) -> "ExplanationSummary":
        return cls(m.run_id, list(m.classes), tuple(m.pair) if m.pair else None,
                   m.uncertain_prototype if m.HasField("uncertain_prototype") else None, list(m.steps),
                   m.num_prototypes, m.key, list(m.artifact_keys))


@dataclass
class ClassExplanation:
    run_id: str
    class_index: int
    class_name: str
    num_samples: int
    shared_prototypes: list[int]
    specialized: list[dict]      # group, prototypes, fractions, num_samples
    key_checkpoints: list[dict]  # step, next_step, confidence_change, prototypes[{prototype, weight, separates_from}]
    statements: list[str]
    raw: dict = field(repr=False, default_factory=dict)  # the class's part of explanation.json

    @classmethod
    def from_proto(cls, m) -> "ClassExplanation":
        return cls(m.run_id, m.class_index, m.class_name, m.num_samples, list(m.shared_prototypes),
                   [_dict(g) for g in m.specialized], [_dict(k) for k in m.key_checkpoints], list(m.statements),
                   json.loads(m.json) if m.json else {})


@dataclass
class PrototypeRole:
    prototype: int
    verdict: str  # "reliable" | "uncertain" | "compensated" | "inactive" | "one_class" | "background"
    favours: int | None
    flips: int
    unsupported_flips: int
    score: float
    presence_a: float
    presence_b: float
    contribution: list[float]  # W_t[m, a] - W_t[m, b] per step

    @classmethod
    def from_proto(cls, m) -> "PrototypeRole":
        verdict = explanation_pb2.PrototypeVerdict.Name(m.verdict).removeprefix("PROTOTYPE_VERDICT_").lower()
        return cls(m.prototype, verdict, m.favours if m.favours >= 0 else None, m.flips, m.unsupported_flips,
                   m.score, m.presence_a, m.presence_b, list(m.contribution))


@dataclass
class PairAnalysis:
    run_id: str
    pair: tuple[int, int]
    names: list[str]
    steps: list[int]
    prototypes: list[PrototypeRole]
    uncertain_prototypes: list[int]
    reliable_prototypes: list[int]
    uncertain_prototype: int | None
    a_to_b: int
    b_to_a: int
    raw: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_proto(cls, m) -> "PairAnalysis":
        return cls(m.run_id, (m.class_a, m.class_b), list(m.names), list(m.steps),
                   [PrototypeRole.from_proto(p) for p in m.prototypes], list(m.uncertain_prototypes),
                   list(m.reliable_prototypes), m.uncertain_prototype if m.HasField("uncertain_prototype") else None,
                   m.a_to_b, m.b_to_a, json.loads(m.json) if m.json else {})


@dataclass
class CurationResult:
    run_id: str
    prototype: int
    size_before: int
    size_after: int
    removed_per_class: list[int]
    key: str
    scope: str
    pair: list[int]

    @classmethod
    def from_proto(cls, m) -> "CurationResult":
        from i2x.v1 import common_pb2

        scope = common_pb2.CurationScope.Name(m.scope).removeprefix("CURATION_SCOPE_").lower()
        return cls(m.run_id, m.prototype, m.size_before, m.size_after, list(m.removed_per_class), m.key, scope,
                   list(m.pair))


@dataclass
class FinetuneRow:
    protocol: str
    accuracy: tuple[float, float]  # (mean, std) over the repeats
    a_to_b: tuple[float, float]
    b_to_a: tuple[float, float]
    sum: tuple[float, float]
    repeats: int
    # metric -> (low, high), the 95% interval of the mean; absent with fewer than 2 repeats
    ci95: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class WelchTest:
    """Welch's t test of `compared[0]` against `compared[1]` (curated->full vs full->full)."""
    metric: str              # "sum" (the pair's confusions) or "accuracy"
    compared: tuple[str, str]
    t: float | None          # None: could not be computed (too few repeats, no variation)
    p: float | None
    significant: bool        # p < 0.05
    text: str                # the sentence the CLI prints


@dataclass
class FinetuneTable:
    run_id: str
    pair: tuple[int, int]
    rows: list[FinetuneRow]
    key: str
    markdown_key: str
    tests: list[WelchTest] = field(default_factory=list)
    removed_fraction_per_class: list[float] = field(default_factory=list)

    @classmethod
    def from_proto(cls, m) -> "FinetuneTable":
        def ms(v):
            return (v.mean, v.std)

        def intervals(r):
            cells = {"accuracy": r.accuracy, "a_to_b": r.a_to_b, "b_to_a": r.b_to_a, "sum": r.sum}
            return {k: (v.ci95_low, v.ci95_high) for k, v in cells.items() if v.HasField("ci95_low")}
        rows = [FinetuneRow(r.protocol, ms(r.accuracy), ms(r.a_to_b), ms(r.b_to_a), ms(r.sum), r.repeats, intervals(r))
                for r in m.rows]
        tests = [WelchTest(w.metric, tuple(w.compared), w.t if w.HasField("t") else None,
                           w.p if w.HasField("p") else None, w.significant, w.text) for w in m.tests]
        return cls(m.run_id, (m.class_a, m.class_b), rows, m.key, m.markdown_key, tests,
                   list(m.removed_fraction_per_class))


@dataclass
class PipelineResult:
    run: Run
    evaluation: Evaluation
    explanation: ExplanationSummary
    pair_analysis: PairAnalysis
    curation: CurationResult | None = None
    finetune: FinetuneTable | None = None
    jobs: dict[str, str] = field(default_factory=dict)  # stage -> job id
    notes: list[str] = field(default_factory=list)       # stages skipped and why
    report_key: str | None = None                       # runs/<run_id>/report.html when report=True
