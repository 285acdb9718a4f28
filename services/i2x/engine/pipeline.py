"""The whole method in-process: the stages of i2x.engine.stages in order, on one Store."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from i2x.client.jobs import JobEvent
from i2x.core.errors import FailedPrecondition, InvalidArgument
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


def _params(cls, values, field: str):
    """Stage parameters given as a dict or as the dataclass itself (the SDK takes the same)."""
    if values is None:
        return cls()
    if isinstance(values, cls):
        return values
    if isinstance(values, dict):
        return cls.from_dict(values)
    raise InvalidArgument(f"give a dict or {cls.__name__}, not {type(values).__name__}", field=field)


def run_pipeline(store: Store, run_id: str, *, model: dict | None = None, dataset: dict | None = None,
                 train: dict | None = None, checkpoints: dict | None = None,
                 interpret=None, prototypes=None, clusters=None, explain=None, finetune=None,
                 report: bool = True, overwrite: bool = False, explanation_fraction: float | None = None,
                 explanation_seed: int | None = None, progress: Callable | None = None,
                 timeout: float | None = None, cancel=None) -> PipelineResult:
    """Train (or register `checkpoints`: {step: local path, bytes or store key}; or take the run
    as it is when it has checkpoints), interpret, cluster, explain, curate, with `finetune`
    fine-tune, and with `report` render the report. Every stage skips finished work, so a
    second call resumes where the first stopped.

    The same signature and defaults as the SDK's Client.run_pipeline, with the store first:
    stage parameters are dicts or i2x.engine.params dataclasses; progress(stage, event) gets a
    JobEvent (done, total, message, state: RUNNING, then SUCCEEDED at the stage's end). An
    existing run given other specs is an error (FailedPrecondition) unless overwrite. `timeout`
    is accepted for the shared signature; in-process stages are stopped with `cancel` (an Event).
    """
    interpret = _params(InterpretParams, interpret, "interpret")
    prototypes = _params(PrototypeParams, prototypes, "prototypes")
    clusters = _params(ClusterParams, clusters, "clusters")
    explain = _params(ExplainParams, explain, "explain")
    finetune = None if finetune is None else _params(FinetuneParams, finetune, "finetune")
    timings: dict[str, float] = {}
    cache: dict = {}

    def event(name: str, done: int, total: int, message: str = "", state: str = "RUNNING") -> None:
        if progress is not None:
            progress(name, JobEvent(job_id=f"{run_id}/{name}", state=state, done=done, total=total,
                                    message=message, artifact=None, time=time.time()))

    def stage_progress(name: str):
        return lambda done, total, message="", artifact=None: event(name, done, total, message)

    def timed(name: str, fn, *args, with_progress: bool = True, **kwargs):
        start = time.perf_counter()
        if progress is not None:
            event(name, 0, 0, "starting")
            if with_progress:
                kwargs["progress"] = stage_progress(name)
        result = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - start, 3)
        event(name, 1, 1, "", state="SUCCEEDED")  # closes the stage's bar with its own time
        return result

    exists = store.exists(stages.run_key(run_id, "run.json"))
    stored = stages.get_run(store, run_id) if exists else {}
    if not exists and (model is None or dataset is None):
        raise InvalidArgument(f"run {run_id!r} does not exist: give model and dataset to create it",
                              field="model" if model is None else "dataset")
    given = any(x is not None for x in (model, dataset, train, explanation_fraction, explanation_seed))
    if not exists or given or overwrite:
        explanation_spec = stored.get("explanation") or {}
        timed("create", stages.create_run, store, run_id,
              model=model if model is not None else stored["model"],
              dataset=dataset if dataset is not None else stored["dataset"],
              train=train if train is not None else (stored.get("train") if exists else
                                                       (None if checkpoints else {})),
              explanation_fraction=explanation_fraction if explanation_fraction is not None
              else explanation_spec.get("fraction", 0.1),
              explanation_seed=explanation_seed if explanation_seed is not None else explanation_spec.get("seed", 42),
              overwrite=overwrite, with_progress=False)
    have = stages.get_run(store, run_id)["checkpoints"]
    if checkpoints and have and not overwrite and \
            {int(s) for s in checkpoints} != {int(c["step"]) for c in have}:
        raise FailedPrecondition(f"run {run_id!r} already has checkpoints (steps {[c['step'] for c in have]}); "
                                 "pass overwrite to replace them, or use another run id", field="checkpoints")
    if checkpoints and (not have or overwrite):
        items = [(int(step), Path(src).read_bytes() if isinstance(src, Path) else src)
                 for step, src in checkpoints.items()]
        timed("register", stages.register_checkpoints, store, run_id, items, with_progress=False)
    elif not have:
        timed("train", stages.train_run, store, run_id, cancel=cancel)
    timed("interpret", stages.interpret_run, store, run_id, interpret, cancel=cancel)
    timed("prototypes", stages.extract_prototypes, store, run_id, prototypes, cancel=cancel, cache=cache)
    timed("clusters", stages.cluster_confidences, store, run_id, clusters, cancel=cancel)
    explanation = timed("explain", stages.explain_run, store, run_id, explain, cancel=cancel)
    table = None
    if explanation.get("uncertain_prototype") is not None:
        timed("curate", stages.curate_run, store, run_id, scope=explain.curation_scope, with_progress=False)
        if finetune is not None:
            table = timed("finetune", stages.finetune_run, store, run_id, finetune, cancel=cancel)
    report_key = None
    if report:
        from i2x.report import build_report

        timed("report", build_report, store, run_id, with_progress=False)
        report_key = stages.run_key(run_id, "report.html")
    return PipelineResult(run_id=run_id, store_url=store.url, explanation=explanation, finetune=table,
                          timings=timings, report_key=report_key)
