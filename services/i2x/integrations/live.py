"""Live analysis: I2X follows a training job that runs in the user's own loop.

What a training script adds (the model is one of i2x.models' architectures):

    live = LiveAnalysis("my-run", model, every=40, dataset={"kind": "mnist5k"}).attach(optimizer)
    ...                                   # the user's loop, unchanged
    result = live.finish()                # the explanation, shortly after the last step

Every `every` optimizer steps (a plain PyTorch optimizer step hook; or call live.step() yourself),
the weights are copied to the CPU and, in a background thread, stored as safetensors
(uploads/<run>/live/step-<step>.safetensors) and registered into the live run (RegisterCheckpoints
live). The interpretation service follows the run (StartInterpretation follow), interpreting each
checkpoint as it lands; finish() closes the run, and prototypes, clusters, explanation and report
run at once on interpretations already done. A store or service that cannot be reached never
stops training: the callback says so once in the log and counts what it skipped.

`lightning_callback(...)` gives the same as a PyTorch Lightning Callback (lightning installed).
`i2x watch RUN` shows a live run's progress.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time

log = logging.getLogger("i2x.live")

_FINISH = object()
_START = object()


def _safetensors_bytes(state: dict, step: int) -> bytes:
    from safetensors.torch import save

    return save(state, metadata={"i2x": json.dumps({"step": int(step)})})


class LiveAnalysis:
    """Checkpoints of a training loop, registered into the live run `run_id` as they come.

    model: the torch module being trained; model_spec: its i2x.models.ModelSpec as a dict (default
    {"arch": "small_cnn"}; num_classes etc. as for create_run); dataset: the DatasetSpec dict the
    services load the explanation set and test split from; client: an i2x Client (default
    Client.from_env()). prototypes/clusters/explain: stage parameters for finish()."""

    def __init__(self, run_id: str, model, *, every: int = 40, model_spec: dict | None = None,
                 dataset: dict | None = None, client=None, explanation_fraction: float | None = None,
                 interpret: dict | None = None, prototypes: dict | None = None, clusters: dict | None = None,
                 explain: dict | None = None, report: bool = True, max_pending: int = 8,
                 register_timeout: float = 120.0):
        if int(every) < 1:
            raise ValueError(f"every: must be >= 1 optimizer steps, got {every}")
        if client is None:
            from i2x.client import Client

            client = Client.from_env()
        self.run_id, self.model, self.every, self.client = run_id, model, int(every), client
        self.model_spec = model_spec or {"arch": "small_cnn"}
        self.dataset, self.explanation_fraction = dataset, explanation_fraction
        self.stage_params = {"interpret": interpret or {}, "prototypes": prototypes or {},
                             "clusters": clusters or {}, "explain": explain or {}}
        self.report, self.register_timeout = report, register_timeout
        self.steps_seen = 0  # optimizer steps counted by step() / the hook
        self.registered: list[int] = []  # steps the training service accepted
        self.skipped: list[int] = []  # steps lost to an unreachable store/service (or a full queue)
        self.follow_job = None
        self.finished = False
        self.close_error: str | None = None
        self._last_saved: int | None = None
        self._failing = False  # inside a run of failures: say it once, not per checkpoint
        self._warned = False
        self.timeline: list[tuple[str, int | None, float]] = []  # (event, step, time.monotonic()) for benches
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._work, name=f"i2x-live-{run_id}", daemon=True)
        self._queue.put(_START)  # the run and its follow job (the Ray pool warms up) while the first steps train
        self._thread.start()

    # ---------------------------------------------------------------- the training side (fast, never raises)

    def step(self, step: int | None = None) -> None:
        """Count an optimizer step (or give the global step); every `every` steps, save a checkpoint."""
        self.steps_seen = int(step) if step is not None else self.steps_seen + 1
        if self.steps_seen % self.every == 0:
            self.save(self.steps_seen)

    def hook(self, optimizer=None, args=None, kwargs=None) -> None:
        """A torch.optim.Optimizer step post-hook: optimizer.register_step_post_hook(live.hook)."""
        self.step()

    def attach(self, optimizer) -> "LiveAnalysis":
        optimizer.register_step_post_hook(self.hook)
        return self

    def save(self, step: int) -> None:
        """Copy the weights now (the loop goes on changing them) and queue them for the store."""
        if self.finished or step == self._last_saved:
            return
        try:
            state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.model.state_dict().items()}
        except Exception as exc:  # noqa: BLE001  # never break the user's training
            self._problem(step, f"could not copy the weights: {exc}")
            return
        self._last_saved = int(step)
        self.timeline.append(("saved", int(step), time.monotonic()))
        try:
            self._queue.put_nowait((int(step), state))
        except queue.Full:
            self._problem(step, f"{self._queue.maxsize} checkpoints still wait for the store")

    # ---------------------------------------------------------------- the background side

    def _problem(self, step: int, why: str) -> None:
        self.skipped.append(int(step))
        if not self._failing:
            self._failing = True
            log.warning("i2x live: step %d of run %r not analysed (%s); training goes on, and further misses "
                        "are counted, not logged", step, self.run_id, why)
            self._warned = True

    def _recovered(self, step: int) -> None:
        if self._failing:
            self._failing = False
            log.warning("i2x live: run %r reaches the store again at step %d (%d checkpoints skipped so far)",
                        self.run_id, step, len(self.skipped))

    def _ensure_started(self) -> None:
        """The live run and its follow interpretation, once (retried with the next checkpoint on failure)."""
        if self.follow_job is not None:
            return
        import grpc

        try:
            self.client.get_run(self.run_id)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            kwargs = {} if self.explanation_fraction is None else {"explanation_fraction": self.explanation_fraction}
            self.client.create_run(self.run_id, model=self.model_spec, dataset=self.dataset, **kwargs)
        self.follow_job = self.client.interpret(self.run_id, follow=True, **self.stage_params["interpret"])

    def _describe(self, exc: BaseException) -> str:
        details = getattr(exc, "details", None)
        if callable(details):
            return f"{exc.code().name}: {details()}"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _START:
                try:
                    self._ensure_started()
                except Exception:  # noqa: BLE001  # retried, and reported once, with the first checkpoint
                    pass
                continue
            if item is _FINISH:
                self._close()
                return
            step, state = item
            try:
                self._ensure_started()
                key = f"uploads/{self.run_id}/live/step-{step:06d}.safetensors"
                self.client.store.put_bytes(key, _safetensors_bytes(state, step))
                self.client.register_checkpoints(self.run_id, {step: key}, live=True).result(
                    timeout=self.register_timeout)
                self.registered.append(step)
                self.timeline.append(("registered", step, time.monotonic()))
                self._recovered(step)
            except Exception as exc:  # noqa: BLE001  # the store, the service, a refused checkpoint
                self._problem(step, self._describe(exc))

    def _close(self) -> None:
        try:
            if not self.registered:
                raise RuntimeError("no checkpoint reached the training service")
            self.client.register_checkpoints(self.run_id, {}, finish=True).result(timeout=self.register_timeout)
            self.finished = True
            self.timeline.append(("finished", None, time.monotonic()))
        except Exception as exc:  # noqa: BLE001
            self.close_error = self._describe(exc)
            log.warning("i2x live: run %r could not be finished (%s); analyse it later with `i2x analyze %s`",
                        self.run_id, self.close_error, self.run_id)
            if self.follow_job is not None:  # it would wait for checkpoints until I2X_LIVE_IDLE_SECONDS
                try:
                    self.follow_job.cancel()
                except Exception:  # noqa: BLE001  # the service is what could not be reached
                    pass

    # ---------------------------------------------------------------- the end

    def finish(self, *, wait: bool = True, timeout: float | None = None):
        """Save the last step (if not saved), close the live run and, with wait, return the
        client's PipelineResult once the explanation (and the report) are done; None when the run
        could not be closed (the log says why). A stage failing after that raises JobFailed."""
        if self.steps_seen and self._last_saved != self.steps_seen:
            self.save(self.steps_seen)
        self._queue.put(_FINISH)
        self._thread.join(timeout)
        if not self.finished or not wait:
            return None
        params = self.stage_params
        # Prototypes need only the final checkpoint: extracted while the last units are interpreted.
        self.client.prototypes(self.run_id, **params["prototypes"])
        self.follow_job.result(timeout)
        self.timeline.append(("interpreted", None, time.monotonic()))
        return self.client.run_pipeline(self.run_id, prototypes=params["prototypes"], clusters=params["clusters"],
                                        explain=params["explain"], interpret=params["interpret"],
                                        report=self.report, timeout=timeout)


def lightning_callback(run_id: str, *, every: int = 40, module_attr: str | None = "model", **kwargs):
    """A PyTorch Lightning Callback doing what LiveAnalysis does: a checkpoint every `every` global
    steps of pl_module.<module_attr> (the zoo model inside the LightningModule; None: the module
    itself), finish() at the end of fit. The PipelineResult lands in callback.result."""
    try:
        import lightning.pytorch as pl
    except ImportError:
        import pytorch_lightning as pl

    class I2XLiveCallback(pl.Callback):
        def __init__(self):
            self.live: LiveAnalysis | None = None
            self.result = None

        def on_train_start(self, trainer, pl_module):
            model = getattr(pl_module, module_attr) if module_attr else pl_module
            self.live = LiveAnalysis(run_id, model, every=every, **kwargs)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.live.step(trainer.global_step)

        def on_train_end(self, trainer, pl_module):
            self.result = self.live.finish()

    return I2XLiveCallback()


# ---------------------------------------------------------------- i2x watch RUN

def add_watch_command(sub) -> None:
    p = sub.add_parser("watch", help="follow a run (a live one as its checkpoints arrive) until its explanation "
                                     "is ready")
    p.add_argument("run_id")
    p.add_argument("--endpoint", help="host of all four services on their default ports")
    p.add_argument("--token", help="bearer token (env I2X_API_TOKEN)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between looks (default 1)")
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    p.set_defaults(func=cmd_watch)


def watch(client, run_id: str, *, interval: float = 1.0, timeout: float | None = None, out=None) -> int:
    """Print a line whenever the run changes: checkpoints registered, interpreted, explained.
    Returns 0 once the run is finished and explained, 1 when its interpretation failed, 2 on timeout."""
    import grpc

    from i2x.v1 import jobs_pb2

    out = out or sys.stdout
    deadline = None if timeout is None else time.monotonic() + timeout
    last = None
    while True:
        run = client.get_run(run_id)
        jobs = client._call("interpretation", "jobs", "ListJobs", jobs_pb2.ListJobsRequest(run_id=run_id)).jobs
        from i2x.client.jobs import JobInfo

        infos = [JobInfo.from_proto(j) for j in jobs]
        # The follow job of a live run (run_pipeline's later interpret job on it has nothing left to do).
        follow = next((j for j in reversed(infos) if j.kind == "follow"), None) or next(
            (j for j in reversed(infos) if j.kind == "interpret"), None)
        try:
            client.explanation(run_id)
            explained = True
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                raise
            explained = False
        steps = run.steps
        state = "live" if run.live else ("finished" if steps else "waiting for its first checkpoint")
        interpreted = f"{follow.done}/{len(steps)} interpreted ({follow.state.lower()})" if follow else "not interpreted"
        line = (f"{run_id}: {len(steps)} checkpoints{f' (last step {steps[-1]})' if steps else ''}, {state}; "
                f"{interpreted}; explanation {'ready' if explained else 'not yet'}")
        if line != last:
            print(f"{time.strftime('%H:%M:%S')} {line}", file=out, flush=True)
            last = line
        if explained and not run.live and steps:
            return 0
        if follow is not None and follow.state in ("FAILED", "CANCELLED"):
            print(f"interpretation {follow.state.lower()}: {follow.error or follow.message}", file=out, flush=True)
            return 1
        if deadline is not None and time.monotonic() > deadline:
            return 2
        time.sleep(interval)


def cmd_watch(args) -> int:
    import grpc

    from i2x import config
    from i2x.client import Client

    overrides = {"token": args.token} if args.token else {}
    if args.endpoint:
        overrides.update({s: f"{args.endpoint}:{p}" for s, p in config.SERVICE_PORTS.items()})
    with Client.from_env(**overrides) as client:
        try:
            return watch(client, args.run_id, interval=args.interval, timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"i2x watch: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130

