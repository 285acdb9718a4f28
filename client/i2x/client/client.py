"""Client: one method per capability of the four services, plus run_pipeline."""

from __future__ import annotations

import contextvars
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Callable

import grpc

from i2x import tracing
from i2x.client._version import __version__
from i2x.client.jobs import Job, JobEvent, JobFailed, JobInfo
from i2x.client.results import (ClassExplanation, CurationResult, Evaluation, ExplanationSummary, FinetuneTable,
                                PairAnalysis, PipelineResult, Run)
from i2x.client.store import StoreReader, open_reader
from i2x.v1 import (clustering_pb2, clustering_pb2_grpc, common_pb2, explanation_pb2, explanation_pb2_grpc,
                    interpretation_pb2, interpretation_pb2_grpc, jobs_pb2, jobs_pb2_grpc, training_pb2,
                    training_pb2_grpc)

__all__ = ["Client", "JobFailed", "DEFAULT_PORTS", "ServerInfo", "ServiceUnavailable"]

# Same as i2x.config.SERVICE_PORTS (a test keeps them equal; the client does not import the server half).
DEFAULT_PORTS = {"training": 50051, "interpretation": 50052, "clustering": 50053, "explanation": 50054}
STUBS = {"training": training_pb2_grpc.TrainingServiceStub,
         "interpretation": interpretation_pb2_grpc.InterpretationServiceStub,
         "clustering": clustering_pb2_grpc.ClusteringServiceStub,
         "explanation": explanation_pb2_grpc.ExplanationServiceStub,
         "jobs": jobs_pb2_grpc.JobsServiceStub}
TARGET_MODES = {"predicted": common_pb2.TARGET_MODE_PREDICTED, "label": common_pb2.TARGET_MODE_LABEL}
PROTOCOLS = {"full": common_pb2.FINETUNE_PROTOCOL_FULL, "curated": common_pb2.FINETUNE_PROTOCOL_CURATED,
             "full->full": common_pb2.FINETUNE_PROTOCOL_FULL_FULL,
             "curated->curated": common_pb2.FINETUNE_PROTOCOL_CURATED_CURATED,
             "curated->full": common_pb2.FINETUNE_PROTOCOL_CURATED_FULL}
SCOPES = {"all": common_pb2.CURATION_SCOPE_ALL, "pair": common_pb2.CURATION_SCOPE_PAIR}

Progress = Callable[[str, JobEvent], None] | None
SERVICES = tuple(DEFAULT_PORTS)


@dataclass
class ServerInfo:
    """What GetServerInfo says about one service process."""
    service: str
    version: str
    store_url: str
    store_endpoint: str = ""
    store_secure: bool = False


class ServiceUnavailable(ConnectionError):
    """No I2X service answers at an address (nothing listens, or it is down)."""

    def __init__(self, service: str, address: str, detail: str = ""):
        self.service, self.address = service, address
        super().__init__(f"no I2X {service} service answers at {address}: start the services with `i2x up`, "
                         f"or point I2X_ENDPOINT (or I2X_{service.upper()}_ADDR) at them"
                         + (f" ({detail})" if detail else ""))


def as_dict(values) -> dict | None:
    """Stage parameters given as a dict or as one of i2x.engine.params' dataclasses."""
    if values is None or isinstance(values, dict):
        return values
    if is_dataclass(values):
        return asdict(values)
    raise TypeError(f"give a dict or a parameters dataclass, not {type(values).__name__}")


def _message(cls, values: dict | None, field: str):
    """A proto message from a dict of its field names (unset keys stay unset = server default)."""
    message = cls()
    for name, value in (values or {}).items():
        if name not in message.DESCRIPTOR.fields_by_name:
            raise ValueError(f"{field}: unknown key {name!r}; valid keys are {sorted(message.DESCRIPTOR.fields_by_name)}")
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            getattr(message, name).extend(value)
        else:
            setattr(message, name, value)
    return message


def interpret_message(values: dict | None) -> common_pb2.InterpretParams:
    values = dict(values or {})
    target = values.pop("target", None)
    message = _message(common_pb2.InterpretParams, values, "interpret")
    if target is not None:
        if str(target) in TARGET_MODES:
            message.target_mode = TARGET_MODES[str(target)]
        else:
            message.target_mode = common_pb2.TARGET_MODE_CLASS
            message.target_class = int(target)
    return message


