"""InterpretationService over stages.interpret_run with the Ray fan-out as map_units."""

from __future__ import annotations

import asyncio

from i2x.core.errors import FailedPrecondition, InvalidArgument
from i2x.engine import stages
from i2x.engine.params import InterpretParams
from i2x.interpretation.fanout import ray_map_units
from i2x.servicers import StageServicer, interpret_params, run_id_of
from i2x.v1 import interpretation_pb2_grpc


class InterpretationServicer(StageServicer, interpretation_pb2_grpc.InterpretationServiceServicer):
    service = "interpretation"

    def __init__(self, store, jobs, *, max_workers: int | None = None):
        super().__init__(store, jobs)
        self.max_workers = max_workers  # Ray actors per job (None: as many as the cluster offers)

    def job_function(self, kind, run_id, params):
        if kind != "interpret":
            return None
        store, max_workers = self.store, self.max_workers

        def run(ctx):
            interp = InterpretParams.from_dict(params)
            fanout = ray_map_units(store, run_id, interp, max_workers=max_workers, cancel=ctx.cancel_event,
                                   on_cancel=ctx.on_cancel)
            index = stages.interpret_run(store, run_id, interp, progress=ctx.progress, cancel=ctx.cancel_event,
                                         map_units=fanout)
            return {"steps": index["steps"], "target_layer": index["target_layer"],
                    "saliency_shape": index["saliency_shape"]}

        return run

    async def StartInterpretation(self, request, context):
        run_id = run_id_of(request)
        record = await asyncio.to_thread(stages.get_run, self.store, run_id)
        params = interpret_params(request.params, len(record.get("classes", [])) or None)
        if not record.get("checkpoints"):
            raise FailedPrecondition(f"run {run_id!r} has no checkpoints yet: train it or register checkpoints",
                                     field="run_id")
        if request.steps:
            known = sorted(int(c["step"]) for c in record["checkpoints"])
            missing = sorted(set(int(s) for s in request.steps) - set(known))
            if missing:
                raise InvalidArgument(f"steps {missing} are not checkpoints of run {run_id!r} ({known})",
                                      field="steps")
            if sorted(set(request.steps)) != known:
                # Later stages stack every checkpoint's unit; a subset would leave them incomplete.
                raise InvalidArgument("interpret all checkpoints (leave steps empty): the explanation needs "
                                      f"every one of {known}", field="steps")
        return await self.start("interpret", run_id, params.to_dict())
