"""MLflow, both ways (the real `mlflow` package, imported on first use).

Export: `export_run(store, run_id)` logs a finished I2X run to an MLflow run: params (model,
dataset, lambda, tau, n_prototypes), metrics (final accuracy, the most confused pair's
confusions, Table 1's cells), tags (the pair, the uncertain prototype, the warnings) and
artifacts under `i2x/` (explanation.json, report.html, the figures, table1.md). Where it went is
remembered in `runs/<run_id>/mlflow.json`, so a later export (the report after the explanation)
adds to the same MLflow run.

Import: `import_checkpoints(store, run_id, "runs:/<mlflow run id>/<artifact path>")` copies the
checkpoint files that MLflow run logged into the I2X store (uploads/<run_id>/mlflow/...) and
returns {step: store key}, ready for RegisterCheckpoints (the gRPC route goes through the store).

`store` is anything with get_bytes / get_json / get_npz / put_bytes / exists / list: the
services' Store or the SDK's StoreReader. Tracking URI: the argument, else MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from i2x.core.errors import InvalidArgument, NotFound, Unavailable

ARTIFACT_DIR = "i2x"  # every I2X artifact goes under this path of the MLflow run
EXPERIMENT = "i2x"  # default experiment (I2X_MLFLOW_EXPERIMENT in the services)
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")
TAG_LIMIT = 5000  # MLflow's smallest tag-value limit across backends


def _key(run_id: str, *parts: str) -> str:
    return "/".join(("runs", run_id, *parts))


def _metric_name(text: str) -> str:
    """MLflow names allow [A-Za-z0-9_-. /]: 'curated->full' -> 'curated_to_full'."""
    return re.sub(r"[^A-Za-z0-9_./ -]", "_", text.replace("->", "_to_"))


# ---------------------------------------------------------------- what a run exports

@dataclass
class Export:
    """What export_run logs, read from the store (nothing of MLflow here)."""

    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)  # store key -> path in the MLflow run


def _exists(store, key: str) -> bool:
    return store.exists(key)


def collect(store, run_id: str) -> Export:
    """The params, metrics, tags and artifacts of a run that has its explanation."""
    explanation_key = _key(run_id, "explanation", "explanation.json")
    if not _exists(store, _key(run_id, "run.json")):
        raise NotFound(f"no run {run_id!r} in the store", field="run_id")
    if not _exists(store, explanation_key):
        raise InvalidArgument(f"run {run_id!r} has no explanation yet ({explanation_key}): export after the "
                              "explanation stage", field="run_id")
    record = store.get_json(_key(run_id, "run.json"))
    doc = store.get_json(explanation_key)
    parameters = doc.get("parameters") or {}
    out = Export()
    out.params = {"model": str(record.get("model", {}).get("arch", "")),
                  "dataset": str(record.get("dataset", {}).get("kind", "")),
                  "n_prototypes": str(doc.get("n_prototypes", parameters.get("n_prototypes", "")))}
    for name, source in (("lambda", "lam"), ("tau", "tau")):
        if source in parameters:
            out.params[name] = str(parameters[source])
    evaluation = _key(run_id, "evaluation", "final.npz")
    if _exists(store, evaluation):
        confusion = np.asarray(store.get_npz(evaluation)["confusion"], dtype=np.int64)
        if confusion.sum():
            out.metrics["accuracy"] = float(np.trace(confusion) / confusion.sum())
    pair = doc.get("most_confused_pair") or {}
    if "a" in pair:
        a_to_b, b_to_a = int(pair.get("a_to_b", 0)), int(pair.get("b_to_a", 0))
        out.metrics.update({"pair_a_to_b": a_to_b, "pair_b_to_a": b_to_a, "pair_confusions": a_to_b + b_to_a})
        names = pair.get("names") or [pair["a"], pair["b"]]
        out.tags["i2x.most_confused_pair"] = f"{names[0]} / {names[1]}"
    analysed = doc.get("analysed_pair") or {}
    if "a" in analysed and (analysed.get("a"), analysed.get("b")) != (pair.get("a"), pair.get("b")):
        names = analysed.get("names") or [analysed["a"], analysed["b"]]
        out.tags["i2x.analysed_pair"] = f"{names[0]} / {names[1]}"
    uncertain = doc.get("uncertain_prototype")
    out.tags["i2x.uncertain_prototype"] = "none" if uncertain is None else f"P-{int(uncertain)}"
    warnings = [w for w in doc.get("warnings") or [] if isinstance(w, dict)]
    out.tags["i2x.warnings"] = ("; ".join(f"{w.get('code', '')}: {w.get('message', '')}" for w in warnings)
                                or "none")[:TAG_LIMIT]
    out.tags["i2x.run_id"] = run_id
    table_key = _key(run_id, "finetune", "table.json")
    if _exists(store, table_key):
        table = store.get_json(table_key)
        for test in table.get("tests") or []:  # Welch's t, curated->full vs full->full; None: not computable
            if isinstance(test, dict) and test.get("p") is not None:
                for stat in ("t", "p"):
                    out.metrics[f"table1/welch/{_metric_name(str(test.get('metric', '')))}_{stat}"] = float(test[stat])
        for row in table.get("rows", []):
            protocol = _metric_name(str(row.get("protocol", "")))
            for column in ("accuracy", "a_to_b", "b_to_a", "sum"):
                cell = row.get(column)
                if isinstance(cell, dict):
                    for stat in ("mean", "std"):
                        if cell.get(stat) is not None:
                            out.metrics[f"table1/{protocol}/{column}_{stat}"] = float(cell[stat])
    for key, name in ((explanation_key, "explanation.json"), (_key(run_id, "report.html"), "report.html"),
                      (_key(run_id, "finetune", "table.md"), "table1.md")):
        if _exists(store, key):
            out.artifacts[key] = f"{ARTIFACT_DIR}/{name}"
    for key in sorted(store.list(_key(run_id, "figures") + "/")):
        if key.endswith(".png"):
            out.artifacts[key] = f"{ARTIFACT_DIR}/figures/{key.rsplit('/', 1)[-1]}"
    return out


# ---------------------------------------------------------------- export

def _client(tracking_uri: str | None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri or None)


def _retrying(what: str, tracking_uri: str, fn, retries: int, backoff: float):
    """fn() retried with exponential backoff; Unavailable naming the server after the last try."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except (InvalidArgument, NotFound):
            raise
        except Exception as exc:  # noqa: BLE001  # mlflow raises MlflowException or requests' errors
            if attempt == retries:
                detail = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                attempts = f"{retries + 1} attempt{'s' if retries else ''}"
                raise Unavailable(f"MLflow at {tracking_uri or 'the default tracking URI'} failed to {what} after "
                                  f"{attempts}: {detail}", field="mlflow") from None
            time.sleep(backoff * 2 ** attempt)


