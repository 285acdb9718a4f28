"""A service stopped mid-job resumes the job in its next instance without redoing finished units."""

from __future__ import annotations

import pytest

from conftest import client_for
from tinydata import write_tiny_npz

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

N_CHECKPOINTS = 8


def _checkpoint_files(tmp_path, spec: dict) -> dict:
    """N_CHECKPOINTS random-init small_cnn checkpoints (no training needed to interpret them)."""
    import torch

    from i2x.models import ModelSpec, build_model, checkpoint_to_bytes

    files = {}
    tmp_path.mkdir(parents=True, exist_ok=True)
    for step in range(1, N_CHECKPOINTS + 1):
        torch.manual_seed(step)
        path = tmp_path / f"{step}.safetensors"
        path.write_bytes(checkpoint_to_bytes(build_model(ModelSpec.from_dict(spec)).state_dict(), {"step": step}))
        files[step] = path
    return files


def test_interpretation_resumes_after_a_restart_without_recomputing_units(tmp_path, ray_local):
    from i2x.client.jobs import Job
    from i2x.serving import ServicesInThread
    from i2x.storage import LocalStore
    from i2x.v1 import jobs_pb2

    store = LocalStore(tmp_path / "store")
    # 240 images at 56x56 through one actor: a unit takes ~0.3 s, so the stop lands mid-job
    dataset = {"kind": "npz", "root": write_tiny_npz(tmp_path / "tiny.npz", n_train=240)}
    model = {"arch": "small_cnn", "num_classes": 3, "input_size": 56}
    first = ServicesInThread(("training", "interpretation"), store, ray_workers=1)
    try:
        with client_for(first, str(store.root)) as client:
            client.create_run("resume", model=model, dataset=dataset, explanation_fraction=1.0)
            client.register_checkpoints("resume", _checkpoint_files(tmp_path, model)).result(timeout=60)
            job = client.interpret("resume")
            for event in job.watch():
                if event.artifact:  # the first unit is written: stop the service now
                    break
    finally:
        first.stop()  # graceful: the running job is interrupted and left QUEUED, the pool killed

    units = {s: store.path(f"runs/resume/interpretation/step-{s:06d}.npz") for s in range(1, N_CHECKPOINTS + 1)}
    before = {s: p.stat().st_mtime_ns for s, p in units.items() if p.exists()}
    assert 1 <= len(before) < N_CHECKPOINTS, f"the stop did not land mid-job: units {sorted(before)} written"
    record = store.get_json(f"jobs/interpretation/{job.job_id}.json")
    assert record["state"] == "QUEUED" and record["message"] == "interrupted by shutdown"

    second = ServicesInThread(("interpretation",), store, ray_workers=1)  # recovers the job at start
    try:
        with client_for(second, str(store.root)) as client:
            resumed = Job(client, "interpretation",
                          client._call("interpretation", "jobs", "GetJob", jobs_pb2.GetJobRequest(job_id=job.job_id)))
            assert resumed.result(timeout=60)["steps"] == list(range(1, N_CHECKPOINTS + 1))
    finally:
        second.stop()
    assert all(p.exists() for p in units.values())
    after = {s: units[s].stat().st_mtime_ns for s in before}
    assert after == before, "units finished before the restart were written again"
