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
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable

from i2x import config

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
    logging.basicConfig(level=config.get("I2X_LOG_LEVEL").upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # An explicit --port is used as is (0: any free port); otherwise I2X_PORT / the service default.
    return asyncio.run(_serve(args.service, args.workers, None if args.port in (None, "") else int(args.port)))


async def _serve(service: str, workers: int, port: int | None = None) -> int:
    from i2x import raycluster
    from i2x.server import serve_forever
    from i2x.servicers import start_service
    from i2x.storage import open_store

    store = open_store()
    if service == "interpretation":  # fail fast when Ray is unreachable; other services do not use it
        raycluster.connect()
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


class _Child:
    """One service subprocess; its output goes to `log` (or is echoed with a prefix) and is
    scanned for the listening line."""

    def __init__(self, service: str, argv: list[str], env: dict, log=None):
        self.service = service
        self.address: str | None = None
        self.ready = threading.Event()
        self.log = log
        self.process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        bufsize=1, start_new_session=True)  # Ctrl-C reaches the parent only
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        marker = f"i2x {self.service} listening on "
        for line in self.process.stdout:
            if line.startswith(marker):
                self.address = line[len(marker):].split()[0]
                self.ready.set()
            if self.log is not None:
                self.log.write(line)
                self.log.flush()
            else:
                sys.stdout.write(f"[{self.service}] {line}")
                sys.stdout.flush()
        self.ready.set()  # exited: stop waiting

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)


class LocalSystem:
    """The store, a Ray head (unless one is given) and the four services as subprocesses.

    A context manager: `with LocalSystem(...) as system:` waits until every service listens
    (system.addresses: service -> host:port) and stops all of it, Ray included, on exit.
    log_dir: write each service's output to <log_dir>/<service>.log instead of echoing it.
    """

    def __init__(self, store_url: str | None = None, *, host: str = "127.0.0.1", base_port: int | None = None,
                 ray_address: str | None = None, ray_cpus: int | None = None, token: str | None = None,
                 timeout: float = 120.0, log_dir: str | None = None):
        from i2x.storage import open_store

        self.store = open_store(store_url)  # creates a local directory / checks the bucket before anything starts
        self.host, self.base_port, self.token, self.timeout, self.log_dir = host, base_port, token, timeout, log_dir
        self.ray_address = ray_address or (None if config.get("I2X_RAY_ADDRESS") == "local"
                                           else config.get("I2X_RAY_ADDRESS"))
        self.ray_cpus = ray_cpus
        self.started_ray = False
        self.children: list[_Child] = []
        self.addresses: dict[str, str] = {}

    def __enter__(self) -> "LocalSystem":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        from i2x import raycluster

        if self.ray_address is None:  # a head owned by this process: ray.shutdown() stops exactly what it started
            import ray

            ray.init(num_cpus=self.ray_cpus, include_dashboard=False, log_to_driver=False)
            self.started_ray = True
            self.ray_address = raycluster.gcs_address()
        # Built after ray.init: it sets RAY_AUTH_MODE=token, which the services need to join this head.
        url = self.store.url
        env = dict(os.environ, I2X_STORE=url[len("file://"):] if url.startswith("file://") else url,
                   I2X_HOST=self.host, I2X_RAY_ADDRESS=self.ray_address)
        if self.token:
            env["I2X_API_TOKEN"] = self.token
        if self.log_dir:
            os.makedirs(self.log_dir, exist_ok=True)
        for offset, service in enumerate(config.SERVICES):
            port = config.SERVICE_PORTS[service] if self.base_port is None else (
                0 if self.base_port == 0 else self.base_port + offset)
            argv = [sys.executable, "-m", "i2x.cli", "serve", service, "--port", str(port)]
            log = open(os.path.join(self.log_dir, f"{service}.log"), "w") if self.log_dir else None
            self.children.append(_Child(service, argv, env, log))
        deadline = time.monotonic() + self.timeout
        for child in self.children:
            child.ready.wait(max(0.0, deadline - time.monotonic()))
        failed = [c.service for c in self.children if c.address is None]
        if failed:
            where = f" (logs in {self.log_dir})" if self.log_dir else " (see their output above)"
            raise RuntimeError(f"{', '.join(failed)} did not start{where}")
        self.addresses = {c.service: c.address for c in self.children}

    def exited(self) -> list[str]:
        return [c.service for c in self.children if c.process.poll() is not None]

    def stop(self) -> None:
        for child in self.children:
            child.stop()
        grace = float(config.get("I2X_GRACE_SECONDS")) + 5
        for child in self.children:
            try:
                child.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                child.process.kill()
            if child.log is not None:
                child.log.close()
        self.children = []
        if self.started_ray:
            import ray

            ray.shutdown()
            self.started_ray = False


