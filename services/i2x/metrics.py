"""Prometheus metrics of a service process (prometheus-client), served on I2X_METRICS_PORT.

What is measured and where (docs/METRICS.md lists every metric and the alerts worth having):
- gRPC calls: MetricsInterceptor, a grpc.aio server interceptor placed outside the auth and
  error interceptors, so it sees the final status code of every call (UNAUTHENTICATED too).
- Jobs: the job wrapper of i2x.observability observes queue wait, run time and units; the
  jobs by kind and state, and the Ray pool, are read at scrape time by ServiceCollector from
  the servicers registered with watch() (nothing is counted twice, nothing goes stale).
- Store operations: MeteredStore wraps the store a service opens.

The registry is prometheus-client's default one: several services in one process (tests,
ServicesInThread) share it and tell themselves apart by the `service` label.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import weakref
from typing import Callable

import grpc
from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from i2x import config
from i2x.core.errors import InvalidArgument, NotFound, Unavailable
from i2x.grpc_handlers import rebuild_handler
from i2x.storage.base import Store

log = logging.getLogger(__name__)

# A service's own metrics port for I2X_METRICS_PORT=auto (`i2x up`: four services on one host).
METRICS_PORTS = {"training": 9151, "interpretation": 9152, "clustering": 9153, "explanation": 9154}

_RPC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
_JOB_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
_STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)

GRPC_REQUESTS = Counter(
    "i2x_grpc_requests_total", "gRPC calls handled, by method and final status code",
    ["service", "grpc_service", "grpc_method", "grpc_code"])
GRPC_DURATION = Histogram(
    "i2x_grpc_request_duration_seconds", "time to handle a gRPC call (a stream: until it ends), by method",
    ["service", "grpc_service", "grpc_method"], buckets=_RPC_BUCKETS)
JOB_QUEUE_WAIT = Histogram(
    "i2x_job_queue_wait_seconds", "time from submitting (or resuming) a job to its start",
    ["service", "kind"], buckets=_JOB_BUCKETS)
JOB_DURATION = Histogram(
    "i2x_job_duration_seconds", "run time of a job, by kind and the state it ended in "
    "(SUCCEEDED, FAILED, CANCELLED, or INTERRUPTED: left for another replica at shutdown)",
    ["service", "kind", "state"], buckets=_JOB_BUCKETS)
JOB_UNITS = Counter(
    "i2x_job_units_total", "units of work of jobs as their progress reports them (checkpoints interpreted, "
    "HDBSCAN steps, ...): done (or found done), or failed (left undone by a job that failed)", ["service", "kind", "result"])
STORE_OPERATIONS = Counter(
    "i2x_store_operations_total", "store operations, by kind (put, get, exists, list, delete) and "
    "result (ok, not_found, error)", ["service", "op", "result"])
STORE_DURATION = Histogram(
    "i2x_store_operation_duration_seconds", "latency of store operations, by kind",
    ["service", "op"], buckets=_STORE_BUCKETS)


# ---------------------------------------------------------------- gRPC

def _split_method(full: str) -> tuple[str, str]:
    service, _, method = full.lstrip("/").partition("/")
    return service, method


def _code_name(context) -> str:
    try:
        code = context.code()
    except Exception:  # noqa: BLE001  (an older grpcio without ServicerContext.code())
        code = None
    if code is None:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every call by method and final status code and times it (grpc.aio has no
    py-grpc-prometheus). Place it before the auth and error interceptors."""

    def __init__(self, service: str):
        self.service = service

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        grpc_service, grpc_method = _split_method(handler_call_details.method)
        labels = (self.service, grpc_service, grpc_method)
        return rebuild_handler(handler, lambda behaviour, streams: self._wrap(labels, behaviour, streams))

    @staticmethod
    def _observe(labels: tuple, code: str, started: float) -> None:
        GRPC_REQUESTS.labels(*labels, code).inc()
        GRPC_DURATION.labels(*labels).observe(time.perf_counter() - started)

    def _wrap(self, labels: tuple, behaviour: Callable, streams_out: bool) -> Callable:
        observe = self._observe
        if streams_out:
            async def stream(request_or_iterator, context):
                started, code = time.perf_counter(), None
                try:
                    produced = behaviour(request_or_iterator, context)
                    if inspect.isasyncgen(produced):
                        async for item in produced:
                            yield item
                    elif inspect.isawaitable(produced):
                        await produced
                    elif produced is not None:
                        for item in produced:
                            yield item
                except grpc.aio.AbortError:
                    raise
                except BaseException as error:  # the client went away (CancelledError), or no error interceptor
                    code = "CANCELLED" if isinstance(error, GeneratorExit) or type(error).__name__ == \
                        "CancelledError" else "UNKNOWN"
                    raise
                finally:
                    observe(labels, code or _code_name(context), started)

            return stream

        async def unary(request_or_iterator, context):
            started, code = time.perf_counter(), None
            try:
                result = behaviour(request_or_iterator, context)
                return await result if inspect.isawaitable(result) else result
            except grpc.aio.AbortError:
                raise
            except BaseException as error:
                code = "CANCELLED" if type(error).__name__ == "CancelledError" else "UNKNOWN"
                raise
            finally:
                observe(labels, code or _code_name(context), started)

        return unary


