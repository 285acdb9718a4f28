"""Ray faults, with a real `ray start --head` that is killed and started again: the
interpretation service (`i2x serve`, a Ray Client like the KubeRay deployment) waits for Ray at
start-up instead of exiting, is NOT_SERVING while Ray is unreachable, reconnects, and its job
finishes once Ray is back without redoing the units written before."""

from __future__ import annotations

import sys
from pathlib import Path

import os
import secrets
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services"))  # tinydata

from rayhead import RayNode, free_port
from tinydata import write_tiny_npz
from waiting import until as _until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

N_CHECKPOINTS = 8
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _health(address: str) -> int | None:
    with grpc.insecure_channel(address) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status
        except grpc.RpcError:
            return None


def _checkpoints(tmp_path, spec: dict) -> dict:
    import torch

    from i2x.models import ModelSpec, build_model, checkpoint_to_bytes

    files = {}
    for step in range(1, N_CHECKPOINTS + 1):
        torch.manual_seed(step)
        path = tmp_path / f"{step}.safetensors"
        path.write_bytes(checkpoint_to_bytes(build_model(ModelSpec.from_dict(spec)).state_dict(), {"step": step}))
        files[step] = path
    return files


def test_interpretation_survives_a_ray_head_restart(tmp_path):
    from i2x.client import Client
    from i2x.serving import ServicesInThread
    from i2x.storage import LocalStore

    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}  # this head's own token
    head = RayNode(num_cpus=1, env=auth)
    store = LocalStore(tmp_path / "store")
    port = free_port()
    env = {**os.environ, **auth, "I2X_STORE": str(store.root), "I2X_RAY_ADDRESS": head.client_address,
           "I2X_PORT": str(port), "I2X_RAY_RECONNECT_SECONDS": "1", "I2X_RAY_WAIT_SECONDS": "120",
           "I2X_TORCH_THREADS": "1", "I2X_GRACE_SECONDS": "1",
           # Ray gives a broken Ray Client connection up after this grace period (default 30 s).
           "RAY_CLIENT_RECONNECT_GRACE_PERIOD": "3", "RAY_DISABLE_USAGE_STATS": "1"}
    log = open(tmp_path / "service.log", "w")
    service = subprocess.Popen([sys.executable, "-m", "i2x.cli", "serve", "interpretation"], env=env,
                               stdout=log, stderr=subprocess.STDOUT, text=True)
    training = ServicesInThread(("training",), store)
    address = f"127.0.0.1:{port}"
    try:
        # No Ray yet: the service is up, waits for Ray (it does not exit) and is not ready.
        _until(lambda: _health(address) == NOT_SERVING, 60, "the service answers health NOT_SERVING")
        time.sleep(2)
        assert service.poll() is None, "the service exited instead of waiting for Ray"
        head.start()
        _until(lambda: _health(address) == SERVING, 120, "SERVING once the Ray head is up")

        dataset = {"kind": "npz", "root": write_tiny_npz(tmp_path / "tiny.npz", n_train=240)}
        model = {"arch": "small_cnn", "num_classes": 3, "input_size": 56}
        with Client(training=training.address("training"), interpretation=address, store=str(store.root),
                    retries=2) as client:
            client.create_run("faults", model=model, dataset=dataset, explanation_fraction=1.0)
            client.register_checkpoints("faults", _checkpoints(tmp_path, model)).result(timeout=60)
            job = client.interpret("faults")
            for event in job.watch():
                if event.artifact:  # a unit is written: the head goes now
                    break
            head.kill()
            units = {s: store.path(f"runs/faults/interpretation/step-{s:06d}.npz") for s in range(1, N_CHECKPOINTS + 1)}
            _until(lambda: _health(address) == NOT_SERVING, 30, "NOT_SERVING once Ray is lost")
            before = {s: p.stat().st_mtime_ns for s, p in units.items() if p.exists()}
            assert 1 <= len(before) < N_CHECKPOINTS, f"the head was killed after units {sorted(before)}"
            waiting = f"waiting for Ray: Ray at {head.client_address} is unreachable"
            seen = []
            try:
                info = _until(lambda: (lambda i: seen.append(i) or (i if i.message.startswith(waiting) else None))(
                    job.refresh()), 30, "the job says it waits for Ray")
            except AssertionError as error:
                raise AssertionError(f"{error}; last: {seen[-1:]}") from None
            assert info.state == "RUNNING", info
            head.start()  # a new head on the same address, as a restarted head pod
            _until(lambda: _health(address) == SERVING, 120, "SERVING again once Ray is back")
            assert job.result(timeout=120)["steps"] == list(range(1, N_CHECKPOINTS + 1))
        assert all(p.exists() for p in units.values())
        assert {s: units[s].stat().st_mtime_ns for s in before} == before, "units written before were redone"
        assert service.poll() is None
    finally:
        training.stop()
        service.terminate()
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()
        head.kill()
        log.close()
        print((tmp_path / "service.log").read_text()[-6000:])
