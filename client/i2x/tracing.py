"""OpenTelemetry traces for the SDK, the services and their Ray workers.

On when OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set: the
process exports its spans over OTLP/gRPC in a background batch (an unreachable collector
costs dropped spans and a log line, never a failed call or job). Also on when configure()
was given a TracerProvider, or when the application already installed an SDK TracerProvider
globally (the SDK then adds its spans to the application's traces). Off otherwise: nothing
of OpenTelemetry is imported and every helper here is a no-op.

One `i2x analyze` is one trace: the SDK's root span -> its client spans (the W3C traceparent
goes out in the call's metadata) -> the services' server spans -> a span per job -> a span
per unit in the Ray workers (inject() puts the job span's context in a carrier dict that the
actor call takes; child_span() continues it there).

Packages: the `observability` extra (opentelemetry-sdk, -exporter-otlp-proto-grpc,
-instrumentation-grpc).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import threading
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# Calls that would only add noise to every trace (probes, grpcurl discovery).
QUIET_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                  "grpc.reflection.v1.ServerReflection")

_lock = threading.Lock()
_provider = None          # the TracerProvider i2x uses (set by setup() or configure())
_from_env_tried = False   # setup() looked at the environment already
_warned = False


def _endpoint() -> str:
    return next((os.environ[v] for v in ENDPOINT_VARIABLES if os.environ.get(v)), "")


def setup(service_name: str) -> bool:
    """Turn tracing on from the environment, once per process; True when it is on.

    service_name becomes the resource's service.name unless OTEL_SERVICE_NAME says otherwise."""
    global _provider, _from_env_tried, _warned
    with _lock:
        if _provider is not None:
            return True
        if _from_env_tried:
            return _global_provider() is not None
        _from_env_tried = True
        if not _endpoint():
            return _global_provider() is not None
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as error:
            if not _warned:
                _warned = True
                log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed (%s): "
                            "traces stay off; pip install 'i2x-explain[observability]'", error)
            return False
        attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
        provider = TracerProvider(resource=Resource.create(attributes))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        _provider = provider
        log.info("traces: OTLP to %s as %s", _endpoint(), provider.resource.attributes.get("service.name"))
        return True


def configure(provider) -> None:
    """Use this TracerProvider for i2x's spans (tests, applications with their own); None: off."""
    global _provider, _from_env_tried
    with _lock:
        _provider = provider
        _from_env_tried = provider is None  # off means off, not "read the environment again"


def _global_provider():
    """The application's own SDK TracerProvider, if it installed one (never imports OpenTelemetry)."""
    if "opentelemetry.trace" not in sys.modules:
        return None
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    return provider


def provider():
    """The TracerProvider in use, or None when tracing is off."""
    return _provider if _provider is not None else _global_provider()


def enabled(service_name: str = "i2x-sdk") -> bool:
    return setup(service_name) or provider() is not None


def tracer():
    current = provider()
    return None if current is None else current.get_tracer("i2x")


# ---------------------------------------------------------------- gRPC interceptors

def _quiet_filter():
    from opentelemetry.instrumentation.grpc import filters

    return filters.negate(filters.any_of(*(filters.service_name(name) for name in QUIET_SERVICES)))


def server_interceptors() -> list:
    """The grpc.aio server interceptor of opentelemetry-instrumentation-grpc ([] when off)."""
    current = provider()
    if current is None:
        return []
    try:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor
    except ImportError:
        _warn_instrumentation()
        return []
    return [aio_server_interceptor(tracer_provider=current, filter_=_quiet_filter())]


def intercept_channel(channel):
    """A sync channel whose calls make client spans and send the trace context (the channel
    itself when tracing is off)."""
    current = provider()
    if current is None:
        return channel
    try:
        from opentelemetry.instrumentation.grpc import client_interceptor
        from opentelemetry.instrumentation.grpc.grpcext import intercept_channel as intercept
    except ImportError:
        _warn_instrumentation()
        return channel
    return intercept(channel, client_interceptor(tracer_provider=current, filter_=_quiet_filter()))


def _warn_instrumentation() -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("opentelemetry-instrumentation-grpc is not installed: no gRPC spans; "
                    "pip install 'i2x-explain[observability]'")


# ---------------------------------------------------------------- spans

def _attributes(values: dict) -> dict:
    return {f"i2x.{k}": v for k, v in values.items() if v is not None and v != ""}


@contextlib.contextmanager
def span(name: str, *, parent=None, **attributes: Any) -> Iterator[Any]:
    """A span around the block, the current one inside it; parent: a context from current_context().

    Yields the span (None when tracing is off). An exception is recorded on the span and re-raised."""
    current = tracer()
    if current is None:
        yield None
        return
    with current.start_as_current_span(name, context=parent, attributes=_attributes(attributes)) as active:
        yield active


def traced(name: str) -> Callable:
    """Decorator: the function runs inside span(name) (its first str argument as i2x.run_id)."""
    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if provider() is None:
                return fn(*args, **kwargs)
            run_id = next((a for a in args[1:2] if isinstance(a, str)), kwargs.get("run_id"))
            with span(name, run_id=run_id):
                return fn(*args, **kwargs)

        return wrapper

    return decorate


def current_context():
    """The caller's trace context (to start a span under it in another thread); None when off."""
    if provider() is None:
        return None
    from opentelemetry import context

    return context.get_current()


def inject() -> dict[str, str]:
    """The current trace context as a carrier dict (W3C traceparent), for a Ray call; {} when off."""
    if provider() is None:
        return {}
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextlib.contextmanager
def child_span(name: str, carrier: dict | None, *, service_name: str = "i2x-ray-worker",
               **attributes: Any) -> Iterator[Any]:
    """In a Ray worker: a span continuing the trace of `carrier` (inject()'s dict). A no-op
    without a carrier or with tracing off in this process."""
    if not carrier or not enabled(service_name):
        yield None
        return
    from opentelemetry import propagate

    with span(name, parent=propagate.extract(carrier), **attributes) as active:
        yield active