def export_run(store, run_id: str, *, tracking_uri: str | None = None, experiment: str | None = None,
               mlflow_run_id: str | None = None, run_name: str | None = None, retries: int = 3,
               backoff: float = 1.0) -> dict:
    """Log the run to MLflow; returns {"run_id", "experiment_id", "artifact_uri", "tracking_uri",
    "metrics", "artifacts"}. Logs into `mlflow_run_id`, else the MLflow run recorded in
    runs/<run_id>/mlflow.json by an earlier export to the same tracking URI (unless that run has
    other params: the explanation was redone, so a new MLflow run), else a new one.
    An unreachable server raises Unavailable after `retries` retries."""
    from mlflow.entities import Metric, Param, RunTag

    content = collect(store, run_id)
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    experiment = experiment or EXPERIMENT
    client = _client(tracking_uri)
    memo_key = _key(run_id, "mlflow.json")
    if mlflow_run_id is None and _exists(store, memo_key):
        memo = store.get_json(memo_key)
        if memo.get("tracking_uri") == tracking_uri:
            mlflow_run_id = memo.get("run_id")

    def open_run():
        if mlflow_run_id:
            try:
                existing = client.get_run(mlflow_run_id)
            except Exception as exc:  # noqa: BLE001
                if "RESOURCE_DOES_NOT_EXIST" not in str(exc) and "not found" not in str(exc).lower():
                    raise
                existing = None  # deleted in MLflow: start afresh
            if existing is not None:
                logged = existing.data.params
                if all(logged.get(k, v) == v for k, v in content.params.items()):
                    return existing
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        return client.create_run(experiment_id, run_name=run_name or run_id, tags={"i2x.run_id": run_id})

    run = _retrying("open a run", tracking_uri, open_run, retries, backoff)
    mlflow_id = run.info.run_id
    now = int(time.time() * 1000)
    _retrying("log params, metrics and tags", tracking_uri, lambda: client.log_batch(
        mlflow_id, metrics=[Metric(k, float(v), now, 0) for k, v in content.metrics.items()],
        params=[Param(k, v) for k, v in content.params.items()],
        tags=[RunTag(k, v) for k, v in content.tags.items()]), retries, backoff)
    with tempfile.TemporaryDirectory(prefix="i2x-mlflow-") as tmp:
        for key, target in content.artifacts.items():
            path = Path(tmp) / target
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(store.get_bytes(key))
        if content.artifacts:
            _retrying("log the artifacts", tracking_uri,
                      lambda: client.log_artifacts(mlflow_id, str(Path(tmp) / ARTIFACT_DIR), ARTIFACT_DIR),
                      retries, backoff)
    _retrying("finish the run", tracking_uri, lambda: client.set_terminated(mlflow_id), retries, backoff)
    store.put_bytes(memo_key, json.dumps({"tracking_uri": tracking_uri, "run_id": mlflow_id,
                                          "experiment_id": run.info.experiment_id}).encode())
    return {"run_id": mlflow_id, "experiment_id": run.info.experiment_id, "artifact_uri": run.info.artifact_uri,
            "tracking_uri": tracking_uri, "metrics": sorted(content.metrics), "artifacts": sorted(content.artifacts.values())}


