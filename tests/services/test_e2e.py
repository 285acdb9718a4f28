"""End to end through the SDK: real servers on loopback, a real local Ray, both store backends."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from conftest import client_for, start_services

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def stack(backend, ray_local):
    store, reader = backend
    services = start_services(store)
    with client_for(services, reader) as client:
        yield services, client
    services.stop()


PIPELINE = dict(model={"arch": "small_cnn", "num_classes": 3}, train={"preset": "tiny"},
                prototypes={"n_prototypes": 4, "n_components": 4}, clusters={"min_cluster_size": 3},
                explain={"pair": [1, 2]})


def test_pipeline_trains_interprets_clusters_explains(stack, tiny_dataset):
    services, client = stack
    stages_seen: dict[str, list] = {}
    result = client.run_pipeline("e2e", dataset={"kind": "npz", "root": tiny_dataset},
                                 progress=lambda stage, event: stages_seen.setdefault(stage, []).append(event),
                                 timeout=120, report=False, **PIPELINE)
    # tiny preset: 48 images, batch 8 -> 6 iterations, a checkpoint every 2 -> steps 2, 4, 6
    steps = result.run.steps
    assert steps == [2, 4, 6]
    assert set(stages_seen) == {"train", "interpret", "prototypes", "clusters", "explain"}
    interpret_events = stages_seen["interpret"]
    assert interpret_events[-1].state == "SUCCEEDED"
    artifacts = {e.artifact for e in interpret_events if e.artifact}
    assert artifacts == {f"runs/e2e/interpretation/step-{s:06d}.npz" for s in steps}

    # arrays come from the store on request, with the documented shapes
    unit = client.load(f"runs/e2e/interpretation/step-{steps[0]:06d}.npz")
    n = len(client.load("runs/e2e/data/explanation.npz")["labels"])
    assert unit["saliency"].dtype == np.float16 and unit["saliency"].shape[0] == n
    assert unit["confidences"].shape == (n, 3)
    np.testing.assert_allclose(unit["confidences"].sum(axis=1), 1.0, atol=1e-4)

    assert result.pair_analysis.pair == (1, 2)
    assert len(result.pair_analysis.steps) == len(steps) - 1
    assert {p.verdict for p in result.pair_analysis.prototypes} <= {
        "reliable", "uncertain", "compensated", "inactive", "one_class", "background"}
    assert result.explanation.num_prototypes == 4
    assert len(result.evaluation.confusion) == 3
    assert sum(map(sum, result.evaluation.confusion)) == 24  # the test split of tiny.npz
    explained = client.class_explanation("e2e", 1)
    assert explained.class_index == 1 and explained.num_samples > 0

    # curation with a named prototype, then fine-tuning: the typed Table 1 comes back
    curated = client.curate("e2e", prototype=0, scope="pair")  # class 0 samples stay: never empty
    assert curated.pair == [1, 2] and curated.scope == "pair" and curated.size_before == n
    assert curated.removed_per_class[0] == 0
    assert curated.size_before - curated.size_after == sum(curated.removed_per_class)
    client.finetune("e2e", protocols=["full->full", "curated->full"], repeats=2).result(timeout=120)
    table = client.finetune_table("e2e")
    assert [row.protocol for row in table.rows] == ["full->full", "curated->full"] and table.pair == (1, 2)
    assert all(0.0 <= row.accuracy[0] <= 1.0 and row.repeats == 2 for row in table.rows)
    assert client.load(table.markdown_key)  # the Markdown rendering is in the store
    # the statistics come through as stored: intervals, Welch's tests, removed shares
    stored = client.store.get_json(table.key)
    for row, written in zip(table.rows, stored["rows"]):
        assert row.ci95 == {m: tuple(v) for m, v in written["ci95"].items() if None not in v}
    assert [(w.metric, w.p, w.significant, w.text) for w in table.tests] == \
        [(t["metric"], t["p"], t["significant"] or False, t["text"]) for t in stored["tests"]]
    assert [w.metric for w in table.tests] == ["sum", "accuracy"] and all(w.text for w in table.tests)
    assert table.removed_fraction_per_class == stored["removed_fraction_per_class"]

    # the job API on every service lists what ran there
    jobs = client._call("interpretation", "jobs", "ListJobs", __import__("i2x.v1.jobs_pb2", fromlist=["x"])
                        .ListJobsRequest(run_id="e2e")).jobs
    assert [j.kind for j in jobs] == ["interpret"]

    # a second run of the pipeline skips training and reuses every finished unit
    again = client.run_pipeline("e2e", timeout=60, report=False,
                                **{k: v for k, v in PIPELINE.items() if k != "train"})
    assert "train" not in again.jobs and again.run.steps == steps


def test_bring_your_own_checkpoints_and_cancel(stack, tiny_dataset, tmp_path):
    services, client = stack
    source = client.get_run("e2e") if "e2e" in client.list_runs() else None
    if source is None:
        pytest.skip("needs the pipeline test's run")
    # upload local safetensors files of the trained run as a new, untrained run's checkpoints
    local = {}
    for ckpt in source.checkpoints:
        path = tmp_path / f"{ckpt['step']}.safetensors"
        path.write_bytes(client.store.get_bytes(ckpt["key"]))
        local[int(ckpt["step"])] = path
    client.create_run("byo", model=PIPELINE["model"], dataset={"kind": "npz", "root": tiny_dataset},
                      explanation_fraction=0.5)
    info = client.register_checkpoints("byo", local).result(timeout=60)
    assert info["steps"] == sorted(local)
    # the same files again as many more checkpoints, so the interpretation has work left to cancel
    many = {step * 100 + copy: path for step, path in local.items() for copy in range(10)}
    client.create_run("byo-many", model=PIPELINE["model"], dataset={"kind": "npz", "root": tiny_dataset},
                      explanation_fraction=1.0)
    client.register_checkpoints("byo-many", many).result(timeout=60)
    job = client.interpret("byo-many")
    for event in job.watch():
        if event.artifact:  # the warm pool is working: cancel mid-job
            break
    job.cancel()
    from i2x.client import JobFailed

    with pytest.raises(JobFailed) as failed:
        job.result(timeout=60)
    assert failed.value.job.state == "CANCELLED"
    with pytest.raises(Exception):
        client.load("runs/byo-many/interpretation/index.json")  # the cancelled job wrote no index
    store = services.servicers["interpretation"].store
    written = [k for k in store.list("runs/byo-many/interpretation/") if k.endswith(".npz")]
    assert 1 <= len(written) < len(many), "cancel did not stop the job's remaining Ray work"
    # the warm pool survives the cancel: the next job runs on the same actors
    pool = services.servicers["interpretation"].pool
    started = pool.started
    assert client.interpret("byo").result(timeout=60)["steps"] == sorted(local)
    assert pool.started == started
    with pytest.raises(grpc.RpcError):
        client.get_run("../byo")
