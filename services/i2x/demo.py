"""`i2x demo`: the whole method on the embedded MNIST subset, with progress bars and a summary."""

from __future__ import annotations

import argparse
import sys
import time


def add_demo_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="train the small CNN on the embedded MNIST subset and explain it end to end",
        description="Runs I2X end to end on the embedded 5,000-image MNIST subset: train with checkpoints, "
                    "Grad-CAM per checkpoint, prototypes, HDBSCAN, ridge mapping, structured explanation, "
                    "curation, fine-tuning protocols (Table 1), figures and the HTML report.")
    parser.add_argument("--store", default=None, help="store URL or folder (default: I2X_STORE, ./i2x-data)")
    parser.add_argument("--run", default="demo-mnist5k", help="run id (default: demo-mnist5k)")
    parser.add_argument("--preset", default="demo", help="training preset (default: demo)")
    parser.add_argument("--repeats", type=int, default=5, help="fine-tuning repeats per protocol (paper: 5)")
    parser.add_argument("--prototypes", type=int, default=32, help="number of prototypes M (paper: 32 on MNIST)")
    parser.add_argument("--no-finetune", action="store_true", help="skip the fine-tuning protocols")
    parser.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from i2x.engine.params import ExplainParams, FinetuneParams, PrototypeParams
    from i2x.engine.pipeline import run_pipeline
    from i2x.storage import open_store

    store = open_store(args.store)
    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int, message: str) -> None:
        bar = bars.get(stage)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[stage] = tqdm(total=max(total, 1), desc=f"{stage:>10}", unit="step", file=sys.stderr,
                                     dynamic_ncols=True)
        bar.total = max(total, 1)
        bar.n = done
        bar.set_postfix_str(message[:60], refresh=False)
        bar.refresh()

    start = time.perf_counter()
    print(f"I2X demo: run {args.run!r} in {store.url}", flush=True)
    result = run_pipeline(
        store, args.run,
        model={"arch": "small_cnn", "in_channels": 1, "num_classes": 10, "input_size": 28},
        dataset={"kind": "mnist5k"},
        train={"preset": args.preset},
        prototypes=PrototypeParams(n_prototypes=args.prototypes),
        explain=ExplainParams(),
        finetune=None if args.no_finetune else FinetuneParams(repeats=args.repeats),
        progress=progress)
    for bar in bars.values():
        bar.close()
    print_summary(store, result, time.perf_counter() - start)
    return 0


def print_summary(store, result, seconds: float) -> None:
    from i2x.engine import stages

    run = stages.get_run(store, result.run_id)
    explanation = result.explanation
    classes = run["classes"]
    folder = f"{store.url}/runs/{result.run_id}"
    print()
    print(f"Results folder: {folder}")
    index = store.get_json(stages.run_key(result.run_id, "checkpoints", "index.json"))
    print(f"  final test accuracy {index['accuracy'] * 100:.2f}% over {len(run['checkpoints'])} checkpoints")
    pair = explanation.get("most_confused_pair") or {}
    if pair:
        print(f"  most confused pair: {classes[pair['a']]} / {classes[pair['b']]} "
              f"({pair['a_to_b']} + {pair['b_to_a']} = {pair['count']} test confusions)")
    if explanation.get("uncertain_prototype") is not None:
        print(f"  uncertain prototype: P-{explanation['uncertain_prototype']}")
    if result.finetune:
        print()
        print(store.get_bytes(stages.run_key(result.run_id, "finetune", "table.md")).decode())
    if result.report_key:
        print(f"Report: {store.url}/{result.report_key}")
    print(f"Done in {seconds:.0f} s ({', '.join(f'{k} {v:.0f}s' for k, v in result.timings.items())})")
