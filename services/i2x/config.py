"""Every setting the services read, in one registry.

A setting comes from a command-line flag, else its `I2X_*` environment variable, else the
default. deploy/ sets these variables; a test checks that the manifests set every one the
services need, so add new settings here and nowhere else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

SERVICE_PORTS = {"training": 50051, "interpretation": 50052, "clustering": 50053, "explanation": 50054}
SERVICES = tuple(SERVICE_PORTS)


@dataclass(frozen=True)
class Setting:
    env: str
    default: str
    help: str
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("I2X_STORE", "./i2x-data",
            "artifact store: a local directory (path or file://PATH) or s3://BUCKET[/PREFIX]"),
    Setting("I2X_S3_ENDPOINT", "", "S3/MinIO endpoint host:port (default: AWS S3 when empty)"),
    Setting("I2X_S3_SECURE", "true", "use HTTPS for the S3 endpoint (true/false)"),
    Setting("I2X_S3_REGION", "", "S3 region (optional)"),
    Setting("I2X_S3_ACCESS_KEY", "",
            "S3 access key; falls back to AWS_ACCESS_KEY_ID, then MINIO_ROOT_USER", secret=True),
    Setting("I2X_S3_SECRET_KEY", "",
            "S3 secret key; falls back to AWS_SECRET_ACCESS_KEY, then MINIO_ROOT_PASSWORD", secret=True),
    Setting("I2X_RAY_ADDRESS", "local",
            "Ray cluster: 'local' starts an in-process Ray, 'auto' or ray://HOST:10001 or HOST:6379 connects"),
    Setting("I2X_RAY_GPUS_PER_TASK", "auto",
            "GPUs per per-checkpoint task: 'auto' (1 when the cluster has GPUs, else 0) or a number"),
    Setting("I2X_RAY_CPUS_PER_TASK", "1", "CPUs per per-checkpoint task"),
    Setting("I2X_RAY_POOL_SIZE", "0",
            "most interpretation actors a service holds; the pool grows to it while units wait (0: the "
            "cluster's slots, its CPUs or GPUs over one unit's; set the autoscaler's maximum to let it add workers)"),
    Setting("I2X_TORCH_THREADS", "0", "torch intra-op threads per worker (0: torch's default)"),
    Setting("I2X_HOST", "127.0.0.1", "address the gRPC server binds (0.0.0.0 in containers)"),
    Setting("I2X_PORT", "0", "gRPC port (0: the service's default port, see SERVICE_PORTS)"),
    Setting("I2X_HEALTH_PORT", "0",
            "extra plaintext port serving only grpc.health.v1, for probes when TLS is on (0: off)"),
    Setting("I2X_MAX_MESSAGE_MB", "64", "largest gRPC message, in MiB, both directions"),
    Setting("I2X_TLS_CERT", "", "PEM certificate file; TLS is on when this and I2X_TLS_KEY are set"),
    Setting("I2X_TLS_KEY", "", "PEM private key file", secret=True),
    Setting("I2X_API_TOKEN", "", "bearer token clients must send; empty disables auth (health stays open)",
            secret=True),
    Setting("I2X_GRACE_SECONDS", "10", "graceful-shutdown grace period"),
    Setting("I2X_JOB_LEASE_SECONDS", "30",
            "job lease: a replica renews its jobs' heartbeat every lease/3 s; another replica takes "
            "over a job whose heartbeat is older than this"),
    Setting("I2X_LOG_LEVEL", "INFO", "logging level"),
    Setting("I2X_MAX_CHECKPOINTS", "2000",
            "CreateRun refuses a training that would take more checkpoints than this (INVALID_ARGUMENT)"),
    Setting("I2X_RAY_SCALABLE_GPUS", "0",
            "GPUs of one node the Ray autoscaler can add (the GPU worker group's nvidia.com/gpu limit); "
            "requests for more GPUs per task than any node has or can get are refused (0: only the nodes up now)"),
    Setting("I2X_TRAIN_ON_RAY", "false",
            "run training and each fine-tuning (protocol, repeat) as Ray tasks (true) or in the training "
            "service's process (false)"),
    Setting("I2X_TRAIN_GPUS", "auto",
            "GPUs per training / fine-tuning Ray task: 'auto' (1 when the cluster has GPUs, else 0) or a number"),
    Setting("I2X_TRAIN_CPUS", "1", "CPUs per training / fine-tuning Ray task"),
    Setting("I2X_LOG_FORMAT", "text", "log lines: text, or json (one object per line: time, level, service, "
            "job_id, run_id, logger, message)"),
    Setting("I2X_METRICS_PORT", "0",
            "Prometheus /metrics over HTTP on this port (0: off; auto: 9151-9154, the service's own)"),
    Setting("MLFLOW_TRACKING_URI", "",
            "MLflow tracking server (http://HOST:5000, sqlite:///PATH, ...); when set, the explanation service "
            "logs each explained run and its report to MLflow (empty: off)"),
    Setting("I2X_MLFLOW_EXPERIMENT", "i2x", "MLflow experiment the explanation service logs runs to"),
    Setting("I2X_MLFLOW_RETRIES", "3",
            "retries of an MLflow export before the job gives up on it with a warning (the job still succeeds)"),
    Setting("I2X_MLFLOW_BACKOFF_SECONDS", "1", "first wait between MLflow retries; doubles each time"),
    Setting("I2X_RAY_IDLE_SECONDS", "60",
            "an interpretation actor idle this long is released, its CPU/GPU back to the cluster (0: never)"),
    Setting("I2X_RAY_WAIT_SECONDS", "900",
            "a job waiting this long for a Ray worker, or for an unreachable Ray, fails naming what is "
            "missing (0: no limit)"),
    Setting("I2X_RAY_RECONNECT_SECONDS", "10",
            "longest pause between tries to reach Ray, at start-up and after a lost connection (backoff from 0.5 s)"),
    Setting("I2X_LIVE_IDLE_SECONDS", "3600",
            "a follow interpretation of a live run fails when no checkpoint arrives for this long"),
    Setting("I2X_TRAIN_WAIT_SECONDS", "600",
            "a training Ray task (or every fine-tuning task) not started after this long (no worker with its "
            "CPUs/GPUs) fails its job, naming the missing resources (0: no limit)"),
)

_BY_ENV = {s.env: s for s in SETTINGS}


def get(env: str, override: str | None = None) -> str:
    """The value of setting `env`: an explicit override (a flag), else the environment, else the default."""
    setting = _BY_ENV[env]  # KeyError here means the setting is not registered above
    if override not in (None, ""):
        return str(override)
    return os.environ.get(env, setting.default)


def number(env: str, override: str | None = None, *, low: float = 0.0, low_open: bool = False,
           high: float | None = None, unit: str = "", zero_means: str = "") -> float:
    """A numeric setting, or InvalidArgument naming it ("must be a number of seconds >= 0 (0: no
    limit), got 'x'"). The one parser behind every numeric I2X_* setting; NaN is refused too."""
    import math

    from i2x.core.errors import InvalidArgument

    text = get(env, override)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        noun = f"a number of {unit}" if unit else "a number"
        bound = f"in {low:g}..{high:g}" if high is not None else (f"> {low:g}" if low_open else f">= {low:g}")
        raise InvalidArgument(f"must be {noun} {bound}{f' ({zero_means})' if zero_means else ''}, got {text!r}",
                              field=env)
    return value

# Hardening (docs/SECURITY.md): what a remote caller may touch, and how big a request may be.
SETTINGS += (
    Setting("I2X_MODEL_FACTORIES", "",
            "comma-separated 'module:function' (or 'module:*') custom model factories a caller may name "
            "in model.factory; empty: services build no custom model (the in-process library is not limited)"),
    Setting("I2X_DATA_ROOTS", "",
            "comma-separated folders a caller's dataset.root must lie in (absolute, resolved); empty: services "
            "read only the built-in mnist5k"),
    Setting("I2X_MAX_ID_LENGTH", "128", "longest run, job or request id accepted (1..128 characters)"),
    Setting("I2X_MAX_JSON_KB", "64", "largest JSON text in a request (extra_json), in KiB; nested at most 20 deep"),
    Setting("I2X_MAX_JOBS", "64",
            "unfinished (queued or running) jobs one service process holds; more: RESOURCE_EXHAUSTED"),
    Setting("I2X_MAX_PAGE_SIZE", "500", "most items one List* reply holds (page_size above is lowered to it)"),
)
_BY_ENV = {s.env: s for s in SETTINGS}