# ---------------------------------------------------------------- store

class MeteredStore(Store):
    """A Store that counts and times every operation of the store it wraps; everything else
    (url, root, client, ...) is the wrapped store's."""

    def __init__(self, inner: Store, service: str):
        self._inner = inner
        self._service = service
        self.url = inner.url

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"MeteredStore({self._inner!r})"

    def _timed(self, op: str, fn: Callable, *args):
        started, result = time.perf_counter(), "error"
        try:
            value = fn(*args)
            result = "ok"
            return value
        except NotFound:
            result = "not_found"
            raise
        finally:
            STORE_OPERATIONS.labels(self._service, op, result).inc()
            STORE_DURATION.labels(self._service, op).observe(time.perf_counter() - started)

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        return self._timed("put", self._inner.put_bytes, key, data, content_type)

    def get_bytes(self, key: str) -> bytes:
        return self._timed("get", self._inner.get_bytes, key)

    def exists(self, key: str) -> bool:
        return self._timed("exists", self._inner.exists, key)

    def list(self, prefix: str) -> list[str]:
        return self._timed("list", self._inner.list, prefix)

    def delete(self, key: str) -> None:
        return self._timed("delete", self._inner.delete, key)


def metered_store(store: Store, service: str) -> Store:
    return store if isinstance(store, MeteredStore) else MeteredStore(store, service)


# ---------------------------------------------------------------- jobs and the Ray pool, at scrape time

JOB_STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")


class ServiceCollector:
    """Reads, at scrape time, the job records each watched servicer's JobManager holds and
    the interpretation service's warm Ray pool. Reads defensively: a servicer without a pool,
    a pool not created yet, or a pool class without the attributes read here gives zeros."""

    def __init__(self):
        self._servicers: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def watch(self, servicer) -> None:
        with self._lock:
            self._servicers[id(servicer)] = servicer

    def describe(self):
        return []  # metric families vary with the servicers watched: no describe-time check

    def collect(self):
        jobs = GaugeMetricFamily("i2x_jobs", "jobs this process holds, by kind and state (QUEUED and "
                                 "RUNNING are current; the others count jobs finished here since start)",
                                 labels=["service", "kind", "state"])
        size = GaugeMetricFamily("i2x_ray_pool_actors", "actors in the warm Ray pool", labels=["service"])
        idle = GaugeMetricFamily("i2x_ray_pool_idle_actors", "pool actors waiting for a unit", labels=["service"])
        busy = GaugeMetricFamily("i2x_ray_pool_busy_actors", "pool actors running a unit", labels=["service"])
        starting = GaugeMetricFamily("i2x_ray_pool_starting_actors", "pool actors created whose process is not "
                                     "up yet (pending for resources, or booting)", labels=["service"])
        waiting = GaugeMetricFamily("i2x_ray_units_waiting", "units of running interpretation jobs that "
                                    "wait for an actor (resources)", labels=["service"])
        with self._lock:
            servicers = list(self._servicers.values())
        for servicer in servicers:
            service = getattr(servicer, "service", "") or "unknown"
            records = _job_records(getattr(servicer, "jobs", None))
            counts: dict[tuple[str, str], int] = {}
            for record in records:
                key = (str(record.kind), str(record.state))
                counts[key] = counts.get(key, 0) + 1
            for kind in sorted({k for k, _ in counts}):
                for state in JOB_STATES:
                    jobs.add_metric([service, kind, state], counts.get((kind, state), 0))
            if not hasattr(servicer, "pool"):
                continue
            stats = pool_stats(getattr(servicer, "_pool", None))
            # Units of running jobs not yet done, less those on an actor now.
            remaining = sum(max(0, int(r.progress_total) - int(r.progress_done)) for r in records
                            if r.state == "RUNNING" and r.kind == "interpret")
            stats.setdefault("waiting", max(0, remaining - stats["busy"]))
            size.add_metric([service], stats["size"])
            idle.add_metric([service], stats["idle"])
            busy.add_metric([service], stats["busy"])
            starting.add_metric([service], stats.get("starting", 0))
            waiting.add_metric([service], stats["waiting"])
        yield from (jobs, size, idle, busy, starting, waiting)


