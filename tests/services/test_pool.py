"""The elastic interpretation pool on a real local Ray: it grows while units wait (up to the
cluster's slots), releases idle actors, says what a waiting job waits for and fails it after
the wait limit, and two services sharing one cluster both finish."""

from __future__ import annotations

import time

import pytest

from conftest import client_for
from tinydata import write_tiny_npz
from waiting import until as _until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _free_cpus(ray) -> float:
    return float(ray.available_resources().get("CPU", 0))


def test_pool_grows_to_the_cluster_and_releases_idle_actors(tmp_path, ray_local):
    from i2x.interpretation.fanout import WarmPool
    from i2x.storage import LocalStore

    ray = ray_local
    slots = int(ray.cluster_resources()["CPU"])  # one CPU per actor (I2X_RAY_CPUS_PER_TASK=1)
    pool = WarmPool({"url": LocalStore(tmp_path / "store").url}, size=0, idle_seconds=1.0)
    try:
        assert pool.size == 0  # nothing is held before a unit waits
        assert pool.acquire(slots + 3) == []  # none up yet: the pool starts actors for the waiting units ...
        assert pool.size == slots  # ... up to the cluster's slots, not the units' number
        actors = _until(lambda: pool.acquire(slots, timeout=0.5), 60, "the actors are up")
        while len(actors) < slots:
            actors += pool.acquire(slots - len(actors), timeout=0.5)
        assert _free_cpus(ray) == 0
        for actor in actors:
            pool.release(actor)
        time.sleep(1.2)  # idle longer than idle_seconds
        pool.tick()
        assert pool.size == 0 and pool.released == slots
        _until(lambda: _free_cpus(ray) == slots, 30, "the released actors' CPUs are back")
        # Back-to-back demand: new actors again (the bench measures what a warm pool saves).
        assert pool.acquire(1) == [] and pool.size == 1
    finally:
        pool.shutdown()


def test_a_job_on_a_full_cluster_says_what_it_waits_for_and_fails_after_the_limit(tmp_path, ray_local):
    from i2x.core.errors import Unavailable
    from i2x.engine.params import InterpretParams
    from i2x.interpretation.fanout import RayFanout, WarmPool
    from i2x.storage import LocalStore

    ray = ray_local
    total = ray.cluster_resources()["CPU"]

    @ray.remote
    class Tenant:  # another service's work, holding every CPU
        def ping(self):
            return True

    tenant = Tenant.options(num_cpus=total).remote()
    ray.get(tenant.ping.remote())
    pool = WarmPool({"url": LocalStore(tmp_path / "store").url}, size=1, idle_seconds=0)
    messages = []
    fanout = RayFanout(pool, "r", InterpretParams(), wait_seconds=2,
                       progress=lambda done, n, message: messages.append((done, n, message)))
    try:
        with pytest.raises(Unavailable) as failed:
            list(fanout([1, 2]))
        waiting = f"waiting for 1 CPU: 0 free, cluster {total:g} of {total:g} busy"
        assert messages == [(0, 2, waiting)]
        assert str(failed.value) == (f"I2X_RAY_WAIT_SECONDS: no Ray worker for this job in 2 s: {waiting}; add Ray workers, stop other "
                                     "work, or raise I2X_RAY_WAIT_SECONDS")
        assert failed.value.field == "I2X_RAY_WAIT_SECONDS"
        _until(lambda: pool.tick() or pool.size == 0, 10, "the pending actor no job wants is withdrawn")
    finally:
        pool.shutdown()
        ray.kill(tenant)


def test_two_services_sharing_one_cluster_both_finish(tmp_path, ray_local, monkeypatch):
    from i2x.serving import ServicesInThread
    from i2x.storage import LocalStore

    from test_restart import _checkpoint_files

    monkeypatch.setenv("I2X_RAY_IDLE_SECONDS", "1")  # A's actors go back soon after its job
    ray = ray_local
    store = LocalStore(tmp_path / "store")
    dataset = {"kind": "npz", "root": write_tiny_npz(tmp_path / "tiny.npz", n_train=120)}
    model = {"arch": "small_cnn", "num_classes": 3, "input_size": 56}
    training = ServicesInThread(("training",), store)
    first, second = (ServicesInThread(("interpretation",), store) for _ in range(2))
    try:
        with client_for(training, str(store.root)) as client:
            for run in ("a", "b"):
                client.create_run(run, model=model, dataset=dataset, explanation_fraction=1.0)
                client.register_checkpoints(run, _checkpoint_files(tmp_path / run, model)).result(timeout=60)
        with client_for(first, str(store.root)) as a, client_for(second, str(store.root)) as b:
            job_a = a.interpret("a")
            _until(lambda: first.servicers["interpretation"].pool.ready_size == ray.cluster_resources()["CPU"],
                   60, "A's pool holds the whole cluster")
            job_b = b.interpret("b")
            events_b = []
            for event in job_b.watch():
                events_b.append(event.message)
            assert job_a.result(timeout=60)["steps"] and job_b.result(timeout=60)["steps"]
            assert job_b.refresh().state == "SUCCEEDED"
        total = ray.cluster_resources()["CPU"]
        assert f"waiting for 1 CPU: 0 free, cluster {total:g} of {total:g} busy" in events_b
    finally:
        for services in (first, second, training):
            services.stop()
