"""CreateRun checks the checkpoint count before anything is trained or written (hand-computed)."""

from __future__ import annotations

import pytest

from i2x.core.errors import InvalidArgument
from i2x.engine import stages
from i2x.storage import LocalStore

MODEL = {"arch": "small_cnn", "in_channels": 1, "num_classes": 10, "input_size": 28}


def test_create_run_checks_the_checkpoint_count(tmp_path, tiny_mnist_npz, monkeypatch):
    store = LocalStore(tmp_path / "store")
    dataset = {"kind": "npz", "root": tiny_mnist_npz}  # 300 training images
    # batch 32: ceil(300/32) = 10 iterations; every 50 -> 1 checkpoint. Set at most (10 - 1) // 3 = 3.
    with pytest.raises(InvalidArgument, match="gives 1 checkpoint.*at most 3") as err:
        stages.create_run(store, "one", model=MODEL, dataset=dataset,
                          train={"preset": "tiny", "batch_size": 32, "checkpoint_every": 50})
    assert err.value.field == "train.checkpoint_every"
    assert not store.exists("runs/one/run.json") and not store.exists("runs/one/data/explanation.npz")
    # batch 8, every 2: ceil(300/8) = 38 iterations per epoch; 11 epochs = 418 -> 209 checkpoints > 200
    record = stages.create_run(store, "many", model=MODEL, dataset=dataset, train={"preset": "tiny", "epochs": 11},
                               explanation_fraction=0.3)
    assert [w["code"] for w in record["warnings"]] == ["MANY_CHECKPOINTS"]
    assert "209 checkpoints" in record["warnings"][0]["message"]
    assert store.get_json("runs/many/run.json")["warnings"] == record["warnings"]
    few = stages.create_run(store, "few", model=MODEL, dataset=dataset, train={"preset": "tiny"},
                            explanation_fraction=0.3)
    assert few["warnings"] == []
    # above I2X_MAX_CHECKPOINTS: refused
    monkeypatch.setenv("I2X_MAX_CHECKPOINTS", "100")
    with pytest.raises(InvalidArgument, match="above the limit of 100") as err:
        stages.create_run(store, "too-many", model=MODEL, dataset=dataset, train={"preset": "tiny", "epochs": 11},
                          explanation_fraction=0.3)
    assert err.value.field == "train.checkpoint_every"
