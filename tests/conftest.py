"""Shared test set-up: one torch thread per process (the machine has 2 cores), outputs in test-output/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["s3server"]  # tests/s3server.py: moto S3 server + S3Store fixtures

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # client-only environments
    pass

OUTPUT_ROOT = Path(__file__).resolve().parent.parent / "test-output"


@pytest.fixture
def output_dir(request) -> Path:
    """A folder kept after the test (screenshots, figures) under test-output/<test name>."""
    path = OUTPUT_ROOT / request.node.name.replace("/", "_").replace("[", "_").replace("]", "")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session", autouse=True)
def data_roots(tmp_path_factory):
    """Services read datasets only under I2X_DATA_ROOTS: the tests' datasets lie in pytest's temp
    folder (set in os.environ so that services started as subprocesses get it too)."""
    root = str(tmp_path_factory.getbasetemp().resolve())
    previous = os.environ.get("I2X_DATA_ROOTS")
    os.environ["I2X_DATA_ROOTS"] = root
    yield root
    if previous is None:
        os.environ.pop("I2X_DATA_ROOTS", None)
    else:
        os.environ["I2X_DATA_ROOTS"] = previous


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session (startup ~3 s); the interpretation service joins it."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()
