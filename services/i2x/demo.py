"""`i2x demo`: the whole method on the embedded MNIST subset, with progress bars and a summary.

By default it goes through the system: it starts a local Ray head and the four services on
free loopback ports (as `i2x up` does), drives them with the SDK's run_pipeline, and stops
them at the end. --in-process runs the same stages in this process instead.
"""

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
    parser.add_argument("--preset", default=None, help="training preset (default: TRAIN's, demo)")
    parser.add_argument("--repeats", type=int, default=5, help="fine-tuning repeats per protocol (paper: 5)")
    parser.add_argument("--prototypes", type=int, default=32, help="number of prototypes M (paper: 32 on MNIST)")
    parser.add_argument("--no-finetune", action="store_true", help="skip the fine-tuning protocols")
    parser.add_argument("--in-process", action="store_true",
                        help="run the stages in this process instead of through the services")
    from i2x.progress import add_output_flags  # --quiet, --json, --progress (the same as analyze)

    add_output_flags(parser)
    parser.set_defaults(func=run_demo)


MODEL = {"arch": "small_cnn", "in_channels": 1, "num_classes": 10, "input_size": 28}
# 60% of the 5,000 images for the test split (3,000): the model then makes about 130 test errors
# and its most confused pair about 14, enough for Table 1 to count more than a few images; 2 epochs
# on the 2,000 training images with a checkpoint every 4 iterations keep 16 checkpoints.
DATASET = {"kind": "mnist5k", "test_fraction": 0.6}
DEMO_TRAIN = {"epochs": 2, "checkpoint_every": 4}  # on top of the "demo" preset
EXPLANATION_FRACTION = 0.2  # 400 explanation samples (40 per class), as with 10% of 4,000
TRAIN = {"preset": "demo", **DEMO_TRAIN}  # README's sample output comes from these (tests/test_readme.py)


def train_spec(args: argparse.Namespace) -> dict:
    return TRAIN if args.preset in (None, "demo") else {"preset": args.preset}


def run_demo(args: argparse.Namespace) -> int:
    import torch  # noqa: F401  (the server extra: a missing one is named before anything starts)
    if not args.in_process:
        import ray  # noqa: F401
    return run_in_process(args) if args.in_process else run_through_services(args)


def run_through_services(args: argparse.Namespace) -> int:
    import tempfile

    import grpc

    from i2x.client import Client, JobFailed
    from i2x.localsystem import LocalSystem
    from i2x.progress import Bars, progress_mode

    logs = tempfile.mkdtemp(prefix="i2x-demo-logs-")
    start = time.perf_counter()
    say = _say(args)
    say(f"I2X demo: starting a local Ray head and the four services (logs in {logs})")
    with LocalSystem(args.store, base_port=0, log_dir=logs) as system:
        store = system.store
        say(f"run {args.run!r} in {store.url}; services: " + ", ".join(f"{s} {a}" for s, a in system.addresses.items()))
        bars = Bars(progress_mode(args))
        timings: dict[str, float] = {}
        try:
            with Client(**system.addresses, store=store.url) as client:
                result = client.run_pipeline(
                    args.run, model=MODEL, dataset=DATASET, train=train_spec(args),
                    explanation_fraction=EXPLANATION_FRACTION,
                    prototypes={"n_prototypes": args.prototypes},
                    finetune=None if args.no_finetune else {"repeats": args.repeats},
                    progress=bars, report=True)  # the explanation service stores runs/<run>/report.html
        except (JobFailed, grpc.RpcError) as exc:
            bars.close()
            detail = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.RpcError) else str(exc)
            print(f"i2x demo: {detail} (service logs in {logs})", file=sys.stderr)
            return 1
        bars.close()
        timings["services"] = time.perf_counter() - start
        for note in result.notes:
            say(f"note: {note}")
    finish(args, store, time.perf_counter() - start, timings)
    return 0


