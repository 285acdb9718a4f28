"""The services against the in-process engine, and the Ray fan-out with 2 workers against 1 (issue 3, "Speed").

A. The same pipeline (train, interpret, prototypes, confidence clusters, explain) on mnist5k:
   in-process (i2x.engine.pipeline.run_pipeline, report off) vs through the four services on
   loopback with the SDK (real gRPC, jobs, Ray). Target: overhead <= 10%.
   What a user waits for with a running service is timed: the services first run the same
   pipeline on another run id ("cold": a fresh service, its warm Ray pool created by that first
   job, also printed), then the in-process pipeline and the timed services pipeline ("warm") run.
   Every pass trains and interprets its own run, so nothing but the started processes is reused.
   In-process and warm-services passes alternate for --rounds rounds (the order flips each round);
   the best pass of each is compared (the machine is shared: the minimum is the least disturbed
   figure), and the medians are printed too.
B. The interpretation of that run's checkpoints through the Ray fan-out with 1 and then 2
   actors, one CPU and one torch thread each, each pass on a new run (registered from the same
   checkpoints, so no actor has its images or model cached). "warm": one pool of 2 actors,
   started and waited for before timing (what the interpretation service keeps); "cold": a fresh
   pool per pass, actor start-up included (what a pool per job cost). Target >= 1.7x. The warm
   passes run --rounds times (1 and 2 workers alternating); best and median are printed.

Both passes of a comparison run in this one process, one after the other, on the same store type.

    nice -n 10 .venv/bin/python bench/bench_services.py
    .venv/bin/python bench/bench_services.py --quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("I2X_TORCH_THREADS", "1")  # one torch thread per Ray actor
os.environ.setdefault("I2X_RAY_CPUS_PER_TASK", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer checkpoints and images")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed passes of each kind")
    args = parser.parse_args()

    import ray
    import torch

    from i2x.client import Client
    from i2x.core.training import TrainConfig
    from i2x.engine import stages
    from i2x.engine.params import ClusterParams, ExplainParams, InterpretParams, PrototypeParams
    from i2x.engine.pipeline import run_pipeline
    from i2x.interpretation.fanout import RayFanout, WarmPool, store_spec
    from i2x.serving import ServicesInThread
    from i2x.storage import LocalStore

    torch.set_num_threads(1)
    every, fraction = (50, 0.1) if args.quick else (25, 0.25)
    model = {"arch": "small_cnn", "num_classes": 10}
    dataset = {"kind": "mnist5k"}
    train = {"preset": "tiny", "checkpoint_every": every}
    params = {"prototypes": {"n_prototypes": 16, "n_components": 16}, "clusters": {"min_cluster_size": 10}}
    root = tempfile.mkdtemp(prefix="i2x-bench-")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # ---- A: in-process vs services
        remote = LocalStore(os.path.join(root, "services"))
        services = ServicesInThread(("training", "interpretation", "clustering", "explanation"), remote)
        try:
            with Client(**{s: services.address(s) for s in services.ports}, store=str(remote.root)) as client:
                def through_services(run_id: str) -> float:
                    start = time.perf_counter()
                    client.run_pipeline(run_id, model=model, dataset=dataset, train=train,
                                        explanation_fraction=fraction, report=False, **params)
                    return time.perf_counter() - start

                t_cold = through_services("cold")  # the first job on a fresh service: the pool starts here

                local = LocalStore(os.path.join(root, "inproc"))

                def in_process(run_id: str) -> float:
                    start = time.perf_counter()
                    run_pipeline(local, run_id, model=model, dataset=dataset,
                                 train=TrainConfig.from_preset("tiny", checkpoint_every=every).to_dict(),
                                 prototypes=PrototypeParams(**params["prototypes"]),
                                 clusters=ClusterParams(**params["clusters"]), interpret=InterpretParams(),
                                 explain=ExplainParams(), report=False, explanation_fraction=fraction)
                    return time.perf_counter() - start

                inproc_times, services_times = [], []
                for r in range(args.rounds):
                    passes = [(in_process, inproc_times), (through_services, services_times)]
                    for run, times in passes if r % 2 == 0 else passes[::-1]:
                        times.append(run("bench" if r == 0 else f"bench{r}"))
                t_inproc, t_services = min(inproc_times), min(services_times)
                pool = services.servicers["interpretation"].pool
                pool_size, pool_started = pool.size, pool.started
        finally:
            services.stop()
        steps = stages.get_run(remote, "bench")["checkpoints"]
        n = len(remote.get_npz("runs/bench/data/explanation.npz")["labels"])
        print(f"A. pipeline, mnist5k, {len(steps)} checkpoints, {n} explanation images "
              f"(warm pool: {pool_size} actors, {pool_started} started in all)")
        print(f"   best of {args.rounds}: in-process {t_inproc:7.2f} s   services, warm {t_services:7.2f} s   "
              f"overhead {100 * (t_services / t_inproc - 1):+.1f}%  (target <= +10%)")
        m_inproc, m_services = statistics.median(inproc_times), statistics.median(services_times)
        print(f"   median:    in-process {m_inproc:7.2f} s   services, warm {m_services:7.2f} s   "
              f"overhead {100 * (m_services / m_inproc - 1):+.1f}%")
        print(f"   services, cold (first job of a fresh service) {t_cold:7.2f} s   "
              f"overhead {100 * (t_cold / t_inproc - 1):+.1f}%")

        # ---- B: Ray fan-out, 1 vs 2 actors, each pass on a run no actor has seen
        interp = InterpretParams()
        spec = store_spec(remote)
        record = stages.get_run(remote, "bench")
        sources = [(int(c["step"]), c["key"]) for c in record["checkpoints"]]

        def new_run(run_id: str) -> str:
            stages.create_run(remote, run_id, model=record["model"], dataset=record["dataset"],
                              explanation_fraction=fraction)
            stages.register_checkpoints(remote, run_id, sources)
            return run_id

        def interpret(pool: WarmPool, run_id: str, workers: int) -> float:
            start = time.perf_counter()
            stages.interpret_run(remote, run_id, interp,
                                 map_units=RayFanout(pool, run_id, interp, max_workers=workers))
            return time.perf_counter() - start

        cold = {}
        for workers in (1, 2):
            run_id = new_run(f"cold{workers}")
            pool = WarmPool(spec, size=workers)
            try:
                cold[workers] = interpret(pool, run_id, workers)
            finally:
                pool.shutdown()
        warm_times: dict[int, list[float]] = {1: [], 2: []}
        pool = WarmPool(spec, size=2)
        try:
            pool.warm()  # the service's pool is up before any user job after the first
            for r in range(args.rounds):
                for workers in (1, 2) if r % 2 == 0 else (2, 1):
                    warm_times[workers].append(interpret(pool, new_run(f"warm{workers}-{r}"), workers))
        finally:
            pool.shutdown()
        warm = {w: min(t) for w, t in warm_times.items()}
        warm_median = {w: statistics.median(t) for w, t in warm_times.items()}
        print(f"B. interpretation of {len(steps)} checkpoints x {n} images through Ray "
              "(one CPU and one torch thread per actor; a new run per pass)")
        print(f"   warm pool, best of {args.rounds}:  1 worker {warm[1]:7.2f} s   2 workers {warm[2]:7.2f} s   "
              f"speedup {warm[1] / warm[2]:.2f}x  (target >= 1.7x)")
        print(f"   warm pool, median:     1 worker {warm_median[1]:7.2f} s   2 workers {warm_median[2]:7.2f} s   "
              f"speedup {warm_median[1] / warm_median[2]:.2f}x")
        print(f"   cold pool:  1 worker {cold[1]:7.2f} s   2 workers {cold[2]:7.2f} s   "
              f"speedup {cold[1] / cold[2]:.2f}x  (actor start-up included)")
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
