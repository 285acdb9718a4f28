"""Interpreting every checkpoint against (checkpoints x one inference pass) (issue 2, "Speed").

small_cnn at 28x28 (the demo's model), the demo's 16 checkpoints (random weights of the same
architecture: the cost does not depend on the values), the explanation set's size (10% of the
4,000-image mnist5k train split = 400 images, decoded once and shared by both sides).

  baseline   for each checkpoint: load_weights + model(x) under torch.inference_mode()
  ours       list(interpret_checkpoints(...)): saliency, confidences, predictions per checkpoint

Interleaved round-robin, median of --repeats after a warm-up. Target: ours <= 1.15x baseline.

    nice -n 10 .venv/bin/python bench/bench_interpret.py
    .venv/bin/python bench/bench_interpret.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 checkpoints, 64 images, 1 repeat")
    parser.add_argument("--checkpoints", type=int, default=0, help="0: the demo preset's count")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch", type=int, default=0, help="0: the whole explanation set in one batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    from i2x.core.saliency import interpret_checkpoints
    from i2x.core.training import TrainConfig, iterations_per_epoch
    from i2x.data import DatasetSpec, dataset_stats, explanation_indices, load_dataset, to_tensor
    from i2x.models import ModelSpec, build_model, default_target_layer, load_weights

    demo = TrainConfig.from_preset("demo")
    total_iterations = iterations_per_epoch(4000, demo.batch_size) * demo.epochs
    demo_checkpoints = -(-total_iterations // demo.checkpoint_every)  # every N and at the end
    n_checkpoints = args.checkpoints or demo_checkpoints
    if args.quick:
        n_checkpoints, args.images, args.repeats = 4, 64, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    spec = ModelSpec()
    splits = load_dataset(DatasetSpec())
    indices = explanation_indices(len(splits.train))[:args.images]
    images = to_tensor(splits.train.images[indices], *dataset_stats(DatasetSpec()))  # decoded once
    batch = args.batch or len(images)
    states = []
    for seed in range(n_checkpoints):
        torch.manual_seed(seed)
        states.append((seed, build_model(spec).state_dict()))
    model = build_model(spec).eval()
    layer = default_target_layer(spec)

    def baseline():
        for _, state in states:
            load_weights(model, state)
            with torch.inference_mode():
                for start in range(0, len(images), batch):
                    model(images[start:start + batch])

    def ours():
        for _ in interpret_checkpoints(model, states, images, target_layer=layer, batch_size=batch):
            pass

    methods = {"baseline": baseline, "interpret": ours}
    for fn in methods.values():
        fn()
    times = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(v) for name, v in times.items()}
    ratio = medians["interpret"] / medians["baseline"]
    print(f"small_cnn, {n_checkpoints} checkpoints, {len(images)} images, batch {batch}, "
          f"{torch.get_num_threads()} torch threads, median of {args.repeats}")
    print(f"baseline ({n_checkpoints} x inference pass): {medians['baseline']:.3f} s")
    print(f"interpret_checkpoints:                {medians['interpret']:.3f} s")
    print(f"ratio {ratio:.3f}x (target <= 1.15x: {'pass' if ratio <= 1.15 else 'FAIL'})")


if __name__ == "__main__":
    main()
