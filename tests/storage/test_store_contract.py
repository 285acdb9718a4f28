"""One contract for every store backend: LocalStore on a temp dir, S3Store on moto's HTTP S3 server."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from i2x.core.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from i2x.storage import LocalStore, open_store
from i2x.storage.s3 import S3Store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return request.getfixturevalue("s3_server").store(prefix="some/prefix")


def test_put_get_exists_delete(store):
    assert not store.exists("runs/r1/a.bin")
    store.put_bytes("runs/r1/a.bin", b"\x00\x01abc")
    assert store.exists("runs/r1/a.bin")
    assert store.get_bytes("runs/r1/a.bin") == b"\x00\x01abc"
    store.delete("runs/r1/a.bin")
    assert not store.exists("runs/r1/a.bin")
    store.delete("runs/r1/a.bin")  # deleting a missing key is not an error


def test_missing_key_is_not_found_naming_the_key(store):
    with pytest.raises(NotFound) as info:
        store.get_bytes("runs/r1/nothing.json")
    assert info.value.field == "key" and "runs/r1/nothing.json" in str(info.value)
    with pytest.raises(NotFound):
        store.get_json("runs/r1/nothing.json")


def test_put_replaces_the_object_wholesale(store):
    store.put_bytes("k/obj", b"A" * 1000)
    store.put_bytes("k/obj", b"B" * 10)  # shorter: no leftover bytes of the old object
    assert store.get_bytes("k/obj") == b"B" * 10
    store.put_bytes("k/obj", b"B" * 10)  # idempotent: same key, same bytes
    assert store.get_bytes("k/obj") == b"B" * 10
    assert store.list("k/") == ["k/obj"]


def test_readers_never_see_a_partial_object(store):
    # A writer alternates two 1 MiB payloads; every read must be exactly one of them.
    first, second = b"a" * (1 << 20), b"b" * (1 << 20)
    store.put_bytes("atomic/x", first)
    stop = threading.Event()

    def writer():
        for i in range(6):
            store.put_bytes("atomic/x", second if i % 2 == 0 else first)
        stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while not stop.is_set() or reads < 3:
        assert store.get_bytes("atomic/x") in (first, second)
        reads += 1
    thread.join()


def test_list_by_prefix_sorted(store):
    for key in ["runs/b/x.json", "runs/a/z.json", "runs/a/y/deep.npz", "jobs/t/1.json", "runs/ab.json"]:
        store.put_bytes(key, b"{}")
    assert store.list("runs/a/") == ["runs/a/y/deep.npz", "runs/a/z.json"]
    # A prefix is a string prefix, not a folder: "runs/a" also matches "runs/ab.json".
    assert store.list("runs/a") == ["runs/a/y/deep.npz", "runs/a/z.json", "runs/ab.json"]
    assert store.list("") == sorted(["jobs/t/1.json", "runs/a/y/deep.npz", "runs/a/z.json",
                                     "runs/ab.json", "runs/b/x.json"])
    assert store.list("nothing/") == []


def test_json_and_npz_helpers(store):
    store.put_json("runs/r/meta.json", {"classes": ["a", "b"], "n": 3})
    assert store.get_json("runs/r/meta.json") == {"classes": ["a", "b"], "n": 3}
    saliency = np.arange(24, dtype=np.float16).reshape(2, 3, 4)
    labels = np.array([3, -1], dtype=np.int64)
    store.put_npz("runs/r/a.npz", saliency=saliency, labels=labels)
    loaded = store.get_npz("runs/r/a.npz")
    assert set(loaded) == {"saliency", "labels"}
    assert loaded["saliency"].dtype == np.float16 and loaded["saliency"].shape == (2, 3, 4)
    np.testing.assert_array_equal(loaded["saliency"], saliency)
    np.testing.assert_array_equal(loaded["labels"], labels)
    store.put_text("runs/r/t.md", "héllo")
    assert store.get_bytes("runs/r/t.md").decode() == "héllo"


def test_large_object_round_trips(store):
    payload = os.urandom(6 * (1 << 20) + 123)  # over S3's 5 MiB multipart threshold
    store.put_bytes("big/blob", payload)
    assert store.get_bytes("big/blob") == payload


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "..", "a//b", "a/./b", ".hidden", "a/.tmp",
                                 "a\\b", "a/"])
def test_unsafe_keys_refused(store, key):
    for call in (lambda: store.put_bytes(key, b"x"), lambda: store.get_bytes(key),
                 lambda: store.exists(key), lambda: store.delete(key)):
        with pytest.raises(InvalidArgument) as info:
            call()
        assert info.value.field == "key"


# -- S3-specific behaviour ------------------------------------------------------------------------


def test_s3_prefix_isolates_stores_and_url(s3_server):
    bucket = "i2x-prefix-test"
    a = s3_server.store(bucket=bucket, prefix="tenant-a")
    b = s3_server.store(bucket=bucket, prefix="tenant-b/")
    whole = s3_server.store(bucket=bucket)
    a.put_bytes("x.json", b"1")
    assert a.url == "s3://i2x-prefix-test/tenant-a" and whole.url == "s3://i2x-prefix-test"
    assert not b.exists("x.json") and b.list("") == []
    assert whole.list("") == ["tenant-a/x.json"]


def test_s3_from_url_reads_settings_and_fallback_credentials(s3_server, monkeypatch):
    for name in ["I2X_S3_ACCESS_KEY", "I2X_S3_SECRET_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("I2X_S3_ENDPOINT", f"http://{s3_server.endpoint}")
    monkeypatch.setenv("MINIO_ROOT_USER", "minio-user")
    monkeypatch.setenv("MINIO_ROOT_PASSWORD", "minio-pass")
    store = S3Store.from_url("s3://i2x-from-url/runs-prefix")
    assert store.url == "s3://i2x-from-url/runs-prefix" and store.secure is False
    assert store.client._provider.retrieve().access_key == "minio-user"
    store.put_json("a.json", [1])
    assert open_store("s3://i2x-from-url/runs-prefix").get_json("a.json") == [1]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "aws-user")  # AWS_* wins over MINIO_ROOT_*
    assert S3Store.from_url("s3://i2x-from-url").client._provider.retrieve().access_key == "aws-user"
    monkeypatch.setenv("I2X_S3_ACCESS_KEY", "i2x-user")  # I2X_* wins over both
    assert S3Store.from_url("s3://i2x-from-url").client._provider.retrieve().access_key == "i2x-user"


@pytest.mark.parametrize("url,field", [("s3://", "store"), ("s3://UPPER_case", "bucket"),
                                       ("s3://ok-bucket/../x", "key")])
def test_s3_bad_urls_refused(url, field, monkeypatch):
    monkeypatch.setenv("I2X_S3_ENDPOINT", "127.0.0.1:9")
    with pytest.raises(InvalidArgument) as info:
        S3Store.from_url(url, create_bucket=False)
    assert info.value.field == field


def test_s3_unreachable_endpoint_is_unavailable_naming_it():
    # Port 9 (discard) on loopback: nothing listens, connection refused at once.
    with pytest.raises(Unavailable) as info:
        S3Store(endpoint="127.0.0.1:9", bucket="anything", access_key="a", secret_key="b", secure=False)
    assert "127.0.0.1:9" in str(info.value)


def test_s3_bad_credentials_are_failed_precondition(s3_server):
    import urllib3

    store = s3_server.store()
    # moto checks credentials only when told to: turn it on for this test, off afterwards.
    http = urllib3.PoolManager()
    http.request("POST", f"http://{s3_server.endpoint}/moto-api/reset-auth", body=b"0")
    try:
        wrong = S3Store(endpoint=s3_server.endpoint, bucket=store.bucket, access_key="nobody",
                        secret_key="wrong", secure=False, create_bucket=False)
        with pytest.raises(FailedPrecondition) as info:
            wrong.get_bytes("x")
        assert info.value.field == "credentials" and "I2X_S3_ACCESS_KEY" in str(info.value)
    finally:
        http.request("POST", f"http://{s3_server.endpoint}/moto-api/reset-auth", body=b"inf")


def test_local_files_follow_the_umask(tmp_path):
    """mkstemp creates 0600 files; results must be readable like any file the user writes."""
    import os

    from i2x.storage import LocalStore

    mask = os.umask(0o022)
    os.umask(mask)
    store = LocalStore(tmp_path)
    store.put_bytes("runs/r/report.html", b"<html></html>")
    mode = (tmp_path / "runs/r/report.html").stat().st_mode & 0o777
    assert mode == 0o666 & ~mask
