"""Ray fan-out of the interpretation: one actor call per checkpoint, on an elastic pool of actors.

An interpretation service keeps one WarmPool of InterpretWorker actors for its whole life. The
pool grows while units wait, up to a cap (I2X_RAY_POOL_SIZE, else the cluster's slots; the
service's ray_workers): an actor that cannot be placed yet stays pending in Ray, which is the
demand Ray's autoscaler (KubeRay's) adds a worker for. An actor idle longer than
I2X_RAY_IDLE_SECONDS is killed, so its CPU or GPU goes back to the cluster and other services
sharing it progress. Starting a Ray actor costs seconds (a Python process, torch, the store
client): back-to-back jobs find the actors warm. Each actor also keeps the decoded explanation
set and the built model of its latest runs (the `cache` of stages.interpret_checkpoint), so a
second job on a run decodes nothing.

A job's RayFanout borrows idle actors, hands each one step, and returns it to the pool when the
unit is written, so concurrent jobs share the actors unit by unit. A job that gets no actor says
why in its message ("waiting for 1 GPU: 0 free, cluster 2 of 2 busy") and fails after
I2X_RAY_WAIT_SECONDS naming what is missing. Ray restarts a dead actor (max_restarts) and
retries its call (max_task_retries); an actor dead for good is dropped and its step handed out
again. A lost Ray connection (raylink.RayLink) puts the job's units in flight back in its queue
until Ray is back. Units are idempotent (a written unit is skipped), so a retry never corrupts.
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


def store_spec(store, *, credentials: bool | None = None) -> dict:
    """How a worker opens the service's store: its URL, plus the S3 endpoint (a worker may not
    have the service's flags). The S3 keys only for a local Ray (credentials=None: when
    raycluster.is_local()); remote workers read them from their own environment (docs/SECURITY.md)."""
    spec = {"url": store.url}
    client = getattr(store, "client", None)
    if store.url.startswith("s3://") and client is not None:
        spec.update(endpoint=store.endpoint, secure=store.secure, region=getattr(getattr(client, "_base_url", None), "region", None))
        if raycluster.is_local() if credentials is None else credentials:
            provider = getattr(client, "_provider", None)
            creds = provider.retrieve() if provider is not None else None
            spec.update(access_key=getattr(creds, "access_key", None), secret_key=getattr(creds, "secret_key", None))
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
    """I2X_RAY_POOL_SIZE: most actors of the pool; 0 = the slots the cluster has (CPUs or GPUs per task)."""
    text = config.get("I2X_RAY_POOL_SIZE", setting)
    try:
        size = int(text)
    except ValueError:
        size = -1
    if not 0 <= size <= 4096:
        raise InvalidArgument(f"must be a whole number in 0..4096 (0: the cluster's slots), got {text!r}",
                              field="I2X_RAY_POOL_SIZE")
    return size


def idle_setting(setting: str | None = None) -> float:
    """I2X_RAY_IDLE_SECONDS: an actor idle this long is released (0: kept for the service's life)."""
    return config.number("I2X_RAY_IDLE_SECONDS", setting, unit="seconds", zero_means="0: never release")


def _amount(x: float) -> str:
    return f"{x:g}"


class WarmPool:
    """The interpretation service's actors, elastic: started while units wait, released when idle.

    An actor is `starting` (created, its process not up yet: on a full cluster it stays pending,
    and that pending demand is what Ray's autoscaler adds nodes for), idle, or busy with one
    unit. acquire(n) hands out idle actors and, for the rest of n, creates new ones up to the
    cap: size (None: I2X_RAY_POOL_SIZE; 0 = the cluster's slots now, total CPUs or GPUs over
    what one unit asks) and max_size (the service's ray_workers). An actor idle for
    idle_seconds (I2X_RAY_IDLE_SECONDS) is killed, so its CPU or GPU goes back to the cluster
    for other services; so is a starting one that no job wants any more. Back-to-back jobs
    find the actors warm. Thread-safe: jobs run in several threads.
    """

    def __init__(self, store_spec: dict, *, size: int | None = None, max_size: int | None = None,
                 idle_seconds: float | None = None, link=None):
        self.store_spec = store_spec
        self._wanted = pool_size_setting() if size is None else int(size)
        if self._wanted < 0:
            raise InvalidArgument(f"pool size must be >= 0, got {size}", field="size")
        self.max_size = max_size
        self.idle_seconds = idle_setting() if idle_seconds is None else float(idle_seconds)
        self.link = link  # RayLink: connection, reconnection; None: raycluster.connect() once
        self._cond = threading.Condition(threading.RLock())
        self._actors: list = []
        self._idle: deque = deque()
        self._idle_since: dict = {}  # actor -> time.monotonic() it became idle
        self._starting: dict = {}  # ready ref -> actor whose process is not up yet
        self._draining: dict = {}  # ref -> actor: a cancelled job's unit still running on that actor
        self._remote_cls = None
        self._generation = -1  # the link connection the actors belong to
        self._torch_threads = 1
        self._closed = False
        self._wanting = 0.0  # last time a job found no idle actor (starting ones are kept meanwhile)
        self.cpus, self.gpus = 1.0, 0.0
        self.started = 0  # actors created so far, replacements included (tests and the bench read it)
        self.released = 0  # actors killed for idling or no longer wanted
        if link is not None:
            link.tickers.append(self.tick)

    # -- life cycle ------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        with self._cond:
            return len(self._actors)

    @property
    def ready_size(self) -> int:
        with self._cond:
            return len(self._actors) - len(self._starting)

    def stats(self) -> dict:
        """What the metrics read: {"size", "idle", "busy", "starting"}. size counts the actors whose
        process is up (idle + busy); busy ones run a unit (a cancelled job's included); starting
        ones (created, process not up, maybe pending for resources) are counted apart."""
        with self._cond:
            starting = len(self._starting)
            size, idle = len(self._actors) - starting, len(self._idle)
            return {"size": size, "idle": idle, "busy": max(0, size - idle), "starting": starting}

    def _connect(self) -> dict:
        if self.link is None:
            return raycluster.connect()
        if not self.link.wait(timeout=POLL_SECONDS):
            raise Unavailable(self.link.describe(), field="I2X_RAY_ADDRESS")
        import ray

        return ray.cluster_resources()

    def _ensure(self) -> None:
        """Set up the actor class for the current Ray connection (called with the lock held)."""
        if self._closed:
            raise Unavailable("the interpretation service is shutting down; retry on another replica",
                              field="job")
        generation = self.link.generation if self.link is not None else 0
        if self._remote_cls is not None and generation == self._generation:
            return
        import ray

        if self._remote_cls is not None:  # reconnected: the old cluster's actors are gone
            log.warning("warm pool: Ray reconnected, dropping %d actors of the old connection", len(self._actors))
            self._forget()
        resources = self._connect()
        generation = self.link.generation if self.link is not None else 0  # the connection just waited for
        self.cpus, self.gpus = raycluster.cpus_per_task(), raycluster.gpus_per_task(resources)
        self._torch_threads = _torch_threads(self.cpus)
        self._remote_cls = ray.remote(InterpretWorker).options(
            num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES,
            runtime_env={"env_vars": raycluster.worker_env()})
        self._generation = generation

    def _forget(self) -> None:
        self._actors, self._starting, self._draining = [], {}, {}
        self._idle.clear()
        self._idle_since.clear()

    def cap(self) -> int:
        """Most actors now: the setting, else the cluster's slots (they grow as nodes join)."""
        import ray

        size = self._wanted
        if size == 0:
            total = ray.cluster_resources()
            size = int(total.get("GPU", 0) // self.gpus) if self.gpus > 0 else int(total.get("CPU", 0) // self.cpus)
            size = max(1, size)
        if self.max_size:
            size = min(size, int(self.max_size))
        return size

    def _new_actor(self):
        import ray  # noqa: F401

        actor = self._remote_cls.remote(self.store_spec, self._torch_threads)
        self.started += 1
        self._actors.append(actor)
        self._starting[actor.ready.remote()] = actor
        return actor

    def _grow(self, wanted: int) -> None:
        """Start actors for `wanted` units that found none idle, up to the cap."""
        cap = self.cap()
        count = max(0, min(wanted - len(self._starting), cap - len(self._actors)))
        for _ in range(count):
            self._new_actor()
        if count:
            log.info("warm pool: starting %d interpretation actor%s (%s CPU, %s GPU each), %d of at most %d",
                     count, "s" if count > 1 else "", _amount(self.cpus), _amount(self.gpus),
                     len(self._actors), cap)

    def warm(self, timeout: float | None = 120.0) -> int:
        """Start actors up to the cap now and wait until each process is up; returns the pool size."""
        import ray

        with self._cond:
            self._ensure()
            self._wanting = float("inf")  # wanted until they are up
            self._grow(self.cap() - len(self._idle))
            starting = dict(self._starting)
        try:
            ray.get(list(starting), timeout=timeout)
        finally:
            with self._cond:
                self._wanting = time.monotonic()
        with self._cond:
            self._reap()
            return len(self._actors)

    def shutdown(self) -> None:
        """Kill every actor (a unit still running is interrupted; its write is atomic)."""
        import ray

        with self._cond:
            self._closed = True
            actors = self._actors
            self._forget()
            self._cond.notify_all()
        if self.link is not None and self.tick in self.link.tickers:
            self.link.tickers.remove(self.tick)
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001  (already dead, or Ray is gone)
                pass

    # -- borrowing -------------------------------------------------------------------------------
    def acquire(self, n: int, timeout: float = 0.0) -> list:
        """Up to n idle actors (waiting up to `timeout` s for the first); [] when none is free.
        Units that find none make the pool grow (up to the cap)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                self._ensure()
                self._reap()
                got = [self._idle.popleft() for _ in range(min(n, len(self._idle)))]
                if len(got) < n:
                    self._wanting = time.monotonic()
                    self._grow(n - len(got))
                remaining = deadline - time.monotonic()
                if got or remaining <= 0:
                    for actor in got:
                        self._idle_since.pop(actor, None)
                    return got
                # Starting and draining actors become idle without a notify: look again soon.
                self._cond.wait(min(remaining, 0.1))

    def release(self, actor) -> None:
        with self._cond:
            if actor in self._actors and actor not in self._idle:
                self._idle.append(actor)
                self._idle_since[actor] = time.monotonic()
                self._cond.notify()

    def drain(self, ref, actor) -> None:
        """The actor stays busy until `ref` (a cancelled job's unit) ends, then becomes idle again."""
        with self._cond:
            if actor in self._actors:
                self._draining[ref] = actor

    def replace(self, actor) -> object | None:
        """Drop an actor dead for good (its restarts used up); a new one starts when a unit waits."""
        import ray

        with self._cond:
            if actor in self._actors:
                self._actors.remove(actor)
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
            log.warning("warm pool: dropped a dead interpretation actor")
            return None

    def tick(self) -> None:
        """Periodic (the Ray link's thread): idle and unwanted actors go back to the cluster."""
        with self._cond:
            if self._remote_cls is None or self._closed:
                return
            if self.link is not None and self.link.generation != self._generation:
                return
            self._reap()

    def _kill(self, actor) -> None:
        import ray

        self._actors.remove(actor)
        self.released += 1
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001
            pass

    def _reap(self) -> None:
        """Starting actors that are up become idle; idle ones past idle_seconds, and starting ones
        no job has wanted for a while, are killed."""
        import ray

        if self._draining:
            ready, _ = ray.wait(list(self._draining), num_returns=len(self._draining), timeout=0)
            for ref in ready:
                actor = self._draining.pop(ref)
                if actor in self._actors and actor not in self._idle:
                    self._idle.append(actor)
                    self._idle_since[actor] = time.monotonic()
        if self._starting:
            ready, _ = ray.wait(list(self._starting), num_returns=len(self._starting), timeout=0)
            for ref in ready:
                actor = self._starting.pop(ref)
                try:
                    ray.get(ref, timeout=0)
                except Exception:  # noqa: BLE001  (its process failed to start: a later unit makes another)
                    log.warning("warm pool: an interpretation actor failed to start")
                    if actor in self._actors:
                        self._actors.remove(actor)
                    continue
                self._idle.append(actor)
                self._idle_since[actor] = time.monotonic()
                self._cond.notify()
        now = time.monotonic()
        if self._starting and now - self._wanting > max(2.0, 4 * POLL_SECONDS):
            for ref, actor in list(self._starting.items()):  # pending demand nobody has any more
                del self._starting[ref]
                self._kill(actor)
        if self.idle_seconds > 0:
            for actor in [a for a in self._idle if now - self._idle_since.get(a, now) >= self.idle_seconds]:
                self._idle.remove(actor)
                self._idle_since.pop(actor, None)
                self._kill(actor)
                log.info("warm pool: released an actor idle for %.0f s", self.idle_seconds)

    def waiting_message(self) -> str:
        """'waiting for 1 GPU: 0 free, cluster 2 of 2 busy': what a unit asks and the cluster has."""
        import ray

        kind, per = ("GPU", self.gpus) if self.gpus > 0 else ("CPU", self.cpus)
        total = float(ray.cluster_resources().get(kind, 0))
        free = float(ray.available_resources().get(kind, 0))
        with self._cond:
            starting = len(self._starting)
        if free >= per and starting:  # room on the cluster: the actors' processes are booting
            return f"starting {starting} Ray actor{'s' if starting > 1 else ''}"
        return (f"waiting for {_amount(per)} {kind}: {_amount(free)} free, "
                f"cluster {_amount(total - free)} of {_amount(total)} busy")


class RayFanout:
    """map_units for stages.interpret_run: yields each unit's key as an actor of `pool` finishes it.

    max_workers caps the actors this job uses at once (None: as many as the pool gives).
    progress(done, total, message) hears why the job waits (a full cluster, Ray unreachable);
    wait_seconds (None: I2X_RAY_WAIT_SECONDS; 0: no limit) bounds each such wait."""

    def __init__(self, pool: WarmPool, run_id: str, params: InterpretParams, *, max_workers: int | None = None,
                 cancel: threading.Event | None = None, progress=None, wait_seconds: float | None = None):
        from i2x.interpretation.raylink import wait_setting

        self.pool, self.run_id, self.params = pool, run_id, params.to_dict()
        self.max_workers = max_workers
        self.cancel = cancel
        self.progress = progress
        self.wait_seconds = wait_setting() if wait_seconds is None else float(wait_seconds)
        self._pending: dict = {}  # ref -> (actor, step)
        self._lock = threading.Lock()
        self._stopped = False
        self._said = ""
        self._done = self._total = 0

    def _check(self) -> None:
        if self._stopped or (self.cancel is not None and self.cancel.is_set()):
            raise Cancelled("the job was cancelled", field="job_id")

    def _say(self, message: str) -> None:
        if message != self._said and self.progress is not None:
            self.progress(self._done, self._total, message)
        self._said = message

    def _over(self, since: float) -> bool:
        return self.wait_seconds > 0 and time.monotonic() - since > self.wait_seconds

    def __call__(self, steps: list[int]) -> Iterator[str]:
        todo = deque(int(s) for s in steps)
        self._total = len(todo)
        try:
            yielded = 0
            for key in self._run(todo):
                yielded += 1
                yield key
            if yielded != self._total:  # a unit lost on the way must fail the job, not go unwritten
                raise Unavailable(f"{self._total - yielded} of {self._total} units were not interpreted; "
                                  "start the job again (finished units are kept)", field="steps")
        finally:
            self.stop()

    def _run(self, todo: deque) -> Iterator[str]:
        import ray

        failures: dict[int, int] = {}
        limit = self.max_workers or len(todo) or 1
        waiting_since: float | None = None
        while todo or self._pending:
            self._check()
            try:
                wanted = min(len(todo), limit - len(self._pending))
                if wanted > 0:
                    # Wait for an actor only when this job has nothing running (others hold them all).
                    actors = self.pool.acquire(wanted, timeout=0.0 if self._pending else POLL_SECONDS)
                    for actor in actors:
                        self._submit(actor, todo[0])  # popped once submitted: a failed call keeps it
                        todo.popleft()
                if not self._pending:
                    waiting_since = waiting_since or time.monotonic()
                    message = self.pool.waiting_message()
                    if self._over(waiting_since):
                        raise Unavailable(f"no Ray worker for this job in {self.wait_seconds:g} s: {message}; add "
                                          "Ray workers, stop other work, or raise I2X_RAY_WAIT_SECONDS",
                                          field="I2X_RAY_WAIT_SECONDS")
                    self._say(message)
                    continue
                if waiting_since is not None:
                    waiting_since = None
                    self._say("interpreting checkpoints")
                ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=POLL_SECONDS)
            except (Cancelled, InvalidArgument, Unavailable) as error:
                if not isinstance(error, Unavailable) or self.pool.link is None or self.pool.link.connected:
                    raise
                self._wait_for_ray(todo)
                continue
            except Exception as error:  # noqa: BLE001  (a lost Ray connection, or a real failure)
                if self.pool.link is None or not self.pool.link.lost(error):
                    raise
                self._wait_for_ray(todo)
                continue
            for ref in ready:
                with self._lock:
                    entry = self._pending.pop(ref, None)
                if entry is None:  # stop() took it
                    continue
                actor, step = entry
                try:
                    key = ray.get(ref)
                except ray.exceptions.RayActorError:
                    self._check()  # the pool was shut down under a cancelled job: not a failure
                    if self.pool.link is not None and self.pool.link.lost("an actor call failed"):
                        todo.appendleft(step)
                        self._wait_for_ray(todo)
                        break
                    failures[step] = failures.get(step, 0) + 1
                    if failures[step] > MAX_RETRIES:
                        raise Unavailable(f"the Ray actor interpreting step {step} died {failures[step]} "
                                          "times; see the Ray logs", field="steps") from None
                    self.pool.replace(actor)
                    todo.appendleft(step)
                    continue
                except BaseException as error:
                    if self.pool.link is not None and not isinstance(error, Cancelled) \
                            and self.pool.link.lost(error):
                        todo.appendleft(step)
                        self._wait_for_ray(todo)
                        break
                    self.pool.release(actor)
                    if self.cancel is not None and self.cancel.is_set():
                        raise Cancelled("the job was cancelled", field="job_id") from None
                    raise
                self.pool.release(actor)
                self._done += 1
                yield key

    def _wait_for_ray(self, todo: deque) -> None:
        """Ray is gone: the units in flight go back to `todo`, and the job waits for the link."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for _, step in sorted(pending.values(), key=lambda e: e[1], reverse=True):
            todo.appendleft(step)
        link = self.pool.link
        self._say(f"waiting for Ray: {link.describe()}; reconnecting")
        if not link.wait(timeout=self.wait_seconds or None, cancel=self.cancel):
            raise Unavailable(f"{link.describe()} for more than {self.wait_seconds:g} s; the job can be "
                              "started again once Ray is back (finished units are kept)",
                              field="I2X_RAY_ADDRESS")
        self._say("interpreting checkpoints")

    def _submit(self, actor, step: int) -> None:
        with self._lock:
            if self._stopped:
                self.pool.release(actor)
                return
            try:
                ref = actor.interpret.remote(self.run_id, int(step), self.params, tracing.inject())
            except BaseException:
                self.pool.release(actor)
                raise
            self._pending[ref] = (actor, step)

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
                  cancel=None, on_cancel=None, progress=None) -> RayFanout:
    fanout = RayFanout(pool, run_id, params, max_workers=max_workers, cancel=cancel, progress=progress)
    if on_cancel is not None:
        on_cancel(fanout.stop)
    return fanout
