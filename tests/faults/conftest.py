"""Fixtures of the fault suite: the services' tiny dataset (tests/services/tinydata.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_TINYDATA = Path(__file__).resolve().parent.parent / "services" / "tinydata.py"


def load_tinydata():
    spec = importlib.util.spec_from_file_location("i2x_tests_tinydata", _TINYDATA)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return load_tinydata().write_tiny_npz(tmp_path_factory.mktemp("data") / "tiny.npz")


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


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray, kept for the session: tests/services' ray_local then reuses it."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()
