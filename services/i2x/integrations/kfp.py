"""Kubeflow Pipelines v2: one component per stage, and the pipeline built from them.

Each component calls the running I2X services through the SDK and passes on only the run id
and store URIs, never arrays: the services read and write the arrays in their store. Each writes
a small JSON summary (keys, URIs, counts) as its output artifact, with the store URI of what the
stage wrote in the artifact's metadata (`store_uri`); the report's store URI is imported as an
HTML artifact (dsl.importer), so the KFP UI links to the report where the services wrote it.

    python -m i2x.integrations.kfp deploy/kfp/i2x-pipeline.yaml     # compile (offline)

The compiled YAML is committed in deploy/kfp/ (a test recompiles and compares). The step logic
(i2x.integrations.kfp_steps.run_step) is plain Python over the SDK, without kfp: a component
imports only that, so it runs (and is tested) without a cluster.
docs/KUBEFLOW.md has the commands a KFP user runs.
"""

# No `from __future__ import annotations`: KFP reads the components' annotations as types.
import sys
from typing import NamedTuple

from kfp import compiler, dsl
from kfp.dsl import HTML, Artifact, Metrics, Output

# The image of the services (deploy/docker/Dockerfile) has the SDK; KFP adds its own package.
BASE_IMAGE = "i2x/services:0.1.0"
# The Services of deploy/k8s in namespace i2x; {service} and {port} are filled in per service.
SERVICES = "i2x-{service}.i2x.svc.cluster.local:{port}"
STORE = "s3://i2x"


# ---------------------------------------------------------------- the components

def _component(func):
    return dsl.component(func, base_image=BASE_IMAGE)


@_component
def register(run_id: str, services: str, store: str, model_json: str, dataset_json: str, train_json: str,
             checkpoints_json: str, summary: Output[Artifact]) -> NamedTuple("StepOutput", run_id=str, store_uri=str):
    """Create the run, then train it or register checkpoints already in the store ({step: key})."""
    import json

    from i2x.integrations.kfp_steps import run_step

    out = run_step("register", run_id, services, store, {
        "model": json.loads(model_json or "{}"), "dataset": json.loads(dataset_json or "{}"),
        "train": json.loads(train_json or "{}"), "checkpoints": json.loads(checkpoints_json or "{}")})
    summary.metadata.update(out)
    with open(summary.path, "w") as f:
        json.dump(out, f)
    return (out["run_id"], out["store_uri"])


@_component
def interpret(run_id: str, services: str, store: str, params_json: str,
              summary: Output[Artifact]) -> NamedTuple("StepOutput", run_id=str, store_uri=str):
    """Grad-CAM of every checkpoint on the explanation set (the Ray fan-out of the interpretation service)."""
    import json

    from i2x.integrations.kfp_steps import run_step

    out = run_step("interpret", run_id, services, store, json.loads(params_json or "{}"))
    summary.metadata.update(out)
    with open(summary.path, "w") as f:
        json.dump(out, f)
    return (out["run_id"], out["store_uri"])


@_component
def prototypes(run_id: str, services: str, store: str, params_json: str,
               summary: Output[Artifact]) -> NamedTuple("StepOutput", run_id=str, store_uri=str):
    """Abstract prototypes (PCA + KMeans) of the final checkpoint's features."""
    import json

    from i2x.integrations.kfp_steps import run_step

    out = run_step("prototypes", run_id, services, store, json.loads(params_json or "{}"))
    summary.metadata.update(out)
    with open(summary.path, "w") as f:
        json.dump(out, f)
    return (out["run_id"], out["store_uri"])


@_component
def clusters(run_id: str, services: str, store: str, params_json: str, interpreted_uri: str,
             summary: Output[Artifact]) -> NamedTuple("StepOutput", run_id=str, store_uri=str):
    """HDBSCAN of the confidence changes (after the interpretation, whose index is interpreted_uri)."""
    import json

    from i2x.integrations.kfp_steps import run_step

    out = run_step("clusters", run_id, services, store, json.loads(params_json or "{}"))
    summary.metadata.update({**out, "interpretation": interpreted_uri})
    with open(summary.path, "w") as f:
        json.dump(out, f)
    return (out["run_id"], out["store_uri"])


