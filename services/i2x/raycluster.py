"""One Ray cluster for every service: connect to I2X_RAY_ADDRESS, or start a local one.

'local' starts Ray inside this process (ray.init, no dashboard); anything else ('auto',
HOST:6379, ray://HOST:10001 for KubeRay) connects. A process that already called ray.init
(a test session, `i2x up`'s parent) is reused as it is.
"""

from __future__ import annotations

import logging
import os

from i2x import config
from i2x.core.errors import InvalidArgument, Unavailable

log = logging.getLogger(__name__)

# Environment a Ray worker needs to open the same store as the service (forwarded via runtime_env).
# OTEL_: the workers export their unit spans where the service exports its own.
FORWARDED_ENV_PREFIXES = ("I2X_", "AWS_", "MINIO_", "OTEL_")


def connect(address: str | None = None, *, num_cpus: int | None = None) -> dict:
    """Initialise Ray once per process; returns ray.cluster_resources()."""
    import ray

    if not ray.is_initialized():
        address = config.get("I2X_RAY_ADDRESS", address)
        try:
            if address == "local":
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError) as exc:
            raise Unavailable(f"cannot reach Ray at {address!r} ({exc}); start it (`i2x up`) or fix "
                              "I2X_RAY_ADDRESS", field="I2X_RAY_ADDRESS") from None
        log.info("Ray at %s: %s", address, ray.cluster_resources())
    return ray.cluster_resources()


def gcs_address() -> str:
    """The address other processes pass as I2X_RAY_ADDRESS to join this process's Ray."""
    import ray

    return ray.get_runtime_context().gcs_address


def gpus_per_task(resources: dict | None = None, setting: str | None = None) -> float:
    """I2X_RAY_GPUS_PER_TASK: 'auto' = 1 when the cluster has a GPU, else 0; or a number >= 0."""
    value = config.get("I2X_RAY_GPUS_PER_TASK", setting).strip().lower()
    if value == "auto":
        if resources is None:
            import ray

            resources = ray.cluster_resources()
        return 1.0 if resources.get("GPU", 0) > 0 else 0.0
    try:
        gpus = float(value)
    except ValueError:
        gpus = -1.0
    if gpus < 0:
        raise InvalidArgument(f"must be 'auto' or a number >= 0, got {value!r}", field="I2X_RAY_GPUS_PER_TASK")
    return gpus


def cpus_per_task(setting: str | None = None) -> float:
    value = config.get("I2X_RAY_CPUS_PER_TASK", setting)
    try:
        cpus = float(value)
    except ValueError:
        cpus = 0.0
    if cpus <= 0:
        raise InvalidArgument(f"must be a number > 0, got {value!r}", field="I2X_RAY_CPUS_PER_TASK")
    return cpus


def worker_env() -> dict[str, str]:
    """The store and torch settings of this process, for runtime_env on a remote cluster."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
