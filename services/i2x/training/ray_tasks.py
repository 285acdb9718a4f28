"""Training and fine-tuning on the Ray cluster (I2X_TRAIN_ON_RAY=true), on a GPU when it has one.

- A training job is one Ray task asking for I2X_TRAIN_GPUS GPUs and I2X_TRAIN_CPUS CPUs. The task
  runs stages.train_run against the store itself, so each checkpoint reaches the store as it is
  written, not at the end. Progress and cancel go through a small ProgressChannel actor (no CPU):
  the task reports to it (throttled) and reads its cancel flag (at most every CANCEL_POLL s); the
  job's thread polls it and forwards the progress. A cancelled task stops at its next iteration
  and raises Cancelled; one that does not stop within CANCEL_GRACE s is killed (force).
- Fine-tuning: each (protocol, repeat) of Table 1 is an independent Ray task running
  core.finetune.finetune_once on the same inputs (put in the object store once). The unit depends
  only on its arguments and seeds, so the table equals the serial run's (tests/training).

Inside a task granted a GPU, Ray sets CUDA_VISIBLE_DEVICES, so the device `auto`/`cuda` is that
GPU (i2x.core.device). Without I2X_TRAIN_ON_RAY the in-process path (stages.train_run, serial
fine-tuning) runs unchanged and Ray is never started.
"""

from __future__ import annotations

import time

from i2x import config, raycluster
from i2x.core.errors import Cancelled, FailedPrecondition, I2XError, InvalidArgument, Unavailable

POLL_SECONDS = 0.25  # how often the job's thread reads the task's progress
CANCEL_POLL = 0.5  # how often a task asks whether its job was cancelled
CANCEL_GRACE = 10.0  # a cancelled task that has not stopped by then is killed
PROGRESS_EVERY = 0.2  # the task sends progress at most this often (and always its last step)
TASK_RETRIES = 1  # a task whose worker or node died is run again (a unit's writes are idempotent)


# ---------------------------------------------------------------- settings

def on_ray(setting: str | None = None) -> bool:
    text = config.get("I2X_TRAIN_ON_RAY", setting).strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise InvalidArgument(f"must be true or false, got {text!r}", field="I2X_TRAIN_ON_RAY")
    return text in ("true", "1", "yes")


def train_gpus(resources: dict | None = None, setting: str | None = None) -> float:
    """I2X_TRAIN_GPUS: 'auto' = 1 when the cluster has a GPU, else 0; or a number >= 0."""
    return raycluster.gpus_setting("I2X_TRAIN_GPUS", resources, setting)


def train_cpus(setting: str | None = None) -> float:
    return config.number("I2X_TRAIN_CPUS", setting, low_open=True)


def wait_limit(setting: str | None = None) -> float:
    """I2X_TRAIN_WAIT_SECONDS: how long a task may wait to start (0: no limit)."""
    return config.number("I2X_TRAIN_WAIT_SECONDS", setting, unit="seconds", zero_means="0: no limit")


def _waiting(options: dict) -> str:
    """'1 CPU and 0 GPU: 0 of 2 CPU and 0 of 0 GPU free' for the task's resources."""
    import ray

    free, total = ray.available_resources(), ray.cluster_resources()
    return (f"{options['num_cpus']:g} CPU and {options['num_gpus']:g} GPU: {free.get('CPU', 0):g} of "
            f"{total.get('CPU', 0):g} CPU and {free.get('GPU', 0):g} of {total.get('GPU', 0):g} GPU free")


def check_request(device: str | None, field: str) -> None:
    """At the request: FailedPrecondition when the training/fine-tuning device could never be had.
    On Ray: the cluster must be able to grant I2X_TRAIN_GPUS/CPUS to one task, and a GPU device
    needs I2X_TRAIN_GPUS > 0. In-process: a GPU device needs CUDA in this process."""
    from i2x.core.device import check_device, resolve_device, wants_gpu

    device = check_device(device or "auto", field=field)
    if on_ray():
        resources = raycluster.connect()
        raycluster.check_grantable(device=device, gpus=train_gpus(resources), cpus=train_cpus(), device_field=field,
                                   gpus_setting="I2X_TRAIN_GPUS", cpus_setting="I2X_TRAIN_CPUS")
    elif wants_gpu(device):
        try:
            resolve_device(device, field=field)
        except FailedPrecondition as exc:
            raise FailedPrecondition(f"{exc.message}; or run training on the Ray cluster (I2X_TRAIN_ON_RAY=true)",
                                     field=field) from None


