"""Metrics, traces and logs of real services: Prometheus scraped over HTTP, spans from the
OpenTelemetry SDK (in-memory in this process, OTLP from the Ray workers to a collector on
loopback), JSON log lines carrying the job's ids."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent import futures

import grpc
import pytest

from conftest import client_for, start_services

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PIPELINE = dict(model={"arch": "small_cnn", "num_classes": 3}, train={"preset": "tiny"},
                prototypes={"n_prototypes": 4, "n_components": 4}, clusters={"min_cluster_size": 3},
                explain={"pair": [1, 2]})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict:
    """{(sample name, ((label, value), ...)): value} from a real HTTP GET of /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def get_missing_job(address: str, token: str | None = None):
    from i2x.v1 import jobs_pb2, jobs_pb2_grpc

    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as error:
            jobs_pb2_grpc.JobsServiceStub(channel).GetJob(jobs_pb2.GetJobRequest(job_id="nosuchjob"), timeout=10,
                                                          metadata=metadata)
    return error.value.code()


# ---------------------------------------------------------------- `i2x serve` as a user runs it

def test_serve_exposes_metrics_over_http_and_logs_json(tmp_path):
    metrics_port = free_port()
    env = dict(os.environ, I2X_STORE=str(tmp_path / "store"), I2X_LOG_FORMAT="json", I2X_LOG_LEVEL="INFO",
               I2X_METRICS_PORT=str(metrics_port), I2X_GRACE_SECONDS="1", I2X_API_TOKEN="s3cret")
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    serve = subprocess.Popen([sys.executable, "-m", "i2x.cli", "serve", "clustering", "--port", "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    try:
        address = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and address is None:
            line = serve.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("i2x clustering listening on "):
                address = line.split()[4]
        assert address, "".join(lines)
        before = scrape(metrics_port)
        assert get_missing_job(address, "s3cret") == grpc.StatusCode.NOT_FOUND
        assert get_missing_job(address, "s3cret") == grpc.StatusCode.NOT_FOUND
        assert get_missing_job(address) == grpc.StatusCode.UNAUTHENTICATED  # counted too: outside the auth
        after = scrape(metrics_port)
        labels = dict(service="clustering", grpc_service="i2x.v1.JobsService", grpc_method="GetJob")
        for code, calls in (("NOT_FOUND", 2), ("UNAUTHENTICATED", 1), ("OK", 0)):
            assert value(after, "i2x_grpc_requests_total", **labels, grpc_code=code) - \
                value(before, "i2x_grpc_requests_total", **labels, grpc_code=code) == calls, code
        assert value(after, "i2x_grpc_request_duration_seconds_count", **labels) - \
            value(before, "i2x_grpc_request_duration_seconds_count", **labels) == 3
        # each GetJob of an unknown id reads the job record once and finds nothing
        store_labels = dict(service="clustering", op="get", result="not_found")
        assert value(after, "i2x_store_operations_total", **store_labels) - \
            value(before, "i2x_store_operations_total", **store_labels) == 2
    finally:
        serve.send_signal(signal.SIGTERM)
        out, _ = serve.communicate(timeout=30)
        lines.extend(out.splitlines(keepends=True))
    assert serve.returncode == 0, "".join(lines)
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert records, "".join(lines)
    for record in records:
        assert set(record) >= {"time", "level", "service", "job_id", "run_id", "logger", "message"}
        assert record["service"] == "clustering"
    messages = [r["message"] for r in records]
    assert f"metrics on http://127.0.0.1:{metrics_port}/metrics" in messages
    # The routine NOT_FOUND lookups are DEBUG: not in an INFO log.
    assert not [m for m in messages if "NOT_FOUND" in m]


def test_metrics_port_setting():
    from i2x.core.errors import InvalidArgument
    from i2x.metrics import METRICS_PORTS, metrics_port

    assert metrics_port("training", "0") == 0
    assert metrics_port("interpretation", "auto") == METRICS_PORTS["interpretation"]
    assert len(set(METRICS_PORTS.values())) == 4  # `i2x up` with auto: no two services on one port
    assert metrics_port("clustering", "9090") == 9090
    with pytest.raises(InvalidArgument) as error:
        metrics_port("clustering", "nine")
    assert error.value.field == "I2X_METRICS_PORT"
    assert "give 0 (off), auto (9151-9154 by service) or a port number" in str(error.value)


def test_a_taken_metrics_port_is_a_clear_error():
    from i2x import metrics
    from i2x.core.errors import Unavailable

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(Unavailable) as error:
            metrics.serve(port)
    assert error.value.field == "I2X_METRICS_PORT"
    assert f"cannot serve metrics on 127.0.0.1:{port}" in str(error.value)
    assert "`i2x up` runs four services on one host: use auto" in str(error.value)


def test_log_lines_carry_ids_from_extra_or_the_job_context():
    from i2x import logs

    stream = io.StringIO()
    logger = logging.getLogger("i2x.test.logs")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(logs.make_handler("training", "json", stream))
    text = io.StringIO()
    logger.addHandler(logs.make_handler("training", "text", text))
    try:
        logger.info("state %s", "FAILED", extra={"job_id": "j1", "run_id": "r1"})
        with logs.log_context(job_id="j2", run_id="r2"):
            logger.warning("inside")
        logger.info("outside")
    finally:
        logger.handlers.clear()
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (first["job_id"], first["run_id"], first["level"], first["message"]) == ("j1", "r1", "INFO", "state FAILED")
    assert (second["job_id"], second["run_id"], second["level"]) == ("j2", "r2", "WARNING")
    assert (third["job_id"], third["run_id"], third["service"]) == ("", "", "training")
    assert first["time"].endswith("Z") and first["time"][10] == "T"
    text_lines = text.getvalue().splitlines()
    assert text_lines[0].endswith("state FAILED [job=j1 run=r1]")
    assert text_lines[2].endswith("INFO outside")


# ---------------------------------------------------------------- one analysis: metrics, trace, logs

class _Collector:
    """An OTLP/gRPC trace collector on loopback: what the Ray workers export lands here."""

    def __init__(self):
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        spans, lock = [], threading.Lock()

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                with lock:
                    for resource_spans in request.resource_spans:
                        for scope_spans in resource_spans.scope_spans:
                            spans.extend(scope_spans.spans)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.spans, self._lock = spans, lock
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def named(self, name: str) -> list:
        with self._lock:
            return [s for s in self.spans if s.name == name]


@pytest.fixture(scope="module")
def analysed(tmp_path_factory, ray_local, tiny_dataset):
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from i2x import logs, metrics, tracing
    from i2x.storage import LocalStore

    collector = _Collector()
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    # A collector nobody listens on: exporting there fails in the background, never a job.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{free_port()}",
                                                                    insecure=True, timeout=1)))
    tracing.configure(provider)
    stream = io.StringIO()
    handler = logs.make_handler(fmt="json", stream=stream)
    root, server_log = logging.getLogger(), logging.getLogger("i2x.server")
    old_levels = root.level, server_log.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    server_log.setLevel(logging.DEBUG)
    with pytest.MonkeyPatch.context() as env:
        # Forwarded to the Ray workers (raycluster.worker_env): they export their unit spans here.
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.port}")
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        services = start_services(LocalStore(tmp_path_factory.mktemp("observed") / "store"))
        port = metrics.serve(0)
        try:
            with client_for(services) as client:
                before = scrape(port)
                assert get_missing_job(services.address("training")) == grpc.StatusCode.NOT_FOUND
                started = time.monotonic()
                result = client.run_pipeline("obs", dataset={"kind": "npz", "root": tiny_dataset}, timeout=120,
                                             **PIPELINE)
                elapsed = time.monotonic() - started
                after = scrape(port)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(collector.named("i2x.unit interpret")) < len(result.run.steps):
                time.sleep(0.2)
            yield dict(result=result, before=before, after=after, memory=memory, collector=collector,
                       services=services, logs=stream, elapsed=elapsed)
        finally:
            services.stop()
            metrics.stop(port)
            tracing.configure(None)
            provider.shutdown()
            collector.server.stop(0)
            root.removeHandler(handler)
            root.setLevel(old_levels[0])
            server_log.setLevel(old_levels[1])


