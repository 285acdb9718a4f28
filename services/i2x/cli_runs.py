"""`i2x runs list|show|delete` and `i2x jobs list|show|cancel`.

Runs are read from a store: --store, or the store the services report (GetServerInfo). Jobs are
asked of the services (each service lists the jobs it runs).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from i2x.cli_errors import UserError

STAGE_KEYS = (("trained", "checkpoints/index.json"), ("explained", "explanation/explanation.json"),
              ("fine-tuned", "finetune/table.json"), ("report", "report.html"))


def open_existing_store(url: str):
    """The store at `url`; a local folder that does not exist is an error, never created."""
    from i2x.storage import open_store

    if not url.startswith("s3://"):
        path = Path(url.removeprefix("file://")).expanduser()
        if not path.is_dir():
            raise UserError(f"no store at {path} (no such folder): give the results folder the services or "
                            "`i2x demo` wrote (default ./i2x-data), or an s3:// URL")
    return open_store(url)


def _client(args):
    from i2x.client import Client

    overrides = {k: v for k, v in (("token", getattr(args, "token", None)),) if v}
    if getattr(args, "endpoint", None):
        from i2x import config

        overrides.update({s: f"{args.endpoint}:{p}" for s, p in config.SERVICE_PORTS.items()})
    return Client.from_env(**overrides)


def _store(args):
    """--store, else the services' store."""
    if args.store:
        return open_existing_store(args.store)
    with _client(args) as client:
        info = client.server_info()  # ServiceUnavailable: names `i2x up`, I2X_ENDPOINT
    if info.store_url.startswith("s3://") and info.store_endpoint:
        os.environ.setdefault("I2X_S3_ENDPOINT", info.store_endpoint)
        os.environ.setdefault("I2X_S3_SECURE", "true" if info.store_secure else "false")
    return open_existing_store(info.store_url)


def _service_flags(p) -> None:
    p.add_argument("--endpoint", help="host of the four services on their default ports (env I2X_ENDPOINT)")
    p.add_argument("--token", help="bearer token (env I2X_API_TOKEN)")


def add_runs_command(sub) -> None:
    p = sub.add_parser("runs", help="list, show or delete runs of a store")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, text in (("list", "the runs and how far each got"), ("show", "one run's settings and stages"),
                       ("delete", "remove every artifact of a run (asks first unless --yes)")):
        v = verbs.add_parser(verb, help=text)
        if verb != "list":
            v.add_argument("run_id")
        v.add_argument("--store", help="a results folder or s3:// URL (default: the store the services report)")
        _service_flags(v)
        if verb == "delete":
            v.add_argument("--yes", "-y", action="store_true", help="do not ask")
        else:
            v.add_argument("--json", action="store_true", help="JSON on stdout")
        v.set_defaults(func=globals()[f"cmd_runs_{verb}"])


def _run_summary(store, run_id: str) -> dict:
    from i2x.engine import stages

    run = stages.get_run(store, run_id)
    done = [name for name, key in STAGE_KEYS if store.exists(stages.run_key(run_id, key))]
    index_key = stages.run_key(run_id, "checkpoints", "index.json")
    accuracy = store.get_json(index_key).get("accuracy") if store.exists(index_key) else None
    return {"run_id": run_id, "created": run.get("created"), "version": run.get("i2x_version"),
            "model": run["model"], "dataset": run["dataset"], "train": run.get("train"),
            "classes": run.get("classes"), "steps": [c["step"] for c in run["checkpoints"]],
            "accuracy": accuracy, "stages": done}


def cmd_runs_list(args) -> int:
    from i2x.engine import stages

    store = _store(args)
    runs = [_run_summary(store, r) for r in stages.list_runs(store)]
    if args.json:
        print(json.dumps(runs, indent=2))
        return 0
    if not runs:
        print(f"no runs in {store.url}")
        return 0
    print(f"{'RUN':<24} {'MODEL':<12} {'DATASET':<12} {'CKPTS':>5} {'ACC':>7}  STAGES")
    for r in runs:
        acc = f"{100 * r['accuracy']:.2f}%" if r["accuracy"] is not None else "-"
        print(f"{r['run_id']:<24} {r['model']['arch']:<12} {r['dataset']['kind']:<12} {len(r['steps']):>5} "
              f"{acc:>7}  {', '.join(r['stages']) or 'created'}")
    return 0


def cmd_runs_show(args) -> int:
    store = _store(args)
    r = _run_summary(store, args.run_id)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"run {r['run_id']} in {store.url}" + (f" (made by I2X {r['version']})" if r["version"] else ""))
    print(f"  model    {json.dumps(r['model'])}")
    print(f"  dataset  {json.dumps(r['dataset'])}")
    print(f"  train    {json.dumps(r['train'])}")
    print(f"  steps    {r['steps']}" + (f"  final test accuracy {100 * r['accuracy']:.2f}%"
                                         if r["accuracy"] is not None else ""))
    print(f"  stages   {', '.join(r['stages']) or 'created only'}")
    return 0


