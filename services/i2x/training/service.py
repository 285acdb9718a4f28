"""TrainingService over i2x.engine.stages: create/register/list runs, train, fine-tune."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from i2x.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from i2x.engine import stages
from i2x.engine.params import FinetuneParams
from i2x.servicers import (StageServicer, count, dataset_spec, finetune_params, model_spec, number, page, run_id_of,
                           run_to_proto, stage_progress, train_config)
from i2x.storage import run_key
from i2x.training import ray_tasks
from i2x.storage.base import check_key
from i2x.v1 import training_pb2, training_pb2_grpc


class TrainingServicer(StageServicer, training_pb2_grpc.TrainingServiceServicer):
    service = "training"

    def __init__(self, store, jobs):
        super().__init__(store, jobs)
        self._cache: dict = {}  # built model and explanation set of recent runs (evaluate_checkpoint)
        self._run_locks: dict[str, threading.Lock] = {}
        self._run_locks_guard = threading.Lock()

    def job_function(self, kind, run_id, params):
        store = self.store
        if kind == "train":
            train_run = ray_tasks.train_runner()  # a Ray task (I2X_TRAIN_ON_RAY) or in this process
            return lambda ctx: _train_summary(train_run(store, run_id, **stage_progress(ctx)))
        if kind == "register":
            pairs = [(int(c["step"]), c["key"]) for c in params["checkpoints"]]
            overwrite = bool(params.get("overwrite"))
            return lambda ctx: _train_summary(stages.register_checkpoints(store, run_id, pairs, overwrite=overwrite))
        if kind == "register_live":  # one live registration: appends (and with finish closes the run)
            pairs = [(int(c["step"]), c["key"]) for c in params["checkpoints"]]
            return lambda ctx: {**_train_summary(stages.register_live_checkpoints(
                store, run_id, pairs, finish=bool(params.get("finish")))), "live": not params.get("finish")}
        if kind == "finetune":
            return lambda ctx: stages.finetune_run(store, run_id, FinetuneParams.from_dict(params),
                                                   map_runs=ray_tasks.finetune_map_runs(**stage_progress(ctx)),
                                                   **stage_progress(ctx))
        return None

    async def CreateRun(self, request, context):
        run_id = run_id_of(request)
        kwargs = {"model": model_spec(request.model), "dataset": dataset_spec(request.dataset),
                  "train": train_config(request.train) if request.HasField("train") else None,
                  "overwrite": request.overwrite}
        if request.HasField("explanation_fraction"):
            kwargs["explanation_fraction"] = number(request.explanation_fraction, "explanation_fraction",
                                                    high=1.0, low_open=True)
        if request.HasField("explanation_seed"):
            kwargs["explanation_seed"] = count(request.explanation_seed, "explanation_seed", low=0, high=2**32 - 1)
        await asyncio.to_thread(self._create_run_once, run_id, kwargs)
        return run_to_proto(await asyncio.to_thread(stages.get_run, self.store, run_id))

    def _create_run_once(self, run_id: str, kwargs: dict) -> None:
        """create_run with one winner per run id in this process: concurrent CreateRun calls on a
        new id wait for the first; the same settings then get its run, others ALREADY_EXISTS."""
        with self._run_locks_guard:
            lock = self._run_locks.setdefault(run_id, threading.Lock())
        with lock:
            existed = self.store.exists(run_key(run_id, "run.json"))
            try:
                stages.create_run(self.store, run_id, **kwargs)
            except FailedPrecondition as error:
                if existed and error.field == "run_id" and not kwargs.get("overwrite"):
                    raise AlreadyExists(error.message, field="run_id") from None
                raise

    async def StartTraining(self, request, context):
        run_id = run_id_of(request)
        record = await asyncio.to_thread(stages.get_run, self.store, run_id)
        if record.get("train") is None:
            raise FailedPrecondition(f"run {run_id!r} has no train config; create it with one or register "
                                     "checkpoints instead", field="run_id")
        await asyncio.to_thread(ray_tasks.check_request, record["train"].get("device"), "train.device")
        return await self.start("train", run_id, {}, request.request_id)

    async def RegisterCheckpoints(self, request, context):
        run_id = run_id_of(request)
        live = request.live or request.finish
        if not request.checkpoints and not request.finish:
            raise InvalidArgument("give at least one checkpoint", field="checkpoints")
        steps = set()
        for i, ref in enumerate(request.checkpoints):
            count(ref.step, f"checkpoints[{i}].step", low=0, high=2**62)
            if ref.step in steps:
                raise InvalidArgument(f"step {ref.step} appears twice", field=f"checkpoints[{i}].step")
            steps.add(ref.step)
            try:
                check_key(ref.key)
            except InvalidArgument as exc:
                raise InvalidArgument(exc.message, field=f"checkpoints[{i}].key") from None
            if not await asyncio.to_thread(self.store.exists, ref.key):
                raise NotFound(f"no object {ref.key!r} in the store {self.store.url}; upload the checkpoint "
                               "first (the SDK's register_checkpoints does)", field=f"checkpoints[{i}].key")
        params = {"checkpoints": [{"step": int(ref.step), "key": ref.key} for ref in request.checkpoints]}
        if live:
            return await self.start("register_live", run_id, {**params, "finish": bool(request.finish)},
                                    request.request_id)
        if (await asyncio.to_thread(stages.get_run, self.store, run_id)).get("live"):
            raise FailedPrecondition(f"run {run_id!r} is live: add checkpoints with live (or close it with finish), "
                                     "not as a new set", field="live")
        if request.overwrite:
            params["overwrite"] = True
        elif not await asyncio.to_thread(self.jobs.by_request, "register", run_id, request.request_id):
            # (a retry of a start that already registered them is answered with its job by start())
            derived = await asyncio.to_thread(stages.derived_results, self.store, run_id)
            if derived:
                raise FailedPrecondition(f"run {run_id!r} already has checkpoints or results derived from them "
                                         f"({', '.join(derived[:4])}); pass overwrite to replace the checkpoints "
                                         "and remove those results, or register into a new run", field="overwrite")
        return await self.start("register", run_id, params, request.request_id)

    async def GetRun(self, request, context):
        return run_to_proto(await asyncio.to_thread(stages.get_run, self.store, run_id_of(request)))

    async def ListRuns(self, request, context):
        run_ids = await asyncio.to_thread(stages.list_runs, self.store)
        shown, token = page(run_ids, lambda run_id: run_id, request.page_size, request.page_token)
        return training_pb2.ListRunsResponse(run_ids=shown, next_page_token=token)

    async def StartFinetune(self, request, context):
        run_id = run_id_of(request)
        params = finetune_params(request.params)
        record = await asyncio.to_thread(stages.get_run, self.store, run_id)
        device = params.device or (record.get("train") or {}).get("device")
        await asyncio.to_thread(ray_tasks.check_request, device, "params.device" if params.device else "train.device")
        return await self.start("finetune", run_id, params.to_dict(), request.request_id)

    async def GetFinetuneTable(self, request, context):
        run_id = run_id_of(request)
        key = run_key(run_id, "finetune", "table.json")
        table = await asyncio.to_thread(self._require_json, run_id, key, "fine-tuning")
        return finetune_table_to_proto(run_id, table, key)

    async def GetEvaluation(self, request, context):
        run_id = run_id_of(request)
        if request.HasField("step"):
            step = count(request.step, "step", low=0, high=2**62)
            result = await asyncio.to_thread(self._evaluate, run_id, step)
            confusion = np.asarray(result["confusion"], dtype=np.int64)
            return _evaluation(run_id, confusion, result["key"], result["step"])
        key = run_key(run_id, "evaluation", "final.npz")
        record = await asyncio.to_thread(stages.get_run, self.store, run_id)
        if not await asyncio.to_thread(self.store.exists, key):
            raise FailedPrecondition(f"run {run_id!r} has no evaluation yet: train it or register checkpoints",
                                     field="run_id")
        confusion = (await asyncio.to_thread(self.store.get_npz, key))["confusion"]
        steps = [int(c["step"]) for c in record.get("checkpoints", [])]
        return _evaluation(run_id, confusion, key, steps[-1] if steps else 0)

    def _evaluate(self, run_id: str, step: int) -> dict:
        # The stage locks the cached model while a checkpoint's weights are in it, and bounds the cache.
        return stages.evaluate_checkpoint(self.store, run_id, step, cache=self._cache)

    def _require_json(self, run_id: str, key: str, stage: str) -> dict:
        stages.get_run(self.store, run_id)
        if not self.store.exists(key):
            raise FailedPrecondition(f"run {run_id!r} has no {stage} result yet: run the {stage} job first",
                                     field="run_id")
        return self.store.get_json(key)


def _evaluation(run_id: str, confusion: np.ndarray, key: str, step: int) -> training_pb2.Evaluation:
    total = int(confusion.sum())
    return training_pb2.Evaluation(run_id=run_id, accuracy=float(np.trace(confusion) / total) if total else 0.0,
                                   num_classes=int(confusion.shape[0]), confusion=[int(v) for v in confusion.ravel()],
                                   key=key, step=int(step))


def _train_summary(index: dict) -> dict:
    """The job result: steps and accuracy, not every checkpoint's metadata."""
    checkpoints = index.get("checkpoints", [])
    return {"steps": [int(c["step"]) for c in checkpoints], "num_checkpoints": len(checkpoints),
            "accuracy": index.get("accuracy")}