def test_metrics_move_with_an_analysis(analysed):
    before, after, result = analysed["before"], analysed["after"], analysed["result"]

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    steps = result.run.steps
    assert steps == [2, 4, 6]
    assert moved("i2x_grpc_requests_total", service="training", grpc_service="i2x.v1.JobsService",
                 grpc_method="GetJob", grpc_code="NOT_FOUND") == 1
    assert moved("i2x_grpc_requests_total", service="interpretation", grpc_service="i2x.v1.InterpretationService",
                 grpc_method="StartInterpretation", grpc_code="OK") == 1
    for service, kind in (("training", "train"), ("interpretation", "interpret"), ("clustering", "prototypes"),
                          ("clustering", "confidence_clusters"), ("explanation", "explain")):
        assert value(after, "i2x_jobs", service=service, kind=kind, state="SUCCEEDED") == 1, (service, kind)
        assert value(after, "i2x_jobs", service=service, kind=kind, state="RUNNING") == 0
        assert moved("i2x_job_duration_seconds_count", service=service, kind=kind, state="SUCCEEDED") == 1
        assert moved("i2x_job_queue_wait_seconds_count", service=service, kind=kind) == 1
    # one unit per checkpoint; none failed
    assert moved("i2x_job_units_total", service="interpretation", kind="interpret", result="done") == len(steps)
    assert moved("i2x_job_units_total", service="interpretation", kind="interpret", result="failed") == 0
    size = value(after, "i2x_ray_pool_actors", service="interpretation")
    assert size >= 1
    assert value(after, "i2x_ray_pool_idle_actors", service="interpretation") == size  # all back after the job
    assert value(after, "i2x_ray_pool_busy_actors", service="interpretation") == 0
    assert value(after, "i2x_ray_units_waiting", service="interpretation") == 0
    # the interpretation service wrote its job record and the index at least
    assert moved("i2x_store_operations_total", service="interpretation", op="put", result="ok") >= 2
    assert moved("i2x_store_operation_duration_seconds_count", service="interpretation", op="put") >= 2
    assert moved("i2x_store_operations_total", service="training", op="get", result="not_found") == 1


