"""Real services on loopback port 0, one real local Ray per session, both store backends."""

from __future__ import annotations

import pytest

from s3server import ACCESS_KEY, SECRET_KEY
from tinydata import write_tiny_npz


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return write_tiny_npz(tmp_path_factory.mktemp("data") / "tiny.npz")


def _local_pair(tmp_path):
    from i2x.client import open_reader
    from i2x.storage import LocalStore

    store = LocalStore(tmp_path / "store")
    return store, open_reader(str(store.root))


def _s3_pair(s3_server):
    from i2x.client.store import S3Reader

    store = s3_server.store()
    return store, S3Reader(store.url, endpoint=s3_server.endpoint, secure=False, access_key=ACCESS_KEY,
                           secret_key=SECRET_KEY, region="us-east-1")


@pytest.fixture(scope="module", params=["local", "s3"])
def backend(request, tmp_path_factory):
    """(server-side Store, client-side reader) over the same storage."""
    if request.param == "local":
        return _local_pair(tmp_path_factory.mktemp(request.param))
    return _s3_pair(request.getfixturevalue("s3_server"))


def start_services(store, **kwargs):
    from i2x.serving import ServicesInThread

    return ServicesInThread(("training", "interpretation", "clustering", "explanation"), store, **kwargs)


def client_for(services, reader=None, **kwargs):
    from i2x.client import Client

    return Client(**{name: services.address(name) for name in services.ports}, store=reader, retries=2, **kwargs)
