"""Ray fan-out of the interpretation: one actor call per checkpoint, on a warm pool of actors.

An interpretation service keeps one WarmPool of InterpretWorker actors for its whole life:
created on the first job (or by warm()), sized to I2X_RAY_POOL_SIZE or else to the slots the
cluster has free (CPUs or GPUs per task), reused by every job and run, shut down with the
service. Starting a Ray actor costs seconds (a Python process, torch, the store client), which
a pool per job paid again on every job. Each actor also keeps the decoded explanation set and
the built model of its latest runs (the `cache` of stages.interpret_checkpoint), so a second job
on a run decodes nothing.

A job's RayFanout borrows idle actors, hands each one step, and returns it to the pool when the
unit is written, so concurrent jobs share the actors unit by unit. Ray restarts a dead actor
(max_restarts) and retries its call (max_task_retries); an actor dead for good is replaced by a
fresh one and its step handed out again. Units are idempotent, so a retry never corrupts.
Cancel: ray.cancel of the job's refs; a unit already running on an actor cannot be interrupted
without killing the actor (Ray does not interrupt a sync actor's task), so the pool keeps the
actor busy until that unit ends instead of killing it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Iterator

from i2x import config, raycluster, tracing
from i2x.core.errors import Cancelled, InvalidArgument, Unavailable
from i2x.engine.params import InterpretParams

log = logging.getLogger(__name__)

MAX_RETRIES = 3
# Runs whose model and images an actor keeps (each entry holds one model and one explanation set).
CACHED_RUNS = 2
# How long a fan-out waits for an idle actor (all busy with other jobs) before checking cancel again.
POLL_SECONDS = 0.5


class InterpretWorker:
    """Runs stages.interpret_checkpoint; one per Ray worker process, kept for many jobs."""

    def __init__(self, store_spec: dict, torch_threads: int):
        import torch

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        self.store = open_store_spec(store_spec)
        self.cache: dict = {}

    def ready(self) -> bool:
        """Returns once the actor's process is up (the pool's warm-up waits on it)."""
        from i2x.engine import stages  # noqa: F401  (import torch and the stages now, not in the first unit)

        return True

    def interpret(self, run_id: str, step: int, params: dict, trace: dict | None = None) -> str:
        # trace: the job span's context (tracing.inject()), so this unit is its child span.
        with tracing.child_span("i2x.unit interpret", trace, run_id=run_id, step=int(step)):
            return self._interpret(run_id, step, params)

    def _interpret(self, run_id: str, step: int, params: dict) -> str:
        from i2x.engine import stages

        key = (self.store.url, run_id)
        if key in self.cache:  # most recently used last
            self.cache[key] = self.cache.pop(key)
        while len(self.cache) >= CACHED_RUNS and key not in self.cache:
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


def pool_size_setting(setting: str | None = None) -> int:
    """I2X_RAY_POOL_SIZE: actors of the warm pool; 0 = the slots the cluster has free."""
    text = config.get("I2X_RAY_POOL_SIZE", setting)
    try:
        size = int(text)
    except ValueError:
        size = -1
    if not 0 <= size <= 4096:
        raise InvalidArgument(f"must be a whole number in 0..4096 (0: the free slots), got {text!r}",
                              field="I2X_RAY_POOL_SIZE")
    return size


class WarmPool:
    """The interpretation service's actors: idle ones wait in `_idle`, busy ones run one unit each.

    size: actors to keep (None: I2X_RAY_POOL_SIZE, whose 0 means the free slots at creation);
    max_size caps it (the service's ray_workers). Thread-safe: jobs run in several threads.
    """

    def __init__(self, store_spec: dict, *, size: int | None = None, max_size: int | None = None):
        self.store_spec = store_spec
        self._wanted = pool_size_setting() if size is None else int(size)
        if self._wanted < 0:
            raise InvalidArgument(f"pool size must be >= 0, got {size}", field="size")
        self.max_size = max_size
        self._cond = threading.Condition(threading.RLock())
        self._actors: list = []
        self._idle: deque = deque()
        self._draining: dict = {}  # ref -> actor: a cancelled job's unit still running on that actor
        self._remote_cls = None
        self._torch_threads = 1
        self._closed = False
        self.started = 0  # actors created so far, replacements included (tests and the bench read it)

    # -- life cycle ------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        with self._cond:
            return len(self._actors)

    def _ensure(self) -> None:
        """Create the actors on first use (called with the lock held)."""
        if self._closed:
            raise Unavailable("the interpretation service is shutting down; retry on another replica",
                              field="job")
        if self._actors:
            return
        import ray

        resources = raycluster.connect()
        cpus, gpus = raycluster.cpus_per_task(), raycluster.gpus_per_task(resources)
        size = self._wanted
        if size == 0:  # the free slots now: actors reserve their CPUs (GPUs) for their whole life
            free = ray.available_resources()
            slots = int(free.get("GPU", 0) // gpus) if gpus > 0 else int(free.get("CPU", 0) // cpus)
            size = max(1, slots)
        if self.max_size:
            size = min(size, int(self.max_size))
        self._torch_threads = _torch_threads(cpus)
        self._remote_cls = ray.remote(InterpretWorker).options(
            num_cpus=cpus, num_gpus=gpus, max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES,
            runtime_env={"env_vars": raycluster.worker_env()})
        self._actors = [self._new_actor() for _ in range(size)]
        self._idle.extend(self._actors)
        log.info("warm pool: %d interpretation actors (%s CPU, %s GPU each)", size, cpus, gpus)

    def _new_actor(self):
        self.started += 1
        return self._remote_cls.remote(self.store_spec, self._torch_threads)

    def warm(self, timeout: float | None = 120.0) -> int:
        """Create the actors now and wait until each process is up; returns the pool size."""
        import ray

        with self._cond:
            self._ensure()
            actors = list(self._actors)
        ray.get([actor.ready.remote() for actor in actors], timeout=timeout)
        return len(actors)

    def shutdown(self) -> None:
        """Kill every actor (a unit still running is interrupted; its write is atomic)."""
        import ray

        with self._cond:
            self._closed = True
            actors, self._actors, self._draining = self._actors, [], {}
            self._idle.clear()
            self._cond.notify_all()
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001  (already dead, or Ray is gone)
                pass

    # -- borrowing -------------------------------------------------------------------------------
    def acquire(self, n: int, timeout: float = 0.0) -> list:
        """Up to n idle actors (waiting up to `timeout` s for the first); [] when none is free."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._ensure()
            while True:
                self._reap()
                if self._idle or timeout <= 0:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                # A draining unit ends without a notify: look again soon.
                self._cond.wait(min(remaining, 0.1 if self._draining else remaining))
                self._ensure()
            return [self._idle.popleft() for _ in range(min(n, len(self._idle)))]

    def release(self, actor) -> None:
        with self._cond:
            if actor in self._actors and actor not in self._idle:
                self._idle.append(actor)
                self._cond.notify()

    def drain(self, ref, actor) -> None:
        """The actor stays busy until `ref` (a cancelled job's unit) ends, then becomes idle again."""
        with self._cond:
            if actor in self._actors:
                self._draining[ref] = actor

    def replace(self, actor) -> object:
        """A fresh actor in place of one that is dead for good (its restarts used up)."""
        import ray

        with self._cond:
            self._ensure()
            if actor in self._actors:
                self._actors.remove(actor)
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
            fresh = self._new_actor()
            self._actors.append(fresh)
            log.warning("warm pool: replaced a dead interpretation actor")
            return fresh

    def _reap(self) -> None:
        if not self._draining:
            return
        import ray

        ready, _ = ray.wait(list(self._draining), num_returns=len(self._draining), timeout=0)
        for ref in ready:
            actor = self._draining.pop(ref)
            if actor in self._actors and actor not in self._idle:
                self._idle.append(actor)


class RayFanout:
    """map_units for stages.interpret_run: yields each unit's key as an actor of `pool` finishes it.

    max_workers caps the actors this job uses at once (None: as many as are idle)."""

    def __init__(self, pool: WarmPool, run_id: str, params: InterpretParams, *, max_workers: int | None = None,
                 cancel: threading.Event | None = None):
        self.pool, self.run_id, self.params = pool, run_id, params.to_dict()
        self.max_workers = max_workers
        self.cancel = cancel
        self._pending: dict = {}  # ref -> (actor, step)
        self._lock = threading.Lock()
        self._stopped = False

    def _check(self) -> None:
        if self._stopped or (self.cancel is not None and self.cancel.is_set()):
            raise Cancelled("the job was cancelled", field="job_id")

    def __call__(self, steps: list[int]) -> Iterator[str]:
        import ray
        from ray.exceptions import RayActorError

        todo = deque(int(s) for s in steps)
        failures: dict[int, int] = {}
        limit = self.max_workers or len(todo) or 1
        try:
            while todo or self._pending:
                self._check()
                wanted = min(len(todo), limit - len(self._pending))
                if wanted > 0:
                    # Wait for an actor only when this job has nothing running (others hold them all).
                    actors = self.pool.acquire(wanted, timeout=0.0 if self._pending else POLL_SECONDS)
                    for actor in actors:
                        self._submit(actor, todo.popleft())
                if not self._pending:
                    continue
                ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=POLL_SECONDS)
                for ref in ready:
                    with self._lock:
                        entry = self._pending.pop(ref, None)
                    if entry is None:  # stop() took it
                        continue
                    actor, step = entry
                    try:
                        key = ray.get(ref)
                    except RayActorError:
                        self._check()  # the pool was shut down under a cancelled job: not a failure
                        failures[step] = failures.get(step, 0) + 1
                        if failures[step] > MAX_RETRIES:
                            raise Unavailable(f"the Ray actor interpreting step {step} died {failures[step]} "
                                              "times; see the Ray logs", field="steps") from None
                        self.pool.release(self.pool.replace(actor))
                        todo.appendleft(step)
                        continue
                    except BaseException:
                        self.pool.release(actor)
                        if self.cancel is not None and self.cancel.is_set():
                            raise Cancelled("the job was cancelled", field="job_id") from None
                        raise
                    self.pool.release(actor)
                    yield key
        finally:
            self.stop()

    def _submit(self, actor, step: int) -> None:
        with self._lock:
            if self._stopped:
                self.pool.release(actor)
                return
            self._pending[actor.interpret.remote(self.run_id, int(step), self.params, tracing.inject())] = (actor, step)

    def stop(self) -> None:
        """Cancel this job's refs; actors still running one of its units stay busy until it ends."""
        import ray

        with self._lock:
            self._stopped = True
            pending, self._pending = self._pending, {}
        for ref, (actor, _) in pending.items():
            try:
                ray.cancel(ref, force=False)
            except Exception:  # noqa: BLE001  (already finished or its actor gone)
                pass
            self.pool.drain(ref, actor)


def ray_map_units(pool: WarmPool, run_id: str, params: InterpretParams, *, max_workers: int | None = None,
                  cancel=None, on_cancel=None) -> RayFanout:
    fanout = RayFanout(pool, run_id, params, max_workers=max_workers, cancel=cancel)
    if on_cancel is not None:
        on_cancel(fanout.stop)
    return fanout
