"""An S3/MinIO bucket as the store, through the `minio` SDK (any S3-compatible endpoint).

One PUT per object: S3 makes a completed PUT (single or multipart) visible all at once, so a
reader sees the old object or the new one, never a partial one. Errors come back as domain
errors: a missing key -> NotFound, an unreachable endpoint -> Unavailable (naming it), bad
credentials or a missing bucket -> FailedPrecondition (a configuration problem: retrying
will not help).
"""

from __future__ import annotations

import io
import os
import re
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urlparse

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from i2x.core.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from i2x.storage.base import Store, check_key

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
    "ExpiredToken", "InvalidClientTokenId", "AuthorizationHeaderMalformed",
}
_AWS_ENDPOINT = "s3.amazonaws.com"


def _first_set(*values: str | None) -> str:
    return next((value for value in values if value), "")


class S3Store(Store):
    def __init__(
        self,
        *,
        endpoint: str,
        bucket: str,
        access_key: str,
        secret_key: str,
        secure: bool = True,
        region: str | None = None,
        prefix: str = "",
        create_bucket: bool = True,
    ):
        if not isinstance(bucket, str) or not _BUCKET.match(bucket) or ".." in bucket:
            raise InvalidArgument(
                f"{bucket!r} is not a valid bucket name: use 3-63 lowercase letters, digits, '.' or '-'",
                field="bucket",
            )
        # Accept "http://host:port" too: the scheme then decides TLS.
        endpoint = (endpoint or _AWS_ENDPOINT).strip()
        if "://" in endpoint:
            parsed = urlparse(endpoint)
            if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path not in ("", "/"):
                raise InvalidArgument(
                    f"endpoint {endpoint!r} must be host[:port] or http(s)://host[:port] without a path",
                    field="endpoint",
                )
            secure, endpoint = parsed.scheme == "https", parsed.netloc
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        self.endpoint = endpoint
        self.bucket = bucket
        self.secure = bool(secure)
        self.region = region or None
        self.prefix = f"{prefix}/" if prefix else ""
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self._where = f"{'https' if self.secure else 'http'}://{endpoint} (bucket {bucket!r})"
        # Few, quick retries: an outage should surface as Unavailable in seconds, not minutes
        # (the SDK's default retries with long back-off); the gRPC client retries on UNAVAILABLE.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5.0, read=60.0),
            maxsize=16,
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        self.client = Minio(
            endpoint=endpoint,
            access_key=access_key or None,
            secret_key=secret_key or None,
            secure=self.secure,
            region=region or None,
            http_client=http,
        )
        if create_bucket:
            self._ensure_bucket(region or None)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        endpoint: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        secure: bool | str | None = None,
        region: str | None = None,
        create_bucket: bool = True,
    ) -> "S3Store":
        """Open s3://BUCKET[/PREFIX]; settings come from the arguments (flags), else I2X_S3_*.

        Credentials: I2X_S3_ACCESS_KEY / I2X_S3_SECRET_KEY, else AWS_ACCESS_KEY_ID /
        AWS_SECRET_ACCESS_KEY, else MINIO_ROOT_USER / MINIO_ROOT_PASSWORD.
        """
        from i2x import config

        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise InvalidArgument(f"{url!r} is not an S3 URL: use s3://BUCKET[/PREFIX]", field="store")
        secure_text = str(secure) if isinstance(secure, bool) else secure
        secure_value = config.get("I2X_S3_SECURE", secure_text).strip().lower()
        if secure_value not in ("true", "false", "1", "0", "yes", "no"):
            raise InvalidArgument(f"{secure_value!r} is not a boolean: use true or false", field="I2X_S3_SECURE")
        return cls(
            endpoint=config.get("I2X_S3_ENDPOINT", endpoint),
            bucket=parsed.netloc,
            prefix=parsed.path.strip("/"),
            access_key=_first_set(
                config.get("I2X_S3_ACCESS_KEY", access_key),
                os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("MINIO_ROOT_USER"),
            ),
            secret_key=_first_set(
                config.get("I2X_S3_SECRET_KEY", secret_key),
                os.environ.get("AWS_SECRET_ACCESS_KEY"), os.environ.get("MINIO_ROOT_PASSWORD"),
            ),
            secure=secure_value in ("true", "1", "yes"),
            region=config.get("I2X_S3_REGION", region) or None,
            create_bucket=create_bucket,
        )

    # -- error mapping: every SDK call goes through here -------------------------------------
    @contextmanager
    def _errors(self, key: str | None = None) -> Iterator[None]:
        try:
            yield
        except S3Error as error:
            if error.code in ("NoSuchKey", "NoSuchObject") and key is not None:
                raise NotFound(f"no object {key!r} in {self.url}", field="key") from None
            if error.code == "NoSuchBucket":
                raise FailedPrecondition(
                    f"bucket {self.bucket!r} does not exist at {self._where}: create it or let the "
                    "store create it (create_bucket=True)", field="store") from None
            if error.code in _CREDENTIAL_CODES:
                raise FailedPrecondition(
                    f"S3 at {self._where} refused the credentials ({error.code}): check "
                    "I2X_S3_ACCESS_KEY / I2X_S3_SECRET_KEY (or AWS_* / MINIO_ROOT_* variables)",
                    field="credentials") from None
            raise Unavailable(f"S3 at {self._where} answered {error.code}: {error.message}", field="store") from None
        except (ServerError, InvalidResponseError) as error:
            raise Unavailable(f"S3 at {self._where} failed: {error}", field="store") from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            hint = " (is it plain HTTP? set I2X_S3_SECURE=false)" if "SSL" in type(error).__name__ + str(error) else ""
            raise Unavailable(
                f"cannot reach S3 endpoint {self._where}{hint}: {type(error).__name__}", field="store"
            ) from None
        except MinioException as error:
            raise Unavailable(f"S3 at {self._where} failed: {error}", field="store") from None

    def _ensure_bucket(self, region: str | None) -> None:
        with self._errors():
            if self.client.bucket_exists(bucket_name=self.bucket):
                return
            try:
                self.client.make_bucket(bucket_name=self.bucket, location=region)
            except S3Error as error:
                # Another service created it between our check and our create.
                if error.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    # -- Store --------------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        name = self._name(key)
        with self._errors(key):
            self.client.put_object(
                bucket_name=self.bucket, object_name=name, data=io.BytesIO(data), length=len(data),
                content_type=content_type,
            )

    def get_bytes(self, key: str) -> bytes:
        name = self._name(key)
        with self._errors(key):
            response = self.client.get_object(bucket_name=self.bucket, object_name=name)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    def exists(self, key: str) -> bool:
        name = self._name(key)
        try:
            with self._errors(key):
                self.client.stat_object(bucket_name=self.bucket, object_name=name)
            return True
        except NotFound:
            return False

    def list(self, prefix: str) -> list[str]:
        if prefix.startswith("/") or ".." in prefix.split("/"):
            return []
        with self._errors():
            objects = self.client.list_objects(
                bucket_name=self.bucket, prefix=self.prefix + prefix, recursive=True
            )
            return sorted(obj.object_name[len(self.prefix):] for obj in objects if not obj.is_dir)

    def delete(self, key: str) -> None:
        name = self._name(key)
        with self._errors(key):
            self.client.remove_object(bucket_name=self.bucket, object_name=name)