def service_export(store, run_id: str) -> dict:
    """The explanation service's export after a job, when MLFLOW_TRACKING_URI is set: {"mlflow": ...}
    on success; {"warnings": [{code, message}]} when MLflow is unreachable (never a failed job)."""
    from i2x import config

    tracking_uri = config.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        return {}
    # One slow layer of retries (ours, with backoff), not MLflow's own minutes of them on top.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        return {"mlflow": export_run(store, run_id, tracking_uri=tracking_uri,
                                     experiment=config.get("I2X_MLFLOW_EXPERIMENT"),
                                     retries=int(config.get("I2X_MLFLOW_RETRIES")),
                                     backoff=float(config.get("I2X_MLFLOW_BACKOFF_SECONDS")))}
    except Exception as exc:  # noqa: BLE001  # whatever MLflow does, the analysis itself succeeded
        message = exc.message if isinstance(exc, Unavailable) else f"MLflow export failed: {exc}"
        return {"warnings": [{"code": "mlflow_export_failed", "message": message}]}


def with_export(store, run_id: str, job):
    """Wrap a job function: after it succeeds, export the run (service_export) into its result."""

    def run(ctx):
        result = dict(job(ctx) or {})
        extra = service_export(store, run_id)
        if extra.get("warnings"):
            result["warnings"] = list(result.get("warnings") or []) + extra.pop("warnings")
        result.update(extra)
        return result

    return run


# ---------------------------------------------------------------- import

def parse_uri(uri: str) -> tuple[str, str]:
    """'runs:/<run id>/<artifact path>' -> (run id, path); the path may be empty (the run's root)."""
    match = re.fullmatch(r"runs:/([0-9A-Za-z_-]+)(?:/(.*))?", uri or "")
    if not match:
        raise InvalidArgument(f"{uri!r} is not an MLflow run URI; give runs:/<run id>/<artifact path>, e.g. "
                              "runs:/0a1b2c.../checkpoints", field="from_mlflow")
    return match.group(1), (match.group(2) or "").strip("/")


def step_of(name: str) -> int | None:
    """The training step in a checkpoint's file name: 'step=40', 'step-000040', 'step_40', else the
    last number ('ckpt40.pt'); None without a number."""
    stem = name.rsplit("/", 1)[-1]
    for suffix in CHECKPOINT_SUFFIXES:
        stem = stem.removesuffix(suffix)
    match = re.search(r"step[=_-]?(\d+)", stem, re.IGNORECASE) or re.search(r"(\d+)(?!.*\d)", stem)
    return int(match.group(1)) if match else None


def _walk(client, run_id: str, path: str, depth: int = 3) -> list[str]:
    """Every file under `path` of an MLflow run (a few levels deep)."""
    files = []
    for item in client.list_artifacts(run_id, path or None):
        if item.is_dir:
            if depth > 0:
                files += _walk(client, run_id, item.path, depth - 1)
        else:
            files.append(item.path)
    return files


