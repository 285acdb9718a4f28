"""Where metrics, traces and job-scoped logs hook into a service (two calls, both made by
i2x.serving.start_service and i2x.server.start_server):

- server_interceptors(service): the interceptors that go before the auth and error ones
  (the OpenTelemetry server span, then MetricsInterceptor);
- instrument(service, store, servicer): counts the store's operations (done before the
  servicer is built: see metered_store), reports the servicer's jobs and Ray pool at every
  scrape, wraps every job function the servicer builds (submitted or resumed) so its run has
  a span, queue-wait / duration / unit metrics and the job's ids on its log lines, and starts
  the /metrics endpoint when I2X_METRICS_PORT is set.
"""

from __future__ import annotations

import functools
import logging
import time

from i2x import config, logs, metrics, tracing
from i2x.core.errors import Cancelled

log = logging.getLogger(__name__)

metered_store = metrics.metered_store


def server_interceptors(service: str) -> list:
    tracing.setup(f"i2x-{service}")
    return [*tracing.server_interceptors(), metrics.MetricsInterceptor(service)]


def instrument(service: str, servicer, *, metrics_port: int | None = None, host: str | None = None) -> int | None:
    """Observe `servicer` (see the module docstring); returns the metrics port, None when off."""
    metrics.watch(servicer)
    build = servicer.job_function
    if not getattr(build, "_i2x_observed", False):
        @functools.wraps(build)
        def job_function(kind, run_id, params):
            fn = build(kind, run_id, params)
            return None if fn is None else observed_job(service, kind, fn)

        job_function._i2x_observed = True
        servicer.job_function = job_function  # what start() and recover() call
    port = metrics.metrics_port(service) if metrics_port is None else metrics_port
    if not port:
        return None
    return metrics.serve(port, config.get("I2X_HOST", host))


def observed_job(service: str, kind: str, fn):
    """fn with a span (under the caller's trace context: the Start* call's server span),
    metrics and the job's ids on every log line of its run."""
    submitted = time.monotonic()
    parent = tracing.current_context()

    def run(ctx):
        started = time.monotonic()
        metrics.JOB_QUEUE_WAIT.labels(service, kind).observe(started - submitted)
        units = {"done": 0, "total": 0}
        report = ctx.progress

        def progress(done, total, message="", artifact=None):
            step = int(done) - units["done"]
            if step > 0:
                metrics.JOB_UNITS.labels(service, kind, "done").inc(step)
            units["done"], units["total"] = max(units["done"], int(done)), int(total)
            return report(done, total, message, artifact)

        ctx.progress = progress  # stage_progress(ctx) reads it inside fn
        state = "FAILED"
        with logs.log_context(service=service, job_id=ctx.job_id, run_id=ctx.run_id), \
                tracing.span(f"i2x.job {kind}", parent=parent, service=service, job_id=ctx.job_id,
                             run_id=ctx.run_id, kind=kind) as active:
            try:
                result = fn(ctx)
                state = "SUCCEEDED"
                return result
            except Cancelled:
                state = "INTERRUPTED" if getattr(ctx, "interrupted", False) else "CANCELLED"
                raise
            finally:
                if active is not None:
                    active.set_attribute("i2x.state", state)
                metrics.JOB_DURATION.labels(service, kind, state).observe(time.monotonic() - started)
                if state == "FAILED" and units["total"] > units["done"]:
                    metrics.JOB_UNITS.labels(service, kind, "failed").inc(units["total"] - units["done"])

    return run
