"""Artifact storage: one interface (Store), a local-directory and an S3/MinIO backend."""

from i2x.storage.base import Store
from i2x.storage.keys import run_key, step_name, validate_id
from i2x.storage.local import LocalStore

__all__ = ["Store", "LocalStore", "run_key", "step_name", "validate_id", "open_store"]


def open_store(url: str | None = None) -> Store:
    """Open the store a URL names: a path or file://PATH (local), s3://BUCKET[/PREFIX] (S3/MinIO).

    With no URL, the I2X_STORE setting decides (default ./i2x-data).
    """
    from i2x import config

    url = url or config.get("I2X_STORE")
    if url.startswith("s3://"):
        from i2x.storage.s3 import S3Store

        return S3Store.from_url(url)
    if url.startswith("file://"):
        url = url[len("file://"):]
    return LocalStore(url)
