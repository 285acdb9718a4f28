"""ClusteringService over stages.extract_prototypes and stages.cluster_confidences."""

from __future__ import annotations

import asyncio

from i2x.engine import stages
from i2x.engine.params import ClusterParams, PrototypeParams
from i2x.servicers import StageServicer, cluster_params, prototype_params, run_id_of, stage_progress
from i2x.storage import run_key
from i2x.v1 import clustering_pb2_grpc


class ClusteringServicer(StageServicer, clustering_pb2_grpc.ClusteringServiceServicer):
    service = "clustering"

    def __init__(self, store, jobs):
        super().__init__(store, jobs)
        self._cache: dict = {}  # decoded explanation set and model of recent runs (extract_prototypes)

    def job_function(self, kind, run_id, params):
        store = self.store
        if kind == "prototypes":
            return lambda ctx: stages.extract_prototypes(store, run_id, PrototypeParams.from_dict(params),
                                                         cache=self._cache, **stage_progress(ctx))
        if kind == "confidence_clusters":
            return lambda ctx: stages.cluster_confidences(store, run_id, ClusterParams.from_dict(params),
                                                          **stage_progress(ctx))
        return None

    async def StartPrototypes(self, request, context):
        run_id = run_id_of(request)
        params = prototype_params(request.params)
        await asyncio.to_thread(stages.list_checkpoints, self.store, run_id)  # no checkpoints: FAILED_PRECONDITION
        await asyncio.to_thread(stages.require_finished, self.store, run_id, "the prototypes")  # a live run
        return await self.start("prototypes", run_id, params.to_dict(), request.request_id)

    async def StartConfidenceClustering(self, request, context):
        run_id = run_id_of(request)
        params = cluster_params(request.params)
        await asyncio.to_thread(self._require_interpretation, run_id)
        return await self.start("confidence_clusters", run_id, params.to_dict(), request.request_id)

    def _require_interpretation(self, run_id: str) -> None:
        stages.get_run(self.store, run_id)
        stages.require(self.store, run_key(run_id, "interpretation", "index.json"), "the interpretation",
                        "interpretation")
