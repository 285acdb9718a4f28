"""The artifact store interface. Two backends implement it: LocalStore and S3Store.

Keys are '/'-separated strings (see keys.py and check_key below). Every put is atomic: a
reader sees the old object or the new one, never a partial one; putting the same bytes under
the same key again changes nothing (idempotent). Helpers for JSON and .npz sit on top of bytes.
"""

from __future__ import annotations

import io
import json
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from i2x.core.errors import InvalidArgument


# S3 caps a key at 1024 bytes; local filesystems a name at 255 (a LocalStore key part is a file name).
MAX_KEY_BYTES = 1024
MAX_KEY_PART_BYTES = 200


def check_key(key: str) -> str:
    """Return `key` when every backend can store it the same way, else raise InvalidArgument.

    A key is '/'-separated segments, none empty, none '.' or '..', none starting with '.'
    (LocalStore uses dot-files for its temporary writes), no backslash or NUL.
    """
    from i2x.limits import quote

    if not isinstance(key, str) or not key:
        raise InvalidArgument(f"unsafe key {quote(key)}: give a non-empty '/'-separated key", field="key")
    if len(key.encode()) > MAX_KEY_BYTES or any(len(part.encode()) > MAX_KEY_PART_BYTES for part in key.split("/")):
        raise InvalidArgument(f"key {quote(key)} is too long: give at most {MAX_KEY_BYTES} bytes, "
                              f"{MAX_KEY_PART_BYTES} per '/'-separated part", field="key")
    bad = [part for part in key.split("/") if not part or part.startswith(".")]
    if key.startswith("/") or bad or "\\" in key or "\x00" in key:
        raise InvalidArgument(
            f"unsafe key {quote(key)}: use '/'-separated parts that are non-empty, do not start with '.' "
            "and contain no backslash (no absolute paths, no '..')",
            field="key",
        )
    return key


class Store(ABC):
    """Bytes in, bytes out, by key."""

    url: str

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Raise i2x.core.errors.NotFound when the key does not exist."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """All keys starting with `prefix`, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one key; deleting a missing key is not an error."""

    # Typed helpers shared by every backend.
    def put_json(self, key: str, obj: Any) -> None:
        self.put_bytes(key, json.dumps(obj, indent=2, sort_keys=False).encode(), "application/json")

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def put_npz(self, key: str, **arrays: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        self.put_bytes(key, buffer.getvalue(), "application/octet-stream")

    def get_npz(self, key: str) -> dict[str, np.ndarray]:
        with np.load(io.BytesIO(self.get_bytes(key)), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}

    def put_text(self, key: str, text: str, content_type: str = "text/plain; charset=utf-8") -> None:
        self.put_bytes(key, text.encode(), content_type)
