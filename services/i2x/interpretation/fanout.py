"""Ray fan-out of the interpretation: one actor call per checkpoint.

A pool of InterpretWorker actors, one per slot the cluster offers (CPUs or GPUs per task),
each keeping the decoded explanation set and the built model between its calls (the `cache`
of stages.interpret_checkpoint). Steps are handed out as actors free up, so a slow checkpoint
does not hold the others. Ray restarts a dead actor (max_restarts) and retries its call
(max_task_retries); the unit is idempotent, so a retry never corrupts. Cancel kills the pool.
"""

from __future__ import annotations

import logging
import threading
from typing import Iterator

from i2x import config, raycluster
from i2x.core.errors import Cancelled
from i2x.engine.params import InterpretParams

log = logging.getLogger(__name__)

MAX_RETRIES = 3


class InterpretWorker:
    """Runs stages.interpret_checkpoint; one per Ray worker process."""

    def __init__(self, store_spec: dict, torch_threads: int):
        import torch

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        self.store = open_store_spec(store_spec)
        self.cache: dict = {}

    def interpret(self, run_id: str, step: int, params: dict) -> str:
        from i2x.engine import stages

        if len(self.cache) > 2:  # keep the latest runs only: each entry holds a model and the images
            self.cache.pop(next(iter(self.cache)))
        return stages.interpret_checkpoint(self.store, run_id, step, InterpretParams.from_dict(params), self.cache)


def store_spec(store) -> dict:
    """How a worker opens the service's store: its URL, plus the S3 endpoint and credentials
    the service was given (a worker may not have the service's environment or flags)."""
    spec = {"url": store.url}
    client = getattr(store, "client", None)
    if store.url.startswith("s3://") and client is not None:
        provider = getattr(client, "_provider", None)
        creds = provider.retrieve() if provider is not None else None
        spec.update(endpoint=store.endpoint, secure=store.secure, region=getattr(getattr(client, "_base_url", None), "region", None),
                    access_key=getattr(creds, "access_key", None), secret_key=getattr(creds, "secret_key", None))
    return spec


def open_store_spec(spec: dict):
    from i2x.storage import open_store

    if spec["url"].startswith("s3://"):
        from i2x.storage.s3 import S3Store

        return S3Store.from_url(spec["url"], endpoint=spec["endpoint"], secure=spec["secure"],
                                region=spec.get("region"), access_key=spec.get("access_key"),
                                secret_key=spec.get("secret_key"), create_bucket=False)
    return open_store(spec["url"])


def _torch_threads(cpus: float) -> int:
    threads = int(config.get("I2X_TORCH_THREADS"))
    return threads if threads > 0 else max(1, int(cpus))


class RayFanout:
    """map_units for stages.interpret_run: yields each unit's key as its actor finishes it."""

    def __init__(self, store_spec: dict, run_id: str, params: InterpretParams, *, max_workers: int | None = None,
                 cancel: threading.Event | None = None):
        self.store_spec, self.run_id, self.params = store_spec, run_id, params.to_dict()
        self.max_workers = max_workers
        self.cancel = cancel
        self._actors: list = []
        self._pending: dict = {}
        self._lock = threading.RLock()  # __call__ submits while holding it
        self._stopped = False

    def _pool_size(self, n_units: int, resources: dict, cpus: float, gpus: float) -> int:
        slots = int(resources.get("GPU", 0) // gpus) if gpus > 0 else int(resources.get("CPU", 1) // cpus)
        size = max(1, min(n_units, slots))
        return min(size, self.max_workers) if self.max_workers else size

    def __call__(self, steps: list[int]) -> Iterator[str]:
        import ray

        resources = raycluster.connect()
        cpus, gpus = raycluster.cpus_per_task(), raycluster.gpus_per_task(resources)
        remote_cls = ray.remote(InterpretWorker).options(
            num_cpus=cpus, num_gpus=gpus, max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES,
            runtime_env={"env_vars": raycluster.worker_env()})
        todo = list(steps)
        with self._lock:
            if self._stopped:
                raise Cancelled("the job was cancelled", field="job_id")
            self._actors = [remote_cls.remote(self.store_spec, _torch_threads(cpus))
                            for _ in range(self._pool_size(len(todo), resources, cpus, gpus))]
            for actor in self._actors:
                if todo:
                    self._submit(actor, todo.pop(0))
        try:
            while self._pending:
                ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=1.0)
                if self.cancel is not None and self.cancel.is_set():
                    raise Cancelled("the job was cancelled", field="job_id")
                for ref in ready:
                    with self._lock:
                        actor = self._pending.pop(ref)
                    key = ray.get(ref)  # a unit that failed after its retries raises here
                    if todo:
                        self._submit(actor, todo.pop(0))
                    yield key
        finally:
            self.stop()

    def _submit(self, actor, step: int) -> None:
        with self._lock:
            if not self._stopped:
                self._pending[actor.interpret.remote(self.run_id, int(step), self.params)] = actor

    def stop(self) -> None:
        """Cancel what is queued and kill the pool (a running unit is interrupted with its actor)."""
        import ray

        with self._lock:
            self._stopped = True
            pending, actors = list(self._pending), self._actors
            self._pending, self._actors = {}, []
        for ref in pending:
            try:
                ray.cancel(ref, force=False)
            except Exception:  # noqa: BLE001  (already finished or its actor gone)
                pass
        for actor in actors:
            ray.kill(actor, no_restart=True)


def ray_map_units(store, run_id: str, params: InterpretParams, *, max_workers: int | None = None,
                  cancel=None, on_cancel=None) -> "RayFanout":
    fanout = RayFanout(store_spec(store), run_id, params, max_workers=max_workers, cancel=cancel)
    if on_cancel is not None:
        on_cancel(fanout.stop)
    return fanout

