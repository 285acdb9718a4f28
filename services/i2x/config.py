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
            "interpretation actors kept warm across jobs (0: the Ray slots free when the first job starts)"),
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
    Setting("I2X_RAY_SCALABLE_GPUS", "0",
            "GPUs of one node the Ray autoscaler can add (the GPU worker group's nvidia.com/gpu limit); "
            "requests for more GPUs per task than any node has or can get are refused (0: only the nodes up now)"),
    Setting("I2X_TRAIN_ON_RAY", "false",
            "run training and each fine-tuning (protocol, repeat) as Ray tasks (true) or in the training "
            "service's process (false)"),
    Setting("I2X_TRAIN_GPUS", "auto",
            "GPUs per training / fine-tuning Ray task: 'auto' (1 when the cluster has GPUs, else 0) or a number"),
    Setting("I2X_TRAIN_CPUS", "1", "CPUs per training / fine-tuning Ray task"),
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
