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

# Settings a Ray worker gets from the service through runtime_env, which Ray's state API shows
# to anyone who can reach the cluster: only non-secret I2X_ settings. Credentials (S3 keys, the
# API token) never travel this way; workers read the S3 keys from their own pod environment
# (docs/DEPLOY.md: Secret i2x-s3 on the Ray pods) and never need the API token.
# OTEL_: the workers export their unit spans where the service exports its own (headers excluded:
# they may carry an exporter credential).
FORWARDED_ENV_PREFIXES = ("I2X_",)
FORWARDED_OTEL_PREFIX = "OTEL_"


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


def gpus_setting(env: str, resources: dict | None = None, setting: str | None = None) -> float:
    """A GPUs-per-task setting: 'auto' = 1 when the cluster has a GPU, else 0; or a number >= 0."""
    value = config.get(env, setting).strip().lower()
    if value == "auto":
        if resources is None:
            import ray

            resources = ray.cluster_resources()
        return 1.0 if resources.get("GPU", 0) > 0 else 0.0
    try:
        return config.number(env, value)
    except InvalidArgument:
        raise InvalidArgument(f"must be 'auto' or a number >= 0, got {value!r}", field=env) from None


def gpus_per_task(resources: dict | None = None, setting: str | None = None) -> float:
    """I2X_RAY_GPUS_PER_TASK (gpus_setting)."""
    return gpus_setting("I2X_RAY_GPUS_PER_TASK", resources, setting)


def cpus_per_task(setting: str | None = None) -> float:
    return config.number("I2X_RAY_CPUS_PER_TASK", setting, low_open=True)


def worker_env() -> dict[str, str]:
    """The store and torch settings of this process, for runtime_env: registered, non-secret
    I2X_ settings only (never a token or key, never AWS_* / MINIO_*)."""
    public = {s.env for s in config.SETTINGS if not s.secret}
    return {k: v for k, v in os.environ.items()
            if (k.startswith(FORWARDED_ENV_PREFIXES) and k in public)
            or (k.startswith(FORWARDED_OTEL_PREFIX) and "HEADERS" not in k)}


def is_local(address: str | None = None) -> bool:
    """True when Ray runs on this machine as children of this process (I2X_RAY_ADDRESS=local):
    its workers may be handed what this process has, as they could read it from its environment."""
    return config.get("I2X_RAY_ADDRESS", address).strip().lower() == "local"


# ---------------------------------------------------------------- what the cluster could ever grant

def node_capacity(nodes: list[dict] | None = None) -> dict:
    """What one task could ever get: the most CPUs and GPUs of any one live node (a task runs on one
    node), GPUs raised to I2X_RAY_SCALABLE_GPUS when the autoscaler can add nodes that have them.
    {"CPU": float, "GPU": float, "nodes": live nodes, "scalable_gpus": float}."""
    if nodes is None:
        import ray

        nodes = ray.nodes()
    alive = [n for n in nodes if n.get("Alive", n.get("alive", False))]
    cpu = max((float(n.get("Resources", {}).get("CPU", 0)) for n in alive), default=0.0)
    gpu = max((float(n.get("Resources", {}).get("GPU", 0)) for n in alive), default=0.0)
    scalable = scalable_gpus()
    return {"CPU": cpu, "GPU": max(gpu, scalable), "nodes": len(alive), "scalable_gpus": scalable}


def scalable_gpus(setting: str | None = None) -> float:
    """I2X_RAY_SCALABLE_GPUS: GPUs of one node the autoscaler can add (0: only the nodes up now count)."""
    return config.number("I2X_RAY_SCALABLE_GPUS", setting)


def check_grantable(*, device: str, gpus: float, cpus: float, device_field: str, gpus_setting: str,
                    cpus_setting: str, capacity: dict | None = None) -> None:
    """FailedPrecondition at the request when the cluster could never run the work as asked:
    `gpus`/`cpus` per task (from the settings named) beyond any node, or a GPU `device` while the
    tasks get no GPU. Waiting for resources that may free up later is the pool's business."""
    from i2x.core.device import check_device, wants_gpu
    from i2x.core.errors import FailedPrecondition

    device = check_device(device, field=device_field)
    capacity = node_capacity() if capacity is None else capacity
    where = (f"the Ray cluster's largest node has {capacity['CPU']:g} CPU and {capacity['GPU']:g} GPU "
             f"({capacity['nodes']} node(s) up; I2X_RAY_SCALABLE_GPUS={capacity['scalable_gpus']:g})")
    if gpus > capacity["GPU"]:
        raise FailedPrecondition(f"{gpus_setting}={gpus:g} asks for {gpus:g} GPU per task but {where}; "
                                 f"set {gpus_setting} to 0 or auto, or add GPU nodes", field=gpus_setting)
    if cpus > capacity["CPU"]:
        raise FailedPrecondition(f"{cpus_setting}={cpus:g} asks for {cpus:g} CPU per task but {where}; "
                                 f"lower {cpus_setting}", field=cpus_setting)
    if wants_gpu(device):
        if gpus <= 0:
            raise FailedPrecondition(f"{device_field} is {device!r} but each task gets no GPU ({gpus_setting} "
                                     f"resolves to 0: {where}); use device auto or cpu, or give tasks a GPU",
                                     field=device_field)
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= max(1, int(gpus)):
            raise FailedPrecondition(f"{device_field} is {device!r} but each task is granted {gpus:g} GPU "
                                     "(cuda:0 inside it); use cuda or cuda:0", field=device_field)


def check_unit_request(device: str, field: str = "params.device") -> None:
    """The interpretation request's check: per-checkpoint units with this device on this cluster.
    Connects to Ray only when a GPU is involved (a GPU device or a number in I2X_RAY_GPUS_PER_TASK),
    or when this process is already connected."""
    import sys

    from i2x.core.device import wants_gpu

    setting = config.get("I2X_RAY_GPUS_PER_TASK").strip().lower()
    ray = sys.modules.get("ray")
    involved = wants_gpu(device) or setting not in ("auto", "0", "0.0")
    if not involved and not (ray is not None and ray.is_initialized()):
        return
    resources = connect()
    check_grantable(device=device, gpus=gpus_per_task(resources), cpus=cpus_per_task(), device_field=field,
                    gpus_setting="I2X_RAY_GPUS_PER_TASK", cpus_setting="I2X_RAY_CPUS_PER_TASK")
