"""Devices and the Ray cluster through real servers and a real local Ray (CPU only here):
training as a Ray task (checkpoints written by the task, progress, cancel), where each
interpretation unit ran (index.json `placement`), and GPUs the cluster can never grant
refused at the request with FAILED_PRECONDITION naming the setting."""

from __future__ import annotations

import time

import grpc
import pytest

from conftest import client_for, start_services
from i2x.client.jobs import JobFailed
from test_bad_requests import expect
from waiting import until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MODEL = {"arch": "small_cnn", "num_classes": 3}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, ray_local, tiny_dataset):
    from i2x.storage import LocalStore

    store = LocalStore(tmp_path_factory.mktemp("store"))
    services = start_services(store)
    with client_for(services, str(store.root)) as client:
        yield services, client, store
    services.stop()


def test_training_on_ray_is_cancelled(stack, ray_local, tiny_dataset, monkeypatch):
    _, client, store = stack
    monkeypatch.setenv("I2X_TRAIN_ON_RAY", "true")

    def free_cpus() -> float:
        return ray_local.available_resources().get("CPU", 0.0)

    total = ray_local.cluster_resources()["CPU"]
    until(lambda: free_cpus() == total, 60, "every CPU of the cluster free before the training")
    # 3,000 iterations: far longer than the test waits. CreateRun refuses a run of fewer than 2
    # checkpoints (check_checkpoint_count), so 3 here; checkpoints/index.json is still written only last
    client.create_run("cancel-ray", model=MODEL, dataset={"kind": "npz", "root": tiny_dataset},
                      train={"preset": "tiny", "epochs": 500, "checkpoint_every": 1_000})
    job = client.train("cancel-ray")
    deadline = time.monotonic() + 150  # a fresh Ray worker imports torch first
    for event in job.watch(deadline=deadline):
        if event.done > 0:  # the task is training and reporting
            break
    assert free_cpus() < total  # the training task holds its CPU
    job.cancel()
    with pytest.raises(JobFailed) as info:
        job.result(timeout=60)
    assert info.value.job.state == "CANCELLED", info.value.job
    assert not store.exists("runs/cancel-ray/checkpoints/index.json")
    # the task stopped (it is not left training unseen): its CPU is free again
    until(lambda: free_cpus() == total, 30, f"the cancelled training task gone (free CPU {free_cpus()} of {total})")
    # and the run trains again on the cluster (a short config this time)
    client.create_run("cancel-ray", model=MODEL, dataset={"kind": "npz", "root": tiny_dataset},
                      train={"preset": "tiny"}, overwrite=True)
    assert client.train("cancel-ray").result(timeout=120)["steps"] == [2, 4, 6]
    assert store.exists("runs/cancel-ray/checkpoints/index.json")


def test_a_training_task_that_cannot_start_fails_naming_the_resources(stack, ray_local, tiny_dataset, monkeypatch):
    _, client, store = stack
    monkeypatch.setenv("I2X_TRAIN_ON_RAY", "true")
    monkeypatch.setenv("I2X_TRAIN_WAIT_SECONDS", "2")

    @ray_local.remote
    class Blocker:
        def ready(self):
            return True

    free = int(ray_local.available_resources().get("CPU", 0))
    blocker = Blocker.options(num_cpus=free).remote()  # every free CPU of the cluster, held
    try:
        ray_local.get(blocker.ready.remote(), timeout=60)
        client.create_run("starved", model=MODEL, dataset={"kind": "npz", "root": tiny_dataset},
                          train={"preset": "tiny"})
        job = client.train("starved")
        with pytest.raises(Exception):
            job.result(timeout=60)
    finally:
        ray_local.kill(blocker)
    assert job.info.state == "FAILED"
    error = job.info.error
    assert "the training task waited" in error and "for 1 CPU and 0 GPU: 0 of 2 CPU" in error, error
    assert "I2X_TRAIN_WAIT_SECONDS" in error
    assert not store.exists("runs/starved/checkpoints/index.json")


