"""Kubeflow Pipelines v2 with the real kfp: the committed YAML is what the compiler makes now, the
graph passes only run ids and store URIs, and the pipeline runs on kfp's local runner (each
component in a subprocess, through the real KFP executor) against the four services on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import start_services

pytest.importorskip("kfp")

from i2x.integrations import kfp as i2x_kfp  # noqa: E402

COMMITTED = Path(__file__).resolve().parents[2] / "deploy" / "kfp" / "i2x-pipeline.yaml"


def test_committed_pipeline_yaml_is_what_the_compiler_makes(tmp_path):
    fresh = i2x_kfp.compile_pipeline(str(tmp_path / "pipeline.yaml"))
    assert Path(fresh).read_text() == COMMITTED.read_text(), (
        "deploy/kfp/i2x-pipeline.yaml is stale: run `python -m i2x.integrations.kfp deploy/kfp/i2x-pipeline.yaml`")


def test_steps_pass_run_ids_and_store_uris_never_arrays():
    spec = yaml.safe_load(COMMITTED.read_text())
    components = spec["components"]
    stages = {"register", "interpret", "prototypes", "clusters", "explain", "finetune", "report"}
    assert {name.removeprefix("comp-") for name in components} == stages | {"importer"}
    for name, component in components.items():
        inputs = component.get("inputDefinitions", {})
        assert "artifacts" not in inputs, f"{name} takes an artifact: steps pass strings"
        assert {p["parameterType"] for p in inputs.get("parameters", {}).values()} <= {"STRING"}, name
    tasks = spec["root"]["dag"]["tasks"]
    assert sorted(tasks["explain"]["dependentTasks"]) == ["clusters", "prototypes", "register"]
    assert tasks["prototypes"]["dependentTasks"] == ["register"]  # beside the interpretation, not after it
    report_uri = tasks["importer"]["inputs"]["parameters"]["uri"]["taskOutputParameter"]
    assert report_uri == {"outputParameterKey": "store_uri", "producerTask": "report"}
    assert components["comp-importer"]["outputDefinitions"]["artifacts"]["artifact"]["artifactType"][
        "schemaTitle"] == "system.HTML"


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")  # the image is our venv here
def test_pipeline_runs_on_the_local_runner_against_the_services(tmp_path, tiny_dataset, ray_local, monkeypatch):
    from kfp import local

    from i2x.storage import LocalStore

    store = LocalStore(tmp_path / "store")
    services = start_services(store)
    monkeypatch.chdir(tmp_path)
    try:
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
        addresses = json.dumps({name: services.address(name) for name in services.ports})
        task = i2x_kfp.i2x_pipeline(
            run_id="kfp", services=addresses, store=store.root.as_uri(),
            model_json='{"arch": "small_cnn", "num_classes": 3}',
            dataset_json=json.dumps({"kind": "npz", "root": tiny_dataset}), train_json='{"preset": "tiny"}',
            prototypes_json='{"n_prototypes": 4, "n_components": 4}', clusters_json='{"min_cluster_size": 3}',
            explain_json='{"pair": [1, 2]}')
    finally:
        services.stop()
    assert task is not None
    # every stage's artifacts are in the services' store, under the URIs the components passed on
    for key in ("checkpoints/index.json", "interpretation/index.json", "clustering/prototypes.npz",
                "explanation/explanation.json", "report.html"):
        assert store.exists(f"runs/kfp/{key}"), key
    summaries = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "kfp").rglob("summary")}
    assert summaries["explain"]["store_uri"] == f"{store.root.as_uri()}/runs/kfp/explanation/explanation.json"
    assert summaries["explain"]["pair"] == [1, 2]
    assert summaries["report"]["store_uri"] == f"{store.root.as_uri()}/runs/kfp/report.html"
    assert summaries["register"]["steps"] == [2, 4, 6]  # tiny preset: a checkpoint every 2 of 6 iterations