def _run_keys(store, run_id: str) -> list[str]:
    """Every object of the run: its folder, its uploads and the job records about it."""
    keys = store.list(f"runs/{run_id}/") + store.list(f"uploads/{run_id}/")
    for key in store.list("jobs/"):
        if key.endswith(".json"):
            try:
                if store.get_json(key).get("run_id") == run_id:
                    keys.append(key)
                    keys.append(key[:-len(".json")] + ".cancel")
            except Exception:  # noqa: BLE001  (a record being written: not this run's concern)
                continue
    return [k for k in dict.fromkeys(keys) if store.exists(k)]


def cmd_runs_delete(args) -> int:
    from i2x.engine import stages

    store = _store(args)
    stages.get_run(store, args.run_id)  # NotFound names the run and the store
    active = [j for j in _safe_jobs(args, args.run_id) if not j.finished]
    if active:
        raise UserError(f"run {args.run_id!r} has unfinished jobs ({', '.join(j.job_id for j in active)}): "
                        "cancel them first with `i2x jobs cancel JOB_ID`")
    keys = _run_keys(store, args.run_id)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError(f"this deletes {len(keys)} objects of run {args.run_id!r}: pass --yes to confirm")
        answer = input(f"delete run {args.run_id!r}: {len(keys)} objects in {store.url}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    for key in keys:
        store.delete(key)
    if hasattr(store, "root"):  # a local store: no empty folders left behind
        for folder in (Path(store.root) / "runs" / args.run_id, Path(store.root) / "uploads" / args.run_id):
            for sub in sorted(folder.glob("**/"), key=lambda p: -len(p.parts)) if folder.is_dir() else []:
                try:
                    sub.rmdir()
                except OSError:
                    pass
    print(f"deleted run {args.run_id!r}: {len(keys)} objects")
    return 0


def _safe_jobs(args, run_id: str):
    """The services' jobs of the run, or none when no service answers (a store without services)."""
    from i2x.client import ServiceUnavailable

    try:
        with _client(args) as client:
            client.server_info()
            return client.list_jobs(run_id=run_id)
    except ServiceUnavailable:
        return []


def add_jobs_command(sub) -> None:
    from i2x import config

    p = sub.add_parser("jobs", help="list, show or cancel the services' jobs")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, text in (("list", "jobs of every service (or one)"), ("show", "one job"),
                       ("cancel", "ask a job to stop")):
        v = verbs.add_parser(verb, help=text)
        if verb != "list":
            v.add_argument("job_id")
        else:
            v.add_argument("--run", dest="run_id", help="only this run's jobs")
        v.add_argument("--service", choices=config.SERVICES, help="only this service")
        _service_flags(v)
        if verb != "cancel":
            v.add_argument("--json", action="store_true", help="JSON on stdout")
        v.set_defaults(func=globals()[f"cmd_jobs_{verb}"])


def _job_dict(job) -> dict:
    return {k: getattr(job, k) for k in ("job_id", "service", "kind", "run_id", "state", "done", "total",
                                         "message", "error", "error_code")}


def cmd_jobs_list(args) -> int:
    with _client(args) as client:
        client.server_info(args.service or "training")
        jobs = client.list_jobs(args.service, run_id=args.run_id)
    if args.json:
        print(json.dumps([_job_dict(j) for j in jobs], indent=2))
        return 0
    if not jobs:
        print("no jobs")
        return 0
    print(f"{'JOB':<34} {'SERVICE':<15} {'KIND':<12} {'RUN':<20} {'STATE':<10} PROGRESS")
    for j in jobs:
        print(f"{j.job_id:<34} {j.service:<15} {j.kind:<12} {j.run_id:<20} {j.state:<10} {j.done}/{j.total}")
    return 0


def cmd_jobs_show(args) -> int:
    with _client(args) as client:
        client.server_info(args.service or "training")
        info = client.job(args.job_id, args.service).info
    if args.json:
        print(json.dumps({**_job_dict(info), "params": info.params, "result": info.result}, indent=2))
        return 0
    for key, value in _job_dict(info).items():
        if value not in ("", None):
            print(f"{key:<11} {value}")
    return 0


def cmd_jobs_cancel(args) -> int:
    with _client(args) as client:
        client.server_info(args.service or "training")
        info = client.job(args.job_id, args.service).cancel()
    print(f"job {info.job_id}: {info.state}")
    return 0
