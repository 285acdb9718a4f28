"""Commit-or-nothing writes for a stage: StagedStore holds every put until commit().

A stage that writes several artifacts (explain_run: intensity, mapping, explanation) wraps its
store in a StagedStore, writes through it, and calls commit() only once everything is computed.
A stage that fails or is cancelled before commit() leaves the store exactly as it was: a
finished stage's artifacts are never replaced by half of a failed try, and nothing is left
that blocks the next try. Reads through the wrapper see the pending writes (a stage may read
back what it wrote). The writes are held in memory, so this is for artifacts of a few MiB to
a few hundred MiB, not for checkpoints of a whole run.

commit() puts the pending objects in the order they were written, so a stage writes its
"done" artifact (the one later stages and the skip check look for) last; an outage during
commit() can leave the earlier objects new and the last one old, never the reverse.
"""

from __future__ import annotations

from i2x.storage.base import Store, check_key


class StagedStore(Store):
    def __init__(self, store: Store):
        self.inner = store
        self.url = store.url
        self._pending: dict[str, tuple[bytes, str]] = {}

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        check_key(key)
        self._pending.pop(key, None)  # re-putting a key moves it to the end of the commit order
        self._pending[key] = (bytes(data), content_type)

    def get_bytes(self, key: str) -> bytes:
        if key in self._pending:
            return self._pending[key][0]
        return self.inner.get_bytes(key)

    def exists(self, key: str) -> bool:
        return key in self._pending or self.inner.exists(key)

    def list(self, prefix: str) -> list[str]:
        return sorted(set(self.inner.list(prefix)) | {k for k in self._pending if k.startswith(prefix)})

    def delete(self, key: str) -> None:
        raise NotImplementedError("a StagedStore only stages puts; delete through the store itself")

    @property
    def pending(self) -> list[str]:
        """Keys written and not committed yet, in commit order."""
        return list(self._pending)

    def commit(self) -> list[str]:
        """Put every pending object into the store, in the order written; returns their keys."""
        keys = []
        while self._pending:
            key = next(iter(self._pending))
            data, content_type = self._pending[key]
            self.inner.put_bytes(key, data, content_type)
            del self._pending[key]  # only once stored: a failed commit() can be called again
            keys.append(key)
        return keys

    def discard(self) -> None:
        self._pending.clear()