def cmd_up(args) -> int:
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with LocalSystem(args.store, host=args.host, base_port=args.base_port, ray_address=args.ray_address,
                         ray_cpus=args.ray_cpus, token=args.token, timeout=args.timeout) as system:
            print(f"\ni2x is up. store: {system.store.url}   ray: {system.ray_address}")
            for service, address in system.addresses.items():
                print(f"  {service:<15} {address}")
            print(f"  client: Client.from_env() with I2X_ENDPOINT={args.host}"
                  + ("" if args.base_port is None else " and the I2X_*_ADDR variables above")
                  + "\nCtrl-C stops everything.", flush=True)
            while not stop.is_set():
                if system.exited():
                    print("i2x up: a service exited; stopping the others", file=sys.stderr)
                    return 1
                stop.wait(0.5)
            return 0
    except RuntimeError as exc:
        print(f"i2x up: {exc}", file=sys.stderr)
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        print("i2x up: stopped", flush=True)


# ---------------------------------------------------------------- analyze

def add_analyze_command(sub) -> None:
    p = sub.add_parser("analyze", help="train (or take/register) a run, interpret, cluster and explain it "
                                       "through running services, with progress bars")
    p.add_argument("run_id")
    g = p.add_argument_group("services (default: Client.from_env(): I2X_ENDPOINT / I2X_*_ADDR)")
    g.add_argument("--endpoint", help="host of all four services on their default ports")
    for service in config.SERVICES:
        g.add_argument(f"--{service}", metavar="HOST:PORT", help=f"address of the {service} service")
    g.add_argument("--token", help="bearer token (env I2X_API_TOKEN)")
    g.add_argument("--store", help="store to read results from / upload checkpoints to (env I2X_STORE)")
    g = p.add_argument_group("the run (ignored when it exists)")
    g.add_argument("--arch", help="model architecture (default small_cnn)")
    g.add_argument("--num-classes", type=int)
    g.add_argument("--in-channels", type=int)
    g.add_argument("--input-size", type=int)
    g.add_argument("--target-layer")
    g.add_argument("--dataset", dest="dataset_kind", help="mnist5k (default), mnist, cifar10, imagefolder, npz")
    g.add_argument("--dataset-root", help="path the services read the dataset from")
    g.add_argument("--preset", help="training preset (tiny, demo, paper-mnist, ...)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--checkpoint", action="append", default=[], metavar="STEP=PATH_OR_KEY",
                   help="register this checkpoint instead of training (a local file is uploaded); repeatable")
    g = p.add_argument_group("stages")
    g.add_argument("--prototypes", type=int, dest="n_prototypes", help="M, the number of prototypes")
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
    from i2x.integrations.cli import add_analyze_flags

    add_analyze_flags(p)  # --from-mlflow, --mlflow
    p.set_defaults(func=cmd_analyze)


def _compact(**values) -> dict:
    return {k: v for k, v in values.items() if v is not None}


class _Bars:
    """One tqdm bar per stage, fed by the pipeline's progress(stage, event)."""

    def __init__(self):
        try:
            from tqdm import tqdm
        except ImportError:  # the client alone does not need tqdm
            tqdm = None
        self._tqdm, self._bars, self._lock = tqdm, {}, threading.Lock()

    def __call__(self, stage: str, event) -> None:
        with self._lock:
            if self._tqdm is None:
                print(f"{stage}: {event.done}/{event.total} {event.message}", flush=True)
                return
            bar = self._bars.get(stage)
            if bar is None:
                bar = self._bars[stage] = self._tqdm(desc=f"{stage:<11}", total=event.total or None, unit="unit",
                                                     position=len(self._bars), leave=True)
            if event.total and bar.total != event.total:
                bar.total = event.total
            bar.n = event.done
            bar.set_postfix_str(event.message[:40], refresh=False)
            bar.refresh()
            if event.state in ("SUCCEEDED", "FAILED", "CANCELLED"):
                bar.set_postfix_str(event.state.lower())
                bar.close()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()


