"""Evaluation of any checkpoint, the pair analysis of any pair, interpretation of a subset of
checkpoints, and the warm Ray pool, through real servers on loopback and a real local Ray."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from conftest import client_for, start_services
from test_bad_requests import expect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

PIPELINE = dict(model={"arch": "small_cnn", "num_classes": 3}, train={"preset": "tiny"},
                prototypes={"n_prototypes": 4, "n_components": 4}, clusters={"min_cluster_size": 3},
                explain={"pair": [1, 2]})


@pytest.fixture(scope="module")
def stack(tmp_path_factory, ray_local, tiny_dataset):
    from i2x.storage import LocalStore

    store = LocalStore(tmp_path_factory.mktemp("store"))
    services = start_services(store)
    with client_for(services, str(store.root)) as client:
        # tiny preset: 48 images, batch 8 -> 6 iterations, a checkpoint every 2 -> steps 2, 4, 6
        client.run_pipeline("t", dataset={"kind": "npz", "root": tiny_dataset}, timeout=120, report=False,
                            **PIPELINE)
        yield services, client, store
    services.stop()


def test_evaluation_of_any_checkpoint(stack):
    _, client, store = stack
    final = client.evaluation("t")
    assert final.step == 6 and final.key == "runs/t/evaluation/final.npz"
    last = client.evaluation("t", step=6)
    # the same checkpoint on the same test split: the same confusion, now under its own key
    assert last.confusion == final.confusion and last.accuracy == pytest.approx(final.accuracy)
    assert last.key == "runs/t/evaluation/step-000006.npz" and store.exists(last.key)
    first = client.evaluation("t", step=2)
    assert first.step == 2 and sum(map(sum, first.confusion)) == 24  # the 24 test images of tiny.npz
    stored = client.load(first.key)
    # accuracy = trace / total of the stored confusion
    assert first.accuracy == pytest.approx(np.trace(stored["confusion"]) / 24)
    np.testing.assert_array_equal(stored["labels"], np.arange(24) % 3)  # tinydata: label = index mod 3


def test_evaluation_bad_steps(stack):
    _, client, _ = stack
    expect(grpc.StatusCode.NOT_FOUND, "step", client.evaluation, "t", step=5)
    expect(grpc.StatusCode.INVALID_ARGUMENT, "step", client.evaluation, "t", step=-1)
    expect(grpc.StatusCode.NOT_FOUND, "run_id", client.evaluation, "nope", step=2)


def test_pair_analysis_of_any_pair(stack):
    _, client, _ = stack
    explained = client.pair_analysis("t")
    assert explained.pair == (1, 2)
    assert client.pair_analysis("t", pair=(2, 1)).pair == (1, 2)  # the explanation's pair, either order
    other = client.pair_analysis("t", pair=(0, 1))
    assert other.pair == (0, 1) and other.steps == explained.steps
    run = client.get_run("t")
    assert other.names == run.classes[:2]
    confusion = client.evaluation("t").confusion
    assert (other.a_to_b, other.b_to_a) == (confusion[0][1], confusion[1][0])
    assert {p.verdict for p in other.prototypes} <= {"reliable", "uncertain", "compensated", "inactive",
                                                      "one_class", "background"}
    assert all(len(p.contribution) == len(other.steps) for p in other.prototypes)


def test_pair_analysis_bad_pairs(stack):
    _, client, _ = stack
    expect(grpc.StatusCode.INVALID_ARGUMENT, "pair", client.pair_analysis, "t", pair=(1, 1))
    expect(grpc.StatusCode.INVALID_ARGUMENT, "pair", client.pair_analysis, "t", pair=(0, 3))
    expect(grpc.StatusCode.INVALID_ARGUMENT, "pair", client.pair_analysis, "t", pair=(0, 1, 2))
    expect(grpc.StatusCode.NOT_FOUND, "run_id", client.pair_analysis, "nope", pair=(0, 1))


def test_interpretation_of_a_subset_of_checkpoints(stack, tiny_dataset):
    _, client, store = stack
    source = client.get_run("t")
    client.create_run("sub", model=PIPELINE["model"], dataset={"kind": "npz", "root": tiny_dataset},
                      explanation_fraction=0.5)
    client.register_checkpoints("sub", {c["step"]: c["key"] for c in source.checkpoints}).result(timeout=60)
    expect(grpc.StatusCode.NOT_FOUND, "steps", client.interpret, "sub", steps=[2, 5])
    expect(grpc.StatusCode.INVALID_ARGUMENT, "steps", client.interpret, "sub", steps=[4])
    expect(grpc.StatusCode.INVALID_ARGUMENT, "steps", client.interpret, "sub", steps=[4, 4])  # one distinct step
    assert client.interpret("sub", steps=[6, 2]).result(timeout=60)["steps"] == [2, 6]
    assert client.load("runs/sub/interpretation/index.json")["steps"] == [2, 6]
    assert not store.exists("runs/sub/interpretation/step-000004.npz")
    # the run is interpreted at [2, 6] now: other steps are refused up front, the same steps succeed
    expect(grpc.StatusCode.FAILED_PRECONDITION, "steps", client.interpret, "sub")
    assert client.interpret("sub", steps=[2, 6]).result(timeout=60)["steps"] == [2, 6]


def test_the_pool_stays_warm_across_jobs_and_replaces_dead_actors(stack, ray_local, tiny_dataset):
    services, client, _ = stack
    pool = services.servicers["interpretation"].pool
    size, started = pool.size, pool.started
    assert size >= 1 and started == size  # made once, by the pipeline's interpretation
    source = client.get_run("t")
    client.create_run("warm", model=PIPELINE["model"], dataset={"kind": "npz", "root": tiny_dataset},
                      explanation_fraction=0.5)
    client.register_checkpoints("warm", {c["step"]: c["key"] for c in source.checkpoints}).result(timeout=60)
    client.interpret("warm").result(timeout=60)
    assert pool.started == started, "a job started new actors instead of reusing the warm pool"

    # actors dead for good (no restart left) are replaced, and the job still finishes
    victims = list(pool._actors)
    for victim in victims:
        ray_local.kill(victim, no_restart=True)
    client.create_run("warm2", model=PIPELINE["model"], dataset={"kind": "npz", "root": tiny_dataset},
                      explanation_fraction=0.5)
    client.register_checkpoints("warm2", {c["step"]: c["key"] for c in source.checkpoints}).result(timeout=60)
    assert client.interpret("warm2").result(timeout=60)["steps"] == [2, 4, 6]
    assert pool.started == started + size and not set(victims) & set(pool._actors)
    assert pool.size == size
