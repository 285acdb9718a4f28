"""Training with checkpoints (seeded, deterministic), presets, evaluation."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from i2x.core.errors import Cancelled, InvalidArgument
from i2x.core.training import PRESETS, PROGRESS_EVERY_STEPS, TrainConfig, evaluate, seeded_build, train
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


def test_progress_every_n_iterations_at_checkpoints_and_at_the_end(small_train):
    seen = []
    # 32 images, batch 2, 2 epochs: 32 iterations; checkpoints 12, 24 and 32; progress every 10 too
    config = TrainConfig.from_preset("tiny", batch_size=2, epochs=2, checkpoint_every=12)
    train(SmallCNN(width=4), small_train, config, mean=MEAN, std=STD, on_checkpoint=lambda c: None,
          progress=lambda done, total, message: seen.append((done, total)))
    assert PROGRESS_EVERY_STEPS == 10
    assert seen == [(10, 32), (12, 32), (20, 32), (24, 32), (30, 32), (32, 32)]


def _reference_train(data, config: TrainConfig):
    """train() written out with a host read of every step's loss and correct count (what it did
    before it summed them on the device): each step's loss, each checkpoint's (step, loss,
    accuracy), and the model. Adam, the one-cycle schedule, no eval set, on the CPU."""
    from i2x.data import to_tensor

    model = seeded_build(lambda: SmallCNN(width=4), config.seed)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                 weight_decay=config.weight_decay)
    per_epoch = -(-len(data) // config.batch_size)
    total = per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
    labels = torch.from_numpy(np.asarray(data.labels, dtype=np.int64))
    rng = np.random.default_rng(config.seed)
    losses, checkpoints = [], []
    loss_sum, correct, seen, batches, step = 0.0, 0, 0, 0, 0
    model.train()
    for _epoch in range(config.epochs):
        order = rng.permutation(len(data))
        for start in range(0, len(data), config.batch_size):
            batch = order[start:start + config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            logits = model(to_tensor(data.images[batch], MEAN, STD))
            loss = nn.functional.cross_entropy(logits, labels[batch])
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(loss.item())
            loss_sum += losses[-1]
            correct += int((logits.argmax(1) == labels[batch]).sum())
            seen, batches = seen + len(batch), batches + 1
            if step % config.checkpoint_every == 0 or step == total:
                checkpoints.append((step, loss_sum / batches, correct / seen))
                loss_sum, correct, seen, batches = 0.0, 0, 0, 0
    return losses, checkpoints, model


def test_losses_summed_on_the_device_are_those_of_a_per_step_read(small_train):
    config = TrainConfig.from_preset("tiny", batch_size=2, epochs=2, checkpoint_every=12, schedule="onecycle",
                                     device="cpu")
    losses, expected, reference = _reference_train(small_train, config)
    model = seeded_build(lambda: SmallCNN(width=4), config.seed)
    events = []
    records = train(model, small_train, config, mean=MEAN, std=STD, on_checkpoint=lambda c: None,
                    progress=lambda done, total, message: events.append((done, message)))
    # the checkpoints' mean loss and accuracy, to the bit; the weights too
    assert [(r["step"], r["loss"], r["accuracy"]) for r in records] == expected
    assert len({loss for _, loss, _ in expected}) == 3  # the figures differ: not a constant matched
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    # each progress message shows its own step's loss
    assert events == [(step, f"epoch {1 + (step - 1) // 16}/2 loss {losses[step - 1]:.4f}")
                      for step in (10, 12, 20, 24, 30, 32)]


def test_the_loop_reads_the_device_at_reports_and_checkpoints_only(small_train, monkeypatch):
    """A host read of a tensor (item, float, int, ...) from i2x.core.training is a GPU->CPU sync
    on CUDA: counted here on the CPU, there is none at the iterations between reports."""
    import sys

    from i2x.core import training

    reads = []
    for name in ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__index__", "__bool__"):
        method = getattr(torch.Tensor, name)

        def counted(self, *args, _method=method, _name=name, **kwargs):
            if sys._getframe(1).f_globals.get("__name__") == training.__name__:
                reads.append(_name)
            return _method(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    config = TrainConfig.from_preset("tiny", batch_size=2, epochs=2, checkpoint_every=12)  # 32 iterations
    events = []
    records = train(SmallCNN(width=4), small_train, config, mean=MEAN, std=STD, on_checkpoint=lambda c: None,
                    progress=lambda *event: events.append(event))
    # one read for each report's loss; two (loss and correct sums) for each checkpoint
    assert (len(events), len(records)) == (6, 3)
    assert len(reads) == len(events) + 2 * len(records) and sorted(set(reads)) == ["__float__", "__int__"]
    reads.clear()
    train(SmallCNN(width=4), small_train, config, mean=MEAN, std=STD, on_checkpoint=lambda c: None)
    assert len(reads) == 2 * 3  # no progress (fine-tuning's stages): only the checkpoints


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
