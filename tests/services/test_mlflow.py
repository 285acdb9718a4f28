"""MLflow both ways with the real mlflow package: a local file tracking URI, `mlflow server` on
loopback when it starts here, the real training service for the import."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import client_for

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

from i2x.core.errors import InvalidArgument, NotFound  # noqa: E402
from i2x.integrations import mlflow as i2x_mlflow  # noqa: E402

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def file_tracking(tmp_path, monkeypatch):
    # MLflow 3 keeps the file backend in maintenance mode behind this switch; it is what "local file" means.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return (tmp_path / "mlruns").as_uri()


def _explained_run(store, run_id="ex", lam=0.5):
    """A run's store files written by hand, with numbers chosen so every exported value is known."""
    store.put_json(f"runs/{run_id}/run.json", {"run_id": run_id, "model": {"arch": "small_cnn"},
                                               "dataset": {"kind": "npz"}, "classes": ["a", "b", "c"]})
    store.put_json(f"runs/{run_id}/explanation/explanation.json", {
        "n_prototypes": 4, "parameters": {"lam": lam, "tau": 0.25, "n_prototypes": 4},
        "most_confused_pair": {"a": 1, "b": 2, "names": ["b", "c"], "a_to_b": 3, "b_to_a": 5},
        "analysed_pair": {"a": 0, "b": 2, "names": ["a", "c"]},
        "uncertain_prototype": 3,
        "warnings": [{"code": "few_samples", "message": "class c has 2 samples"}]})
    # 9 of 12 on the diagonal: accuracy 0.75
    store.put_npz(f"runs/{run_id}/evaluation/final.npz",
                  confusion=np.array([[4, 0, 0], [0, 3, 1], [0, 2, 2]], dtype=np.int64))
    store.put_json(f"runs/{run_id}/finetune/table.json", {"rows": [
        {"protocol": "full->full", "accuracy": {"mean": 0.8, "std": 0.1}, "a_to_b": {"mean": 2.0, "std": 1.0},
         "b_to_a": {"mean": 4.0, "std": 0.0}, "sum": {"mean": 6.0, "std": 1.0}},
        {"protocol": "curated->full", "accuracy": {"mean": 0.9, "std": 0.0}, "a_to_b": {"mean": 1.0, "std": 0.0},
         "b_to_a": {"mean": 2.0, "std": 0.5}, "sum": {"mean": 3.0, "std": 0.5}}],
        "tests": [{"compared": ["curated->full", "full->full"], "metric": "sum", "t": -2.5, "p": 0.04, "df": 4.0},
                  {"compared": ["curated->full", "full->full"], "metric": "accuracy", "t": None, "p": None}]})
    store.put_text(f"runs/{run_id}/finetune/table.md", "| protocol |\n")
    store.put_text(f"runs/{run_id}/report.html", "<html>report</html>")
    store.put_bytes(f"runs/{run_id}/figures/pair.png", b"\x89PNG fake")


def _artifacts(client, run_id, path=""):
    out = []
    for item in client.list_artifacts(run_id, path or None):
        out += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return sorted(out)


def _check_export(tracking_uri, store, done):
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(done["run_id"])
    assert run.data.params == {"model": "small_cnn", "dataset": "npz", "n_prototypes": "4", "lambda": "0.5",
                               "tau": "0.25"}
    metrics = run.data.metrics
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert (metrics["pair_a_to_b"], metrics["pair_b_to_a"], metrics["pair_confusions"]) == (3, 5, 8)
    assert metrics["table1/curated_to_full/sum_mean"] == 3.0 and metrics["table1/full_to_full/accuracy_std"] == 0.1
    assert (metrics["table1/welch/sum_t"], metrics["table1/welch/sum_p"]) == (-2.5, 0.04)
    # 2 protocols x 4 columns x mean, std; the Welch test with a p (accuracy's could not be computed)
    assert len([m for m in metrics if m.startswith("table1/")]) == 16 + 2
    tags = run.data.tags
    assert tags["i2x.most_confused_pair"] == "b / c" and tags["i2x.uncertain_prototype"] == "P-3"
    assert tags["i2x.analysed_pair"] == "a / c"
    assert tags["i2x.warnings"] == "few_samples: class c has 2 samples" and tags["i2x.run_id"] == "ex"
    assert _artifacts(client, done["run_id"]) == ["i2x/explanation.json", "i2x/figures/pair.png", "i2x/report.html",
                                                  "i2x/table1.md"]
    local = client.download_artifacts(done["run_id"], "i2x/explanation.json")
    assert json.loads(Path(local).read_text()) == store.get_json("runs/ex/explanation/explanation.json")
    return client


