"""The `i2x` command. Each subcommand registers itself in a small add_*_command function listed
in COMMANDS, so a new one (demo, report, ...) is one function and one list entry.

    i2x serve training|interpretation|clustering|explanation   one service (flags override I2X_*)
    i2x up                                                      store + local Ray + the four services
    i2x analyze RUN_ID ...                                      the pipeline against running services
    i2x demo                                                    the whole method on the embedded MNIST subset
    i2x report STORE --run RUN_ID [--compare ...]               the HTML report of a run, or two side by side
    i2x watch RUN_ID                                            a (live) run's progress until it is explained
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from typing import Callable

from i2x import config
from i2x.cli_errors import UserError, describe
from i2x.localsystem import LocalSystem
from i2x.progress import Bars, add_output_flags, progress_mode

# ---------------------------------------------------------------- serve


# flag name -> the I2X_* setting it overrides
SERVE_FLAGS = {"host": "I2X_HOST", "port": "I2X_PORT", "store": "I2X_STORE", "ray_address": "I2X_RAY_ADDRESS",
               "token": "I2X_API_TOKEN", "tls_cert": "I2X_TLS_CERT", "tls_key": "I2X_TLS_KEY",
               "max_message_mb": "I2X_MAX_MESSAGE_MB", "grace": "I2X_GRACE_SECONDS", "log_level": "I2X_LOG_LEVEL"}


def add_serve_command(sub) -> None:
    p = sub.add_parser("serve", help="run one service (gRPC, health, reflection) until SIGTERM/Ctrl-C")
    p.add_argument("service", choices=config.SERVICES)
    for flag, env in SERVE_FLAGS.items():
        setting = next(s for s in config.SETTINGS if s.env == env)
        p.add_argument(f"--{flag.replace('_', '-')}", dest=flag, default=None,
                       help=f"{setting.help} (env {env}, default {setting.default!r})")
    p.add_argument("--workers", type=int, default=2, help="jobs run at once by this service (default 2)")
    p.set_defaults(func=cmd_serve)


def _apply_flags(args) -> None:
    """Flags win over the environment: write them into it, where every module reads settings."""
    for flag, env in SERVE_FLAGS.items():
        value = getattr(args, flag, None)
        if value not in (None, ""):
            os.environ[env] = str(value)


def cmd_serve(args) -> int:
    import asyncio

    _apply_flags(args)
    os.environ["_I2X_PROCESS_SERVICE"] = args.service  # errors name the process (i2x.process)
    from i2x.logs import configure

    configure(args.service)  # I2X_LOG_FORMAT (text or json), I2X_LOG_LEVEL
    # An explicit --port is used as is (0: any free port); otherwise I2X_PORT / the service default.
    return asyncio.run(_serve(args.service, args.workers, None if args.port in (None, "") else int(args.port)))


async def _serve(service: str, workers: int, port: int | None = None) -> int:
    from i2x.server import serve_forever
    from i2x.serving import start_service
    from i2x.storage import open_store

    store = open_store()
    # The interpretation service reaches Ray in the background, with backoff (health NOT_SERVING till then).
    server, port, health, servicer = await start_service(service, store, port=port, max_workers=workers)
    # `i2x up` reads this line to learn the bound port.
    print(f"i2x {service} listening on {config.get('I2X_HOST')}:{port} (store {store.url})", flush=True)
    await serve_forever(server, health)
    # Recorded as interrupted (no owner) before the Ray pool goes: another replica or the next start resumes them.
    servicer.jobs.shutdown(wait=True, interrupt=True)
    servicer.close()
    return 0


# ---------------------------------------------------------------- up

def add_up_command(sub) -> None:
    p = sub.add_parser("up", help="start the store, a local Ray head and the four services; Ctrl-C stops all")
    p.add_argument("--store", default=None, help="local directory or s3://BUCKET[/PREFIX] (env I2X_STORE)")
    p.add_argument("--host", default="127.0.0.1", help="address the services bind")
    p.add_argument("--base-port", type=int, default=None,
                   help="training listens here, the others on the next ports (default: 50051-50054); 0: any free")
    p.add_argument("--ray-address", default=None,
                   help="join this Ray cluster instead of starting a local head (env I2X_RAY_ADDRESS if not 'local')")
    p.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local Ray head (default: all)")
    p.add_argument("--token", default=None, help="bearer token the services require (env I2X_API_TOKEN)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the services to listen")
    p.set_defaults(func=cmd_up)


def cmd_up(args) -> int:
    stop = threading.Event()

    def on_signal(signum, frame) -> None:  # SIGINT and SIGTERM: one orderly stop of the whole tree
        if stop.is_set():
            print("i2x up: stopping (the services finish their grace period)", file=sys.stderr, flush=True)
        stop.set()

    system = LocalSystem(args.store, host=args.host, base_port=args.base_port, ray_address=args.ray_address,
                         ray_cpus=args.ray_cpus, token=args.token, timeout=args.timeout, signal_handler=on_signal)
    try:
        with system:
            print(f"\ni2x is up. store: {system.store.url}   ray: {system.ray_address}")
            for service, address in system.addresses.items():
                print(f"  {service:<15} {address}")
            print(f"  client: Client.from_env() with I2X_ENDPOINT={args.host}"
                  + ("" if args.base_port is None else " and the I2X_*_ADDR variables above")
                  + "\nCtrl-C stops everything.", flush=True)
            status = 0
            while not stop.is_set():
                if system.exited():
                    print(f"i2x up: {', '.join(system.exited())} exited; stopping the others", file=sys.stderr)
                    status = 1
                    break
                stop.wait(0.5)
            print("i2x up: stopping", flush=True)
        print("i2x up: stopped", flush=True)
        return status
    except RuntimeError as exc:
        print(f"i2x up: {exc}", file=sys.stderr)
        return 1


# ---------------------------------------------------------------- analyze

def _spec_flags(group, message, prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    """One flag per field of a spec message (i2x.v1.common), so the flags mirror the specs."""
    from google.protobuf.descriptor import FieldDescriptor as F

    types = {F.CPPTYPE_INT32: int, F.CPPTYPE_INT64: int, F.CPPTYPE_DOUBLE: float, F.CPPTYPE_FLOAT: float}
    for f in message.DESCRIPTOR.fields:
        if f.name in skip:
            continue
        flag = f"--{prefix}{f.name.replace('_', '-')}"
        if f.cpp_type == F.CPPTYPE_BOOL:
            group.add_argument(flag, dest=f"{prefix.replace('-', '_')}{f.name}", default=None,
                               action=argparse.BooleanOptionalAction)
        else:
            group.add_argument(flag, dest=f"{prefix.replace('-', '_')}{f.name}", default=None,
                               type=types.get(f.cpp_type, str), metavar=f.name.upper())


def add_analyze_command(sub) -> None:
    from i2x.v1 import common_pb2

    p = sub.add_parser("analyze", help="train (or take/register) a run, interpret, cluster and explain it "
                                       "through running services, with progress bars",
                       description="Runs the pipeline through the services that `i2x up` (or a deployment) "
                                   "runs. Your own model: --arch custom --factory pkg.module:function; the "
                                   "module must be importable by the services and their Ray workers and be "
                                   "listed in their I2X_MODEL_FACTORIES (see README, 'Your own model').")
    p.add_argument("run_id")
    g = p.add_argument_group("services (default: Client.from_env(): I2X_ENDPOINT / I2X_*_ADDR)")
    g.add_argument("--endpoint", help="host of all four services on their default ports")
    for service in config.SERVICES:
        g.add_argument(f"--{service}", metavar="HOST:PORT", help=f"address of the {service} service")
    g.add_argument("--token", help="bearer token (env I2X_API_TOKEN)")
    g.add_argument("--store", help="the services' store (default: the one they report); a different one is refused")
    g = p.add_argument_group("the model (a run that exists must be given the same, or --overwrite)")
    _spec_flags(g, common_pb2.ModelSpec)  # --arch --in-channels --num-classes --input-size --factory --target-layer
    g = p.add_argument_group("the dataset")
    g.add_argument("--dataset", dest="dataset_kind", help="same as --dataset-kind")
    _spec_flags(g, common_pb2.DatasetSpec, prefix="dataset-")  # --dataset-kind --dataset-root ...
    g = p.add_argument_group("training")
    _spec_flags(g, common_pb2.TrainConfig)  # --preset --epochs --batch-size --lr ... --seed --device
    g.add_argument("--checkpoint", action="append", default=[], metavar="STEP=PATH_OR_KEY",
                   help="register this checkpoint instead of training (a local file is uploaded to the "
                        "services' store); repeatable")
    g.add_argument("--explanation-fraction", type=float, help="share of the training set explained (default 0.1)")
    g.add_argument("--overwrite", action="store_true",
                   help="recreate an existing run whose settings differ from these (its results are redone)")
    g = p.add_argument_group("stages")
    g.add_argument("--prototypes", type=int, dest="n_prototypes", help="M, the number of prototypes")
    g.add_argument("--pca-components", type=int, dest="n_components", help="PCA components before KMeans")
    g.add_argument("--min-cluster-size", type=int, help="HDBSCAN min_cluster_size")
    g.add_argument("--tau", type=float)
    g.add_argument("--lam", type=float)
    g.add_argument("--pair", type=int, nargs=2, metavar=("A", "B"), help="analyse this class pair")
    g.add_argument("--finetune", action="store_true", help="also curate and fine-tune (paper Table 1)")
    g.add_argument("--repeats", type=int, help="fine-tuning repeats R")
    g.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                   help="last, build the HTML report in the explanation service (runs/<run>/report.html; "
                        "default: on)")
    g.add_argument("--timeout", type=float, default=None, help="seconds per job")
    add_output_flags(p)
    from i2x.integrations.cli import add_analyze_flags

    add_analyze_flags(p)  # --from-mlflow, --mlflow
    p.set_defaults(func=cmd_analyze)


def _compact(**values) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def _fields(args, message, prefix: str = "") -> dict:
    return _compact(**{f.name: getattr(args, f"{prefix}{f.name}", None) for f in message.DESCRIPTOR.fields})


def _same_store(a: str, b: str) -> bool:
    from pathlib import Path

    def norm(url: str) -> str:
        if url.startswith("s3://"):
            return url.rstrip("/")
        return str(Path(url.removeprefix("file://")).expanduser().resolve())

    return norm(a) == norm(b)


def _looks_local(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~", "file://")) or source.endswith((".pt", ".pth")) \
        or os.sep in source and not source.startswith(("runs/", "uploads/"))


def _checkpoint_sources(items: list[str]) -> dict:
    """--checkpoint STEP=SOURCE: an existing local file (uploaded) or, otherwise, a store key."""
    from pathlib import Path

    checkpoints: dict = {}
    for item in items:
        step, _, source = item.partition("=")
        if not step.isdigit() or not source:
            raise UserError(f"--checkpoint {item!r}: give STEP=PATH_OR_KEY, e.g. 40=ckpt/step40.safetensors")
        path = Path(source.removeprefix("file://")).expanduser()
        checkpoints[int(step)] = path if path.is_file() else source
    return checkpoints


def cmd_analyze(args) -> int:
    import grpc

    from i2x.client import Client, JobFailed
    from i2x.v1 import common_pb2

    checkpoints = _checkpoint_sources(args.checkpoint)  # before anything is contacted or created
    from i2x.integrations.cli import mlflow_precheck

    mlflow_precheck(args, checkpoints)  # --from-mlflow: MLflow is checked before the services
    overrides = _compact(token=args.token, **{s: getattr(args, s) for s in config.SERVICES if getattr(args, s)})
    if args.endpoint:
        overrides.update({s: f"{args.endpoint}:{config.SERVICE_PORTS[s]}" for s in config.SERVICES
                          if s not in overrides})
    with Client.from_env(**overrides) as client:
        info = client.server_info()  # at once: ServiceUnavailable names `i2x up` and I2X_ENDPOINT
        if args.store and not _same_store(args.store, info.store_url):
            raise UserError(f"--store {args.store} is not the services' store ({info.store_url}); uploads and "
                            "results must be where the services read: drop --store")
        from i2x.integrations.cli import mlflow_checkpoints, mlflow_export

        checkpoints = mlflow_checkpoints(args, client, checkpoints)  # --from-mlflow
        for step, source in checkpoints.items():
            if isinstance(source, str) and (_looks_local(source) or not _key_exists(client.store, source)):
                where = "no such local file" if _looks_local(source) else \
                    f"no such local file, nor key in the services' store {info.store_url}"
                raise UserError(f"--checkpoint {step}={source}: {where}")
        try:
            existed = args.run_id in client.list_runs()
        except grpc.RpcError:
            existed = True
        dataset = _fields(args, common_pb2.DatasetSpec, "dataset_")
        if args.dataset_kind and "kind" not in dataset:
            dataset["kind"] = args.dataset_kind
        bars = Bars(progress_mode(args))
        try:
            result = client.run_pipeline(
                args.run_id,
                model=_fields(args, common_pb2.ModelSpec) or None,
                dataset=dataset or None,
                train=_fields(args, common_pb2.TrainConfig) or None,
                checkpoints=checkpoints or None,
                prototypes=_compact(n_prototypes=args.n_prototypes, n_components=args.n_components),
                clusters=_compact(min_cluster_size=args.min_cluster_size),
                explain=_compact(tau=args.tau, lam=args.lam, pair=args.pair),
                finetune=_compact(repeats=args.repeats) if args.finetune else None,
                progress=bars, timeout=args.timeout, report=args.report, overwrite=args.overwrite,
                explanation_fraction=args.explanation_fraction)
        except (JobFailed, grpc.RpcError) as exc:
            bars.close()
            message, status = describe(exc)
            print(f"i2x analyze: {message}", file=sys.stderr)
            if not existed and args.run_id in _safe(client.list_runs, []):
                print(f"i2x analyze: run {args.run_id!r} was created before the failure: fix the cause and rerun "
                      f"the same command to resume, or remove it with `i2x runs delete {args.run_id}`",
                      file=sys.stderr)
            return status
        bars.close()
        try:  # explanation.json itself, for the sentences of i2x.core.narrative
            explanation_doc = client.load(result.explanation.key)
        except Exception:  # noqa: BLE001  (no readable store here: fall back to the RPC summary)
            explanation_doc = None
        table = client.load(result.finetune.markdown_key).decode() if result.finetune else None
    location = _report_location(result.report_key, info.store_url) if result.report_key else None
    mlflow_export(args, client, args.run_id)  # --mlflow: a failure is a warning, the analysis stands
    if args.json:
        print(json.dumps(_summary_dict(result, info.store_url, table, location), indent=2))
        return 0
    _print_summary(result, explanation_doc)
    if table:
        print()
        print(table, end="")
    if location:
        print(f"report: {location}")
    return 0


def _key_exists(store, key: str) -> bool:
    try:
        return store.exists(key)
    except ValueError:  # not a valid key at all
        return False


def _safe(fn, default):
    try:
        return fn()
    except Exception:  # noqa: BLE001  (only for a hint after another error)
        return default


def _summary_dict(result, store_url: str, table: str | None, report: str | None) -> dict:
    pair = result.pair_analysis
    return {
        "run_id": result.run.run_id, "store": store_url, "steps": result.run.steps,
        "accuracy": result.evaluation.accuracy,
        "pair": {"classes": list(pair.pair), "names": pair.names, "a_to_b": pair.a_to_b, "b_to_a": pair.b_to_a,
                 "reliable_prototypes": pair.reliable_prototypes,
                 "uncertain_prototypes": pair.uncertain_prototypes,
                 "uncertain_prototype": pair.uncertain_prototype},
        "explanation_key": result.explanation.key,
        "finetune": None if result.finetune is None else {
            "rows": [{"protocol": r.protocol, "accuracy": list(r.accuracy), "a_to_b": list(r.a_to_b),
                      "b_to_a": list(r.b_to_a), "sum": list(r.sum), "repeats": r.repeats}
                     for r in result.finetune.rows],
            "markdown": table},
        "report": report, "jobs": result.jobs, "notes": result.notes,
    }


def _report_location(key: str, store_url: str | None) -> str:
    """Where a person opens the report: a file path for a local store, the store URL/key otherwise."""
    if not store_url:
        return f"{key} (in the services' store)"
    if store_url.startswith("s3://"):
        return f"{store_url.rstrip('/')}/{key}"
    from pathlib import Path

    return str(Path(store_url.removeprefix("file://")).expanduser().resolve() / key)


def _print_summary(result, explanation_doc: dict | None = None) -> None:
    pair = result.pair_analysis
    names = pair.names or [str(c) for c in pair.pair]
    print(f"\nrun {result.run.run_id}: {len(result.run.checkpoints)} checkpoints, "
          f"test accuracy {result.evaluation.accuracy * 100:.2f}%")
    if explanation_doc is not None:
        from i2x.core.narrative import summary_lines  # warnings first, then the true most confused pair

        for line in summary_lines(explanation_doc):
            print(line)
    else:
        print(f"analysed pair: {names[0]} / {names[1]} ({pair.a_to_b} + {pair.b_to_a} test confusions)")
        removes = "nothing to curate" if pair.uncertain_prototype is None else f"curation removes P-{pair.uncertain_prototype}"
        print(f"  uncertain prototypes: {pair.uncertain_prototypes} ({removes})")
    print(f"explanation: {result.explanation.key}")
    for note in result.notes:
        print(f"note: {note}")


# ---------------------------------------------------------------- main

def add_demo_command(sub) -> None:
    from i2x.demo import add_demo_command as add

    add(sub)


def add_report_command(sub) -> None:
    from i2x.report.cli import add_report_command as add

    add(sub)


def add_watch_command(sub) -> None:
    from i2x.integrations.cli import add_watch_command as add

    add(sub)


def add_runs_commands(sub) -> None:
    from i2x.cli_runs import add_jobs_command, add_runs_command

    add_runs_command(sub)
    add_jobs_command(sub)


COMMANDS: list[Callable] = [add_serve_command, add_up_command, add_analyze_command, add_demo_command,
                            add_report_command, add_runs_commands]
COMMANDS.append(add_watch_command)  # i2x watch RUN (i2x.integrations.live)


def build_parser() -> argparse.ArgumentParser:
    from i2x.cli_errors import DIST
    from i2x.client import __version__

    parser = argparse.ArgumentParser(prog="i2x", description="I2X: structured explanations of image classifiers")
    parser.add_argument("--version", action="version", version=f"i2x {__version__} ({DIST})")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    for command in sub.choices.values():  # `i2x analyze ... --debug` works too
        _add_debug(command)
    return parser


def _add_debug(parser: argparse.ArgumentParser) -> None:
    if "--debug" not in parser._option_string_actions:
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_debug(child)


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error is one or two lines on stderr and exit status 2, never a
    traceback (--debug shows it)."""
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"i2x {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  (every error reaches a person as a sentence)
        if debug:
            import traceback

            traceback.print_exc()
        message, status = describe(exc)
        print(f"i2x {args.command}: {message}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
