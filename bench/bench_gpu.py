"""The paper's shape on a GPU: ResNet-50 at 3x224x224, 6,000 explanation images, 24 checkpoints.

One command (issue 8, item 7):

    .venv/bin/python bench/bench_gpu.py                 # on a machine with a CUDA GPU
    .venv/bin/python bench/bench_gpu.py --smoke         # a tiny shape on the CPU: checks the script works

Sections (each printed, all written to --json):

  1. throughput   one GPU, in-process: plain inference (load_weights + forward, the same batches) against
                  i2x Grad-CAM (interpret_checkpoints) at the same batch, fp32 and AMP (--amp bf16|fp16);
                  images/s, ratio to inference, peak CUDA memory; AMP maps against fp32 (Pearson r).
                  Targets: Grad-CAM fp32 >= 0.9x plain inference; AMP r >= 0.999.
  2. analysis     the whole analysis through i2x.engine.stages on a local store: interpretation (units on
                  the GPU), prototypes, confidence clusters, explanation. The run's 28x28 class-pattern
                  images (MNIST-like, 3 channels) are upsampled to 224 by the run's model spec; its 24
                  checkpoints come from a short ResNet-50 training on the GPU (not timed).
                  Target: < 60 s on one H100/H200-class GPU.
  3. ray          the per-checkpoint units through the interpretation service's Ray pool, one GPU per
                  unit, on every GPU the machine has (I2X_RAY_GPUS_PER_TASK=1).

It asserts that CUDA did the work: every unit's placement record (interpretation/index.json) names a
cuda device and a non-zero CUDA peak, and the Ray units together used every GPU. Without CUDA (and
without --smoke) it exits with status 2 and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PAPER = {"images": 6000, "checkpoints": 24, "size": 224, "arch": "resnet50", "batch": 256}
SMOKE = {"images": 48, "checkpoints": 3, "size": 28, "arch": "small_cnn", "batch": 16}


def no_cuda_message() -> str:
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (f"bench_gpu: torch sees no CUDA GPU (torch {torch.__version__}, built with CUDA "
            f"{torch.version.cuda or 'none'}, CUDA_VISIBLE_DEVICES={visible!r}); run it on a machine with an "
            "NVIDIA GPU and a CUDA build of torch, or pass --smoke for a tiny run on the CPU")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


# ---------------------------------------------------------------- 1. throughput

def throughput(args, device) -> dict:
    import torch

    from i2x.core.saliency import interpret_checkpoints
    from i2x.models import ModelSpec, build_model, default_target_layer, load_weights

    spec = ModelSpec(arch=args.arch, in_channels=3, num_classes=10, input_size=args.size)
    model = build_model(spec).eval().to(device)
    layer = default_target_layer(spec)
    torch.backends.cudnn.benchmark = True
    states = []
    for seed in range(args.checkpoints):  # random weights of the architecture: the cost does not depend on them
        torch.manual_seed(seed)
        states.append((seed, {k: v.to(device) for k, v in build_model(spec).state_dict().items()}))
    torch.manual_seed(0)
    x = torch.randn(args.images, 3, args.size, args.size)
    if device.type == "cuda":
        x = x.pin_memory()
    n = args.images * args.checkpoints
    batch = args.batch

    def plain(precision: str) -> float:
        from i2x.core.device import autocast

        _sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            for _step, state in states:
                load_weights(model, state)
                for i in range(0, args.images, batch):
                    with autocast(device, precision):
                        model(x[i:i + batch].to(device, non_blocking=True))
        _sync(device)
        return time.perf_counter() - start

    def ours(precision: str):
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        results = list(interpret_checkpoints(model, states, x, target_layer=layer, batch_size=batch, device=device,
                                             precision=precision))
        _sync(device)
        seconds = time.perf_counter() - start
        peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0
        return seconds, peak, results[0][1].saliency

    amp = "fp32" if args.no_amp else args.amp
    # warm-up: cuDNN picks its algorithms on the first batches
    list(interpret_checkpoints(model, states[:1], x[:batch], target_layer=layer, batch_size=batch, device=device))
    rows, ratios, maps = {}, {"fp32": [], amp: []}, {}
    for _round in range(args.repeats):
        for precision in dict.fromkeys(("fp32", amp)):
            base = plain(precision)
            seconds, peak, first = ours(precision)
            ratios[precision].append(base / seconds)  # throughput of ours relative to inference
            maps[precision] = first
            rows[precision] = {"plain_s": base, "gradcam_s": seconds, "peak_bytes": peak}
    out = {"device": str(device), "images": args.images, "checkpoints": args.checkpoints, "batch": batch,
           "arch": args.arch, "size": args.size}
    for precision, row in rows.items():
        ratio = statistics.median(ratios[precision])
        out[precision] = {**row, "gradcam_images_per_s": n / row["gradcam_s"], "plain_images_per_s": n / row["plain_s"],
                          "throughput_vs_inference": ratio}
    if amp != "fp32":
        out[amp]["pearson_vs_fp32"] = _pearson(maps["fp32"], maps[amp])
    return out


# ---------------------------------------------------------------- 2. the whole analysis

def class_pattern_npz(path: Path, n_train: int, n_test: int, seed: int = 0) -> str:
    """MNIST-like 28x28 RGB images: class c is a bright 6x6 square at its own place, plus noise."""
    rng = np.random.default_rng(seed)
    places = [(2 + 8 * (c % 3), 2 + 8 * (c // 3 % 3)) for c in range(10)]

    def make(n):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, size=(n, 28, 28, 3), dtype=np.uint8)
        for i, c in enumerate(labels):
            r, col = places[c]
            images[i, r:r + 6, col:col + 6, c % 3] = 230
        return images, labels.astype(np.int64)

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return str(path)


def make_run(store, run_id: str, dataset: str, args, device_text: str) -> dict:
    """A run of `args.images` explanation images and `args.checkpoints` checkpoints, trained on the device."""
    from i2x.engine import stages

    train_batch = 64 if not args.smoke else 8
    iterations = -(-args.images // train_batch)
    every = -(-iterations // args.checkpoints)  # a checkpoint every `every` iterations and at the end
    model = {"arch": args.arch, "in_channels": 3, "num_classes": 10, "input_size": args.size}
    train = {"preset": "paper-mnist", "epochs": 1, "batch_size": train_batch, "checkpoint_every": every,
             "device": device_text}
    stages.create_run(store, run_id, model=model, dataset={"kind": "npz", "root": dataset}, train=train,
                      explanation_fraction=1.0)
    return stages.train_run(store, run_id)


def analysis(args, device, workdir: Path) -> dict:
    from i2x.engine import stages
    from i2x.engine.params import ClusterParams, ExplainParams, InterpretParams, PrototypeParams
    from i2x.storage import LocalStore

    store = LocalStore(workdir / "store")
    dataset = class_pattern_npz(workdir / "patterns.npz", args.images, max(100, args.images // 6))
    device_text = "cuda" if device.type == "cuda" else "cpu"
    start = time.perf_counter()
    trained = make_run(store, "bench", dataset, args, device_text)
    train_s = time.perf_counter() - start
    params = InterpretParams(batch_size=args.batch, device=device_text, precision=args.analysis_precision)
    timings = {}
    start = time.perf_counter()
    stages.interpret_run(store, "bench", params)
    timings["interpretation_s"] = time.perf_counter() - start
    t = time.perf_counter()
    stages.extract_prototypes(store, "bench", PrototypeParams(n_prototypes=32 if not args.smoke else 4,
                                                              n_components=32 if not args.smoke else 4))
    timings["prototypes_s"] = time.perf_counter() - t
    t = time.perf_counter()
    stages.cluster_confidences(store, "bench", ClusterParams())
    timings["clusters_s"] = time.perf_counter() - t
    t = time.perf_counter()
    explanation = stages.explain_run(store, "bench", ExplainParams())
    timings["explanation_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - start
    index = store.get_json("runs/bench/interpretation/index.json")
    check_placement(index, device, expect_all_gpus=False)
    return {"precision": args.analysis_precision, "train_s_not_counted": train_s, "checkpoints": len(trained["checkpoints"]), **timings,
            "most_confused_pair": explanation.get("most_confused_pair"), "placement": index["placement"],
            "store": str(store.root)}


def check_placement(index: dict, device, *, expect_all_gpus: bool) -> None:
    """CUDA did the work: every unit recorded a cuda device and CUDA memory (or the CPU in --smoke)."""
    import torch

    placement = index.get("placement") or []
    assert [p["step"] for p in placement] == index["steps"], "a unit left no placement record"
    for record in placement:
        if device.type == "cuda":
            assert record["device"].startswith("cuda"), f"step {record['step']} ran on {record['device']}"
            assert record.get("cuda_peak_bytes", 0) > 0, f"step {record['step']} allocated no CUDA memory"
        else:
            assert record["device"] == "cpu", record
    if expect_all_gpus and device.type == "cuda":
        used = {g for record in placement for g in record.get("ray_gpu_ids", [])}
        wanted = min(torch.cuda.device_count(), len(placement))
        assert len(used) >= wanted, f"Ray units used GPUs {sorted(used)} of {torch.cuda.device_count()}"


# ---------------------------------------------------------------- 3. through Ray, every GPU

def through_ray(args, device, workdir: Path, source_store) -> dict:
    import ray
    import torch

    from i2x.client import Client
    from i2x.engine import stages
    from i2x.serving import ServicesInThread

    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    os.environ["I2X_RAY_GPUS_PER_TASK"] = "1" if gpus else "0"
    if not ray.is_initialized():
        ray.init(num_gpus=gpus, num_cpus=max(2, gpus + 1), include_dashboard=False, log_to_driver=False)
    store = source_store
    source = stages.get_run(store, "bench")
    stages.create_run(store, "bench-ray", model=source["model"], dataset=source["dataset"], train=None,
                      explanation_fraction=1.0)
    stages.register_checkpoints(store, "bench-ray", [(int(c["step"]), c["key"]) for c in source["checkpoints"]])
    services = ServicesInThread(("interpretation",), store)
    try:
        with Client(interpretation=services.address("interpretation"), store=str(store.root), retries=2) as client:
            device_text = "cuda" if gpus else "cpu"
            # one unit first so the pool's actors are up (actor start-up is not interpretation time)
            pool = services.servicers["interpretation"].pool
            if hasattr(pool, "warm"):
                pool.warm(timeout=600)
            start = time.perf_counter()
            client.interpret("bench-ray", device=device_text, batch_size=args.batch).result(timeout=1800)
            seconds = time.perf_counter() - start
    finally:
        services.stop()
    index = store.get_json("runs/bench-ray/interpretation/index.json")
    check_placement(index, device, expect_all_gpus=True)
    n = args.images * len(index["steps"])
    return {"gpus": gpus, "seconds": seconds, "images_per_s": n / seconds,
            "images_per_s_per_gpu": n / seconds / max(gpus, 1),
            "nodes": sorted({p["node_id"] for p in index["placement"]}),
            "gpu_ids": sorted({g for p in index["placement"] for g in p.get("ray_gpu_ids", [])}),
            "unit_seconds": [p["seconds"] for p in index["placement"]]}


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny shape on the CPU (small_cnn, 48 images, 3 checkpoints)")
    parser.add_argument("--quick", action="store_true",
                        help="a shorter GPU run (1,000 images, 6 checkpoints; `make bench BENCH_ARGS=--quick`)")
    parser.add_argument("--images", type=int, default=None, help=f"explanation images (paper: {PAPER['images']})")
    parser.add_argument("--checkpoints", type=int, default=None, help=f"checkpoints (paper: {PAPER['checkpoints']})")
    parser.add_argument("--batch", type=int, default=None, help=f"images per pass (default {PAPER['batch']})")
    parser.add_argument("--amp", choices=("bf16", "fp16"), default="bf16", help="the mixed precision compared")
    parser.add_argument("--no-amp", action="store_true", help="skip the AMP comparison")
    parser.add_argument("--analysis-precision", choices=("fp32", "bf16", "fp16"), default="bf16",
                        help="precision of the whole-analysis interpretation (default bf16: AMP)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the throughput section (median ratio)")
    parser.add_argument("--skip", action="append", default=[], choices=("throughput", "analysis", "ray"))
    parser.add_argument("--json", type=Path, default=None, help="write the figures here (default: print only)")
    args = parser.parse_args(argv)

    import torch

    shape = SMOKE if args.smoke else (dict(PAPER, images=1000, checkpoints=6) if args.quick else PAPER)
    args.arch, args.size = shape["arch"], shape["size"]
    args.images = args.images or shape["images"]
    args.checkpoints = args.checkpoints or shape["checkpoints"]
    args.batch = args.batch or shape["batch"]
    if args.smoke:
        device = torch.device("cpu")
        if args.amp == "fp16":
            args.amp = "bf16"  # fp16 autocast needs a GPU
        if args.analysis_precision == "fp16":
            args.analysis_precision = "bf16"
    elif not torch.cuda.is_available():
        print(no_cuda_message(), file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda:0")

    from i2x.core.device import device_name

    figures = {"device": str(device), "device_name": device_name(device), "gpus": torch.cuda.device_count(),
               "torch": torch.__version__, "shape": {k: getattr(args, k) for k in ("arch", "size", "images",
                                                                                     "checkpoints", "batch")}}
    print(f"bench_gpu: {figures['shape']} on {device} {figures['device_name']} ({figures['gpus']} GPU(s))", flush=True)
    if "throughput" not in args.skip:
        figures["throughput"] = result = throughput(args, device)
        for precision in ("fp32", args.amp):
            if precision in result:
                row = result[precision]
                print(f"  {precision}: Grad-CAM {row['gradcam_images_per_s']:.0f} img/s, plain inference "
                      f"{row['plain_images_per_s']:.0f} img/s, ratio {row['throughput_vs_inference']:.2f}x "
                      f"(target >= 0.9x), peak {row['peak_bytes'] / 2**30:.2f} GiB", flush=True)
        if "pearson_vs_fp32" in result.get(args.amp, {}):
            print(f"  {args.amp} maps vs fp32: r = {result[args.amp]['pearson_vs_fp32']:.5f} (target >= 0.999)")
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the section's weights and batches go before the next one
    with tempfile.TemporaryDirectory(prefix="i2x-bench-gpu-") as tmp:
        workdir = Path(tmp)
        if "analysis" not in args.skip:
            figures["analysis"] = result = analysis(args, device, workdir)
            print(f"  whole analysis ({result['precision']}) {result['total_s']:.1f} s (target < 60 s): interpretation "
                  f"{result['interpretation_s']:.1f} s, prototypes {result['prototypes_s']:.1f} s, clusters "
                  f"{result['clusters_s']:.1f} s, explanation {result['explanation_s']:.1f} s "
                  f"({result['checkpoints']} checkpoints; training {result['train_s_not_counted']:.1f} s not counted)",
                  flush=True)
            if "ray" not in args.skip:
                from i2x.storage import LocalStore

                figures["ray"] = ray_result = through_ray(args, device, workdir, LocalStore(workdir / "store"))
                print(f"  Ray: {ray_result['gpus']} GPU(s), {ray_result['images_per_s']:.0f} img/s "
                      f"({ray_result['images_per_s_per_gpu']:.0f} per GPU), GPUs used {ray_result['gpu_ids']}, "
                      f"{len(ray_result['nodes'])} node(s)", flush=True)
    print("  CUDA did the work: every unit recorded a cuda device and CUDA memory" if device.type == "cuda"
          else "  (smoke run on the CPU: every unit recorded device cpu)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
