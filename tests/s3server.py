"""Pytest plugin: a real S3-protocol HTTP server (moto's) on loopback, and S3Store fixtures.

Registered in tests/conftest.py (`pytest_plugins`), so every test folder can ask for:
- `s3_server`: the running server (session-wide), with `.endpoint` "127.0.0.1:PORT";
- `s3_store`: an S3Store on a fresh bucket of that server (one bucket per test).
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass

import pytest

ACCESS_KEY = "i2x-test-access"
SECRET_KEY = "i2x-test-secret"


@dataclass
class S3Server:
    host: str
    port: int

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def store(self, bucket: str | None = None, prefix: str = ""):
        from i2x.storage.s3 import S3Store

        return S3Store(
            endpoint=self.endpoint, bucket=bucket or f"i2x-{uuid.uuid4().hex[:12]}",
            access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False, region="us-east-1",
            prefix=prefix,
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    from moto.server import ThreadedMotoServer

    # ThreadedMotoServer needs a concrete port; ask the OS for a free one.
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server("127.0.0.1", port)
    finally:
        server.stop()


@pytest.fixture
def s3_store(s3_server):
    return s3_server.store()
