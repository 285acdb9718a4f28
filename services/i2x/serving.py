"""One process's servers: a servicer per service, its gRPC server, and the services in a thread.

Split from i2x.servicers (which the four service packages import) so that no import circle
runs through it; i2x.servicers still answers these names.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from i2x.clustering import ClusteringServicer
from i2x.core.errors import InvalidArgument
from i2x.explanation import ExplanationServicer
from i2x.interpretation import InterpretationServicer
from i2x.jobs import JobManager
from i2x.servicers import JobsServicer, StageServicer
from i2x.storage import Store
from i2x.training import TrainingServicer
from i2x.v1 import jobs_pb2, jobs_pb2_grpc

log = logging.getLogger("i2x.servicers")

def make_servicer(service: str, store: Store, *, max_workers: int = 2, ray_workers: int | None = None) -> StageServicer:
    """The servicer of `service` with its own JobManager over `store`."""
    jobs = JobManager(store, service, max_workers=max_workers)
    if service == "training":
        return TrainingServicer(store, jobs)
    if service == "interpretation":
        return InterpretationServicer(store, jobs, max_workers=ray_workers)
    if service == "clustering":
        return ClusteringServicer(store, jobs)
    if service == "explanation":
        return ExplanationServicer(store, jobs)
    raise InvalidArgument(f"unknown service {service!r}; choose training, interpretation, clustering or "
                          "explanation", field="service")


def registrar(servicer: StageServicer) -> Callable:
    """register(server) for i2x.server.start_server: the service, the job API; returns their full names."""
    from i2x.v1 import (clustering_pb2, clustering_pb2_grpc, explanation_pb2, explanation_pb2_grpc,
                        interpretation_pb2, interpretation_pb2_grpc, training_pb2, training_pb2_grpc)

    table = {
        "training": (training_pb2, "TrainingService", training_pb2_grpc.add_TrainingServiceServicer_to_server),
        "interpretation": (interpretation_pb2, "InterpretationService",
                           interpretation_pb2_grpc.add_InterpretationServiceServicer_to_server),
        "clustering": (clustering_pb2, "ClusteringService", clustering_pb2_grpc.add_ClusteringServiceServicer_to_server),
        "explanation": (explanation_pb2, "ExplanationService",
                        explanation_pb2_grpc.add_ExplanationServiceServicer_to_server),
    }
    module, name, add = table[servicer.service]

    def register(server) -> list[str]:
        add(servicer, server)
        jobs_pb2_grpc.add_JobsServiceServicer_to_server(JobsServicer(servicer.jobs), server)
        return [module.DESCRIPTOR.services_by_name[name].full_name,
                jobs_pb2.DESCRIPTOR.services_by_name["JobsService"].full_name]

    return register


async def start_service(service: str, store: Store, *, host: str | None = None, port: int | None = None,
                        token: str | None = None, tls_cert: str | None = None, tls_key: str | None = None,
                        max_message_mb: int | None = None, max_workers: int = 2, ray_workers: int | None = None):
    """Start one service's gRPC server in the running loop; resume its unfinished jobs.

    Returns (server, bound_port, health, servicer)."""
    from i2x.observability import instrument, metered_store
    from i2x.server import start_server

    servicer = make_servicer(service, metered_store(store, service), max_workers=max_workers, ray_workers=ray_workers)
    instrument(service, servicer, host=host)  # metrics (I2X_METRICS_PORT), job spans and log ids
    server, bound, health = await start_server(service, registrar(servicer), host=host, port=port, token=token,
                                               tls_cert=tls_cert, tls_key=tls_key, max_message_mb=max_message_mb)
    servicer.bind_health(health, asyncio.get_running_loop())
    resumed = await asyncio.to_thread(servicer.recover)
    if resumed:
        log.info("%s: resumed jobs %s", service, resumed)
    return server, bound, health, servicer


class ServicesInThread:
    """Some services on loopback in a background event loop (tests, benchmarks): .ports[name]."""

    def __init__(self, services, store: Store, *, host: str = "127.0.0.1", token: str | None = None,
                 ray_workers: int | None = None):
        import threading

        self.ports: dict[str, int] = {}
        self._servers: list = []
        self.servicers: dict[str, StageServicer] = {}
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="i2x-services", daemon=True)
        self._thread.start()

        async def start_all():
            for name in services:
                server, port, _, servicer = await start_service(name, store, host=host, port=0, token=token,
                                                                ray_workers=ray_workers)
                self._servers.append(server)
                self.ports[name] = port
                self.servicers[name] = servicer

        asyncio.run_coroutine_threadsafe(start_all(), self.loop).result(timeout=60)

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"

    def stop(self, grace: float = 1.0) -> None:
        """Stop like `i2x serve` on SIGTERM: servers first, then running jobs are interrupted (left
        QUEUED for the next process to resume), then what the servicers hold (the Ray pool)."""
        async def stop_all():
            for server in self._servers:
                await server.stop(grace)

        asyncio.run_coroutine_threadsafe(stop_all(), self.loop).result(timeout=30)
        for servicer in self.servicers.values():
            servicer.jobs.shutdown(wait=True, interrupt=True)
            servicer.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
