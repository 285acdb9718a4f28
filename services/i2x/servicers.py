"""What the four servicers share: proto <-> domain conversion, the job API, the serve loop.

Servicers stay thin: validate and convert the message here, call an i2x.engine.stages
function (inside a job for long work), convert the result. Domain errors propagate and the
server's ErrorInterceptor maps them to status codes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any, Callable

from i2x.core.errors import InvalidArgument
from i2x.engine import stages
from i2x.core.device import check_device, check_precision
from i2x.engine.params import ClusterParams, ExplainParams, FinetuneParams, InterpretParams, PrototypeParams
from i2x.jobs import JobContext, JobManager, JobRecord
from i2x.storage import Store, validate_id
from i2x.v1 import common_pb2, jobs_pb2, jobs_pb2_grpc

log = logging.getLogger(__name__)

# Largest value accepted for any count-like parameter: bigger is a typo, not a wish.
MAX_COUNT = 1_000_000
MAX_EPOCHS = 10_000

STATE_TO_PROTO = {name: jobs_pb2.JobState.Value(f"JOB_STATE_{name}")
                  for name in ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")}
PROTO_TO_STATE = {value: name for name, value in STATE_TO_PROTO.items()}

PROTOCOL_NAMES = {
    common_pb2.FINETUNE_PROTOCOL_FULL: "full",
    common_pb2.FINETUNE_PROTOCOL_CURATED: "curated",
    common_pb2.FINETUNE_PROTOCOL_FULL_FULL: "full->full",
    common_pb2.FINETUNE_PROTOCOL_CURATED_CURATED: "curated->curated",
    common_pb2.FINETUNE_PROTOCOL_CURATED_FULL: "curated->full",
}
SCOPE_NAMES = {common_pb2.CURATION_SCOPE_ALL: "all", common_pb2.CURATION_SCOPE_PAIR: "pair"}
SCOPE_VALUES = {name: value for value, name in SCOPE_NAMES.items()}


# ---------------------------------------------------------------- field checks

def run_id_of(request, field: str = "run_id") -> str:
    return validate_id(getattr(request, field), field)


def _set_fields(message) -> dict[str, Any]:
    """The fields a client set (proto3 optional), by name: unset fields keep the domain default."""
    return {fd.name: value for fd, value in message.ListFields()}


def count(value: int, field: str, *, low: int = 1, high: int = MAX_COUNT) -> int:
    if not low <= int(value) <= high:
        raise InvalidArgument(f"must be in {low}..{high}, got {value}", field=field)
    return int(value)


def number(value: float, field: str, *, low: float = 0.0, high: float = math.inf, low_open: bool = False) -> float:
    value = float(value)
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise InvalidArgument(f"must be a finite number in {bound}, got {value}", field=field)
    return value


def enum_value(enum_type, value: int, field: str, *, allow_unspecified: bool = True) -> int:
    """Reject numbers outside the enum (proto3 keeps unknown values) and, optionally, the zero value."""
    names = [v.name for v in enum_type.DESCRIPTOR.values if v.number != 0]
    if value not in {v.number for v in enum_type.DESCRIPTOR.values} or (value == 0 and not allow_unspecified):
        raise InvalidArgument(f"{value} is not a valid {enum_type.DESCRIPTOR.name}; use one of {names}", field=field)
    return value


# ---------------------------------------------------------------- specs and parameters

def model_spec(message: common_pb2.ModelSpec, field: str = "model") -> dict:
    spec = _set_fields(message)
    for name in ("in_channels", "num_classes"):
        if name in spec:
            count(spec[name], f"{field}.{name}", high=100_000)
    if "input_size" in spec:
        count(spec["input_size"], f"{field}.input_size", high=8192)
    return spec


def dataset_spec(message: common_pb2.DatasetSpec, field: str = "dataset") -> dict:
    spec = _set_fields(message)
    if "image_size" in spec:
        count(spec["image_size"], f"{field}.image_size", high=8192)
    if "test_fraction" in spec:
        number(spec["test_fraction"], f"{field}.test_fraction", high=1.0, low_open=True)
    if "split_seed" in spec:
        count(spec["split_seed"], f"{field}.split_seed", low=0, high=2**32 - 1)
    return spec


def train_config(message: common_pb2.TrainConfig, field: str = "train") -> dict:
    """A full TrainConfig dict: the named preset (default: TrainConfig's own) with the set fields over it."""
    from i2x.core.training import TrainConfig

    values = _set_fields(message)
    if "epochs" in values:
        count(values["epochs"], f"{field}.epochs", high=MAX_EPOCHS)
    for name in ("batch_size", "checkpoint_every"):
        if name in values:
            count(values[name], f"{field}.{name}")
    if "lr" in values:
        number(values["lr"], f"{field}.lr", high=10.0, low_open=True)
    for name in ("momentum", "weight_decay"):
        if name in values:
            number(values[name], f"{field}.{name}", high=1.0 if name == "momentum" else 10.0)
    if "seed" in values:
        count(values["seed"], f"{field}.seed", low=0, high=2**32 - 1)
    preset = values.pop("preset", None)
    config = TrainConfig.from_preset(preset, **values) if preset else TrainConfig(**values)
    return config.to_dict()


def interpret_params(message: common_pb2.InterpretParams, n_classes: int | None = None) -> InterpretParams:
    mode = enum_value(common_pb2.TargetMode, message.target_mode, "params.target_mode")
    params = InterpretParams()
    if message.HasField("target_layer"):
        params.target_layer = message.target_layer
    if mode == common_pb2.TARGET_MODE_LABEL:
        params.target = "label"
    elif mode == common_pb2.TARGET_MODE_CLASS:
        if not message.HasField("target_class"):
            raise InvalidArgument("TARGET_MODE_CLASS needs target_class", field="params.target_class")
        high = (n_classes - 1) if n_classes else MAX_COUNT
        params.target = str(count(message.target_class, "params.target_class", low=0, high=high))
    elif message.HasField("target_class"):
        raise InvalidArgument("target_class is only read with target_mode TARGET_MODE_CLASS", field="params.target_class")
    if message.HasField("batch_size"):
        params.batch_size = count(message.batch_size, "params.batch_size", low=0, high=4096)
    if message.HasField("device"):
        params.device = check_device(message.device, field="params.device")
    if message.HasField("precision"):
        params.precision = check_precision(message.precision, field="params.precision")
    if params.precision == "fp16" and params.device == "cpu":
        raise InvalidArgument("precision fp16 needs a GPU; use bf16 (or fp32) with device cpu", field="params.precision")
    return params


def prototype_params(message: common_pb2.PrototypeParams) -> PrototypeParams:
    values = _set_fields(message)
    for name in ("n_prototypes", "n_components"):
        if name in values:
            count(values[name], f"params.{name}", high=4096)
    if "max_fit_vectors" in values:
        count(values["max_fit_vectors"], "params.max_fit_vectors", high=100_000_000)
    if "random_state" in values:
        count(values["random_state"], "params.random_state", low=0, high=2**32 - 1)
    return PrototypeParams(**values)


def cluster_params(message: common_pb2.ClusterParams) -> ClusterParams:
    values = _set_fields(message)
    if "min_cluster_size" in values:
        count(values["min_cluster_size"], "params.min_cluster_size", low=2)
    if "min_samples" in values:
        count(values["min_samples"], "params.min_samples")
    if "cluster_selection_epsilon" in values:
        number(values["cluster_selection_epsilon"], "params.cluster_selection_epsilon", high=1e6)
    return ClusterParams(**values)


def pair_of(values, field: str) -> list[int] | None:
    pair = [int(v) for v in values]
    if not pair:
        return None
    if len(pair) != 2 or pair[0] == pair[1] or min(pair) < 0:
        raise InvalidArgument(f"give two different class indices [a, b], got {pair}", field=field)
    return pair


def explain_params(message: common_pb2.ExplainParams) -> ExplainParams:
    params = ExplainParams()
    if message.HasField("tau"):
        params.tau = number(message.tau, "params.tau", high=1e6)
    if message.HasField("lam"):
        params.lam = number(message.lam, "params.lam", high=1e9, low_open=True)  # Eq. 8 needs lambda > 0
    params.pair = pair_of(message.pair, "params.pair")
    scope = enum_value(common_pb2.CurationScope, message.curation_scope, "params.curation_scope")
    params.curation_scope = SCOPE_NAMES.get(scope, params.curation_scope)
    if message.extra_json:
        try:
            extra = json.loads(message.extra_json)
        except ValueError as exc:
            raise InvalidArgument(f"not valid JSON ({exc})", field="params.extra_json") from None
        if not isinstance(extra, dict):
            raise InvalidArgument("must be a JSON object", field="params.extra_json")
        params.extra = extra
    return params


def finetune_params(message: common_pb2.FinetuneParams) -> FinetuneParams:
    params = FinetuneParams()
    if message.protocols:
        params.protocols = [PROTOCOL_NAMES[enum_value(common_pb2.FinetuneProtocol, value, "params.protocols",
                                                      allow_unspecified=False)] for value in message.protocols]
    if message.HasField("repeats"):
        params.repeats = count(message.repeats, "params.repeats", high=100)
    if message.HasField("lr"):
        params.lr = number(message.lr, "params.lr", high=10.0, low_open=True)
    if message.HasField("batch_size"):
        params.batch_size = count(message.batch_size, "params.batch_size", high=65536)
    if message.HasField("seed"):
        params.seed = count(message.seed, "params.seed", low=0, high=2**32 - 1)
    if message.HasField("device"):
        params.device = check_device(message.device, field="params.device")
    return params


def run_to_proto(record: dict) -> common_pb2.Run:
    """run.json (with its checkpoint list) as a Run message; unknown keys stay in metadata_json."""
    def fill(message, values: dict | None):
        for fd in message.DESCRIPTOR.fields:
            value = (values or {}).get(fd.name)
            if value is not None:
                setattr(message, fd.name, value)
        return message

    run = common_pb2.Run(run_id=record.get("run_id", ""), classes=[str(c) for c in record.get("classes", [])])
    fill(run.model, record.get("model"))
    fill(run.dataset, record.get("dataset"))
    if record.get("train") is not None:
        fill(run.train, record["train"])
    for ckpt in record.get("checkpoints", []):
        run.checkpoints.append(fill(common_pb2.Checkpoint(), ckpt))
    run.metadata_json = json.dumps({k: v for k, v in record.items() if k != "checkpoints"})
    return run


# ---------------------------------------------------------------- jobs

def job_to_proto(record: JobRecord) -> jobs_pb2.Job:
    return jobs_pb2.Job(
        job_id=record.job_id, service=record.service, kind=record.kind, run_id=record.run_id,
        state=STATE_TO_PROTO.get(record.state, 0), progress_done=record.progress_done,
        progress_total=record.progress_total, message=record.message, error=record.error,
        error_code=record.error_code, result_json=json.dumps(record.result) if record.result else "",
        params_json=json.dumps(record.params), created=record.created, updated=record.updated,
        artifacts=list(record.artifacts))


class JobsServicer(jobs_pb2_grpc.JobsServiceServicer):
    """The job API over one process's JobManager (every service registers one)."""

    def __init__(self, jobs: JobManager):
        self.jobs = jobs

    async def GetJob(self, request, context):
        job_id = validate_id(request.job_id, "job_id")
        return job_to_proto(await asyncio.to_thread(self.jobs.get, job_id))

    async def WatchJob(self, request, context):
        job_id = validate_id(request.job_id, "job_id")
        await asyncio.to_thread(self.jobs.get, job_id)  # NOT_FOUND before the stream starts
        async for event in self.jobs.watch(job_id):
            yield jobs_pb2.JobEvent(job_id=event.job_id, state=STATE_TO_PROTO.get(event.state, 0), done=event.done,
                                    total=event.total, message=event.message or "", artifact=event.artifact or "",
                                    time=event.time)

    async def CancelJob(self, request, context):
        job_id = validate_id(request.job_id, "job_id")
        return job_to_proto(await asyncio.to_thread(self.jobs.cancel, job_id))

    async def ListJobs(self, request, context):
        run_id = validate_id(request.run_id, "run_id") if request.run_id else None
        states = [PROTO_TO_STATE[enum_value(jobs_pb2.JobState, s, "states")] for s in request.states if s] or None
        records = await asyncio.to_thread(self.jobs.list, run_id=run_id, kind=request.kind or None, states=states)
        return jobs_pb2.ListJobsResponse(jobs=[job_to_proto(r) for r in records])


JobFactory = Callable[[str, dict], Callable[[JobContext], dict | None]]


class StageServicer:
    """Base of the four servicers: a store, a JobManager, and job functions built from (kind, params).

    Subclasses implement job_function(kind, run_id, params) so a restarted service rebuilds
    the same function from a stored record (recover) as a Start* RPC does (submit).
    """

    service = ""

    def __init__(self, store: Store, jobs: JobManager):
        self.store = store
        self.jobs = jobs

    def job_function(self, kind: str, run_id: str, params: dict) -> Callable[[JobContext], dict | None] | None:
        raise NotImplementedError

    async def start(self, kind: str, run_id: str, params: dict) -> jobs_pb2.Job:
        await asyncio.to_thread(stages.get_run, self.store, run_id)  # unknown run -> NOT_FOUND now
        fn = self.job_function(kind, run_id, params)
        record = await asyncio.to_thread(self.jobs.submit, kind, run_id, params, fn)
        return job_to_proto(record)

    def recover(self) -> list[str]:
        """Take over jobs nobody holds now, and keep doing so every lease/2 s (a crashed replica's jobs)."""
        return self.jobs.start_recovery(
            lambda record: self.job_function(record.kind, record.run_id, record.params))

    def close(self) -> None:
        """Release what the servicer holds besides its jobs (the interpretation service's Ray actors)."""


def stage_progress(ctx: JobContext) -> dict:
    """The keyword arguments every stage takes for progress and cancellation."""
    return {"progress": ctx.progress, "cancel": ctx.cancel_event}


# ---------------------------------------------------------------- one process's servers

def make_servicer(service: str, store: Store, *, max_workers: int = 2, ray_workers: int | None = None) -> StageServicer:
    """The servicer of `service` with its own JobManager over `store`."""
    jobs = JobManager(store, service, max_workers=max_workers)
    if service == "training":
        from i2x.training import TrainingServicer
        return TrainingServicer(store, jobs)
    if service == "interpretation":
        from i2x.interpretation import InterpretationServicer
        return InterpretationServicer(store, jobs, max_workers=ray_workers)
    if service == "clustering":
        from i2x.clustering import ClusteringServicer
        return ClusteringServicer(store, jobs)
    if service == "explanation":
        from i2x.explanation import ExplanationServicer
        return ExplanationServicer(store, jobs)
    raise InvalidArgument(f"unknown service {service!r}; choose training, interpretation, clustering or "
                          "explanation", field="service")


def registrar(servicer: StageServicer) -> Callable:
    """register(server) for i2x.server.start_server: the service, the job API; returns their full names."""
    from i2x.v1 import (clustering_pb2, clustering_pb2_grpc, explanation_pb2, explanation_pb2_grpc,
                        interpretation_pb2, interpretation_pb2_grpc, training_pb2, training_pb2_grpc)

    table = {
        "training": (training_pb2, "TrainingService", training_pb2_grpc.add_TrainingServiceServicer_to_server),
        "interpretation": (interpretation_pb2, "InterpretationService",
                           interpretation_pb2_grpc.add_InterpretationServiceServicer_to_server),
        "clustering": (clustering_pb2, "ClusteringService", clustering_pb2_grpc.add_ClusteringServiceServicer_to_server),
        "explanation": (explanation_pb2, "ExplanationService",
                        explanation_pb2_grpc.add_ExplanationServiceServicer_to_server),
    }
    module, name, add = table[servicer.service]

    def register(server) -> list[str]:
        add(servicer, server)
        jobs_pb2_grpc.add_JobsServiceServicer_to_server(JobsServicer(servicer.jobs), server)
        return [module.DESCRIPTOR.services_by_name[name].full_name,
                jobs_pb2.DESCRIPTOR.services_by_name["JobsService"].full_name]

    return register


async def start_service(service: str, store: Store, *, host: str | None = None, port: int | None = None,
                        token: str | None = None, tls_cert: str | None = None, tls_key: str | None = None,
                        max_message_mb: int | None = None, max_workers: int = 2, ray_workers: int | None = None):
    """Start one service's gRPC server in the running loop; resume its unfinished jobs.

    Returns (server, bound_port, health, servicer)."""
    from i2x.server import start_server

    servicer = make_servicer(service, store, max_workers=max_workers, ray_workers=ray_workers)
    server, bound, health = await start_server(service, registrar(servicer), host=host, port=port, token=token,
                                               tls_cert=tls_cert, tls_key=tls_key, max_message_mb=max_message_mb)
    resumed = await asyncio.to_thread(servicer.recover)
    if resumed:
        log.info("%s: resumed jobs %s", service, resumed)
    return server, bound, health, servicer


class ServicesInThread:
    """Some services on loopback in a background event loop (tests, benchmarks): .ports[name]."""

    def __init__(self, services, store: Store, *, host: str = "127.0.0.1", token: str | None = None,
                 ray_workers: int | None = None):
        import threading

        self.ports: dict[str, int] = {}
        self._servers: list = []
        self.servicers: dict[str, StageServicer] = {}
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="i2x-services", daemon=True)
        self._thread.start()

        async def start_all():
            for name in services:
                server, port, _, servicer = await start_service(name, store, host=host, port=0, token=token,
                                                                ray_workers=ray_workers)
                self._servers.append(server)
                self.ports[name] = port
                self.servicers[name] = servicer

        asyncio.run_coroutine_threadsafe(start_all(), self.loop).result(timeout=60)

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"

    def stop(self, grace: float = 1.0) -> None:
        """Stop like `i2x serve` on SIGTERM: servers first, then running jobs are interrupted (left
        QUEUED for the next process to resume), then what the servicers hold (the Ray pool)."""
        async def stop_all():
            for server in self._servers:
                await server.stop(grace)

        asyncio.run_coroutine_threadsafe(stop_all(), self.loop).result(timeout=30)
        for servicer in self.servicers.values():
            servicer.jobs.shutdown(wait=True, interrupt=True)
            servicer.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
