"""Grad-CAM speed against a plain inference forward pass (issue 2, "Speed").

resnet50 (weights=None), batch 64, 3x112x112, CPU. After one warm-up each, every method is
timed next to a plain forward pass (order alternating) in each of --repeats rounds; the ratio
printed is the median of those paired ratios (robust to load from other processes):

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

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    for fn in methods.values():  # warm-up
        fn()
    assert ours.uses_cam_path is True, "layer4 of resnet50 should take the CAM path"
    # Each method is timed right next to its own forward pass (order alternating per round), and the
    # per-pair ratios' median is reported: load from other processes drifts slower than one pair.
    times: dict[str, list[float]] = {name: [] for name in methods}
    ratios: dict[str, list[float]] = {name: [] for name in methods if name != "forward"}
    for round_index in range(args.repeats):
        for name, fn in methods.items():
            if name == "forward":
                continue
            if round_index % 2 == 0:
                t_forward, t_method = timed(plain), timed(fn)
            else:
                t_method, t_forward = timed(fn), timed(plain)
            times["forward"].append(t_forward)
            times[name].append(t_method)
            ratios[name].append(t_method / t_forward)

    medians = {name: statistics.median(values) for name, values in times.items()}
    targets_by_name = {"ours/predicted": 1.05, "ours/all-K": 1.10}
    print(f"resnet50, batch {args.batch}, 3x{args.size}x{args.size}, K={args.classes}, "
          f"{torch.get_num_threads()} torch threads, {args.repeats} rounds after warm-up")
    print(f"{'method':<18}{'median s':>10}{'ratio':>9}{'min..max ratio':>17}  target")
    print(f"{'forward':<18}{medians['forward']:>10.3f}{1.0:>8.2f}x")
    for name, values in ratios.items():
        ratio = statistics.median(values)
        target = targets_by_name.get(name)
        verdict = "" if target is None else f"<= {target:.2f}x {'pass' if ratio <= target else 'FAIL'}"
        spread = f"{min(values):.2f}..{max(values):.2f}"
        print(f"{name:<18}{medians[name]:>10.3f}{ratio:>8.2f}x{spread:>17}  {verdict}")
    print("ratio = median over rounds of (method time / the forward pass timed next to it)")

if __name__ == "__main__":
    main()
