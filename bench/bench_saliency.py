"""Grad-CAM speed against a plain inference forward pass (issue 2, "Speed").

resnet50 (weights=None), batch 64, 3x112x112, CPU. Timed, interleaved round-robin so that load
from other processes hits every method alike, median of --repeats after one warm-up each:

  forward          model(x) under torch.inference_mode()            (the baseline, 1.00x)
  ours/predicted   i2x GradCAM at layer4, predicted class            target <= 1.05x
  ours/all-K       i2x GradCAM at layer4, all K class maps           target <= 1.10x
  ours/backward    i2x GradCAM forced onto its backward path         (for reference)
  pytorch-grad-cam GradCAM(target_layers=[layer4]), predicted class (its default: maps resized to the input)
  captum           LayerGradCam(layer4).attribute(target=predicted), relu_attributions=True

    nice -n 10 .venv/bin/python bench/bench_saliency.py            # full
    .venv/bin/python bench/bench_saliency.py --quick               # smoke run (small batch and input)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 4, 64x64, 1 repeat: a smoke run")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-libraries", action="store_true", help="skip pytorch-grad-cam and captum")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.size, args.repeats = 4, 64, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    from i2x.core.saliency import GradCAM
    from i2x.models import ModelSpec, build_model

    torch.manual_seed(0)
    model = build_model(ModelSpec(arch="resnet50", in_channels=3, num_classes=args.classes,
                                  input_size=args.size)).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    ours = GradCAM(model, "layer4", batch_size=args.batch)
    backward = GradCAM(model, "layer4", batch_size=args.batch)
    backward.uses_cam_path = False
    with torch.no_grad():  # not inference_mode: captum saves the target tensor for backward
        predicted = model(x).argmax(1)

    def plain():
        with torch.inference_mode():
            model(x)

    methods = {
        "forward": plain,
        "ours/predicted": lambda: ours(x),
        "ours/all-K": lambda: ours(x, all_classes=True),
        "ours/backward": lambda: backward(x),
    }
    if not args.no_libraries:
        from captum.attr import LayerGradCam
        from pytorch_grad_cam import GradCAM as LibraryGradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        library = LibraryGradCAM(model=model, target_layers=[model.layer4])
        targets = [ClassifierOutputTarget(int(c)) for c in predicted]
        captum = LayerGradCam(model, model.layer4)
        methods["pytorch-grad-cam"] = lambda: library(input_tensor=x, targets=targets)
        methods["captum"] = lambda: captum.attribute(x, target=predicted, relu_attributions=True)

    times: dict[str, list[float]] = {name: [] for name in methods}
    for name, fn in methods.items():  # warm-up
        fn()
    assert ours.uses_cam_path is True, "layer4 of resnet50 should take the CAM path"
    for _ in range(args.repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    medians = {name: statistics.median(values) for name, values in times.items()}
    base = medians["forward"]
    targets_by_name = {"ours/predicted": 1.05, "ours/all-K": 1.10}
    print(f"resnet50, batch {args.batch}, 3x{args.size}x{args.size}, K={args.classes}, "
          f"{torch.get_num_threads()} torch threads, median of {args.repeats} (after warm-up)")
    print(f"{'method':<18}{'median s':>10}{'ratio':>9}  target")
    for name, value in medians.items():
        target = targets_by_name.get(name)
        verdict = "" if target is None else f"<= {target:.2f}x {'pass' if value / base <= target else 'FAIL'}"
        print(f"{name:<18}{value:>10.3f}{value / base:>8.2f}x  {verdict}")
    spread = {name: (min(v), max(v)) for name, v in times.items()}
    print("min..max s: " + ", ".join(f"{n} {lo:.3f}..{hi:.3f}" for n, (lo, hi) in spread.items()))


if __name__ == "__main__":
    main()