def test_training_runs_as_a_ray_task_and_units_record_their_placement(stack, ray_local, tiny_dataset, monkeypatch):
    _, client, store = stack
    monkeypatch.setenv("I2X_TRAIN_ON_RAY", "true")
    monkeypatch.setenv("I2X_TRAIN_GPUS", "auto")  # no GPU in this cluster: 0
    # one warm interpretation actor (it holds its CPU for the service's life): the other CPU of the
    # 2-CPU test cluster stays free for the training tasks
    monkeypatch.setenv("I2X_RAY_POOL_SIZE", "1")
    from i2x.engine import stages

    def not_here(*_args, **_kwargs):
        raise AssertionError("trained in the service's process, not in a Ray task")

    # The Ray worker imports its own stages module; the service's copy must not be called.
    monkeypatch.setattr(stages, "train_run", not_here)
    client.create_run("on-ray", model=MODEL, dataset={"kind": "npz", "root": tiny_dataset}, train={"preset": "tiny"})
    job = client.train("on-ray")
    events = list(job.watch())
    result = job.result(timeout=120)
    # tiny preset: 48 images, batch 8 -> 6 iterations, a checkpoint every 2 -> steps 2, 4, 6
    assert result["steps"] == [2, 4, 6]
    assert [c["step"] for c in store.get_json("runs/on-ray/checkpoints/index.json")["checkpoints"]] == [2, 4, 6]
    assert all(store.exists(f"runs/on-ray/checkpoints/step-00000{s}.safetensors") for s in (2, 4, 6))
    # the task's progress reached the job: the per-iteration messages of core.training.train
    reported = [e for e in events if e.state == "RUNNING" and "epoch 1/1 loss" in e.message]
    assert reported and reported[-1].total == 6 and events[-1].done == 6

    # where each interpretation unit ran: interpretation/index.json's placement
    client.interpret("on-ray", device="auto", precision="fp32").result(timeout=120)
    index = store.get_json("runs/on-ray/interpretation/index.json")
    nodes = {n["NodeID"] for n in ray_local.nodes() if n["Alive"]}
    assert [p["step"] for p in index["placement"]] == index["steps"] == [2, 4, 6]
    for record in index["placement"]:
        assert record["node_id"] in nodes  # ran in a Ray actor, which knows its node
        assert record["device"] == "cpu" and record["device_name"] == ""  # no GPU in this cluster
        assert 0 < record["seconds"] < 60


def test_gpus_the_cluster_can_never_grant_are_refused(stack, tiny_dataset, monkeypatch):
    _, client, _ = stack
    client.create_run("nogpu", model=MODEL, dataset={"kind": "npz", "root": tiny_dataset},
                      train={"preset": "tiny", "device": "cuda"})
    # in-process training with a GPU device on a node without CUDA
    monkeypatch.setenv("I2X_TRAIN_ON_RAY", "false")
    details = expect(grpc.StatusCode.FAILED_PRECONDITION, "train.device", client.train, "nogpu")
    assert "no CUDA GPU" in details
    # on Ray: tasks get no GPU (auto on a CPU cluster), so a cuda device can never be had
    monkeypatch.setenv("I2X_TRAIN_ON_RAY", "true")
    details = expect(grpc.StatusCode.FAILED_PRECONDITION, "train.device", client.train, "nogpu")
    assert "each task gets no GPU (I2X_TRAIN_GPUS resolves to 0" in details
    monkeypatch.setenv("I2X_TRAIN_GPUS", "2")
    details = expect(grpc.StatusCode.FAILED_PRECONDITION, "I2X_TRAIN_GPUS", client.train, "nogpu")
    assert "largest node has 2 CPU and 0 GPU" in details

    # interpretation: the run "on-ray" has checkpoints (trained above); GPU units are refused before any job starts
    expect(grpc.StatusCode.FAILED_PRECONDITION, "params.device", client.interpret, "on-ray", device="cuda")
    monkeypatch.setenv("I2X_RAY_GPUS_PER_TASK", "1")
    details = expect(grpc.StatusCode.FAILED_PRECONDITION, "I2X_RAY_GPUS_PER_TASK", client.interpret, "on-ray")
    assert "I2X_RAY_GPUS_PER_TASK=1 asks for 1 GPU per task" in details
    # ... unless the autoscaler can add a node with one
    monkeypatch.setenv("I2X_RAY_SCALABLE_GPUS", "1")
    monkeypatch.setenv("I2X_RAY_GPUS_PER_TASK", "2")
    expect(grpc.StatusCode.FAILED_PRECONDITION, "I2X_RAY_GPUS_PER_TASK", client.interpret, "on-ray")
    monkeypatch.setenv("I2X_RAY_GPUS_PER_TASK", "0")
    expect(grpc.StatusCode.INVALID_ARGUMENT, "params.device", client.interpret, "on-ray", device="gpu")
    expect(grpc.StatusCode.INVALID_ARGUMENT, "params.precision", client.interpret, "on-ray", precision="fp8")
    expect(grpc.StatusCode.INVALID_ARGUMENT, "params.precision", client.interpret, "on-ray", device="cpu",
           precision="fp16")
