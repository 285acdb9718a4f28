"""More than one node on one machine: a `ray start --head` plus a worker node (`ray start
--address`), the interpretation service a Ray Client of the head. Units spread over both nodes,
and killing the worker node mid-job still finishes the job (its units go to the head)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services"))  # tinydata

from rayhead import RayNode

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

N_CHECKPOINTS = 8


def test_units_spread_over_two_nodes_and_a_lost_node_does_not_fail_the_job(tmp_path, monkeypatch):
    import ray

    from i2x.engine import stages
    from i2x.engine.params import InterpretParams
    from i2x.interpretation.fanout import RayFanout, WarmPool, store_spec
    from i2x.interpretation.raylink import RayLink
    from i2x.storage import LocalStore

    from tinydata import write_tiny_npz
    from test_ray_faults import _checkpoints

    if ray.is_initialized():
        pytest.skip("this process already runs a Ray (another test's): a Ray Client needs its own")
    # Ray reads its auth settings once per process: this test's client cannot take a new token,
    # so these nodes run without (test_ray_faults covers token auth, in a process of its own).
    auth = {"RAY_AUTH_MODE": "disabled"}
    for key, value in {"RAY_CLIENT_RECONNECT_GRACE_PERIOD": "3", "I2X_TORCH_THREADS": "1"}.items():
        monkeypatch.setenv(key, value)
    head = RayNode(num_cpus=1, env=auth).start()
    worker = RayNode(num_cpus=1, address=head.address, env=auth).start()
    store = LocalStore(tmp_path / "store")
    link = RayLink(head.client_address, backoff_max=1).start()
    pool = None
    try:
        assert link.wait(timeout=120), link.describe()
        # Both nodes have joined: 2 CPUs in the cluster (one each).
        assert ray.cluster_resources().get("CPU") == 2 and len([n for n in ray.nodes() if n["Alive"]]) == 2
        dataset = {"kind": "npz", "root": write_tiny_npz(tmp_path / "tiny.npz", n_train=240)}
        model = {"arch": "small_cnn", "num_classes": 3, "input_size": 56}
        stages.create_run(store, "multi", model=model, dataset=dataset, explanation_fraction=1.0)
        stages.register_checkpoints(store, "multi", [(step, path.read_bytes())
                                                     for step, path in _checkpoints(tmp_path, model).items()])
        pool = WarmPool(store_spec(store), size=0, idle_seconds=0, link=link)
        assert pool.warm(timeout=120) == 2  # the cluster's 2 slots: one actor per node
        nodes = {ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))
                 for actor in list(pool._idle)}
        assert len(nodes) == 2, "the two actors run on two nodes"

        fanout = RayFanout(pool, "multi", InterpretParams(), wait_seconds=120)
        done = []
        for key in fanout(list(range(1, N_CHECKPOINTS + 1))):
            done.append(key)
            if len(done) == 2:
                worker.kill()  # the worker node goes mid-job
        assert len(done) == N_CHECKPOINTS
        assert all(store.exists(key) for key in done)
    finally:
        if pool is not None:
            pool.shutdown()
        link.close()
        ray.shutdown()
        worker.kill()
        head.kill()