def _task_options(resources: dict) -> dict:
    cpus, gpus = train_cpus(), train_gpus(resources)
    return {"num_cpus": cpus, "num_gpus": gpus, "max_retries": TASK_RETRIES,
            "runtime_env": {"env_vars": raycluster.worker_env()}}


def _torch_threads() -> int:
    threads = int(config.get("I2X_TORCH_THREADS"))
    return threads if threads > 0 else max(1, int(train_cpus()))


# ---------------------------------------------------------------- progress and cancel across processes

class ProgressChannel:
    """A Ray actor between a job's thread and its task: the latest progress, and the cancel flag."""

    def __init__(self):
        self.latest = None
        self.cancelled = False

    def report(self, done: int, total: int, message: str) -> None:
        self.latest = (int(done), int(total), str(message))

    def poll(self):
        return self.latest

    def cancel(self) -> None:
        self.cancelled = True

    def is_cancelled(self) -> bool:
        return self.cancelled


class _TaskSide:
    """In the task: progress(...) and cancel.is_set() for the stage functions, over the channel."""

    def __init__(self, channel):
        self.channel = channel
        self._sent = 0.0
        self._asked = 0.0
        self._flag = False

    def progress(self, done, total, message, artifact=None) -> None:
        now = time.monotonic()
        if now - self._sent >= PROGRESS_EVERY or done >= total:
            self._sent = now
            self.channel.report.remote(done, total, message)

    def is_set(self) -> bool:
        import ray

        now = time.monotonic()
        if not self._flag and now - self._asked >= CANCEL_POLL:
            self._asked = now
            self._flag = bool(ray.get(self.channel.is_cancelled.remote()))
        return self._flag