def run_in_process(args: argparse.Namespace) -> int:
    from i2x.engine.params import ExplainParams, FinetuneParams, PrototypeParams
    from i2x.engine.pipeline import run_pipeline
    from i2x.progress import Bars, progress_mode
    from i2x.storage import open_store

    store = open_store(args.store)
    bars = Bars(progress_mode(args))  # the same bars as through the services: the same progress(stage, event)

    start = time.perf_counter()
    _say(args)(f"I2X demo: run {args.run!r} in {store.url}")
    result = run_pipeline(
        store, args.run,
        model=MODEL, dataset=DATASET,
        train=train_spec(args), explanation_fraction=EXPLANATION_FRACTION,
        prototypes=PrototypeParams(n_prototypes=args.prototypes),
        explain=ExplainParams(),
        finetune=None if args.no_finetune else FinetuneParams(repeats=args.repeats),
        progress=bars, report=True)
    bars.close()
    finish(args, store, time.perf_counter() - start, result.timings)
    return 0


def _say(args):
    """Progress sentences: on stderr (stdout keeps the result), none with --quiet or --json."""
    quiet = args.quiet or args.json

    def say(text: str) -> None:
        if not quiet:
            print(text, file=sys.stderr, flush=True)
    return say


def finish(args, store, seconds: float, timings: dict[str, float]) -> None:
    if args.json:
        import json

        print(json.dumps(summary_dict(store, args.run, seconds, timings), indent=2))
    else:
        print_summary(store, args.run, seconds, timings)


def summary_dict(store, run_id: str, seconds: float, timings: dict[str, float]) -> dict:
    """The demo's result for scripts (--json): the same facts print_summary prints."""
    from i2x.engine import stages

    run = stages.get_run(store, run_id)
    explanation = stages.get_explanation(store, run_id)
    index = store.get_json(stages.run_key(run_id, "checkpoints", "index.json"))
    pair = explanation.get("most_confused_pair") or {}
    table = stages.run_key(run_id, "finetune", "table.md")
    report = stages.run_key(run_id, "report.html")
    return {"run_id": run_id, "store": store.url, "accuracy": index["accuracy"],
            "steps": [c["step"] for c in run["checkpoints"]],
            "pair": {"names": [run["classes"][pair["a"]], run["classes"][pair["b"]]], **pair} if pair else None,
            "uncertain_prototype": explanation.get("uncertain_prototype"),
            "finetune_markdown": store.get_bytes(table).decode() if store.exists(table) else None,
            "report": f"{store.url}/{report}" if store.exists(report) else None,
            "seconds": round(seconds, 1), "timings": {k: round(v, 1) for k, v in timings.items()}}


def print_summary(store, run_id: str, seconds: float, timings: dict[str, float]) -> None:
    """What the run found, read back from the store: the same for both ways of running."""
    from i2x.engine import stages

    run = stages.get_run(store, run_id)
    explanation = stages.get_explanation(store, run_id)
    folder = f"{store.url}/runs/{run_id}"
    print()
    print(f"Results folder: {folder}")
    index = store.get_json(stages.run_key(run_id, "checkpoints", "index.json"))
    print(f"  final test accuracy {index['accuracy'] * 100:.2f}% over {len(run['checkpoints'])} checkpoints")
    from i2x.core.narrative import summary_lines  # warnings first, then the true most confused pair

    for warning in run.get("warnings") or []:  # the run's own (MANY_CHECKPOINTS), then the explanation's
        print(f"  warning {warning['code']}: {warning['message']}")
    for line in summary_lines(explanation):
        print(f"  {line}")
    table = stages.run_key(run_id, "finetune", "table.md")
    if store.exists(table):
        print()
        print(store.get_bytes(table).decode())
    report = stages.run_key(run_id, "report.html")
    if store.exists(report):
        print(f"Report: {store.url}/{report}")
    print(f"Done in {seconds:.0f} s ({', '.join(f'{k} {v:.0f}s' for k, v in timings.items())})")
