"""Training with checkpoints, and evaluation. No I/O: checkpoints go to a callback.

Checkpoints are taken every ``checkpoint_every`` iterations and after the last iteration. The
untrained model (step 0) is not a checkpoint unless ``include_initial=True``: the paper analyses
steps 40, 80, ... and a random initialisation's saliency carries no prototypes.

Host reads: the loss and the correct count of each step are summed on the model's device and read
(a GPU->CPU sync each) only at a checkpoint and when progress is reported, every
PROGRESS_EVERY_STEPS iterations and at checkpoints and the last one, not at every step. The sums
are float64 (int64), the same additions in the same order as a Python sum of each step's value,
so the figures are those of a per-step read, to the bit (float32 on MPS, which has no float64).

Determinism: the data order is a numpy permutation per epoch drawn from ``seed``; the weight
initialisation is the caller's (``torch.manual_seed(config.seed)`` before ``build_model``, which
``seeded_build`` does).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import nn

from i2x.core.checkpoint_count import MANY_CHECKPOINTS
from i2x.core.device import DEVICE_HELP, check_device, resolve_device
from i2x.core.errors import Cancelled, InvalidArgument, check_fields

if TYPE_CHECKING:  # i2x.data imports this module's neighbours; only the annotation needs it
    from i2x.data import ArrayDataset

OPTIMIZERS = ("sgd", "adam")
PROGRESS_EVERY_STEPS = 10  # progress (with that step's loss) this often, and at checkpoints and the end
SCHEDULES = ("constant", "cosine", "onecycle")


@dataclass
class TrainConfig:
    preset: str = "demo"
    epochs: int = 4
    batch_size: int = 64
    lr: float = 3e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "onecycle"
    checkpoint_every: int = 16
    seed: int = 0
    device: str = "auto"  # cpu | cuda | cuda:N | mps | auto (i2x.core.device: a GPU when torch sees one)
    include_initial: bool = False

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "TrainConfig":
        if name not in PRESETS:
            raise InvalidArgument(f"unknown training preset {name!r}; choose one of {sorted(PRESETS)}",
                                  field="train.preset")
        overrides = check_fields(cls, overrides, "train")
        config = replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
        config.validate()
        return config

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        config = cls(**check_fields(cls, d, "train"))
        config.validate()
        return config

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs", f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, "batch_size", f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, "lr", f"lr must be > 0, got {self.lr}"),
            (self.optimizer in OPTIMIZERS, "optimizer", f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"),
            (self.schedule in SCHEDULES, "schedule", f"schedule must be one of {SCHEDULES}, got {self.schedule!r}"),
            (self.checkpoint_every >= 1, "checkpoint_every",
             f"checkpoint_every must be >= 1 iteration, got {self.checkpoint_every}"),
            (self.weight_decay >= 0, "weight_decay", f"weight_decay must be >= 0, got {self.weight_decay}"),
            (_device_ok(self.device), "device", f"device must be {DEVICE_HELP}, got {self.device!r}"),
        ]
        for ok, name, message in checks:
            if not ok:
                raise InvalidArgument(message, field=f"train.{name}")


PRESETS: dict[str, TrainConfig] = {
    # The paper's MNIST setting: batch 128, 2 epochs, analysis every 40 iterations. Its learning rate
    # is lost from the text; SGD 0.01 with momentum is the usual choice for ResNet-50 on MNIST.
    "paper-mnist": TrainConfig(preset="paper-mnist", epochs=2, batch_size=128, lr=0.01, optimizer="sgd",
                               momentum=0.9, weight_decay=5e-4, schedule="constant", checkpoint_every=40),
    # The small CNN on the 4,000-image mnist5k train split: 252 iterations, 16 checkpoints; measured
    # 97.9% test accuracy (seeds 0 and 1) in about 20-50 s on the 2-core dev machine.
    "demo": TrainConfig(preset="demo"),
    # For tests: a few iterations on a few dozen images.
    "tiny": TrainConfig(preset="tiny", epochs=1, batch_size=8, lr=0.01, optimizer="adam", schedule="constant",
                        checkpoint_every=2),
}


@dataclass
class Checkpoint:
    step: int
    epoch: int
    loss: float
    accuracy: float
    state_dict: dict

    def metadata(self, seed: int, arch: str | None = None) -> dict:
        meta = {"step": self.step, "epoch": self.epoch, "seed": seed, "loss": self.loss, "accuracy": self.accuracy}
        if arch is not None:
            meta["arch"] = arch
        return meta


def seeded_build(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """`build()` under torch.manual_seed(seed): the same seed gives the same initial weights."""
    torch.manual_seed(seed)
    return build()


def iterations_per_epoch(n_samples: int, batch_size: int) -> int:
    return math.ceil(n_samples / batch_size)


def estimate_checkpoints(n_samples: int, config: TrainConfig) -> int:
    """How many checkpoints train() takes on n_samples: one every checkpoint_every iterations, one
    after the last iteration (when it is not already one), and step 0 with include_initial."""
    total = iterations_per_epoch(n_samples, config.batch_size) * config.epochs
    return math.ceil(total / config.checkpoint_every) + int(bool(config.include_initial))


def check_checkpoint_count(n_samples: int, config: TrainConfig, max_checkpoints: int) -> list[dict]:
    """Refuse a training whose checkpoint count (estimate_checkpoints) is < 2 (no dynamics at all) or
    > max_checkpoints, naming the value to set; [{code, message}] warnings above MANY_CHECKPOINTS."""
    count = estimate_checkpoints(n_samples, config)
    total = iterations_per_epoch(n_samples, config.batch_size) * config.epochs
    where = (f"{n_samples} training images, batch_size {config.batch_size}, {config.epochs} epoch(s): {total} "
             f"iterations, a checkpoint every {config.checkpoint_every}")
    if count < 2:
        if total >= 2:
            raise InvalidArgument(f"{where} gives {count} checkpoint; the method needs at least 2 (better 4 or more): "
                                  f"set train.checkpoint_every to at most {max(1, (total - 1) // 3)}",
                                  field="train.checkpoint_every")
        raise InvalidArgument(f"{where} gives {count} checkpoint; the method needs at least 2: raise train.epochs "
                              "or lower train.batch_size", field="train.epochs")
    if count > max_checkpoints:
        every = math.ceil(total / max(max_checkpoints - 1, 1))
        raise InvalidArgument(f"{where} gives {count} checkpoints, above the limit of {max_checkpoints} "
                              f"(I2X_MAX_CHECKPOINTS): set train.checkpoint_every to at least {every}",
                              field="train.checkpoint_every")
    if count > MANY_CHECKPOINTS:
        every = math.ceil(total / MANY_CHECKPOINTS)
        return [{"code": "MANY_CHECKPOINTS",
                 "message": f"{where} gives {count} checkpoints (more than {MANY_CHECKPOINTS}): every one is "
                            "interpreted, so the run is slow, and the report's figures show at most "
                            f"{MANY_CHECKPOINTS} of them (docs/REPORT.md); "
                            f"train.checkpoint_every >= {every} keeps it under {MANY_CHECKPOINTS}"}]
    return []


def train(model: nn.Module, train: ArrayDataset, config: TrainConfig, *, mean, std,
          on_checkpoint: Callable[[Checkpoint], None], progress=None, cancel=None,
          eval_set=None) -> list[dict]:
    """Train `model` in place; call `on_checkpoint` every `checkpoint_every` iterations and at the end.

    Checkpoint.accuracy is the accuracy on `eval_set` when given, else the running training accuracy
    since the previous checkpoint; Checkpoint.loss is the mean training loss over that interval.
    progress(step, total, message with that step's loss) every PROGRESS_EVERY_STEPS iterations, at
    each checkpoint and at the last iteration.
    Returns the checkpoints' metadata (step, epoch, seed, loss, accuracy), in order.
    """
    from i2x.data import to_tensor

    config.validate()
    if len(train) == 0:
        raise InvalidArgument("the training set is empty; give a dataset with samples", field="dataset")
    device = resolve_device(config.device, field="train.device")  # a GPU asked for and absent: an error
    model.to(device)
    optimizer = _optimizer(model, config)
    per_epoch = iterations_per_epoch(len(train), config.batch_size)
    total = per_epoch * config.epochs
    scheduler = _scheduler(optimizer, config, total)
    loss_fn = nn.CrossEntropyLoss()
    labels_all = torch.from_numpy(np.asarray(train.labels, dtype=np.int64))
    order_rng = np.random.default_rng(config.seed)
    records: list[dict] = []
    # the interval's sums stay on the device (no sync per step); seen and batches are host counts
    loss_sum = torch.zeros((), dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    interval = {"seen": 0, "batches": 0}

    def emit(step: int, epoch: int) -> None:
        if eval_set is not None:
            accuracy = evaluate(model, eval_set, mean=mean, std=std)["accuracy"]
            model.train()
        else:
            accuracy = int(correct) / max(interval["seen"], 1)
        loss = float(loss_sum) / max(interval["batches"], 1)
        state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
        checkpoint = Checkpoint(step=step, epoch=epoch, loss=float(loss), accuracy=float(accuracy), state_dict=state)
        on_checkpoint(checkpoint)
        records.append(checkpoint.metadata(config.seed))
        loss_sum.zero_()
        correct.zero_()
        interval.update(seen=0, batches=0)

    model.train()
    if config.include_initial:
        emit(0, 0)
    step = 0
    for epoch in range(config.epochs):
        permutation = order_rng.permutation(len(train))
        for start in range(0, len(train), config.batch_size):
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"training cancelled at step {step} of {total}")
            batch = permutation[start:start + config.batch_size]
            x = to_tensor(train.images[batch], mean, std)
            y = labels_all[batch]
            if device.type == "cuda":
                # page-locked, so the copies below are asynchronous (from pageable memory the driver
                # may wait for the stream: a sync per step)
                x, y = x.pin_memory(), y.pin_memory()
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            logits = model(x)
            loss = loss_fn(logits, y)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
            loss_sum.add_(loss.detach().to(loss_sum.dtype))
            correct.add_((logits.detach().argmax(1) == y).sum())
            interval["batches"] += 1
            interval["seen"] += len(batch)
            checkpoint_due = step % config.checkpoint_every == 0 or step == total
            if checkpoint_due:
                emit(step, epoch + 1 if step % per_epoch == 0 else epoch)
            if progress is not None and (checkpoint_due or step % PROGRESS_EVERY_STEPS == 0):
                progress(step, total, f"epoch {epoch + 1}/{config.epochs} loss {float(loss.detach()):.4f}")
    return records


def evaluate(model: nn.Module, data, *, mean, std, batch_size: int = 256) -> dict:
    """Accuracy, confusion matrix (K, K; rows true, columns predicted) and predictions on `data`."""
    from i2x.data import to_tensor

    was_training = model.training
    model.eval()
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    predictions = np.empty(len(data), dtype=np.int64)
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            x = to_tensor(data.images[start:start + batch_size], mean, std).to(device)
            predictions[start:start + batch_size] = model(x).argmax(1).cpu().numpy()
    model.train(was_training)
    k = len(data.classes)
    labels = np.asarray(data.labels, dtype=np.int64)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    accuracy = float((predictions == labels).mean()) if len(labels) else 0.0
    return {"accuracy": accuracy, "confusion": confusion, "predictions": predictions}


def _device_ok(text) -> bool:
    try:
        check_device(text)
    except InvalidArgument:
        return False
    return True


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def _scheduler(optimizer, config: TrainConfig, total: int):
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
    return None
