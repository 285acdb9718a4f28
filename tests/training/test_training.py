"""Training with checkpoints (seeded, deterministic), presets, evaluation."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from i2x.core.errors import Cancelled, InvalidArgument
from i2x.core.training import PRESETS, TrainConfig, evaluate, seeded_build, train
from i2x.data import ArrayDataset, DatasetSpec, dataset_stats, load_dataset
from i2x.models import SmallCNN

MEAN, STD = dataset_stats(DatasetSpec())


@pytest.fixture(scope="module")
def small_train():
    splits = load_dataset(DatasetSpec())
    idx = np.arange(0, 4000, 125)  # 32 images, spread over the classes
    return splits.train.subset(idx)


def _run(data, **overrides):
    config = TrainConfig.from_preset("tiny", **overrides)
    model = seeded_build(lambda: SmallCNN(width=4), config.seed)
    checkpoints = []
    records = train(model, data, config, mean=MEAN, std=STD, on_checkpoint=checkpoints.append)
    return model, checkpoints, records


def test_checkpoints_every_n_iterations_and_at_the_end(small_train):
    # 32 images, batch 8 -> 4 iterations; every 3 -> step 3, then the end (step 4).
    _, checkpoints, records = _run(small_train, checkpoint_every=3)
    assert [c.step for c in checkpoints] == [3, 4]
    assert [r["step"] for r in records] == [3, 4] and records[-1]["epoch"] == 1
    assert set(records[0]) == {"step", "epoch", "seed", "loss", "accuracy"}
    assert 0.0 <= records[0]["accuracy"] <= 1.0 and records[0]["loss"] > 0
    _, checkpoints, _ = _run(small_train, include_initial=True)
    assert [c.step for c in checkpoints] == [0, 2, 4]


def test_same_seed_same_weights_other_seed_differs(small_train):
    first, _, _ = _run(small_train, seed=3)
    again, _, _ = _run(small_train, seed=3)
    other, _, _ = _run(small_train, seed=4)
    for key, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])
    assert not torch.equal(first.fc.weight, other.fc.weight)


def test_checkpoint_states_are_snapshots(small_train):
    model, checkpoints, _ = _run(small_train, checkpoint_every=1)
    assert not torch.equal(checkpoints[0].state_dict["fc.weight"], checkpoints[-1].state_dict["fc.weight"])
    assert torch.equal(checkpoints[-1].state_dict["fc.weight"], model.fc.weight.detach())


def test_cancel_stops_training(small_train):
    event = threading.Event()
    event.set()
    with pytest.raises(Cancelled):
        _run_cancelled(small_train, event)


def _run_cancelled(data, event):
    config = TrainConfig.from_preset("tiny")
    train(SmallCNN(width=4), data, config, mean=MEAN, std=STD, on_checkpoint=lambda c: None, cancel=event)


def test_progress_reports_every_iteration(small_train):
    seen = []
    config = TrainConfig.from_preset("tiny")
    train(SmallCNN(width=4), small_train, config, mean=MEAN, std=STD, on_checkpoint=lambda c: None,
          progress=lambda done, total, message: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_presets_and_validation():
    paper = PRESETS["paper-mnist"]
    assert (paper.batch_size, paper.epochs, paper.checkpoint_every) == (128, 2, 40)
    demo = TrainConfig.from_preset("demo")
    # demo on the 4,000-image mnist5k train split: ceil(4000/64) * 4 = 63 * 4 = 252 iterations, a
    # checkpoint every 16 -> 15 (16..240), plus the end (252) -> 16 checkpoints.
    assert -(-4000 // demo.batch_size) * demo.epochs == 252 and 252 // demo.checkpoint_every + 1 == 16
    assert TrainConfig.from_dict(demo.to_dict()) == demo
    with pytest.raises(InvalidArgument, match="paper-mnist"):
        TrainConfig.from_preset("fast")
    with pytest.raises(InvalidArgument, match="optimizer") as err:
        TrainConfig.from_preset("demo", optimizer="lbfgs")
    assert err.value.field == "train.optimizer"


class _MeanThreshold(nn.Module):
    """Predicts class 1 when the image's mean is positive, else class 0 (3 classes)."""

    def forward(self, x):
        positive = (x.mean(dim=(1, 2, 3)) > 0).float()
        return torch.stack([1 - positive, positive, torch.zeros_like(positive)], dim=1)


def test_evaluate_confusion_by_hand():
    model = _MeanThreshold()
    images = np.array([0, 255, 255, 0, 255], dtype=np.uint8).reshape(5, 1, 1, 1)
    data = ArrayDataset(images, np.array([0, 1, 0, 2, 1]), ["a", "b", "c"])
    result = evaluate(model, data, mean=(0.5,), std=(0.5,), batch_size=2)
    # pixel 0 -> -1 -> class 0; pixel 255 -> +1 -> class 1. predictions [0, 1, 1, 0, 1]
    assert result["predictions"].tolist() == [0, 1, 1, 0, 1]
    # true 0: predicted 0 once, 1 once; true 1: predicted 1 twice; true 2: predicted 0 once.
    assert result["confusion"].tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert result["accuracy"] == pytest.approx(3 / 5)
