"""InterpretationService over stages.interpret_run, fanned out on the service's warm Ray pool."""

from __future__ import annotations

import asyncio
import threading

from i2x import raycluster
from i2x.core.errors import FailedPrecondition, InvalidArgument, NotFound
from i2x.engine import stages
from i2x.engine.params import InterpretParams
from i2x.interpretation.fanout import WarmPool, ray_map_units, store_spec
from i2x.interpretation.raylink import RayLink
from i2x.servicers import StageServicer, interpret_params, run_id_of
from i2x.storage import run_key
from i2x.v1 import interpretation_pb2_grpc


class InterpretationServicer(StageServicer, interpretation_pb2_grpc.InterpretationServiceServicer):
    service = "interpretation"

    def __init__(self, store, jobs, *, max_workers: int | None = None, pool_size: int | None = None):
        super().__init__(store, jobs)
        self.max_workers = max_workers  # caps the pool (None: I2X_RAY_POOL_SIZE / the free Ray slots)
        self._pool_size = pool_size
        self._pool: WarmPool | None = None
        self._pool_lock = threading.Lock()
        # Connects in its own thread, with backoff; watches the connection (see raylink).
        self.link = RayLink()

    @property
    def pool(self) -> WarmPool:
        """The elastic actor pool, created on first use and kept until close()."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = WarmPool(store_spec(self.store), size=self._pool_size, max_size=self.max_workers,
                                      link=self.link.start())
            return self._pool

    def bind_health(self, health, loop) -> None:
        """Health follows the Ray connection: NOT_SERVING while Ray is unreachable (at start-up too)."""
        from grpc_health.v1 import health_pb2

        from i2x.v1 import interpretation_pb2

        names = ["", interpretation_pb2.DESCRIPTOR.services_by_name["InterpretationService"].full_name]

        def follow(connected: bool) -> None:
            status = health_pb2.HealthCheckResponse.SERVING if connected else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in names:
                asyncio.run_coroutine_threadsafe(health.set(name, status), loop)

        self.link.listeners.append(follow)
        if self.link.address != "local":  # an in-process Ray starts with the first job, as before
            follow(self.link.connected)
            self.link.start()

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown()
        self.link.close()

    def job_function(self, kind, run_id, params):
        if kind == "follow":  # a live run: i2x.interpretation.follow
            return self._follow_job(run_id, params)
        if kind != "interpret":
            return None
        store = self.store
        params = dict(params)
        steps = params.pop("steps", None) or None

        def run(ctx):
            interp = InterpretParams.from_dict(params)
            fanout = ray_map_units(self.pool, run_id, interp, cancel=ctx.cancel_event, on_cancel=ctx.on_cancel,
                                   progress=ctx.progress)
            index = stages.interpret_run(store, run_id, interp, progress=ctx.progress, cancel=ctx.cancel_event,
                                         map_units=fanout, steps=steps)
            return {"steps": index["steps"], "target_layer": index["target_layer"],
                    "saliency_shape": index["saliency_shape"]}

        return run

    def _follow_job(self, run_id, params):
        from i2x import config
        from i2x.interpretation.follow import follow_run

        def run(ctx):
            interp = InterpretParams.from_dict(params)
            def fanout():  # one per batch of new checkpoints: a fan-out stops when its batch is done
                return ray_map_units(self.pool, run_id, interp, cancel=ctx.cancel_event, on_cancel=ctx.on_cancel)

            index = follow_run(self.store, run_id, interp, new_map_units=fanout, progress=ctx.progress,
                               cancel=ctx.cancel_event, idle_timeout=float(config.get("I2X_LIVE_IDLE_SECONDS")))
            return {"steps": index["steps"], "target_layer": index["target_layer"],
                    "saliency_shape": index["saliency_shape"], "followed": True}

        return run

    async def StartInterpretation(self, request, context):
        run_id = run_id_of(request)
        record = await asyncio.to_thread(stages.get_run, self.store, run_id)
        params = interpret_params(request.params, len(record.get("classes", [])) or None)
        if params.target_layer:  # a wrong layer is refused now, not in every unit of the job
            await asyncio.to_thread(stages.check_layer, record["model"], params.target_layer, "params.target_layer")
        if request.follow:
            if request.steps:
                raise InvalidArgument("follow interprets every checkpoint the run gets: leave steps empty",
                                      field="steps")
            return await self.start("follow", run_id, params.to_dict(), request.request_id)
        if record.get("live"):
            await asyncio.to_thread(stages.require_finished, self.store, run_id, "an interpretation without follow")
        if not record.get("checkpoints"):
            raise FailedPrecondition(f"run {run_id!r} has no checkpoints yet: train it or register checkpoints",
                                     field="run_id")
        known = sorted(int(c["step"]) for c in record["checkpoints"])
        steps = sorted(set(int(s) for s in request.steps))
        if steps:
            missing = sorted(set(steps) - set(known))
            if missing:
                raise NotFound(f"steps {missing} are not checkpoints of run {run_id!r} (it has {known})",
                               field="steps")
            if len(steps) < 2:
                raise InvalidArgument(f"give at least 2 steps (or none for all {len(known)}): confidence changes "
                                      f"need consecutive checkpoints, got {steps}", field="steps")
        await asyncio.to_thread(self._check_earlier_interpretation, run_id, steps or known)
        # A GPU the cluster could never grant: refused now, not by a job that waits forever.
        await asyncio.to_thread(raycluster.check_unit_request, params.device)
        job_params = params.to_dict()
        if steps and steps != known:
            job_params["steps"] = steps
        return await self.start("interpret", run_id, job_params, request.request_id)

    def _check_earlier_interpretation(self, run_id: str, steps: list[int]) -> None:
        """A run is interpreted at one set of steps: say so now rather than in a failed job."""
        index_key = run_key(run_id, "interpretation", "index.json")
        if self.store.exists(index_key):
            done = self.store.get_json(index_key)["steps"]
            if done != steps:
                raise FailedPrecondition(f"run {run_id!r} was interpreted at steps {done}; register the same "
                                         "checkpoints as a new run to interpret other steps", field="steps")
