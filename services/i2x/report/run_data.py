"""Read one run from a Store into what the figures and the HTML need (docs/ARTIFACTS.md layout).

The structured explanation's schema is docs/EXPLANATION.md; `ExplanationView` turns it into plain
Python so the rest of the report does not depend on its key names. Optional parts of a run (no
fine-tuning table, no explanation yet) come back as None and the report says what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    # schema 2 (docs/EXPLANATION.md): fraction of the class's samples holding each prototype (M,),
    # and every statement with its support; None / [] in schema 1 (the report then computes presence).
    presence: list[float] | None = None
    statement_details: list[dict] = field(default_factory=list)

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
    reason: str = "most-confused"   # why this pair is analysed: "most-confused", "next-confused" or "given"
    skipped: list[dict] = field(default_factory=list)  # more confused pairs passed over: {a, b, count, ...}


@dataclass
class ConfusedPair:
    """The pair with the most test confusions (both directions summed)."""

    a: int
    b: int
    count: int | None
    a_to_b: int | None
    b_to_a: int | None
    tie_break: str | None = None


@dataclass
class ExplanationView:
    """explanation.json (docs/EXPLANATION.md, written by i2x.core.explain.build_explanation) as objects."""

    classes: dict[int, ClassExplanation]
    pair: PairExplanation | None
    uncertain_prototype: int | None
    curation: dict | None
    raw: dict
    most_confused: ConfusedPair | None = None
    warnings: list[dict] = field(default_factory=list)      # [{code, message}]
    background: list[int] = field(default_factory=list)     # prototypes flagged background

    @property
    def schema_version(self) -> int:
        return int(self.raw.get("schema_version", 1))

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
                sorted(keys, key=lambda k: k.step),
                presence=[float(x) for x in entry["presence"]] if entry.get("presence") is not None else None,
                statement_details=[dict(d) for d in entry.get("statement_details") or [] if isinstance(d, dict)])
        pair, most = None, None
        confused = doc.get("most_confused_pair") or {}
        analysed = doc.get("analysed_pair")
        if analysed is None and confused:
            # Schema 1: most_confused_pair is the analysed pair; with source "confusion-fallback" the
            # truly most confused pair is the first of `skipped` (passed over: no uncertain prototype).
            reason = {"confusion": "most-confused", "confusion-fallback": "next-confused",
                      "given": "given"}.get(confused.get("source"), "most-confused")
            analysed = {**confused, "reason": reason}
            skipped = confused.get("skipped") or []
            if reason == "next-confused" and skipped:
                confused = dict(skipped[0])
            elif reason == "given":
                confused = {}
        if confused and confused.get("a") is not None:
            most = ConfusedPair(int(confused["a"]), int(confused["b"]), confused.get("count"), confused.get("a_to_b"),
                                confused.get("b_to_a"), confused.get("tie_break"))
        analysis = doc.get("pair_analysis")
        if analysis:
            analysed = analysed or {}
            pair = PairExplanation(
                a=int(analysis["a"]), b=int(analysis["b"]), count=analysed.get("count"),
                a_to_b=analysed.get("a_to_b"), b_to_a=analysed.get("b_to_a"),
                reliable=[int(r["prototype"]) for r in analysis.get("reliable", [])],
                favours={int(r["prototype"]): int(r["favours"]) for r in analysis.get("reliable", [])
                         if r.get("favours") is not None},
                uncertain=[int(r["prototype"]) for r in analysis.get("uncertain", [])],
                compensated=[int(r["prototype"]) for r in analysis.get("compensated", [])],
                uncertain_prototype=analysis.get("uncertain_prototype"),
                uncertain_source=analysis.get("uncertain_prototype_source"),
                steps=_ints(analysis.get("steps")), rows=list(analysis.get("prototypes", [])),
                reason=str(analysed.get("reason") or "most-confused"),
                skipped=[dict(s) for s in analysed.get("skipped") or []])
        uncertain = doc.get("uncertain_prototype")
        warnings = [{"code": str(w.get("code", "")), "message": str(w.get("message", ""))}
                    for w in doc.get("warnings") or [] if isinstance(w, dict)]
        return cls(classes, pair, None if uncertain is None else int(uncertain), doc.get("curation"), doc,
                   most_confused=most, warnings=warnings, background=_ints(doc.get("background_prototypes")))


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

    @cached_property
    def _computed_presence(self) -> np.ndarray:
        """(K, M): fraction of class c's explanation samples whose assignment map holds prototype m."""
        labels, maps = self.explanation_labels, self.assignments
        M = max(self.n_prototypes, int(maps.max()) + 1)
        held = np.zeros((len(labels), M), bool)
        held[np.repeat(np.arange(len(labels)), maps[0].size), maps.reshape(len(labels), -1).ravel()] = True
        K = len(self.class_names)
        return np.stack([held[labels == c].mean(axis=0) if (labels == c).any() else np.zeros(M) for c in range(K)])

    def presence(self, c: int, m: int) -> float | None:
        """Share of class c's explanation samples holding prototype m: explanation.json's
        per_class[c].presence when present (schema 2), else computed from the assignment maps."""
        info = self.explanation.classes.get(c) if self.explanation else None
        if info is not None and info.presence is not None and 0 <= m < len(info.presence):
            return info.presence[m]
        if not self.has("clustering", "prototypes.npz"):
            return None
        table = self._computed_presence
        return float(table[c, m]) if 0 <= c < table.shape[0] and 0 <= m < table.shape[1] else None

    @cached_property
    def placement(self) -> list[dict]:
        """Where each interpretation unit ran: [{step, node, device, seconds}] from
        interpretation/index.json when it records placement (a `placement` list or mapping, or
        per-unit objects under `units`), else []. Unknown parts are None."""
        if not self.has("interpretation", "index.json"):
            return []
        index = self._json("interpretation", "index.json")
        if not isinstance(index, dict):
            return []
        raw = index.get("placement")
        if isinstance(raw, dict):
            raw = [{"step": k, **v} if isinstance(v, dict) else {"step": k, "node": v} for k, v in raw.items()]
        if not isinstance(raw, list):
            raw = [u for u in index.get("units") or [] if isinstance(u, dict)]
        out = []
        for entry in raw:
            if not isinstance(entry, dict):
                continue
            node = entry.get("node_id", entry.get("node", entry.get("worker")))
            device = entry.get("device")
            seconds = entry.get("seconds", entry.get("duration_s", entry.get("elapsed_s")))
            if node is None and device is None and seconds is None:
                continue
            try:
                seconds = None if seconds is None else float(seconds)
            except (TypeError, ValueError):
                seconds = None
            out.append({"step": entry.get("step"), "node": None if node is None else str(node),
                        "device": None if device is None else str(device), "seconds": seconds})
        return out

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