def _job_records(manager) -> list:
    if manager is None:
        return []
    lock = getattr(manager, "_lock", None)
    try:
        if lock is not None:
            with lock:
                records = dict(getattr(manager, "_records", {}))
                gone = set(getattr(manager, "_gone", ()))
        else:
            records, gone = dict(getattr(manager, "_records", {})), set()
    except Exception:  # noqa: BLE001  (a scrape must never fail because the manager changed)
        log.debug("cannot read the job records for metrics", exc_info=True)
        return []
    return [r for job_id, r in records.items() if job_id not in gone]


def pool_stats(pool) -> dict:
    """{"size", "idle", "busy"} (and "starting", "waiting" when the pool knows them) of a warm pool.

    A pool with a stats() method that returns such a dict is read through it; otherwise
    its _actors, _idle and _draining attributes are read; no pool (not created yet) is zeros."""
    if pool is None:
        return {"size": 0, "idle": 0, "busy": 0}
    try:
        if callable(getattr(pool, "stats", None)):
            stats = dict(pool.stats())
            size, idle = int(stats.get("size", 0)), int(stats.get("idle", 0))
            out = {"size": size, "idle": idle, "busy": int(stats.get("busy", size - idle))}
            for key in ("starting", "waiting"):
                if key in stats:
                    out[key] = int(stats[key])
            return out
        lock = getattr(pool, "_cond", None) or threading.Lock()
        with lock:
            size, idle = len(getattr(pool, "_actors", ())), len(getattr(pool, "_idle", ()))
        return {"size": size, "idle": idle, "busy": max(0, size - idle)}
    except Exception:  # noqa: BLE001
        log.debug("cannot read the Ray pool for metrics", exc_info=True)
        return {"size": 0, "idle": 0, "busy": 0}


COLLECTOR = ServiceCollector()
REGISTRY.register(COLLECTOR)


def watch(servicer) -> None:
    """Report this servicer's jobs (and Ray pool) at every scrape."""
    COLLECTOR.watch(servicer)


# ---------------------------------------------------------------- the HTTP endpoint

_SERVERS: dict[tuple[str, int], tuple] = {}  # (host, asked port) -> (server, thread)
_SERVERS_LOCK = threading.Lock()


def metrics_port(service: str, setting: str | None = None) -> int:
    """I2X_METRICS_PORT: 0 = off, auto = the service's own port (METRICS_PORTS), else that port."""
    text = config.get("I2X_METRICS_PORT", setting).strip().lower()
    if text == "auto":
        if service not in METRICS_PORTS:
            raise InvalidArgument(f"service {service!r} has no default metrics port; give a number",
                                  field="I2X_METRICS_PORT")
        return METRICS_PORTS[service]
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise InvalidArgument(f"I2X_METRICS_PORT is {text!r}; give 0 (off), auto (9151-9154 by service) "
                              "or a port number", field="I2X_METRICS_PORT")
    return port


def serve(port: int, host: str = "127.0.0.1") -> int:
    """Serve /metrics over HTTP on host:port (0: any free port) in a daemon thread; returns the
    bound port. Asking again for the same host and port in one process reuses the server."""
    with _SERVERS_LOCK:
        if port and (host, port) in _SERVERS:
            return _SERVERS[(host, port)][0].server_port
        try:
            server, thread = start_http_server(port, addr=host)
        except OSError as error:
            raise Unavailable(f"cannot serve metrics on {host}:{port} ({error.strerror}); choose another "
                              "I2X_METRICS_PORT (`i2x up` runs four services on one host: use auto)",
                              field="I2X_METRICS_PORT") from None
        bound = server.server_port
        _SERVERS[(host, port or bound)] = (server, thread)
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return bound


def stop(port: int, host: str = "127.0.0.1") -> None:
    """Stop the metrics server serve() started on host:port (tests)."""
    with _SERVERS_LOCK:
        entry = _SERVERS.pop((host, port), None)
    if entry is not None:
        entry[0].shutdown()
        entry[0].server_close()

