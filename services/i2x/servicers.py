"""What the four servicers share: proto <-> domain conversion, the job API, the serve loop.

Servicers stay thin: validate and convert the message here, call an i2x.engine.stages
function (inside a job for long work), convert the result. Domain errors propagate and the
server's ErrorInterceptor maps them to status codes.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import math
from typing import Any, Callable

from i2x import access
from i2x.core.errors import InvalidArgument, ResourceExhausted
from i2x.limits import check_id_length, json_object, max_jobs, quote
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
    return validate_id(check_id_length(getattr(request, field), field), field)


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
    access.check_model(spec, field)  # before anything imports a factory
    from i2x.models import ModelSpec
    from i2x.models.zoo import check_spec

    check_spec(ModelSpec.from_dict(spec))  # the architecture's own limits (input size, channels)
    return spec


def dataset_spec(message: common_pb2.DatasetSpec, field: str = "dataset") -> dict:
    spec = _set_fields(message)
    if "image_size" in spec:
        count(spec["image_size"], f"{field}.image_size", high=8192)
    if "test_fraction" in spec:
        from i2x.data.datasets import check_test_fraction

        check_test_fraction(spec["test_fraction"], f"{field}.test_fraction")  # the core's own rule
    if "split_seed" in spec:
        count(spec["split_seed"], f"{field}.split_seed", low=0, high=2**32 - 1)
    return access.check_dataset(spec, field)


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
        if not 0 < len(message.target_layer) <= 200:
            raise InvalidArgument(f"give a layer name of 1-200 characters (from model.named_modules()), got "
                                  f"{quote(message.target_layer)}", field="params.target_layer")
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


def pair_of(values, field: str, n_classes: int | None = None) -> list[int] | None:
    pair = [int(v) for v in values]
    if not pair:
        return None
    if len(pair) != 2 or pair[0] == pair[1] or min(pair) < 0:
        raise InvalidArgument(f"give two different class indices [a, b], got {quote(pair)}", field=field)
    if n_classes is not None and max(pair) >= n_classes:
        raise InvalidArgument(f"class indices must be in 0..{n_classes - 1} (the run has {n_classes} classes), "
                              f"got {pair}", field=field)
    return pair


def explain_params(message: common_pb2.ExplainParams, n_classes: int | None = None) -> ExplainParams:
    params = ExplainParams()
    if message.HasField("tau"):
        params.tau = number(message.tau, "params.tau", high=1e6)
    if message.HasField("lam"):
        params.lam = number(message.lam, "params.lam", high=1e9, low_open=True)  # Eq. 8 needs lambda > 0
    params.pair = pair_of(message.pair, "params.pair", n_classes)
    scope = enum_value(common_pb2.CurationScope, message.curation_scope, "params.curation_scope")
    params.curation_scope = SCOPE_NAMES.get(scope, params.curation_scope)
    if message.extra_json:
        extra = json_object(message.extra_json, "params.extra_json")
        known = explain_extra_keys()
        unknown = sorted(set(extra) - set(known))
        if unknown:
            # The valid keys, in short: the whole list (docs/METHOD.md) would make the error too long to quote.
            names = sorted(known)
            shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more (docs/METHOD.md)" if len(names) > 8 else "")
            raise InvalidArgument(f"unknown keys {[quote(k) for k in unknown[:5]]}; valid keys include {shown}",
                                  field="params.extra_json")
        for name, value in extra.items():
            _check_extra_value(name, value, known[name])
        params.extra = extra
    return params


def explain_extra_keys() -> dict[str, Any]:
    """The options of i2x.core.explain.build_explanation that ExplainParams.extra may set (those
    explain_run does not pass itself), with their defaults."""
    import inspect

    from i2x.core.explain import build_explanation

    own = {"classes", "assignments", "labels", "confidences", "W", "steps", "confusion", "n_prototypes", "pair",
           "curation_scope", "tau", "lam"}
    return {name: p.default for name, p in inspect.signature(build_explanation).parameters.items() if name not in own}


def _check_extra_value(name: str, value: Any, default: Any) -> None:
    """An extra option has the type of its default (a number for a float, an int for an int...)."""
    field = f"params.extra_json.{name}"
    if isinstance(default, bool) or isinstance(default, str) or isinstance(default, dict):
        ok = isinstance(value, type(default))
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_COUNT
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:  # None: an optional number or object
        ok = value is None or (isinstance(value, (int, float, dict)) and not isinstance(value, bool)
                               and (not isinstance(value, float) or math.isfinite(value)))
    if not ok:
        wanted = type(default).__name__ if default is not None else "a number, an object or null"
        raise InvalidArgument(f"must be {wanted} like its default {default!r}, got {quote(json.dumps(value))}",
                              field=field)


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
    run.live = bool(record.get("live"))
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
        shown, token = page(records, lambda r: [r.created, r.job_id], request.page_size, request.page_token)
        return jobs_pb2.ListJobsResponse(jobs=[job_to_proto(r) for r in shown], next_page_token=token)

    async def GetServerInfo(self, request, context):
        from i2x.client import __version__

        store = self.jobs.store  # the client uploads and reads here (one store, said by the services)
        return jobs_pb2.ServerInfo(service=self.jobs.service, version=__version__, store_url=store.url,
                                   store_endpoint=getattr(store, "endpoint", "") or "",
                                   store_secure=bool(getattr(store, "secure", False)))


def page(items: list, key: Callable[[Any], list], page_size: int, page_token: str) -> tuple[list, str]:
    """One page of `items` (sorted by `key`) after the item a page_token names, and the next token.

    A token is the key of the last item shown (opaque base64 JSON), so items added meanwhile
    neither repeat nor shift a page."""
    from i2x.limits import max_page_size

    limit = max_page_size()
    size = limit if page_size <= 0 else min(int(page_size), limit)
    start = 0
    if page_token:
        try:
            after = json.loads(base64.urlsafe_b64decode(page_token.encode()))
            start = next((i for i, item in enumerate(items) if key(item) > after), len(items))
        except (ValueError, TypeError):
            raise InvalidArgument(f"{quote(page_token)} is not a next_page_token of this list; pass the "
                                  "previous reply's next_page_token or \"\"", field="page_token") from None
    shown = items[start:start + size]
    more = start + size < len(items)
    token = base64.urlsafe_b64encode(json.dumps(key(shown[-1])).encode()).decode() if shown and more else ""
    return shown, token


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

    async def start(self, kind: str, run_id: str, params: dict, request_id: str = "") -> jobs_pb2.Job:
        await asyncio.to_thread(stages.get_run, self.store, run_id)  # unknown run -> NOT_FOUND now
        if request_id:
            check_id_length(request_id, "request_id")
            existing = await asyncio.to_thread(self.jobs.by_request, kind, run_id, request_id)
            if existing is not None and existing.params == params:
                return job_to_proto(existing)  # a retry: the same job, even at the job limit
        limit = max_jobs()
        if self.jobs.active_count() >= limit:
            raise ResourceExhausted(f"this service already holds {limit} unfinished jobs (I2X_MAX_JOBS); wait for "
                                    "some to finish or cancel some, then start again", field="job")
        fn = self.job_function(kind, run_id, params)
        record = await asyncio.to_thread(functools.partial(self.jobs.submit, kind, run_id, params, fn,
                                                           request_id=request_id))
        return job_to_proto(record)

    def recover(self) -> list[str]:
        """Take over jobs nobody holds now, and keep doing so every lease/2 s (a crashed replica's jobs)."""
        return self.jobs.start_recovery(
            lambda record: self.job_function(record.kind, record.run_id, record.params))

    def close(self) -> None:
        """Release what the servicer holds besides its jobs (the interpretation service's Ray actors)."""

    def bind_health(self, health, loop) -> None:
        """Called once the server is up: a servicer whose readiness depends on more (Ray) sets it."""


def stage_progress(ctx: JobContext) -> dict:
    """The keyword arguments every stage takes for progress and cancellation."""
    return {"progress": ctx.progress, "cancel": ctx.cancel_event}