def find_checkpoints(uri: str, *, tracking_uri: str | None = None) -> dict[int, str]:
    """{step: artifact path} of the checkpoint files under `uri`; a clear error naming what was found
    when the run or the path does not exist, or holds no checkpoint."""
    mlflow_run, path = parse_uri(uri)
    client = _client(tracking_uri)
    where = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "the default tracking URI"
    try:
        client.get_run(mlflow_run)
    except Exception as exc:  # noqa: BLE001
        if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower():
            raise NotFound(f"no MLflow run {mlflow_run!r} at {where}", field="from_mlflow") from None
        raise Unavailable(f"MLflow at {where} could not be read: {str(exc).splitlines()[0][:300]}",
                          field="from_mlflow") from None
    files = _walk(client, mlflow_run, path)
    if not files and path:  # a single file, or nothing at all
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        siblings = [a.path for a in client.list_artifacts(mlflow_run, parent or None)]
        if path in siblings:
            files = [path]
        else:
            raise NotFound(f"MLflow run {mlflow_run!r} has no artifact {path!r}; at "
                           f"{parent or 'its top level'} it has {_names(siblings)}", field="from_mlflow")
    checkpoints = [f for f in files if f.lower().endswith(CHECKPOINT_SUFFIXES)]
    if not checkpoints:
        raise NotFound(f"{uri} holds {_names(files)} but no checkpoint file "
                       f"({', '.join('*' + s for s in CHECKPOINT_SUFFIXES)})", field="from_mlflow")
    steps: dict[int, str] = {}
    for name in sorted(checkpoints):
        step = step_of(name)
        if step is None:
            raise InvalidArgument(f"{name!r} in {uri} has no step in its name; name checkpoint files with their "
                                  "training step, e.g. step-000040.safetensors", field="from_mlflow")
        if step in steps:
            raise InvalidArgument(f"{steps[step]!r} and {name!r} in {uri} are both step {step}; give a path "
                                  "holding one checkpoint per step", field="from_mlflow")
        steps[step] = name
    return dict(sorted(steps.items()))


def _names(paths: list[str], limit: int = 10) -> str:
    if not paths:
        return "nothing"
    shown = ", ".join(sorted(paths)[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def import_checkpoints(store, run_id: str, uri: str, *, tracking_uri: str | None = None) -> dict[int, str]:
    """Copy the checkpoints of `uri` into the store (uploads/<run_id>/mlflow/step-<step><suffix>);
    returns {step: store key} for RegisterCheckpoints."""
    found = find_checkpoints(uri, tracking_uri=tracking_uri)
    mlflow_run, _ = parse_uri(uri)
    client = _client(tracking_uri)
    keys: dict[int, str] = {}
    with tempfile.TemporaryDirectory(prefix="i2x-mlflow-") as tmp:
        for step, artifact in found.items():
            local = client.download_artifacts(mlflow_run, artifact, tmp)
            suffix = next(s for s in CHECKPOINT_SUFFIXES if artifact.lower().endswith(s))
            key = f"uploads/{run_id}/mlflow/step-{step:06d}{suffix}"
            store.put_bytes(key, Path(local).read_bytes())
            keys[step] = key
    return keys


def log_checkpoint(state_dict, step: int, *, mlflow_run_id: str | None = None, artifact_path: str = "checkpoints",
                   tracking_uri: str | None = None) -> str:
    """Log a model.state_dict() as <artifact_path>/step-<step>.safetensors to an MLflow run (default:
    the active one), the layout --from-mlflow reads back. Returns the runs:/ URI of the folder."""
    from i2x.models import checkpoint_to_bytes

    data = checkpoint_to_bytes(state_dict, {"step": int(step)})
    with tempfile.TemporaryDirectory(prefix="i2x-mlflow-") as tmp:
        path = Path(tmp) / f"step-{int(step):06d}.safetensors"
        path.write_bytes(data)
        if mlflow_run_id is None:
            import mlflow

            mlflow.log_artifact(str(path), artifact_path)
            mlflow_run_id = mlflow.active_run().info.run_id
        else:
            _client(tracking_uri).log_artifact(mlflow_run_id, str(path), artifact_path)
    return f"runs:/{mlflow_run_id}/{artifact_path}"

