"""Read one run from a Store into what the figures and the HTML need (docs/ARTIFACTS.md layout).

The structured explanation's schema is docs/EXPLANATION.md; `ExplanationView` turns it into plain
Python so the rest of the report does not depend on its key names. Optional parts of a run (no
fine-tuning table, no explanation yet) come back as None and the report says what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from i2x.core.errors import FailedPrecondition, InvalidArgument, NotFound
from i2x.storage import Store, run_key, validate_id


def _ints(values) -> list[int]:
    return [int(v) for v in (values or [])]


@dataclass
class KeyCheckpoint:
    """At `step` (the change from checkpoint `step` to `next_step`) prototypes drove the class's confidence."""

    step: int
    next_step: int | None
    confidence_change: float
    # (prototype, W_t[m, c], classes c' whose W_t[m, c'] has the opposite sign: "m separates c from c'")
    drivers: list[tuple[int, float, list[int]]]


@dataclass
class ClassExplanation:
    index: int
    name: str
    n_samples: int
    shared: list[int]
    specialized: list[dict]  # {"prototypes": [...], "size": n} per group of the class's samples
    key_checkpoints: list[KeyCheckpoint]

    @property
    def opponents(self) -> list[int]:
        seen: list[int] = []
        for key in self.key_checkpoints:
            for _, _, opponents in key.drivers:
                seen.extend(o for o in opponents if o not in seen)
        return seen

    @property
    def specialized_all(self) -> list[int]:
        return sorted({m for group in self.specialized for m in group["prototypes"]})


@dataclass
class PairExplanation:
    a: int
    b: int
    count: int | None
    a_to_b: int | None
    b_to_a: int | None
    reliable: list[int]
    favours: dict[int, int]    # reliable prototype -> the class it favours
    uncertain: list[int]       # unsupported flips, most uncertain first
    compensated: list[int]     # flips, each carried by another prototype
    uncertain_prototype: int | None
    uncertain_source: str | None
    steps: list[int]
    rows: list[dict]           # pair_analysis "prototypes" rows (category, presence, flips, contribution)


@dataclass
class ExplanationView:
    """explanation.json (docs/EXPLANATION.md, written by i2x.core.explain.build_explanation) as objects."""

    classes: dict[int, ClassExplanation]
    pair: PairExplanation | None
    uncertain_prototype: int | None
    curation: dict | None
    raw: dict

    @classmethod
    def parse(cls, doc: dict) -> "ExplanationView":
        if not isinstance(doc, dict) or "per_class" not in doc:
            raise InvalidArgument("explanation.json must be an object with 'per_class' (docs/EXPLANATION.md); "
                                  "re-run the explanation stage", field="explanation")
        classes: dict[int, ClassExplanation] = {}
        for entry in doc["per_class"]:
            keys = [KeyCheckpoint(int(key["step"]), key.get("next_step"), float(key.get("confidence_change", 0.0)),
                                  [(int(d["prototype"]), float(d.get("weight", 0.0)),
                                    [int(o["class"]) for o in d.get("separates_from", [])])
                                   for d in key.get("prototypes", [])])
                    for key in entry.get("key_checkpoints", [])]
            index = int(entry["class"])
            classes[index] = ClassExplanation(
                index, str(entry.get("name", index)), int(entry.get("n_samples", 0)), _ints(entry.get("shared")),
                [{"prototypes": _ints(g.get("prototypes")), "size": int(g.get("size", len(g.get("members", []))))}
                 for g in entry.get("specialized", [])],
                sorted(keys, key=lambda k: k.step))
        pair = None
        analysis = doc.get("pair_analysis")
        if analysis:
            confused = doc.get("most_confused_pair") or {}
            pair = PairExplanation(
                a=int(analysis["a"]), b=int(analysis["b"]), count=confused.get("count"),
                a_to_b=confused.get("a_to_b"), b_to_a=confused.get("b_to_a"),
                reliable=[int(r["prototype"]) for r in analysis.get("reliable", [])],
                favours={int(r["prototype"]): int(r["favours"]) for r in analysis.get("reliable", [])
                         if r.get("favours") is not None},
                uncertain=[int(r["prototype"]) for r in analysis.get("uncertain", [])],
                compensated=[int(r["prototype"]) for r in analysis.get("compensated", [])],
                uncertain_prototype=analysis.get("uncertain_prototype"),
                uncertain_source=analysis.get("uncertain_prototype_source"),
                steps=_ints(analysis.get("steps")), rows=list(analysis.get("prototypes", [])))
        uncertain = doc.get("uncertain_prototype")
        return cls(classes, pair, None if uncertain is None else int(uncertain), doc.get("curation"), doc)


