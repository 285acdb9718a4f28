"""The checkpoint count a training will take, checked before it starts (hand-computed)."""

from __future__ import annotations

import pytest

from i2x.core.errors import InvalidArgument
from i2x.core.training import TrainConfig, check_checkpoint_count, estimate_checkpoints


def test_estimate_by_hand():
    # demo preset on the 4,000 mnist5k train images: ceil(4000/64) = 63 iterations x 4 epochs = 252;
    # a checkpoint every 16 -> 15 full intervals + the last step = ceil(252/16) = 16
    assert estimate_checkpoints(4000, TrainConfig.from_preset("demo")) == 16
    # tiny preset (batch 8, 1 epoch, every 2) on the same images: 500 iterations -> 250 checkpoints
    assert estimate_checkpoints(4000, TrainConfig.from_preset("tiny")) == 250
    # step 0 counts when include_initial
    assert estimate_checkpoints(48, TrainConfig.from_preset("tiny", include_initial=True)) == 3 + 1


def test_the_demo_keeps_16_checkpoints():
    from i2x.demo import DATASET, DEMO_TRAIN

    # test_fraction 0.6 of 5,000 leaves 2,000 training images: ceil(2000/64) = 32 x 2 epochs = 64
    # iterations, a checkpoint every 4 -> 16
    assert DATASET["test_fraction"] == 0.6
    assert estimate_checkpoints(2000, TrainConfig.from_preset("demo", **DEMO_TRAIN)) == 16


def test_too_few_checkpoints_name_the_value_to_set():
    # 640 images / 64 = 10 iterations, every 16 -> only the last step: 1 checkpoint
    with pytest.raises(InvalidArgument, match="gives 1 checkpoint.*at most 3") as err:
        check_checkpoint_count(640, TrainConfig.from_preset("demo", epochs=1), 2000)
    assert err.value.field == "train.checkpoint_every"
    # one iteration in all: no checkpoint_every helps
    with pytest.raises(InvalidArgument, match="raise train.epochs") as err:
        check_checkpoint_count(64, TrainConfig.from_preset("demo", epochs=1), 2000)
    assert err.value.field == "train.epochs"


def test_too_many_checkpoints_are_refused_and_many_warned():
    tiny = TrainConfig.from_preset("tiny")
    # 250 > 200: allowed under the default limit, with a warning naming checkpoint_every >= ceil(500/200) = 3
    warnings = check_checkpoint_count(4000, tiny, 2000)
    assert [w["code"] for w in warnings] == ["MANY_CHECKPOINTS"]
    assert "250 checkpoints" in warnings[0]["message"] and "checkpoint_every >= 3" in warnings[0]["message"]
    # a limit of 100: refused; every >= ceil(500 / 99) = 6 gives ceil(500/6) = 84 <= 100
    with pytest.raises(InvalidArgument, match="above the limit of 100.*at least 6") as err:
        check_checkpoint_count(4000, tiny, 100)
    assert err.value.field == "train.checkpoint_every"
    assert estimate_checkpoints(4000, TrainConfig.from_preset("tiny", checkpoint_every=6)) == 84
    assert check_checkpoint_count(4000, TrainConfig.from_preset("demo"), 2000) == []
