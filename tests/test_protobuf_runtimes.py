"""The committed stubs (gencode 6.31.1) work under the oldest protobuf runtime the pins allow and
under protobuf 7: each runtime is pip-installed into a cached folder put first on PYTHONPATH, and a
subprocess imports every stub and makes a real gRPC call through them on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# The lowest runtime `protobuf>=6.31.1,<8` admits (= the gencode), and a 7.x (kfp pins below 7; others don't).
RUNTIMES = ("6.31.1", "7.36.2")
CACHE = Path(os.environ.get("I2X_TEST_CACHE") or Path.home() / ".cache" / "i2x-tests")

CALL = r'''
import sys
from concurrent import futures

import google.protobuf
import grpc
from google.protobuf import json_format

assert google.protobuf.__version__ == sys.argv[1], (google.protobuf.__file__, google.protobuf.__version__)
from i2x.v1 import (clustering_pb2, clustering_pb2_grpc, common_pb2, explanation_pb2, explanation_pb2_grpc,  # noqa: F401
                    interpretation_pb2, interpretation_pb2_grpc, jobs_pb2, jobs_pb2_grpc, training_pb2,
                    training_pb2_grpc)


class Training(training_pb2_grpc.TrainingServiceServicer):
    def GetRun(self, request, context):
        return common_pb2.Run(run_id=request.run_id, classes=["2", "7"], live=True,
                              model=common_pb2.ModelSpec(arch="small_cnn", num_classes=2),
                              checkpoints=[common_pb2.Checkpoint(step=40, key="runs/r/checkpoints/step-000040.safetensors")])


server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
training_pb2_grpc.add_TrainingServiceServicer_to_server(Training(), server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    run = training_pb2_grpc.TrainingServiceStub(channel).GetRun(training_pb2.GetRunRequest(run_id="r"), timeout=30)
server.stop(0)
assert (run.run_id, list(run.classes), run.live, run.model.num_classes) == ("r", ["2", "7"], True, 2)
assert run.checkpoints[0].step == 40
assert json_format.MessageToDict(run)["checkpoints"][0]["step"] == "40"  # int64 as a JSON string
print("ok", google.protobuf.__version__, google.protobuf.__file__)
'''


def _runtime(version: str) -> Path:
    """protobuf==version in CACHE/protobuf-<version>, installed once (later runs reuse it)."""
    target = CACHE / f"protobuf-{version}"
    if (target / ".complete").exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"protobuf-{version}-", dir=CACHE))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
                           "--target", str(staging), f"protobuf=={version}"], capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.fail(f"pip could not install protobuf=={version}: {done.stderr[-2000:]}")
    (staging / ".complete").write_text(version)
    try:
        staging.rename(target)  # atomic: a concurrent run either finds it complete or makes its own
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return target


@pytest.mark.parametrize("version", RUNTIMES)
@pytest.mark.timeout(400)
def test_stubs_work_under_protobuf_runtime(version):
    target = _runtime(version)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    done = subprocess.run([sys.executable, "-c", CALL, version], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f"ok {version} {target}"), done.stdout
