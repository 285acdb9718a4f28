"""Live analysis against the post-hoc pipeline (issue 11, part 6), on the demo's setting.

The demo's training (small_cnn on mnist5k, preset "demo": 4 epochs, a checkpoint every 16
iterations, 16 checkpoints; M = 32 prototypes) runs in this process as a user's own loop
(i2x.core.training.train) with i2x.integrations.live.LiveAnalysis saving each checkpoint, against
the four services on loopback and a local Ray (2 CPUs). Timed:

  live:     from the last checkpoint of the loop to the finished explanation (finish(): the last
            registration, the rest of the follow interpretation, prototypes, clusters, explanation);
  post-hoc: the same checkpoints registered as a new run after training, then the whole pipeline
            (register, interpret, prototypes, clusters, explanation), as `i2x analyze --checkpoint`.

The report is left out of both (the same cost either way). The services and their Ray pool are
warm for both, as running services are: a warm-up run goes through them first.

    nice -n 10 .venv/bin/python bench/bench_live.py            # --quick: 1 epoch, 8 prototypes
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("I2X_TORCH_THREADS", "1")
os.environ.setdefault("I2X_RAY_CPUS_PER_TASK", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")

MODEL = {"arch": "small_cnn", "in_channels": 1, "num_classes": 10, "input_size": 28}
DATASET = {"kind": "mnist5k"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 epoch and 8 prototypes (a smoke run)")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("i2x.interpretation.follow").setLevel(logging.INFO)

    import ray
    import torch

    from i2x.client import Client, open_reader
    from i2x.core.training import TrainConfig, seeded_build, train
    from i2x.data import DatasetSpec, dataset_stats, load_dataset
    from i2x.integrations.live import LiveAnalysis
    from i2x.models import ModelSpec, build_model
    from i2x.serving import ServicesInThread
    from i2x.storage import LocalStore

    torch.set_num_threads(1)
    config = TrainConfig.from_preset("demo", **({"epochs": 1} if args.quick else {}))
    stages = {"prototypes": {"n_prototypes": 8 if args.quick else 32}}
    with tempfile.TemporaryDirectory(prefix="i2x-bench-live-") as tmp:
        store = LocalStore(tmp)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        services = ServicesInThread(("training", "interpretation", "clustering", "explanation"), store)
        try:
            with Client(**{s: services.address(s) for s in services.ports}, store=open_reader(tmp)) as client:
                spec = DatasetSpec.from_dict(DATASET)
                splits = load_dataset(spec)
                mean, std = dataset_stats(spec)
                model = seeded_build(lambda: build_model(ModelSpec.from_dict(MODEL)), config.seed)
                # Running services have a warm Ray pool: warm it (and every service) on another run first.
                from i2x.models import checkpoint_to_bytes

                warm = {}
                for step in (1, 2):
                    key = f"uploads/warmup/{step}.safetensors"
                    store.put_bytes(key, checkpoint_to_bytes(build_model(ModelSpec.from_dict(MODEL)).state_dict(), {}))
                    warm[step] = key
                client.run_pipeline("warmup", model=MODEL, dataset=DATASET, checkpoints=warm, report=False,
                                    prototypes={"n_prototypes": 4}, timeout=1800)
                live = LiveAnalysis("live", model, every=10 ** 9, model_spec=MODEL, dataset=DATASET, client=client,
                                    report=False, **stages)
                marks: dict[str, float] = {}

                def on_checkpoint(ckpt) -> None:  # the user's loop calls live.save at its checkpoints
                    live.save(ckpt.step)
                    marks["last"] = time.monotonic()

                started = time.monotonic()
                train(model, splits.train, config, mean=mean, std=std, on_checkpoint=on_checkpoint)
                trained = time.monotonic()
                result = live.finish(timeout=1800)
                live_done = time.monotonic()
                assert result is not None, "the live run was not analysed (see the warnings above)"
                steps = result.run.steps
                keys = {int(c["step"]): c["key"] for c in result.run.checkpoints}

                posthoc_start = time.monotonic()
                post = client.run_pipeline("posthoc", model=MODEL, dataset=DATASET, checkpoints=keys, report=False,
                                           timeout=1800, **stages)
                posthoc = time.monotonic() - posthoc_start
                assert post.run.steps == steps
                same = post.pair_analysis.pair == result.pair_analysis.pair
        finally:
            services.stop()
            ray.shutdown()
    live_latency = live_done - marks["last"]
    for event, step, at in live.timeline + [("explained", None, live_done)]:
        print(f"  {at - marks['last']:+7.1f} s  {event}{'' if step is None else f' step {step}'}")
    print(f"demo setting{' (--quick)' if args.quick else ''}: {len(steps)} checkpoints, "
          f"{stages['prototypes']['n_prototypes']} prototypes; training with the live callback {trained - started:.1f} s")
    print(f"live:     last checkpoint -> explanation  {live_latency:6.1f} s")
    print(f"post-hoc: checkpoints -> explanation      {posthoc:6.1f} s")
    print(f"live is {posthoc / live_latency:.1f}x sooner; same most confused pair: {same} "
          f"({result.pair_analysis.pair})")


if __name__ == "__main__":
    main()
