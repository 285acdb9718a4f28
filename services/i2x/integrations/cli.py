"""The integrations' part of the `i2x` command: `--from-mlflow` / `--mlflow` on `i2x analyze`, and
`i2x watch RUN` (i2x.cli calls these; the code stays here)."""

from __future__ import annotations

import os
import sys


def add_analyze_flags(p) -> None:
    g = p.add_argument_group("MLflow (needs the `mlflow` package: pip install 'i2x-explain[mlflow]')")
    g.add_argument("--from-mlflow", metavar="runs:/ID/PATH",
                   help="register the checkpoints this MLflow run logged under PATH (files named with their "
                        "step, *.safetensors / *.pt / *.pth) instead of training")
    g.add_argument("--mlflow", nargs="?", const="", default=None, metavar="TRACKING_URI",
                   help="when done, log the run (params, metrics, tags, explanation.json, report, figures) to "
                        "MLflow at TRACKING_URI (default: MLFLOW_TRACKING_URI)")
    g.add_argument("--mlflow-tracking-uri", help="tracking URI --from-mlflow reads (default: MLFLOW_TRACKING_URI)")
    g.add_argument("--mlflow-experiment", default=None, help="experiment --mlflow logs to (default: i2x)")


def mlflow_precheck(args, checkpoints: dict) -> None:
    """With --from-mlflow: refuse a bad URI, or one without checkpoints, before any service is
    contacted or anything is created (only MLflow is read here)."""
    uri = getattr(args, "from_mlflow", None)
    if not uri:
        return
    if checkpoints:
        sys.exit("i2x analyze: give --checkpoint or --from-mlflow, not both")
    from i2x.core.errors import I2XError

    try:
        from i2x.integrations.mlflow import find_checkpoints

        find_checkpoints(uri, tracking_uri=args.mlflow_tracking_uri)
    except ImportError:
        sys.exit("i2x analyze: --from-mlflow needs the mlflow package: pip install 'i2x-explain[mlflow]'")
    except I2XError as exc:
        sys.exit(f"i2x analyze: --from-mlflow {uri}: {exc.message}")


def mlflow_checkpoints(args, client, checkpoints: dict) -> dict:
    """With --from-mlflow: the MLflow run's checkpoints copied into the store, {step: key}."""
    uri = getattr(args, "from_mlflow", None)
    if not uri:
        return checkpoints
    if checkpoints:
        sys.exit("i2x analyze: give --checkpoint or --from-mlflow, not both")
    from i2x.core.errors import I2XError

    try:
        found = client.checkpoints_from_mlflow(args.run_id, uri, tracking_uri=args.mlflow_tracking_uri)
    except ImportError:
        sys.exit("i2x analyze: --from-mlflow needs the mlflow package: pip install 'i2x-explain[mlflow]'")
    except I2XError as exc:
        sys.exit(f"i2x analyze: --from-mlflow {uri}: {exc.message}")
    print(f"from MLflow: {len(found)} checkpoints (steps {', '.join(map(str, found))}) copied into the store",
          flush=True)
    return found


def mlflow_export(args, client, run_id: str) -> None:
    """With --mlflow: log the analysed run to MLflow. A failure is a warning: the analysis stands."""
    if getattr(args, "mlflow", None) is None:
        return
    from i2x import config
    from i2x.core.errors import I2XError
    from i2x.integrations.mlflow import export_run

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # our retries, not minutes of MLflow's
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        done = export_run(client.store, run_id, tracking_uri=args.mlflow or None, experiment=args.mlflow_experiment,
                          retries=int(config.get("I2X_MLFLOW_RETRIES")),
                          backoff=float(config.get("I2X_MLFLOW_BACKOFF_SECONDS")))
    except ImportError:
        print("i2x analyze: warning: --mlflow needs the mlflow package: pip install 'i2x-explain[mlflow]'",
              file=sys.stderr)
        return
    except I2XError as exc:
        print(f"i2x analyze: warning: not logged to MLflow: {exc.message}", file=sys.stderr)
        return
    print(f"mlflow: run {done['run_id']} (experiment {done['experiment_id']}), artifacts {done['artifact_uri']}")


def add_watch_command(sub) -> None:
    from i2x.integrations.live import add_watch_command as add

    add(sub)
