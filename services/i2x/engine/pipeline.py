"""The whole method in-process: the stages of i2x.engine.stages in order, on one Store."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from i2x.engine import stages
from i2x.engine.params import ClusterParams, ExplainParams, FinetuneParams, InterpretParams, PrototypeParams
from i2x.storage import Store

STAGES = ("create", "train", "interpret", "prototypes", "clusters", "explain", "curate", "finetune", "report")


@dataclass
class PipelineResult:
    run_id: str
    store_url: str
    explanation: dict
    finetune: dict | None
    timings: dict = field(default_factory=dict)   # seconds per stage
    report_key: str | None = None


def run_pipeline(store: Store, run_id: str, *, model: dict, dataset: dict, train: dict | None = None,
                 interpret: InterpretParams | None = None, prototypes: PrototypeParams | None = None,
                 clusters: ClusterParams | None = None, explain: ExplainParams | None = None,
                 finetune: FinetuneParams | None = None, report: bool = True,
                 explanation_fraction: float = 0.1, explanation_seed: int = 42,
                 progress: Callable[[str, int, int, str], None] | None = None, cancel=None) -> PipelineResult:
    """Train (unless the run already has checkpoints), interpret, cluster, explain, curate,
    optionally fine-tune, and render the report. Every stage skips finished work, so a
    second call resumes where the first stopped.

    progress(stage, done, total, message) reports each stage's progress.
    """
    interpret = interpret or InterpretParams()
    prototypes = prototypes or PrototypeParams()
    clusters = clusters or ClusterParams()
    explain = explain or ExplainParams()
    timings: dict[str, float] = {}
    cache: dict = {}

    def stage_progress(name: str):
        if progress is None:
            return None
        return lambda done, total, message="", artifact=None: progress(name, done, total, message)

    def timed(name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - start, 3)
        return result

    timed("create", stages.create_run, store, run_id, model=model, dataset=dataset, train=train,
          explanation_fraction=explanation_fraction, explanation_seed=explanation_seed)
    if not stages.get_run(store, run_id)["checkpoints"]:
        timed("train", stages.train_run, store, run_id, progress=stage_progress("train"), cancel=cancel)
    timed("interpret", stages.interpret_run, store, run_id, interpret, progress=stage_progress("interpret"),
          cancel=cancel)
    timed("prototypes", stages.extract_prototypes, store, run_id, prototypes,
          progress=stage_progress("prototypes"), cancel=cancel, cache=cache)
    timed("clusters", stages.cluster_confidences, store, run_id, clusters, progress=stage_progress("clusters"),
          cancel=cancel)
    explanation = timed("explain", stages.explain_run, store, run_id, explain, progress=stage_progress("explain"),
                        cancel=cancel)
    table = None
    if explanation.get("uncertain_prototype") is not None:
        timed("curate", stages.curate_run, store, run_id, scope=explain.curation_scope)
        if finetune is not None:
            table = timed("finetune", stages.finetune_run, store, run_id, finetune,
                          progress=stage_progress("finetune"), cancel=cancel)
    report_key = None
    if report:
        from i2x.report import build_report

        timed("report", build_report, store, run_id)
        report_key = stages.run_key(run_id, "report.html")
    return PipelineResult(run_id=run_id, store_url=store.url, explanation=explanation, finetune=table,
                          timings=timings, report_key=report_key)