def test_export_logs_params_metrics_tags_and_artifacts(tmp_path, file_tracking):
    from i2x.storage import LocalStore

    store = LocalStore(tmp_path / "store")
    _explained_run(store)
    done = i2x_mlflow.export_run(store, "ex", tracking_uri=file_tracking, experiment="exp")
    client = _check_export(file_tracking, store, done)
    assert client.get_experiment(done["experiment_id"]).name == "exp"
    # a second export (the report after the explanation) adds to the same MLflow run ...
    assert i2x_mlflow.export_run(store, "ex", tracking_uri=file_tracking, experiment="exp")["run_id"] == done["run_id"]
    # ... but a redone explanation with another lambda is a new MLflow run (params are immutable there)
    _explained_run(store, lam=2.0)
    again = i2x_mlflow.export_run(store, "ex", tracking_uri=file_tracking, experiment="exp")
    assert again["run_id"] != done["run_id"] and client.get_run(again["run_id"]).data.params["lambda"] == "2.0"
    with pytest.raises(InvalidArgument, match="no explanation yet"):
        store.put_json("runs/bare/run.json", {"run_id": "bare"})
        i2x_mlflow.export_run(store, "bare", tracking_uri=file_tracking)


def test_export_reads_an_s3_store_through_the_sdk_reader(s3_server, file_tracking):
    """The SDK's S3 reader (exists, list) serves the export as the services' store does."""
    from s3server import ACCESS_KEY, SECRET_KEY

    from i2x.client.store import S3Reader

    store = s3_server.store(prefix="pre")
    _explained_run(store)
    reader = S3Reader(store.url, endpoint=s3_server.endpoint, secure=False, access_key=ACCESS_KEY,
                      secret_key=SECRET_KEY, region="us-east-1")
    assert reader.exists("runs/ex/report.html") and not reader.exists("runs/ex/absent.json")
    assert reader.list("runs/ex/figures/") == ["runs/ex/figures/pair.png"]
    from i2x.client import Client

    with Client(store=reader) as client:  # the SDK's entry point
        done = client.export_to_mlflow("ex", tracking_uri=file_tracking)
    _check_export(file_tracking, store, done)
    assert store.get_json("runs/ex/mlflow.json")["run_id"] == done["run_id"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_mlflow_is_a_warning_not_a_failed_job(tmp_path, monkeypatch):
    from i2x.storage import LocalStore

    store = LocalStore(tmp_path / "store")
    _explained_run(store)
    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("I2X_MLFLOW_RETRIES", "1")
    monkeypatch.setenv("I2X_MLFLOW_BACKOFF_SECONDS", "0.05")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    job = i2x_mlflow.with_export(store, "ex", lambda ctx: {"key": "runs/ex/explanation/explanation.json"})
    started = time.monotonic()
    result = job(None)
    assert time.monotonic() - started < 60
    assert result["key"] == "runs/ex/explanation/explanation.json"  # the job's own result stands
    [warning] = result["warnings"]
    assert warning["code"] == "mlflow_export_failed"
    assert uri in warning["message"] and "after 2 attempts" in warning["message"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    assert i2x_mlflow.with_export(store, "ex", lambda ctx: {"x": 1})(None) == {"x": 1}  # off: nothing added


def test_step_of_names():
    assert [i2x_mlflow.step_of(n) for n in ("step-000040.safetensors", "epoch=1-step=120.pt", "ckpt7.pth",
                                            "c/step_3.safetensors", "final.pt")] == [40, 120, 7, 3, None]


def _small_cnn_states(n: int):
    import torch

    from i2x.models import ModelSpec, build_model

    states = []
    for seed in range(n):
        torch.manual_seed(seed)
        states.append(build_model(ModelSpec(arch="small_cnn", num_classes=3)).state_dict())
    return states


@pytest.mark.slow
def test_import_registers_the_checkpoints_an_mlflow_run_logged(tmp_path, file_tracking, tiny_dataset):
    from i2x.client import open_reader
    from i2x.storage import LocalStore

    tracking = MlflowClient(tracking_uri=file_tracking)
    mlflow_run = tracking.create_run(tracking.create_experiment("train")).info.run_id
    for step, state in zip((10, 20, 30), _small_cnn_states(3)):
        uri = i2x_mlflow.log_checkpoint(state, step, mlflow_run_id=mlflow_run, tracking_uri=file_tracking)
    assert uri == f"runs:/{mlflow_run}/checkpoints"
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint")
    tracking.log_artifact(mlflow_run, str(notes), "docs")

    store = LocalStore(tmp_path / "store")
    from i2x.serving import ServicesInThread

    services = ServicesInThread(("training",), store)  # registration needs no Ray
    try:
        with client_for(services, open_reader(str(store.root))) as client:
            client.create_run("from-mlflow", model={"arch": "small_cnn", "num_classes": 3},
                              dataset={"kind": "npz", "root": tiny_dataset})
            info = client.register_from_mlflow("from-mlflow", uri, tracking_uri=file_tracking).result(timeout=90)
            assert info["steps"] == [10, 20, 30]
            run = client.get_run("from-mlflow")
            assert [c["step"] for c in run.checkpoints] == [10, 20, 30]
            assert store.list("uploads/from-mlflow/mlflow/") == [
                f"uploads/from-mlflow/mlflow/step-{s:06d}.safetensors" for s in (10, 20, 30)]

            # what is wrong is named, with what was found instead
            with pytest.raises(NotFound, match=r"holds docs/notes.txt but no checkpoint file"):
                client.checkpoints_from_mlflow("x", f"runs:/{mlflow_run}/docs", tracking_uri=file_tracking)
            with pytest.raises(NotFound, match=r"has no artifact 'weights'; at its top level it has checkpoints, docs"):
                client.checkpoints_from_mlflow("x", f"runs:/{mlflow_run}/weights", tracking_uri=file_tracking)
            with pytest.raises(NotFound, match="no MLflow run 'deadbeef'"):
                client.checkpoints_from_mlflow("x", "runs:/deadbeef/checkpoints", tracking_uri=file_tracking)
            with pytest.raises(InvalidArgument, match="is not an MLflow run URI"):
                client.checkpoints_from_mlflow("x", "s3://bucket/ckpt", tracking_uri=file_tracking)
    finally:
        services.stop()


def test_cli_from_mlflow_names_the_missing_run(tmp_path, file_tracking, capsys):
    from i2x.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["analyze", "r", "--store", str(tmp_path / "store"), "--from-mlflow", "runs:/deadbeef/ckpt",
              "--mlflow-tracking-uri", file_tracking])
    assert str(exited.value.code) == f"i2x analyze: --from-mlflow runs:/deadbeef/ckpt: no MLflow run 'deadbeef' at {file_tracking}"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on loopback (sqlite backend, local artifacts), or a skip if it does not start."""
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    if exe is None:
        pytest.skip("no mlflow executable")
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _closed_port()
    # The file backend starts in half the time of sqlite (no migrations); artifacts are proxied.
    process = subprocess.Popen([exe, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                "--backend-store-uri", (root / "store").as_uri(),
                                "--artifacts-destination", str(root / "artifacts")],
                               env=dict(os.environ, MLFLOW_ALLOW_FILE_STORE="true"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.skip("mlflow server did not start here")
    yield url
    os.killpg(process.pid, signal.SIGTERM)  # the server and its uvicorn worker
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.slow
def test_export_to_an_mlflow_server_on_loopback(tmp_path, mlflow_server):
    from i2x.storage import LocalStore

    store = LocalStore(tmp_path / "store")
    _explained_run(store)
    done = i2x_mlflow.export_run(store, "ex", tracking_uri=mlflow_server)
    assert done["artifact_uri"].startswith("mlflow-artifacts:")  # proxied through the server
    _check_export(mlflow_server, store, done)


def test_cli_lines_of_from_mlflow_and_mlflow(tmp_path, file_tracking, capsys, monkeypatch):
    """What `i2x analyze --from-mlflow ... --mlflow` prints around the pipeline, on real MLflow runs."""
    from i2x.cli import build_parser
    from i2x.client import Client
    from i2x.integrations.cli import mlflow_checkpoints, mlflow_export
    from i2x.storage import LocalStore

    tracking = MlflowClient(tracking_uri=file_tracking)
    source = tracking.create_run(tracking.create_experiment("train")).info.run_id
    for step, state in zip((5, 10), _small_cnn_states(2)):
        i2x_mlflow.log_checkpoint(state, step, mlflow_run_id=source, tracking_uri=file_tracking)
    store = LocalStore(tmp_path / "store")
    _explained_run(store)
    args = build_parser().parse_args(["analyze", "ex", "--from-mlflow", f"runs:/{source}/checkpoints",
                                      "--mlflow-tracking-uri", file_tracking, "--mlflow", file_tracking])
    with Client(store=str(store.root)) as client:
        keys = mlflow_checkpoints(args, client, {})
        assert keys == {5: "uploads/ex/mlflow/step-000005.safetensors", 10: "uploads/ex/mlflow/step-000010.safetensors"}
        mlflow_export(args, client, "ex")
    memo = store.get_json("runs/ex/mlflow.json")
    run = tracking.get_run(memo["run_id"])
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["from MLflow: 2 checkpoints (steps 5, 10) copied into the store",
                     f"mlflow: run {memo['run_id']} (experiment {memo['experiment_id']}), artifacts {run.info.artifact_uri}"]
    # an unreachable server: a warning on stderr, and the command goes on
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("I2X_MLFLOW_RETRIES", "0")
    args = build_parser().parse_args(["analyze", "ex", "--mlflow", f"http://127.0.0.1:{_closed_port()}"])
    with Client(store=str(store.root)) as client:
        mlflow_export(args, client, "ex")
    err = capsys.readouterr().err
    assert err.startswith(f"i2x analyze: warning: not logged to MLflow: MLflow at {args.mlflow} failed to open a run "
                          "after 1 attempt: ")