@_component
def explain(run_id: str, services: str, store: str, params_json: str, prototypes_uri: str, clusters_uri: str,
            summary: Output[Artifact]) -> NamedTuple("StepOutput", run_id=str, store_uri=str):
    """The structured explanation (Eq. 4, 6-8): explanation.json in the store."""
    import json

    from i2x.integrations.kfp_steps import run_step

    out = run_step("explain", run_id, services, store, json.loads(params_json or "{}"))
    summary.metadata.update({**out, "prototypes": prototypes_uri, "clusters": clusters_uri})
    with open(summary.path, "w") as f:
        json.dump(out, f)
    return (out["run_id"], out["store_uri"])


@_component
def finetune(run_id: str, services: str, store: str, params_json: str, explanation_uri: str,
             table: Output[Metrics]) -> NamedTuple("StepOutput", run_id=str, store_uri=str):
    """Curation and the fine-tuning protocols (Table 1); skipped when params_json has no repeats >= 1."""
    import json

    from i2x.integrations.kfp_steps import run_step

    out = run_step("finetune", run_id, services, store, json.loads(params_json or "{}"))
    for row in out["rows"]:
        protocol = row["protocol"].replace("->", "_to_")
        table.log_metric(f"{protocol}_accuracy", row["accuracy"])
        table.log_metric(f"{protocol}_confusions", row["sum"])
    for test in out.get("tests", []):  # a p-value beside the means, so no one reads noise as a result
        if test["p"] is not None:
            table.log_metric(f"welch_{test['metric']}_p", test["p"])
    table.metadata.update({"store_uri": out["store_uri"], "explanation": explanation_uri,
                           "skipped": out["skipped"], "tests": [t["text"] for t in out.get("tests", [])]})
    return (out["run_id"], out["store_uri"])


@_component
def report(run_id: str, services: str, store: str, after_uri: str,
           summary: Output[Artifact]) -> NamedTuple("StepOutput", run_id=str, store_uri=str):
    """The self-contained HTML report, built by the explanation service into the store."""
    import json

    from i2x.integrations.kfp_steps import run_step

    out = run_step("report", run_id, services, store)
    summary.metadata.update({**out, "after": after_uri})
    with open(summary.path, "w") as f:
        json.dump(out, f)
    return (out["run_id"], out["store_uri"])


@dsl.pipeline(name="i2x-explain", description="I2X: train (or register checkpoints), interpret, prototypes, "
                                               "clusters, explain, fine-tune and report, through the I2X services")
def i2x_pipeline(run_id: str, services: str = SERVICES, store: str = STORE,
                 model_json: str = '{"arch": "small_cnn", "num_classes": 10}', dataset_json: str = '{"kind": "mnist5k"}',
                 train_json: str = '{"preset": "demo"}', checkpoints_json: str = "{}",
                 interpret_json: str = "{}", prototypes_json: str = '{"n_prototypes": 32}', clusters_json: str = "{}",
                 explain_json: str = "{}", finetune_json: str = '{"repeats": 0}'):
    run = register(run_id=run_id, services=services, store=store, model_json=model_json,
                   dataset_json=dataset_json, train_json=train_json, checkpoints_json=checkpoints_json)
    run_id_out = run.outputs["run_id"]
    interpreted = interpret(run_id=run_id_out, services=services, store=store, params_json=interpret_json)
    # Prototypes need only the final checkpoint: in parallel with the interpretation.
    protos = prototypes(run_id=run_id_out, services=services, store=store, params_json=prototypes_json)
    clustered = clusters(run_id=run_id_out, services=services, store=store, params_json=clusters_json,
                         interpreted_uri=interpreted.outputs["store_uri"])
    explained = explain(run_id=run_id_out, services=services, store=store, params_json=explain_json,
                        prototypes_uri=protos.outputs["store_uri"], clusters_uri=clustered.outputs["store_uri"])
    tuned = finetune(run_id=run_id_out, services=services, store=store, params_json=finetune_json,
                     explanation_uri=explained.outputs["store_uri"])
    reported = report(run_id=run_id_out, services=services, store=store, after_uri=tuned.outputs["store_uri"])
    # The report where the services wrote it, as an HTML artifact of the run: the KFP UI links to it.
    dsl.importer(artifact_uri=reported.outputs["store_uri"], artifact_class=HTML, reimport=False,
                 metadata={"run_id": run_id})
    for task in (run, interpreted, protos, clustered, explained, tuned, reported):
        task.set_caching_options(False)  # the services' store is the cache: every unit is skipped when done


def compile_pipeline(path: str) -> str:
    compiler.Compiler().compile(i2x_pipeline, path)
    return path


if __name__ == "__main__":
    print(compile_pipeline(sys.argv[1] if len(sys.argv) > 1 else "deploy/kfp/i2x-pipeline.yaml"))