def test_one_analysis_is_one_trace_down_to_the_ray_units(analysed):
    from opentelemetry.trace import SpanKind

    spans = analysed["memory"].get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}
    (root,) = [s for s in spans if s.name == "i2x.run_pipeline"]
    assert root.parent is None and root.attributes["i2x.run_id"] == "obs"
    trace_id = root.context.trace_id

    def chain(span):
        names = []
        while span is not None:
            names.append((span.name, span.kind))
            span = by_id.get(span.parent.span_id) if span.parent else None
        return names

    method = "/i2x.v1.InterpretationService/StartInterpretation"
    (job,) = [s for s in spans if s.name == "i2x.job interpret"]
    assert job.context.trace_id == trace_id
    assert job.attributes["i2x.job_id"] == analysed["result"].jobs["interpret"]
    assert job.attributes["i2x.state"] == "SUCCEEDED"
    assert chain(job) == [("i2x.job interpret", SpanKind.INTERNAL), (method, SpanKind.SERVER),
                          (method, SpanKind.CLIENT), ("i2x.run_pipeline", SpanKind.INTERNAL)]
    for kind in ("train", "prototypes", "confidence_clusters", "explain"):
        (other,) = [s for s in spans if s.name == f"i2x.job {kind}"]
        assert other.context.trace_id == trace_id, kind
    # every call the SDK made, the job watches from its second thread included, is in the trace
    calls = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert any(s.name == "/i2x.v1.JobsService/WatchJob" for s in calls)
    assert {s.context.trace_id for s in calls} == {trace_id}
    # the one other root: the server span of the bare GetJob the fixture sent without the SDK
    assert [(s.name, s.kind) for s in spans if s.parent is None and s is not root] == [
        ("/i2x.v1.JobsService/GetJob", SpanKind.SERVER)]

    # the units ran in Ray worker processes and came back over OTLP, children of the job span
    units = analysed["collector"].named("i2x.unit interpret")
    steps = sorted(next(a.value.int_value for a in u.attributes if a.key == "i2x.step") for u in units)
    assert steps == analysed["result"].run.steps
    for unit in units:
        assert unit.trace_id == trace_id.to_bytes(16, "big")
        assert unit.parent_span_id == job.context.span_id.to_bytes(8, "big")


def test_log_lines_of_the_analysis_carry_the_job_ids(analysed):
    records = [json.loads(line) for line in analysed["logs"].getvalue().splitlines()]
    assert records
    jobs = analysed["result"].jobs
    # a line logged inside the interpretation job (the pool starting its actors) names the job
    (pool_line,) = [r for r in records if r["message"].startswith("warm pool:")]
    assert (pool_line["service"], pool_line["job_id"], pool_line["run_id"]) == \
        ("interpretation", jobs["interpret"], "obs")
    # every line that names a job of the analysis carries that job's ids
    for record in records:
        for job_id in jobs.values():
            if job_id in record["message"]:
                assert record["job_id"] == job_id and record["run_id"] == "obs", record
    # the routine NOT_FOUND lookups (the missing job, then run_pipeline's GetRun of a new run) are DEBUG
    missing = [r for r in records if "NOT_FOUND" in r["message"]]
    assert [r["message"].split(" ->")[0] for r in missing] == ["/i2x.v1.JobsService/GetJob",
                                                               "/i2x.v1.TrainingService/GetRun"]
    assert {r["level"] for r in missing} == {"DEBUG"}
