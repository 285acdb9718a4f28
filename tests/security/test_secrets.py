"""Secrets stay where they are: nothing secret reaches a Ray runtime_env or a remote worker's spec."""

from __future__ import annotations

from i2x import config, raycluster
from i2x.interpretation.fanout import store_spec


def test_runtime_env_carries_only_public_settings(monkeypatch):
    monkeypatch.setenv("I2X_API_TOKEN", "tok-123")
    monkeypatch.setenv("I2X_S3_ACCESS_KEY", "ak-123")
    monkeypatch.setenv("I2X_S3_SECRET_KEY", "sk-123")
    monkeypatch.setenv("I2X_TLS_KEY", "/etc/i2x/tls/tls.key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-123")
    monkeypatch.setenv("MINIO_ROOT_PASSWORD", "minio-123")
    monkeypatch.setenv("I2X_TORCH_THREADS", "3")
    monkeypatch.setenv("I2X_S3_ENDPOINT", "minio:9000")
    env = raycluster.worker_env()
    assert env["I2X_TORCH_THREADS"] == "3" and env["I2X_S3_ENDPOINT"] == "minio:9000"
    assert not {"tok-123", "ak-123", "sk-123", "aws-123", "minio-123", "/etc/i2x/tls/tls.key"} & set(env.values())
    secret = {s.env for s in config.SETTINGS if s.secret}
    assert secret >= {"I2X_API_TOKEN", "I2X_S3_ACCESS_KEY", "I2X_S3_SECRET_KEY"} and not secret & set(env)


def test_remote_workers_get_no_s3_keys_local_ones_may(monkeypatch, s3_store):
    from s3server import SECRET_KEY

    monkeypatch.setenv("I2X_RAY_ADDRESS", "ray://i2x-ray-head-svc:10001")
    remote = store_spec(s3_store)
    assert remote["url"] == s3_store.url and remote["endpoint"] == s3_store.endpoint
    assert "access_key" not in remote and "secret_key" not in remote and SECRET_KEY not in str(remote)
    monkeypatch.setenv("I2X_RAY_ADDRESS", "local")  # workers are this process's children
    assert store_spec(s3_store)["secret_key"] == SECRET_KEY
