"""Faults while a job runs: kill -9 of its service, an S3 outage, a Ray actor killed.

Each ends with the job finished and the store saying what the client saw.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
WAIT = 90


# Fixtures live here, not in a conftest.py: tests/services imports its conftest by module name.


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return _tinydata().write_tiny_npz(tmp_path_factory.mktemp("data") / "tiny.npz")


@pytest.fixture
def own_s3():
    """A moto S3 server of this test alone, which the test may stop (an outage) and restart
    (moto keeps its buckets in process memory, so the objects are still there after)."""
    from moto.server import ThreadedMotoServer

    from s3server import ACCESS_KEY, SECRET_KEY, _free_port
    from i2x.storage.s3 import S3Store

    port = _free_port()
    servers = [ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)]
    servers[0].start()

    class OwnS3:
        store = S3Store(endpoint=f"127.0.0.1:{port}", bucket="i2x-faults", access_key=ACCESS_KEY,
                        secret_key=SECRET_KEY, secure=False, region="us-east-1")

        @staticmethod
        def stop():
            servers[-1].stop()

        @staticmethod
        def restart():
            servers.append(ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False))
            servers[-1].start()

    yield OwnS3
    servers[-1].stop()


def _tinydata():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "services" / "tinydata.py"
    spec = importlib.util.spec_from_file_location("i2x_tests_tinydata", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stubs(address):
    from i2x.v1 import jobs_pb2_grpc, training_pb2_grpc

    channel = grpc.insecure_channel(address)
    return channel, training_pb2_grpc.TrainingServiceStub(channel), jobs_pb2_grpc.JobsServiceStub(channel)


def _create_trained_run(training, run_id, dataset, epochs):
    from i2x.v1 import common_pb2, training_pb2

    training.CreateRun(training_pb2.CreateRunRequest(
        run_id=run_id, model=common_pb2.ModelSpec(num_classes=3), dataset=common_pb2.DatasetSpec(kind="npz",
                                                                                                  root=dataset),
        train=common_pb2.TrainConfig(preset="tiny", epochs=epochs, batch_size=8, checkpoint_every=2),
        explanation_fraction=0.5), timeout=WAIT)
    return training.StartTraining(training_pb2.StartTrainingRequest(run_id=run_id), timeout=WAIT)


def _until_underway(jobs, job_id):
    from i2x.v1 import jobs_pb2

    last = None
    for event in jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id), timeout=WAIT):
        last = event
        if event.artifact or (event.state == jobs_pb2.JOB_STATE_RUNNING and 0 < event.done < event.total):
            return event
    raise AssertionError(f"the job ended before it was halfway: {last}")


def _final(jobs, job_id):
    from i2x.v1 import jobs_pb2

    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            job = jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=10)
            if job.state in (jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED):
                return job
        except grpc.RpcError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish")


def _stored_final(store, key):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            record = store.get_json(key)
            if record["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                return record
        except Exception:  # noqa: BLE001  (the store is still down)
            pass
        time.sleep(0.3)
    raise AssertionError(f"{key} never reached a final state")


def test_kill_9_of_a_service_mid_job_the_next_one_finishes_it(tmp_path, tiny_dataset, monkeypatch):
    from i2x.serving import ServicesInThread
    from i2x.storage import LocalStore
    from i2x.v1 import jobs_pb2

    store_dir = tmp_path / "store"
    port = _free_port()
    env = {**os.environ, "I2X_JOB_LEASE_SECONDS": "2", "I2X_LOG_LEVEL": "WARNING", "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "i2x.cli", "serve", "training", "--port", str(port),
                               "--store", str(store_dir)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        channel, training, jobs = _stubs(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=WAIT)
        job = _create_trained_run(training, "killed", tiny_dataset, epochs=3)
        _until_underway(jobs, job.job_id)
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        channel.close()
    finally:
        if server.poll() is None:
            server.kill()
    store = LocalStore(store_dir)
    assert store.get_json(f"jobs/training/{job.job_id}.json")["state"] == "RUNNING"  # nobody closed it

    monkeypatch.setenv("I2X_JOB_LEASE_SECONDS", "2")
    second = ServicesInThread(("training",), store)
    try:
        channel, training, jobs = _stubs(second.address("training"))
        final = _final(jobs, job.job_id)
        assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error
        assert final.progress_done == final.progress_total > 0
        stored = store.get_json(f"jobs/training/{job.job_id}.json")
        assert stored["state"] == "SUCCEEDED" and stored["progress_done"] == final.progress_done
        assert store.exists("runs/killed/checkpoints/index.json")
        channel.close()
    finally:
        second.stop()


def test_s3_outage_mid_job_ends_with_the_state_the_client_saw(own_s3, tiny_dataset):
    from i2x.jobs import JobManager
    from i2x.serving import ServicesInThread

    services = ServicesInThread(("training",), own_s3.store)
    try:
        channel, training, jobs = _stubs(services.address("training"))
        job = _create_trained_run(training, "outage", tiny_dataset, epochs=6)
        _until_underway(jobs, job.job_id)
        own_s3.stop()
        threading.Timer(3.0, own_s3.restart).start()
        final = _final(jobs, job.job_id)
        stored = _stored_final(own_s3.store, f"jobs/training/{job.job_id}.json")
        from i2x.servicers import PROTO_TO_STATE

        assert stored["state"] == PROTO_TO_STATE[final.state]
        assert (stored["error"], stored["error_code"]) == (final.error, final.error_code)
        assert "Traceback" not in final.error and "\n" not in final.error
        channel.close()
    finally:
        services.stop()
    # A later process does not bring the job back.
    later = JobManager(own_s3.store, "training", lease_seconds=1.0)
    try:
        assert later.recover(lambda record: (lambda ctx: None)) == []
    finally:
        later.shutdown()


def test_a_killed_ray_actor_is_replaced_and_the_job_finishes(tmp_path, ray_local):
    import torch

    from i2x.models import ModelSpec, build_model, checkpoint_to_bytes
    from i2x.serving import ServicesInThread
    from i2x.storage import LocalStore
    from i2x.v1 import common_pb2, interpretation_pb2, interpretation_pb2_grpc, jobs_pb2, jobs_pb2_grpc
    from i2x.v1 import training_pb2

    store = LocalStore(tmp_path / "store")
    dataset = _tinydata().write_tiny_npz(tmp_path / "tiny.npz", n_train=90)
    spec = {"arch": "small_cnn", "num_classes": 3, "input_size": 28}
    for step in range(6):
        torch.manual_seed(step)
        store.put_bytes(f"uploads/ray/{step}.safetensors",
                        checkpoint_to_bytes(build_model(ModelSpec.from_dict(spec)).state_dict(), {"step": step}))
    services = ServicesInThread(("training", "interpretation"), store, ray_workers=1)
    try:
        channel, training, jobs = _stubs(services.address("training"))
        training.CreateRun(training_pb2.CreateRunRequest(
            run_id="ray", model=common_pb2.ModelSpec(**spec), dataset=common_pb2.DatasetSpec(kind="npz", root=dataset),
            explanation_fraction=1.0), timeout=WAIT)
        register = training.RegisterCheckpoints(training_pb2.RegisterCheckpointsRequest(run_id="ray", checkpoints=[
            training_pb2.CheckpointRef(step=s, key=f"uploads/ray/{s}.safetensors") for s in range(6)]), timeout=WAIT)
        assert _final(jobs, register.job_id).state == jobs_pb2.JOB_STATE_SUCCEEDED
        interp_channel = grpc.insecure_channel(services.address("interpretation"))
        job = interpretation_pb2_grpc.InterpretationServiceStub(interp_channel).StartInterpretation(
            interpretation_pb2.StartInterpretationRequest(run_id="ray"), timeout=WAIT)
        interp_jobs = jobs_pb2_grpc.JobsServiceStub(interp_channel)
        _until_underway(interp_jobs, job.job_id)
        pool = services.servicers["interpretation"].pool
        started = pool.started
        ray_local.kill(pool._actors[0], no_restart=True)  # dead for good: the pool must replace it
        final = _final(interp_jobs, job.job_id)
        assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error
        assert pool.started > started
        assert all(store.exists(f"runs/ray/interpretation/step-{s:06d}.npz") for s in range(6))
        assert store.get_json(f"jobs/interpretation/{job.job_id}.json")["state"] == "SUCCEEDED"

        # A unit that fails inside an actor: the client gets the cause in one line, not Ray's traceback.
        training.CreateRun(training_pb2.CreateRunRequest(
            run_id="ray-bad", model=common_pb2.ModelSpec(**spec),
            dataset=common_pb2.DatasetSpec(kind="npz", root=dataset), explanation_fraction=1.0), timeout=WAIT)
        register = training.RegisterCheckpoints(training_pb2.RegisterCheckpointsRequest(run_id="ray-bad", checkpoints=[
            training_pb2.CheckpointRef(step=s, key=f"uploads/ray/{s}.safetensors") for s in range(2)]), timeout=WAIT)
        assert _final(jobs, register.job_id).state == jobs_pb2.JOB_STATE_SUCCEEDED
        store.put_bytes("runs/ray-bad/checkpoints/step-000001.safetensors", b"\x00" * 64)  # corrupted in place
        job = interpretation_pb2_grpc.InterpretationServiceStub(interp_channel).StartInterpretation(
            interpretation_pb2.StartInterpretationRequest(run_id="ray-bad"), timeout=WAIT)
        failed = _final(interp_jobs, job.job_id)
        assert (failed.state, failed.error_code) == (jobs_pb2.JOB_STATE_FAILED, "INVALID_ARGUMENT")
        assert failed.error.startswith("checkpoint: not a safetensors checkpoint"), failed.error
        assert len(failed.error) <= 300 and not any(t in failed.error for t in ("Traceback", "pid=", "ray::", "\x1b"))
        channel.close()
        interp_channel.close()
    finally:
        services.stop()