def explain_message(values: dict | None) -> common_pb2.ExplainParams:
    values = dict(values or {})
    scope, extra = values.pop("curation_scope", None), values.pop("extra", None)
    message = _message(common_pb2.ExplainParams, values, "explain")
    if scope is not None:
        message.curation_scope = SCOPES[scope]
    if extra:
        message.extra_json = json.dumps(extra)
    return message


def finetune_message(values: dict | None) -> common_pb2.FinetuneParams:
    values = dict(values or {})
    protocols = values.pop("protocols", None)
    message = _message(common_pb2.FinetuneParams, values, "finetune")
    if protocols:
        unknown = [p for p in protocols if p not in PROTOCOLS]
        if unknown:
            raise ValueError(f"finetune.protocols: unknown {unknown}; choose from {list(PROTOCOLS)}")
        message.protocols.extend(PROTOCOLS[p] for p in protocols)
    return message


class Client:
    """Talks to the four services. Addresses are "host:port"; token is the bearer token
    (I2X_API_TOKEN on the servers); tls=True uses system roots, a path names a CA bundle;
    store (a path or s3://BUCKET) is where arrays are read and local checkpoints uploaded; by default
    the store the services report (GetServerInfo), so uploads go where the services read."""

    def __init__(self, training: str | None = None, interpretation: str | None = None,
                 clustering: str | None = None, explanation: str | None = None, *, token: str | None = None,
                 tls: bool | str = False, store: str | StoreReader | None = None, retries: int = 6,
                 max_message_mb: int = 64, timeout: float = 60.0):
        self.addresses = {"training": training, "interpretation": interpretation, "clustering": clustering,
                          "explanation": explanation}
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.retries, self.timeout = retries, timeout
        self._store = store
        options = [("grpc.max_send_message_length", max_message_mb << 20),
                   ("grpc.max_receive_message_length", max_message_mb << 20)]
        credentials = None
        if tls:
            roots = Path(tls).read_bytes() if isinstance(tls, str) else None
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
        self._channels: dict[str, grpc.Channel] = {}
        for service, address in self.addresses.items():
            if address:
                self._channels[service] = (grpc.secure_channel(address, credentials, options) if credentials
                                           else grpc.insecure_channel(address, options))
                if tracing.enabled():  # client spans; the trace context goes out in the metadata
                    self._channels[service] = tracing.intercept_channel(self._channels[service])
        self._stubs: dict[tuple[str, str], object] = {}

    @classmethod
    def from_env(cls, **overrides) -> "Client":
        """I2X_TRAINING_ADDR ... I2X_EXPLANATION_ADDR, else I2X_ENDPOINT (host; default 127.0.0.1) with
        the default ports; I2X_API_TOKEN; I2X_CLIENT_TLS (true, or a CA file). The store is the one
        the services report (I2X_STORE is the services' setting; pass store= to read another)."""
        env = os.environ.get
        host = env("I2X_ENDPOINT") or "127.0.0.1"
        kwargs = {s: env(f"I2X_{s.upper()}_ADDR") or f"{host}:{port}" for s, port in DEFAULT_PORTS.items()}
        tls = env("I2X_CLIENT_TLS", "")
        kwargs.update(token=env("I2X_API_TOKEN") or None,
                      tls=True if tls.lower() in ("1", "true", "yes") else (tls if tls and tls.lower() not in
                                                                             ("0", "false", "no") else False))
        kwargs.update(overrides)
        return cls(**kwargs)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ plumbing

    def _stub(self, service: str, kind: str | None = None):
        if service not in self._channels:
            raise ValueError(f"no address for the {service} service: pass {service}='host:port' or set "
                             f"I2X_{service.upper()}_ADDR / I2X_ENDPOINT")
        key = (service, kind or service)
        if key not in self._stubs:
            self._stubs[key] = STUBS[kind or service](self._channels[service])
        return self._stubs[key]

    @staticmethod
    def _backoff(attempt: int) -> float:
        return min(0.2 * 2 ** attempt, 10.0)

    def _call(self, service: str, kind: str | None, method: str, request):
        """One unary RPC, retried with exponential backoff while the service is UNAVAILABLE."""
        for attempt in range(self.retries + 1):
            try:
                return getattr(self._stub(service, kind), method)(request, metadata=self._metadata,
                                                                  timeout=self.timeout)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.retries:
                    raise
                time.sleep(self._backoff(attempt))

    def _job(self, service: str, method: str, request) -> Job:
        return Job(self, service, self._call(service, None, method, request))

    def server_info(self, service: str = "training", *, timeout: float = 5.0) -> ServerInfo:
        """The service's name, version and store (one quick call: no retries, so a service that is
        not there is known at once as ServiceUnavailable)."""
        try:
            m = self._stub(service, "jobs").GetServerInfo(jobs_pb2.GetServerInfoRequest(), metadata=self._metadata,
                                                          timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise ServiceUnavailable(service, self.addresses[service]) from None
            raise
        return ServerInfo(m.service, m.version, m.store_url, m.store_endpoint, m.store_secure)

    @property
    def store(self) -> StoreReader:
        if isinstance(self._store, StoreReader):
            return self._store
        if self._store is None:
            service = next((s for s in SERVICES if s in self._channels), None)
            if service is None:
                raise ValueError("no service address and no store: pass store='PATH' or 's3://BUCKET'")
            info = self.server_info(service)
            options = {}
            if info.store_url.startswith("s3://") and not os.environ.get("I2X_S3_ENDPOINT"):
                # The services' endpoint; a client outside their network sets I2X_S3_ENDPOINT to its route.
                options = {"endpoint": info.store_endpoint, "secure": info.store_secure}
            self._store = open_reader(info.store_url, **options)
        else:
            self._store = open_reader(self._store)
        return self._store

    def load(self, key: str):
        """An artifact by key: .npz -> dict of arrays, .json -> object, else bytes."""
        if key.endswith(".npz"):
            return self.store.get_npz(key)
        if key.endswith(".json"):
            return self.store.get_json(key)
        return self.store.get_bytes(key)

    # ------------------------------------------------------------ training

    def create_run(self, run_id: str, *, model: dict | None = None, dataset: dict | None = None,
                   train: dict | None = None, explanation_fraction: float | None = None,
                   explanation_seed: int | None = None, overwrite: bool = False) -> Run:
        request = training_pb2.CreateRunRequest(
            run_id=run_id, model=_message(common_pb2.ModelSpec, model, "model"),
            dataset=_message(common_pb2.DatasetSpec, dataset, "dataset"), overwrite=overwrite)
        if train is not None:
            request.train.CopyFrom(_message(common_pb2.TrainConfig, train, "train"))
        if explanation_fraction is not None:
            request.explanation_fraction = explanation_fraction
        if explanation_seed is not None:
            request.explanation_seed = explanation_seed
        return Run.from_proto(self._call("training", None, "CreateRun", request))

    def train(self, run_id: str) -> Job:
        return self._job("training", "StartTraining", training_pb2.StartTrainingRequest(run_id=run_id))

    def register_checkpoints(self, run_id: str, checkpoints: dict[int, str | Path], *, overwrite: bool = False,
                             live: bool = False, finish: bool = False) -> Job:
        """{step: source}: a str is a key already in the store; a pathlib.Path (or a 'file://PATH'
        string) is a local safetensors file, uploaded to uploads/<run_id>/step-<step>.safetensors
        first (the services read only the store). overwrite: replace the checkpoints of a run that
        has some, removing the results derived from them (else FAILED_PRECONDITION). live: add them
        to the run's checkpoints while its training goes on (i2x.integrations.live); finish: close
        the live run (checkpoints may be {})."""
        refs = []
        for step, source in sorted(checkpoints.items()):
            if isinstance(source, str) and source.startswith("file://"):
                source = Path(source[len("file://"):])
            key = str(source)
            if isinstance(source, Path):
                key = f"uploads/{run_id}/step-{int(step):06d}.safetensors"
                self.store.put_bytes(key, source.read_bytes())
            refs.append(training_pb2.CheckpointRef(step=int(step), key=key))
        return self._job("training", "RegisterCheckpoints",
                         training_pb2.RegisterCheckpointsRequest(run_id=run_id, checkpoints=refs, overwrite=overwrite,
                                                                 live=live, finish=finish))

    def get_run(self, run_id: str) -> Run:
        return Run.from_proto(self._call("training", None, "GetRun", training_pb2.GetRunRequest(run_id=run_id)))

    def list_runs(self) -> list[str]:
        """Every run id, sorted (all pages)."""
        run_ids, token = [], ""
        while True:
            reply = self._call("training", None, "ListRuns", training_pb2.ListRunsRequest(page_token=token))
            run_ids += reply.run_ids
            token = reply.next_page_token
            if not token:
                return run_ids

    def finetune(self, run_id: str, **params) -> Job:
        return self._job("training", "StartFinetune",
                         training_pb2.StartFinetuneRequest(run_id=run_id, params=finetune_message(params)))

    def finetune_table(self, run_id: str) -> FinetuneTable:
        return FinetuneTable.from_proto(self._call("training", None, "GetFinetuneTable",
                                                   training_pb2.GetFinetuneTableRequest(run_id=run_id)))

    def evaluation(self, run_id: str, step: int | None = None) -> Evaluation:
        """Test accuracy and confusion of the final checkpoint, or of the checkpoint at `step`
        (the service evaluates it on first request and keeps the result in the store)."""
        request = training_pb2.GetEvaluationRequest(run_id=run_id)
        if step is not None:
            request.step = int(step)
        return Evaluation.from_proto(self._call("training", None, "GetEvaluation", request))

    # ------------------------------------------------------------ interpretation, clustering

    def interpret(self, run_id: str, *, steps: list[int] | None = None, follow: bool = False, **params) -> Job:
        """follow: a live run's interpretation, each checkpoint as it is registered, done when the run is."""
        return self._job("interpretation", "StartInterpretation", interpretation_pb2.StartInterpretationRequest(
            run_id=run_id, steps=steps or [], params=interpret_message(params), follow=follow))

    def prototypes(self, run_id: str, **params) -> Job:
        return self._job("clustering", "StartPrototypes", clustering_pb2.StartPrototypesRequest(
            run_id=run_id, params=_message(common_pb2.PrototypeParams, params, "prototypes")))

    def cluster_confidences(self, run_id: str, **params) -> Job:
        return self._job("clustering", "StartConfidenceClustering", clustering_pb2.StartConfidenceClusteringRequest(
            run_id=run_id, params=_message(common_pb2.ClusterParams, params, "clusters")))

    # ------------------------------------------------------------ explanation

    def explain(self, run_id: str, **params) -> Job:
        return self._job("explanation", "StartExplanation", explanation_pb2.StartExplanationRequest(
            run_id=run_id, params=explain_message(params)))

    def explanation(self, run_id: str) -> ExplanationSummary:
        return ExplanationSummary.from_proto(self._call("explanation", None, "GetExplanation",
                                                        explanation_pb2.GetExplanationRequest(run_id=run_id)))

    def class_explanation(self, run_id: str, class_index: int) -> ClassExplanation:
        return ClassExplanation.from_proto(self._call("explanation", None, "GetClassExplanation",
                                                      explanation_pb2.GetClassExplanationRequest(
                                                          run_id=run_id, class_index=class_index)))

    def pair_analysis(self, run_id: str, pair: tuple[int, int] | list[int] | None = None) -> PairAnalysis:
        """The explanation's pair analysis, or that of classes `pair` = (a, b) (any two classes)."""
        return PairAnalysis.from_proto(self._call("explanation", None, "GetPairAnalysis",
                                                  explanation_pb2.GetPairAnalysisRequest(
                                                      run_id=run_id, pair=list(pair or []))))

    def curate(self, run_id: str, *, prototype: int | None = None, scope: str | None = None,
               pair: list[int] | None = None) -> CurationResult:
        request = explanation_pb2.CurateRequest(run_id=run_id, pair=pair or [])
        if prototype is not None:
            request.prototype = prototype
        if scope is not None:
            request.scope = SCOPES[scope]
        return CurationResult.from_proto(self._call("explanation", None, "Curate", request))

    def report(self, run_id: str, *, compare_with: str | None = None) -> Job:
        """Build the run's figures and self-contained HTML report in the explanation service, stored
        as runs/<run_id>/report.html (figures under runs/<run_id>/figures/). compare_with: another
        run of the same store and classes, compared side by side at the end of the report. The
        job's result: {"key": report.html's key, "figure_keys": [...], "compare_run_id": ...};
        read the page with client.load(key)."""
        return self._job("explanation", "StartReport", explanation_pb2.StartReportRequest(
            run_id=run_id, compare_run_id=compare_with or ""))

    # ------------------------------------------------------------ MLflow (i2x.integrations.mlflow; needs `mlflow`)

    def checkpoints_from_mlflow(self, run_id: str, uri: str, *, tracking_uri: str | None = None) -> dict[int, str]:
        """Copy the checkpoints an MLflow run logged (uri: runs:/<mlflow run id>/<artifact path>) into
        the store; returns {step: key} for register_checkpoints or run_pipeline(checkpoints=...)."""
        from i2x.integrations.mlflow import import_checkpoints

        return import_checkpoints(self.store, run_id, uri, tracking_uri=tracking_uri)

    def register_from_mlflow(self, run_id: str, uri: str, *, tracking_uri: str | None = None) -> Job:
        """checkpoints_from_mlflow, then RegisterCheckpoints with those store keys (the run must exist)."""
        return self.register_checkpoints(run_id, self.checkpoints_from_mlflow(run_id, uri, tracking_uri=tracking_uri))

    def export_to_mlflow(self, run_id: str, *, tracking_uri: str | None = None, experiment: str | None = None,
                         mlflow_run_id: str | None = None, retries: int = 3) -> dict:
        """Log an explained run (params, metrics, tags, explanation.json, report and figures) to MLflow,
        read from the store; returns {"run_id": the MLflow run, "artifact_uri", ...}."""
        from i2x.integrations.mlflow import export_run

        return export_run(self.store, run_id, tracking_uri=tracking_uri, experiment=experiment,
                          mlflow_run_id=mlflow_run_id, retries=retries)

    # ------------------------------------------------------------ the whole method

    @tracing.traced("i2x.run_pipeline")  # one trace for the whole analysis when tracing is on
    def run_pipeline(self, run_id: str, *, model: dict | None = None, dataset: dict | None = None,
                     train: dict | None = None, checkpoints: dict[int, str | Path] | None = None,
                     interpret=None, prototypes=None, clusters=None, explain=None, finetune=None,
                     report: bool = True, overwrite: bool = False, explanation_fraction: float | None = None,
                     explanation_seed: int | None = None, progress: Progress = None,
                     timeout: float | None = None) -> PipelineResult:
        """Train (or register `checkpoints`, or take the run as it is when it has checkpoints),
        interpret, extract prototypes (alongside the interpretation), cluster, explain, with
        `finetune` curate and fine-tune, and with `report` build the HTML report last (stage
        "report"; its key in result.report_key). progress(stage, JobEvent) follows every job.

        The same signature and defaults as the in-process i2x.engine.pipeline.run_pipeline (which
        takes the store first): stage parameters are dicts or i2x.engine.params dataclasses. An
        existing run given a spec (model, dataset, train, checkpoints) other than its own is an
        error (FAILED_PRECONDITION) unless overwrite=True, which recreates it."""
        interpret, prototypes, clusters, explain, finetune = (
            as_dict(interpret), as_dict(prototypes), as_dict(clusters), as_dict(explain), as_dict(finetune))
        checkpoints = {int(k): (Path(v[len("file://"):]) if isinstance(v, str) and v.startswith("file://") else v)
                       for k, v in (checkpoints or {}).items()}
        missing = [str(v) for v in checkpoints.values() if isinstance(v, Path) and not v.is_file()]
        if missing:  # before anything is created
            raise FileNotFoundError(f"checkpoints: no such local file {', '.join(missing)}")
        jobs: dict[str, str] = {}

        def follow(stage: str, job: Job) -> dict:
            jobs[stage] = job.job_id
            return job.wait(timeout, (lambda event: progress(stage, event)) if progress else None)

        try:
            run = self.get_run(run_id)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            run = None
        given = any(x is not None for x in (model, dataset, train, explanation_fraction, explanation_seed))
        if run is not None and (given or overwrite):
            # CreateRun compares the specs with the run's: the same returns the run, others are an error
            # unless overwrite. A spec not given is the run's own.
            stored = run.metadata
            explanation = stored.get("explanation") or {}
            run = self.create_run(
                run_id, model=model if model is not None else stored.get("model"),
                dataset=dataset if dataset is not None else stored.get("dataset"),
                train=train if train is not None else stored.get("train"),
                explanation_fraction=explanation_fraction if explanation_fraction is not None
                else explanation.get("fraction"),
                explanation_seed=explanation_seed if explanation_seed is not None else explanation.get("seed"),
                overwrite=overwrite)
        elif run is None:
            run = self.create_run(run_id, model=model, dataset=dataset, explanation_fraction=explanation_fraction,
                                  explanation_seed=explanation_seed,
                                  train=None if checkpoints else (train or {}))
        if run.checkpoints and checkpoints and not overwrite:
            have = {int(c["step"]) for c in run.checkpoints}
            if set(checkpoints) != have or any(isinstance(v, Path) for v in checkpoints.values()):
                raise ValueError(f"run {run_id!r} already has checkpoints (steps {sorted(have)}); "
                                 "pass overwrite=True to replace them, or another run id")
        if not run.checkpoints or (checkpoints and overwrite):
            follow("register" if checkpoints else "train",
                   self.register_checkpoints(run_id, checkpoints) if checkpoints else self.train(run_id))
            run = self.get_run(run_id)

        # Prototypes need only the final checkpoint: extract them while the interpretation runs.
        proto_job = self.prototypes(run_id, **(prototypes or {}))
        proto_result: dict = {}
        # copy_context: the thread's calls stay in this analysis' trace (tracing keeps it in a contextvar).
        proto_thread = threading.Thread(target=contextvars.copy_context().run, args=(lambda: proto_result.update(
            outcome=_outcome(lambda: follow("prototypes", proto_job))),), daemon=True)
        proto_thread.start()
        follow("interpret", self.interpret(run_id, **(interpret or {})))
        proto_thread.join()
        if isinstance(proto_result.get("outcome"), BaseException):
            raise proto_result["outcome"]
        follow("clusters", self.cluster_confidences(run_id, **(clusters or {})))
        follow("explain", self.explain(run_id, **(explain or {})))
        result = PipelineResult(run=run, evaluation=self.evaluation(run_id), explanation=self.explanation(run_id),
                                pair_analysis=self.pair_analysis(run_id), jobs=jobs)
        if finetune is not None and result.pair_analysis.uncertain_prototype is None:
            result.notes.append("no uncertain prototype in the pair: nothing to curate, fine-tuning skipped")
        elif finetune is not None:
            result.curation = self.curate(run_id, scope=(explain or {}).get("curation_scope"))
            follow("finetune", self.finetune(run_id, **finetune))
            result.finetune = self.finetune_table(run_id)
        if report:  # last, so the report shows the fine-tuning table and the confusion after it
            result.report_key = follow("report", self.report(run_id))["key"]
        return result

    # ------------------------------------------------------------ jobs of every service

    def list_jobs(self, service: str | None = None, *, run_id: str | None = None) -> list[JobInfo]:
        """Jobs of one service, or of every service with an address (oldest first per service)."""
        out = []
        for name in ([service] if service else [s for s in SERVICES if s in self._channels]):
            response = self._call(name, "jobs", "ListJobs", jobs_pb2.ListJobsRequest(run_id=run_id or ""))
            out.extend(JobInfo.from_proto(j) for j in response.jobs)
        return out

    def job(self, job_id: str, service: str | None = None) -> Job:
        """The job with this id, looked up on `service` or on every service in turn."""
        for name in ([service] if service else [s for s in SERVICES if s in self._channels]):
            try:
                return Job(self, name, self._call(name, "jobs", "GetJob", jobs_pb2.GetJobRequest(job_id=job_id)))
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
        raise LookupError(f"no job {job_id!r} on {service or 'any service'}")


def _outcome(fn):
    try:
        return fn()
    except BaseException as exc:  # noqa: BLE001  (re-raised in the caller's thread)
        return exc