def cmd_analyze(args) -> int:
    from pathlib import Path

    import grpc

    from i2x.client import Client, JobFailed

    overrides = _compact(token=args.token, store=args.store,
                         **{s: getattr(args, s) for s in config.SERVICES if getattr(args, s)})
    if args.endpoint:
        overrides.update({s: f"{args.endpoint}:{config.SERVICE_PORTS[s]}" for s in config.SERVICES
                          if s not in overrides})
    checkpoints = {}
    for item in args.checkpoint:
        step, _, source = item.partition("=")
        if not step.isdigit() or not source:
            print(f"--checkpoint {item!r}: give STEP=PATH_OR_KEY, e.g. 40=ckpt/step40.safetensors", file=sys.stderr)
            return 2
        checkpoints[int(step)] = Path(source) if Path(source).is_file() else source
    from i2x.integrations.cli import mlflow_checkpoints, mlflow_export

    bars = _Bars()
    with Client.from_env(**overrides) as client:
        checkpoints = mlflow_checkpoints(args, client, checkpoints)
        try:
            result = client.run_pipeline(
                args.run_id,
                model=_compact(arch=args.arch, num_classes=args.num_classes, in_channels=args.in_channels,
                               input_size=args.input_size, target_layer=args.target_layer),
                dataset=_compact(kind=args.dataset_kind, root=args.dataset_root),
                train=_compact(preset=args.preset, epochs=args.epochs, seed=args.seed),
                checkpoints=checkpoints or None,
                prototypes=_compact(n_prototypes=args.n_prototypes),
                clusters=_compact(min_cluster_size=args.min_cluster_size),
                explain=_compact(tau=args.tau, lam=args.lam, pair=args.pair),
                finetune=_compact(repeats=args.repeats) if args.finetune else None,
                progress=bars, timeout=args.timeout, report=args.report)
        except JobFailed as exc:
            bars.close()
            print(f"i2x analyze: {exc}", file=sys.stderr)
            return 1
        except grpc.RpcError as exc:
            bars.close()
            print(f"i2x analyze: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    bars.close()
    _print_summary(result)
    if result.report_key:
        print(f"report: {_report_location(result.report_key, args.store or os.environ.get('I2X_STORE'))}")
    mlflow_export(args, client, args.run_id)
    return 0


def _report_location(key: str, store_url: str | None) -> str:
    """Where a person opens the report: a file path for a local store, the store URL/key otherwise."""
    if not store_url:
        return f"{key} (in the services' store)"
    if store_url.startswith("s3://"):
        return f"{store_url.rstrip('/')}/{key}"
    from pathlib import Path

    return str(Path(store_url.removeprefix("file://")).expanduser().resolve() / key)


def _print_summary(result) -> None:
    pair = result.pair_analysis
    names = pair.names or [str(c) for c in pair.pair]
    print(f"\nrun {result.run.run_id}: {len(result.run.checkpoints)} checkpoints, "
          f"test accuracy {result.evaluation.accuracy:.4f}")
    print(f"most confused pair: {names[0]} / {names[1]} ({pair.a_to_b} + {pair.b_to_a} test confusions)")
    print(f"  reliable prototypes: {pair.reliable_prototypes}")
    print(f"  uncertain prototypes: {pair.uncertain_prototypes} (curation removes {pair.uncertain_prototype})")
    print(f"explanation: {result.explanation.key}")
    for note in result.notes:
        print(f"note: {note}")
    if result.finetune is not None:
        print("\nfine-tuning (mean +- std over repeats):")
        for row in result.finetune.rows:
            print(f"  {row.protocol:<18} acc {row.accuracy[0]:.4f}+-{row.accuracy[1]:.4f}   "
                  f"confusions {row.sum[0]:.2f}+-{row.sum[1]:.2f}")


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


COMMANDS: list[Callable] = [add_serve_command, add_up_command, add_analyze_command, add_demo_command,
                            add_report_command]
COMMANDS.append(add_watch_command)  # i2x watch RUN (i2x.integrations.live)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="i2x", description="I2X: structured explanations of image classifiers")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
