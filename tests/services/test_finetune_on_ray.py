"""Fine-tuning (protocol, repeat) units fanned out as Ray tasks (the session's real local Ray)
give the serial run's table; a fine-tuning job cancelled through the training service stops
its Ray tasks and commits no table."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import client_for
from i2x.client.jobs import JobFailed
from i2x.core.errors import Unavailable
from i2x.core.finetune import protocol_runs, run_protocols
from i2x.core.training import TrainConfig, seeded_build, train
from i2x.data import DatasetSpec, dataset_stats, load_dataset
from i2x.models import SmallCNN
from i2x.training import ray_tasks
from tinydata import write_tiny_npz
from waiting import until

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


# ---------------------------------------------------------------- cancel through the training service

@pytest.fixture(scope="module")
def finetune_stack(tmp_path_factory, ray_local):
    """The training service alone on loopback (no interpretation actor holds a CPU of the 2-CPU
    cluster) and a run with a final checkpoint and a curated set, ready to fine-tune."""
    from i2x.serving import ServicesInThread
    from i2x.storage import LocalStore

    root = tmp_path_factory.mktemp("ftcancel")
    store = LocalStore(root / "store")
    services = ServicesInThread(("training",), store)
    dataset = write_tiny_npz(root / "data.npz", n_train=600)
    with client_for(services, str(store.root)) as client:
        # 600 images, batch 64: 10 iterations, checkpoints 5 and 10; trained here (I2X_TRAIN_ON_RAY unset)
        client.create_run("ft", model={"arch": "small_cnn", "num_classes": 3},
                          dataset={"kind": "npz", "root": dataset}, explanation_fraction=1.0,
                          train={"preset": "tiny", "batch_size": 64, "checkpoint_every": 5})
        client.train("ft").result(timeout=120)
        explanation = store.get_npz("runs/ft/data/explanation.npz")
        kept = np.arange(0, len(explanation["labels"]), 2, dtype=np.int64)
        # what curate_run writes, without the interpretation and clustering it would need
        store.put_npz("runs/ft/curation/curated.npz", indices=kept, train_indices=explanation["indices"][kept],
                      prototype=np.int64(0), pair=np.asarray([1, 2], dtype=np.int64),
                      removed_fraction_per_class=np.zeros(3))
        yield client, store
    services.stop()


@pytest.mark.slow
def test_a_cancelled_fanout_stops_its_ray_tasks_and_commits_no_table(finetune_stack, ray_local, monkeypatch):
    client, store = finetune_stack
    monkeypatch.setenv("I2X_TRAIN_ON_RAY", "true")
    monkeypatch.setenv("I2X_TRAIN_CPUS", "1")

    def free_cpus() -> float:
        return ray_local.available_resources().get("CPU", 0.0)

    total = ray_local.cluster_resources()["CPU"]
    until(lambda: free_cpus() == total, 60, "every CPU of the cluster free before the fine-tuning")
    # 200 units of 300-600 iterations each (batch 1), 2 at a time: minutes of work, far longer than the test waits
    job = client.finetune("ft", protocols=["full", "curated"], repeats=100, batch_size=1)
    # units are running: a CPU is held by a unit, and a first unit has finished (the job is not stuck)
    until(lambda: free_cpus() < total and job.refresh().done > 0, 150, "a fine-tuning unit done, others running")
    assert job.info.state == "RUNNING" and job.info.done < job.info.total
    job.cancel()
    with pytest.raises(JobFailed) as info:
        job.result(timeout=30)  # promptly: the job's thread polls the cancel flag every POLL_SECONDS
    assert info.value.job.state == "CANCELLED", info.value.job
    # no unit keeps running (or waits to run) once the job is over: the cluster's CPUs are free again
    until(lambda: free_cpus() == total, 30, f"the cancelled job's Ray tasks gone (free CPU {free_cpus()} of {total})")
    # nothing half-written: no table (the StagedStore commits both tables at the very end, or neither)
    assert not store.exists("runs/ft/finetune/table.json") and not store.exists("runs/ft/finetune/table.md")

    # and the run fine-tunes again, on the same cluster
    client.finetune("ft", protocols=["full"], repeats=2).result(timeout=150)
    table = client.finetune_table("ft")
    assert [row.protocol for row in table.rows] == ["full"] and table.rows[0].repeats == 2
    assert store.exists("runs/ft/finetune/table.md")
