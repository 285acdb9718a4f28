"""Fine-tuning (protocol, repeat) units fanned out as Ray tasks (the session's real local Ray)
give the serial run's table."""

from __future__ import annotations

import numpy as np
import pytest

from i2x.core.errors import Unavailable
from i2x.core.finetune import protocol_runs, run_protocols
from i2x.core.training import TrainConfig, seeded_build, train
from i2x.data import DatasetSpec, dataset_stats, load_dataset
from i2x.models import SmallCNN
from i2x.training import ray_tasks

MEAN, STD = dataset_stats(DatasetSpec())
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def setting():
    splits = load_dataset(DatasetSpec())
    full = splits.train.subset(np.arange(0, 4000, 50))  # 80 images
    curated = full.subset(np.arange(0, 80, 2))  # 40 images
    test = splits.test.subset(np.arange(0, 1000, 20))  # 50 images
    model = seeded_build(lambda: SmallCNN(width=4), 0)
    states = []
    train(model, full, TrainConfig.from_preset("tiny", device="cpu", epochs=4, lr=3e-2), mean=MEAN, std=STD,
          on_checkpoint=states.append)
    return full, curated, test, states[-1].state_dict


def test_units_are_protocol_times_repeat_in_table_order():
    assert protocol_runs(("full", "curated->full"), 2) == [("full", 0), ("full", 1), ("curated->full", 0),
                                                           ("curated->full", 1)]


def test_ray_fanout_equals_the_serial_run(setting, ray_local, monkeypatch):
    full, curated, test, final = setting
    kwargs = dict(mean=MEAN, std=STD, protocols=("full", "curated->full"), repeats=2, lr=1e-2, batch_size=8,
                  device="auto")
    serial = run_protocols(lambda: SmallCNN(width=4), final, full, curated, test, (2, 7), **kwargs)

    monkeypatch.setenv("I2X_TRAIN_ON_RAY", "true")
    monkeypatch.setenv("I2X_TRAIN_CPUS", "1")
    events = []
    map_runs = ray_tasks.finetune_map_runs(progress=lambda *a: events.append(a))
    assert map_runs is not None
    fanned = run_protocols(lambda: SmallCNN(width=4), final, full, curated, test, (2, 7), map_runs=map_runs, **kwargs)
    assert fanned["rows"] == serial["rows"] and fanned["confusions"] == serial["confusions"]
    # the runs really differ from each other (seeds), so equality is not that of a constant
    accuracies = {run["accuracy"] for row in serial["rows"] for run in row["runs"]}
    sums = {run["sum"] for row in serial["rows"] for run in row["runs"]}
    assert len(accuracies | sums) > 2
    # progress counts stages: 2 x 1 (full) + 2 x 2 (curated->full) = 6
    assert len(events) == 4 and events[-1][:2] == (6, 6)
    assert sorted(e[0] for e in events) == [e[0] for e in events]


def test_in_process_when_not_on_ray(monkeypatch):
    monkeypatch.setenv("I2X_TRAIN_ON_RAY", "false")
    assert ray_tasks.finetune_map_runs() is None
    from i2x.engine import stages

    assert ray_tasks.train_runner() is stages.train_run
    monkeypatch.setenv("I2X_TRAIN_ON_RAY", "maybe")
    with pytest.raises(Exception, match="must be true or false") as info:
        ray_tasks.on_ray()
    assert info.value.field == "I2X_TRAIN_ON_RAY"


def test_fanout_whose_tasks_cannot_start_fails_naming_the_resources(setting, ray_local, monkeypatch):
    full, curated, test, final = setting
    monkeypatch.setenv("I2X_TRAIN_ON_RAY", "true")
    monkeypatch.setenv("I2X_TRAIN_WAIT_SECONDS", "1")

    @ray_local.remote
    class Blocker:
        def ready(self):
            return True

    # Every CPU of the cluster, held: ready only once all are free. available_resources() read right
    # after the previous test can still count a CPU its Ray tasks held (1 of 2), and a blocker of
    # that size left a CPU on which a fine-tuning task then started.
    blocker = Blocker.options(num_cpus=int(ray_local.cluster_resources().get("CPU", 0))).remote()
    try:
        ray_local.get(blocker.ready.remote(), timeout=60)
        with pytest.raises(Unavailable, match=r"no fine-tuning task started in \d+ s: each waits for 1 CPU and 0 GPU: "
                                              r"0 of 2 CPU") as info:
            run_protocols(lambda: SmallCNN(width=4), final, full, curated, test, (2, 7), mean=MEAN, std=STD,
                          protocols=("full",), repeats=1, map_runs=ray_tasks.finetune_map_runs())
    finally:
        ray_local.kill(blocker)
    assert info.value.field == "I2X_TRAIN_WAIT_SECONDS"