def _mean_std(value, interval=None) -> training_pb2.MeanStd:
    if isinstance(value, dict):
        out = training_pb2.MeanStd(mean=float(value.get("mean", 0.0)), std=float(value.get("std", 0.0)))
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        out = training_pb2.MeanStd(mean=float(value[0]), std=float(value[1]))
    else:
        out = training_pb2.MeanStd(mean=float(value or 0.0))
    if isinstance(interval, (list, tuple)) and len(interval) == 2 and None not in interval:
        out.ci95_low, out.ci95_high = float(interval[0]), float(interval[1])
    return out


def finetune_table_to_proto(run_id: str, table: dict, key: str) -> training_pb2.FinetuneTable:
    pair = table.get("pair") or (0, 0)
    message = training_pb2.FinetuneTable(run_id=run_id, class_a=int(pair[0]), class_b=int(pair[1]), key=key,
                                         markdown_key=key[: -len("table.json")] + "table.md")
    rows = table.get("rows", [])
    if isinstance(rows, dict):
        rows = [{"protocol": name, **row} for name, row in rows.items()]
    for row in rows:
        ci = row.get("ci95") or {}
        message.rows.append(training_pb2.FinetuneRow(
            protocol=str(row.get("protocol", "")), accuracy=_mean_std(row.get("accuracy"), ci.get("accuracy")),
            a_to_b=_mean_std(row.get("a_to_b"), ci.get("a_to_b")), b_to_a=_mean_std(row.get("b_to_a"), ci.get("b_to_a")),
            sum=_mean_std(row.get("sum"), ci.get("sum")),
            repeats=int(row.get("repeats", table.get("repeats", 0)) or 0)))
    for test in table.get("tests") or []:
        numbers = {k: float(test[k]) for k in ("t", "p", "df") if test.get(k) is not None}
        message.tests.append(training_pb2.WelchTest(metric=str(test.get("metric", "")),
                                                    compared=[str(c) for c in test.get("compared") or []],
                                                    significant=bool(test.get("significant")),
                                                    text=str(test.get("text", "")), **numbers))
    message.removed_fraction_per_class.extend(float(v) for v in table.get("removed_fraction_per_class") or [])
    return message