def _unwrap(exc: BaseException) -> BaseException:
    """The I2X error inside a RayTaskError (its message is what the client should read)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, I2XError) else exc


# ---------------------------------------------------------------- training

def _train_task(spec: dict, run_id: str, channel, threads: int) -> dict:
    import torch

    from i2x.engine import stages
    from i2x.interpretation.fanout import open_store_spec

    torch.set_num_threads(threads)
    side = _TaskSide(channel)
    channel.report.remote(0, 0, "training task started")  # the job's thread stops counting the wait
    return stages.train_run(open_store_spec(spec), run_id, progress=side.progress, cancel=side)


def train_run(store, run_id: str, *, progress=None, cancel=None) -> dict:
    """stages.train_run as one Ray task (same arguments, same result)."""
    import ray

    from i2x.interpretation.fanout import store_spec

    resources = raycluster.connect()
    channel = ray.remote(ProgressChannel).options(num_cpus=0).remote()
    options = _task_options(resources)
    task = ray.remote(_train_task).options(**options)
    ref = task.remote(store_spec(store), run_id, channel, _torch_threads())
    try:
        return _follow(ref, channel, progress, cancel, options)
    finally:
        ray.kill(channel)


def _follow(ref, channel, progress, cancel, options):
    import ray

    last, cancel_sent = None, None
    submitted, limit, said = time.monotonic(), wait_limit(), 0.0
    while True:
        ready, _ = ray.wait([ref], timeout=POLL_SECONDS)
        update = ray.get(channel.poll.remote())
        if update is not None and update != last and progress is not None:
            last = update
            progress(*update)
        if update is None and not ready:  # not started: waiting for a worker with the resources
            waited = time.monotonic() - submitted
            if limit and waited > limit:
                ray.cancel(ref, force=True)
                raise Unavailable(f"the training task waited {waited:.0f} s for {_waiting(options)} "
                                  "(I2X_TRAIN_WAIT_SECONDS); free or add Ray workers, or lower "
                                  "I2X_TRAIN_CPUS / I2X_TRAIN_GPUS", field="I2X_TRAIN_WAIT_SECONDS")
            if progress is not None and waited - said >= 5.0:
                said = waited
                progress(0, 0, f"waiting for {_waiting(options)}")
        if ready:
            try:
                return ray.get(ref)
            except Exception as exc:  # noqa: BLE001
                error = _unwrap(exc)
                if cancel_sent is not None and not isinstance(error, I2XError):
                    raise Cancelled("training cancelled", field="job_id") from None
                if error is exc:
                    raise
                raise error from None
        if cancel is not None and cancel.is_set():
            if cancel_sent is None:
                cancel_sent = time.monotonic()
                channel.cancel.remote()
            elif time.monotonic() - cancel_sent > CANCEL_GRACE:
                ray.cancel(ref, force=True)
                raise Cancelled("training cancelled (its Ray task was stopped)", field="job_id")


# ---------------------------------------------------------------- fine-tuning fan-out

def _finetune_task(inputs: dict, protocol: str, repeat: int, options: dict, threads: int, channel) -> dict:
    import torch

    from i2x.core.finetune import finetune_once

    torch.set_num_threads(threads)
    channel.report.remote(0, 0, f"{protocol} repeat {repeat + 1} started")
    return finetune_once(protocol=protocol, repeat=repeat, **inputs, **options)


def finetune_map_runs(*, progress=None, cancel=None):
    """map_runs for core.finetune.run_protocols: each (protocol, repeat) as a Ray task. None when
    I2X_TRAIN_ON_RAY is off (run_protocols then runs them here, in turn)."""
    if not on_ray():
        return None

    def map_runs(units, inputs, options):
        import ray

        from i2x.core.finetune import stages_of

        resources = raycluster.connect()
        task_options = _task_options(resources)
        task = ray.remote(_finetune_task).options(**task_options)
        shared = ray.put(inputs)  # the sets and the final weights, once for every task
        threads = _torch_threads()
        channel = ray.remote(ProgressChannel).options(num_cpus=0).remote()  # tells when the first task starts
        refs = [task.remote(shared, protocol, r, options, threads, channel) for protocol, r in units]
        submitted, limit, started = time.monotonic(), wait_limit(), False
        where = {ref: i for i, ref in enumerate(refs)}
        total = sum(len(stages_of(protocol)) for protocol, _ in units)
        results: list = [None] * len(units)
        pending, done, finished = list(refs), 0, 0
        try:
            while pending:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("fine-tuning cancelled", field="job_id")
                ready, pending = ray.wait(pending, num_returns=1, timeout=POLL_SECONDS)
                if not started and not ready:
                    started = ray.get(channel.poll.remote()) is not None
                    waited = time.monotonic() - submitted
                    if not started and limit and waited > limit:
                        raise Unavailable(f"no fine-tuning task started in {waited:.0f} s: each waits for "
                                          f"{_waiting(task_options)} (I2X_TRAIN_WAIT_SECONDS); free or add Ray "
                                          "workers, or lower I2X_TRAIN_CPUS / I2X_TRAIN_GPUS",
                                          field="I2X_TRAIN_WAIT_SECONDS")
                started = started or bool(ready)
                for ref in ready:
                    i = where[ref]
                    try:
                        results[i] = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001
                        error = _unwrap(exc)
                        if error is exc:
                            raise
                        raise error from None
                    protocol, r = units[i]
                    done += len(stages_of(protocol))
                    finished += 1
                    if progress is not None:
                        progress(done, total, f"{protocol} repeat {r + 1} done ({finished}/{len(units)} runs, on Ray)")
        finally:
            for ref in pending:  # cancelled or failed: the other runs are not wanted any more
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001
                    pass
            ray.kill(channel)
        return results

    return map_runs


def train_runner():
    """The function the training service runs a training job with: train_run here on Ray, or
    stages.train_run in-process (I2X_TRAIN_ON_RAY)."""
    if on_ray():
        return train_run
    from i2x.engine import stages

    return stages.train_run
