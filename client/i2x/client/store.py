"""Read (and upload to) the artifact store without the server half: a local directory or S3 via minio.

Keys and arrays are documented in docs/ARTIFACTS.md.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from urllib.parse import urlparse

import numpy as np


class StoreReader:
    """get_bytes / get_json / get_npz / put_bytes by key."""

    url: str

    def get_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def put_bytes(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str) -> list[str]:
        """Every key under `prefix`, sorted."""
        raise NotImplementedError

    def get_json(self, key: str):
        return json.loads(self.get_bytes(key))

    def get_npz(self, key: str) -> dict[str, np.ndarray]:
        with np.load(io.BytesIO(self.get_bytes(key)), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(not p or p.startswith(".") for p in parts) or "\\" in key:
        raise ValueError(f"unsafe key {key!r}: use '/'-separated parts without '..' or a leading '/'")
    return key


class LocalReader(StoreReader):
    def __init__(self, root: str):
        self.root = Path(root).expanduser().resolve()
        self.url = f"file://{self.root}"

    def get_bytes(self, key: str) -> bytes:
        path = self.root / _check_key(key)
        if not path.is_file():
            raise FileNotFoundError(f"no object {key!r} in the store {self.url}")
        return path.read_bytes()

    def exists(self, key: str) -> bool:
        return (self.root / _check_key(key)).is_file()

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self.root / _check_key(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.upload-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # atomic, like the server's LocalStore

    def list(self, prefix: str) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.glob(f"{prefix}**/*")
                      if p.is_file() and not p.name.startswith("."))


class S3Reader(StoreReader):
    """s3://BUCKET[/PREFIX] through minio; endpoint and credentials from arguments or the same
    variables the services read (I2X_S3_ENDPOINT, I2X_S3_SECURE, I2X_S3_ACCESS_KEY/SECRET_KEY,
    AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, MINIO_ROOT_USER/MINIO_ROOT_PASSWORD)."""

    def __init__(self, url: str, *, endpoint: str | None = None, secure: bool | None = None,
                 access_key: str | None = None, secret_key: str | None = None, region: str | None = None):
        from minio import Minio

        parsed = urlparse(url)
        self.url, self.bucket = url, parsed.netloc
        self.prefix = parsed.path.strip("/") + "/" if parsed.path.strip("/") else ""
        env = os.environ.get
        endpoint = endpoint or env("I2X_S3_ENDPOINT") or "s3.amazonaws.com"
        if secure is None:
            secure = env("I2X_S3_SECURE", "true").lower() in ("true", "1", "yes")
        if "://" in endpoint:
            scheme, endpoint = endpoint.split("://", 1)
            secure = scheme == "https"
        self.client = Minio(
            endpoint=endpoint, secure=secure, region=region or env("I2X_S3_REGION") or None,
            access_key=access_key or env("I2X_S3_ACCESS_KEY") or env("AWS_ACCESS_KEY_ID") or env("MINIO_ROOT_USER"),
            secret_key=secret_key or env("I2X_S3_SECRET_KEY") or env("AWS_SECRET_ACCESS_KEY")
            or env("MINIO_ROOT_PASSWORD"))

    def get_bytes(self, key: str) -> bytes:
        response = self.client.get_object(bucket_name=self.bucket, object_name=self.prefix + _check_key(key))
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        try:
            self.client.stat_object(bucket_name=self.bucket, object_name=self.prefix + _check_key(key))
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound", "NoSuchBucket"):
                return False
            raise

    def list(self, prefix: str) -> list[str]:
        objects = self.client.list_objects(bucket_name=self.bucket, prefix=self.prefix + prefix, recursive=True)
        return sorted(o.object_name[len(self.prefix):] for o in objects)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(bucket_name=self.bucket, object_name=self.prefix + _check_key(key),
                               data=io.BytesIO(data), length=len(data))


def open_reader(url: str | None = None, **s3_options) -> StoreReader:
    """A reader for the store the services use: a path, file://PATH, or s3://BUCKET[/PREFIX].
    Default: I2X_STORE, else ./i2x-data (the services' default)."""
    url = url or os.environ.get("I2X_STORE") or "./i2x-data"
    if url.startswith("s3://"):
        return S3Reader(url, **s3_options)
    return LocalReader(url[len("file://"):] if url.startswith("file://") else url)
