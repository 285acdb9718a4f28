"""StagedStore: writes reach the store only at commit(), in the order written; reads see them."""

from __future__ import annotations

import numpy as np
import pytest

from i2x.core.errors import InvalidArgument
from i2x.storage import LocalStore
from i2x.storage.staged import StagedStore


def test_nothing_reaches_the_store_before_commit(tmp_path):
    store = LocalStore(tmp_path)
    store.put_json("runs/r/a.json", {"v": 1})
    staged = StagedStore(store)
    staged.put_json("runs/r/a.json", {"v": 2})
    staged.put_npz("runs/r/b.npz", x=np.arange(3))
    assert store.get_json("runs/r/a.json") == {"v": 1} and not store.exists("runs/r/b.npz")
    assert staged.get_json("runs/r/a.json") == {"v": 2} and staged.exists("runs/r/b.npz")
    assert staged.list("runs/r/") == ["runs/r/a.json", "runs/r/b.npz"]
    assert staged.commit() == ["runs/r/a.json", "runs/r/b.npz"]
    assert store.get_json("runs/r/a.json") == {"v": 2}
    np.testing.assert_array_equal(store.get_npz("runs/r/b.npz")["x"], [0, 1, 2])
    assert staged.pending == []


def test_a_discarded_stage_leaves_nothing_and_bad_keys_are_refused_at_once(tmp_path):
    store = LocalStore(tmp_path)
    staged = StagedStore(store)
    staged.put_text("runs/r/t.md", "x")
    staged.discard()
    assert staged.commit() == [] and store.list("") == []
    with pytest.raises(InvalidArgument):
        staged.put_text("../escape", "x")


def test_a_commit_that_fails_midway_can_be_committed_again(tmp_path):
    class FailsOnce(LocalStore):
        failed = False

        def put_bytes(self, key, data, content_type="application/octet-stream"):
            if key.endswith("second") and not self.failed:
                self.failed = True
                raise OSError("disk full")
            super().put_bytes(key, data, content_type)

    store = FailsOnce(tmp_path)
    staged = StagedStore(store)
    staged.put_text("k/first", "1")
    staged.put_text("k/second", "2")
    with pytest.raises(OSError):
        staged.commit()
    assert store.exists("k/first") and not store.exists("k/second") and staged.pending == ["k/second"]
    assert staged.commit() == ["k/second"] and store.get_bytes("k/second") == b"2"
