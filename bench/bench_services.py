"""The services against the in-process engine, and the Ray fan-out with 2 workers against 1 (issue 3, "Speed").

A. The same pipeline (train, interpret, prototypes, confidence clusters, explain) on mnist5k:
   in-process (i2x.engine.pipeline.run_pipeline, report off) vs through the four services on
   loopback with the SDK (real gRPC, jobs, Ray). Target: overhead <= 10%.
B. The interpretation of that run's checkpoints through the Ray fan-out with 1 and then 2
   actors, one CPU and one torch thread each (units deleted before each pass). Target >= 1.7x.

Both passes of a comparison run in this one process, one after the other, on the same store type.

    nice -n 10 .venv/bin/python bench/bench_services.py
    .venv/bin/python bench/bench_services.py --quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

os.environ.setdefault("I2X_TORCH_THREADS", "1")  # one torch thread per Ray actor
os.environ.setdefault("I2X_RAY_CPUS_PER_TASK", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer checkpoints and images")
    args = parser.parse_args()

    import ray
    import torch

    from i2x.client import Client
    from i2x.engine import stages
    from i2x.engine.params import ClusterParams, ExplainParams, InterpretParams, PrototypeParams
    from i2x.engine.pipeline import run_pipeline
    from i2x.interpretation.fanout import RayFanout, store_spec
    from i2x.servicers import ServicesInThread
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
        local = LocalStore(os.path.join(root, "inproc"))
        from i2x.core.training import TrainConfig

        start = time.perf_counter()
        run_pipeline(local, "bench", model=model, dataset=dataset,
                     train=TrainConfig.from_preset("tiny", checkpoint_every=every).to_dict(),
                     prototypes=PrototypeParams(**params["prototypes"]), clusters=ClusterParams(**params["clusters"]),
                     interpret=InterpretParams(), explain=ExplainParams(), report=False,
                     explanation_fraction=fraction)
        t_inproc = time.perf_counter() - start

        remote = LocalStore(os.path.join(root, "services"))
        services = ServicesInThread(("training", "interpretation", "clustering", "explanation"), remote)
        try:
            with Client(**{s: services.address(s) for s in services.ports}, store=str(remote.root)) as client:
                start = time.perf_counter()
                result = client.run_pipeline("bench", model=model, dataset=dataset, train=train,
                                             explanation_fraction=fraction, **params)
                t_services = time.perf_counter() - start
        finally:
            services.stop()
        steps = result.run.steps
        n = len(remote.get_npz("runs/bench/data/explanation.npz")["labels"])
        print(f"A. pipeline, mnist5k, {len(steps)} checkpoints, {n} explanation images")
        print(f"   in-process {t_inproc:7.2f} s   services {t_services:7.2f} s   "
              f"overhead {100 * (t_services / t_inproc - 1):+.1f}%  (target <= +10%)")

        # ---- B: Ray fan-out, 1 vs 2 actors
        interp = InterpretParams()
        times = {}
        for workers in (1, 2):
            for key in remote.list("runs/bench/interpretation/"):
                remote.delete(key)
            start = time.perf_counter()
            stages.interpret_run(remote, "bench", interp,
                                 map_units=RayFanout(store_spec(remote), "bench", interp, max_workers=workers))
            times[workers] = time.perf_counter() - start
        print(f"B. interpretation of {len(steps)} checkpoints x {n} images through Ray "
              "(one CPU and one torch thread per actor, actor start-up included)")
        print(f"   1 worker {times[1]:7.2f} s   2 workers {times[2]:7.2f} s   "
              f"speedup {times[1] / times[2]:.2f}x  (target >= 1.7x)")
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