class RunData:
    """Lazy, read-only view of one run in a store. Each artifact is read once, when first needed."""

    def __init__(self, store: Store, run_id: str):
        self.store = store
        self.run_id = validate_id(run_id, "run_id")
        if not store.exists(self.key("run.json")):
            raise NotFound(f"run {run_id!r} has no run.json in {store.url}; check the run id and the store "
                           "(list runs with `ls <store>/runs`)", field="run_id")

    def key(self, *parts: str) -> str:
        return run_key(self.run_id, *parts)

    def _json(self, *parts: str):
        return self.store.get_json(self.key(*parts))

    def _npz(self, *parts: str) -> dict[str, np.ndarray]:
        return self.store.get_npz(self.key(*parts))

    def has(self, *parts: str) -> bool:
        return self.store.exists(self.key(*parts))

    def require(self, *parts: str, stage: str) -> None:
        if not self.has(*parts):
            raise FailedPrecondition(f"run {self.run_id!r} has no {'/'.join(parts)} yet; run the {stage} stage "
                                     "first (or the whole pipeline)", field="run_id")

    # -- metadata ---------------------------------------------------------------------------
    @cached_property
    def meta(self) -> dict:
        return self._json("run.json")

    @cached_property
    def class_names(self) -> list[str]:
        names = self.meta.get("classes") or (self.meta.get("dataset") or {}).get("classes")
        if names:
            return [str(n) for n in names]
        if self.has("evaluation", "final.npz"):
            return [str(i) for i in range(self.confusion.shape[0])]
        return [str(i) for i in range(int(self.explanation_labels.max()) + 1)]

    def name(self, c: int) -> str:
        names = self.class_names
        return names[c] if 0 <= c < len(names) else str(c)

    @cached_property
    def checkpoints(self) -> list[dict]:
        if not self.has("checkpoints", "index.json"):
            return []
        index = self._json("checkpoints", "index.json")
        return list(index.get("checkpoints", index) if isinstance(index, dict) else index)

    # -- data and evaluation -------------------------------------------------------------------
    @cached_property
    def _explanation_data(self) -> dict[str, np.ndarray]:
        self.require("data", "explanation.npz", stage="training (create run)")
        return self._npz("data", "explanation.npz")

    @property
    def explanation_labels(self) -> np.ndarray:
        return self._explanation_data["labels"].astype(int)

    @property
    def explanation_images(self) -> np.ndarray:
        return self._explanation_data["images"]

    @cached_property
    def confusion(self) -> np.ndarray:
        self.require("evaluation", "final.npz", stage="training")
        return self._npz("evaluation", "final.npz")["confusion"].astype(int)

    @property
    def accuracy(self) -> float | None:
        if not self.has("evaluation", "final.npz"):
            return None
        confusion = self.confusion
        return float(np.trace(confusion) / max(confusion.sum(), 1))

    # -- interpretation ----------------------------------------------------------------------
    @cached_property
    def interpretation_steps(self) -> list[int]:
        keys = self.store.list(self.key("interpretation", "step-"))
        return sorted(int(k.rsplit("step-", 1)[1].split(".")[0]) for k in keys if k.endswith(".npz"))

    def _interpretation(self, step: int) -> dict[str, np.ndarray]:
        return self._npz("interpretation", f"step-{step:06d}.npz")

    @cached_property
    def confidences(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps (T,), confidences (T, N, K)) over every interpreted checkpoint."""
        steps = self.interpretation_steps
        if not steps:
            raise FailedPrecondition(f"run {self.run_id!r} has no interpretation/step-*.npz yet; run the "
                                     "interpretation stage first", field="run_id")
        return np.array(steps), np.stack([self._interpretation(s)["confidences"].astype(float) for s in steps])

    @cached_property
    def final_saliency(self) -> np.ndarray:
        steps = self.interpretation_steps
        if not steps:
            raise FailedPrecondition(f"run {self.run_id!r} has no interpretation/step-*.npz yet", field="run_id")
        return self._interpretation(steps[-1])["saliency"].astype(np.float32)

    # -- clustering and explanation ----------------------------------------------------------
    @cached_property
    def assignments(self) -> np.ndarray:
        self.require("clustering", "prototypes.npz", stage="clustering (prototypes)")
        return self._npz("clustering", "prototypes.npz")["assignments"].astype(int)

    @cached_property
    def intensity(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps (T,), intensity (T, N, M))."""
        self.require("explanation", "intensity.npz", stage="explanation")
        arrays = self._npz("explanation", "intensity.npz")
        return arrays["steps"].astype(int), arrays["intensity"].astype(float)

    @cached_property
    def _mapping(self) -> dict[str, np.ndarray]:
        self.require("explanation", "mapping.npz", stage="explanation")
        return self._npz("explanation", "mapping.npz")

    @property
    def mapping(self) -> np.ndarray:
        """W (T-1, M, K), Eq. 8."""
        return self._mapping["W"].astype(float)

    @property
    def mapping_steps(self) -> np.ndarray:
        """(T-1,) the step t of each checkpoint pair (t, t+1) of W."""
        if "steps" in self._mapping:
            return self._mapping["steps"].astype(int)
        return self.intensity[0][: self.mapping.shape[0]]

    @property
    def n_prototypes(self) -> int:
        if self.has("explanation", "intensity.npz"):
            return int(self.intensity[1].shape[-1])
        return int(self.assignments.max()) + 1

    @cached_property
    def explanation(self) -> ExplanationView | None:
        if not self.has("explanation", "explanation.json"):
            return None
        return ExplanationView.parse(self._json("explanation", "explanation.json"))

    def pair_contributions(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(steps (T-1,), D (T-1, M)) with D_t[m] = W_t[m, a] - W_t[m, b]: > 0 favours a."""
        W = self.mapping
        return self.mapping_steps, W[:, :, a] - W[:, :, b]

    # -- fine-tuning ---------------------------------------------------------------------------
    @cached_property
    def finetune_table(self) -> dict | None:
        if not self.has("finetune", "table.json"):
            return None
        table = self._json("finetune", "table.json")
        return table if isinstance(table, dict) else {"rows": table}

    def finetuned_confusion(self) -> tuple[str, np.ndarray] | None:
        """(protocol, confusion) of the fine-tuned model the table prefers, when the table carries one."""
        table = self.finetune_table
        confusions = (table or {}).get("confusions") or {}
        if not confusions:
            return None
        preferred = [p for p in ("curated->full", "curated", "full->full", "full") if p in confusions]
        protocol = preferred[0] if preferred else next(iter(confusions))
        value = confusions[protocol]
        if isinstance(value, dict):  # {"mean": [[...]], "std": ...}
            value = value.get("mean", value.get("confusion"))
        return protocol, np.asarray(value, dtype=float)
