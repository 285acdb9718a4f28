"""The stages end to end on a tiny real run, resumption, bring-your-own checkpoints and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from i2x.core.errors import FailedPrecondition, InvalidArgument, NotFound
from i2x.engine import stages
from i2x.engine.params import ClusterParams, ExplainParams, FinetuneParams, InterpretParams, PrototypeParams
from i2x.engine.pipeline import run_pipeline
from i2x.storage import LocalStore

TINY_MODEL = {"arch": "small_cnn", "in_channels": 1, "num_classes": 10, "input_size": 28}
TINY_TRAIN = {"preset": "tiny", "batch_size": 32, "checkpoint_every": 3}
PROTOTYPES = PrototypeParams(n_prototypes=8, n_components=8)
CLUSTERS = ClusterParams(min_cluster_size=5)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_mnist_npz):
    store = LocalStore(tmp_path_factory.mktemp("store"))
    events = []
    result = run_pipeline(
        store, "tiny", model=TINY_MODEL, dataset={"kind": "npz", "root": tiny_mnist_npz}, train=TINY_TRAIN,
        prototypes=PROTOTYPES, clusters=CLUSTERS,
        finetune=FinetuneParams(protocols=["full", "curated->full"], repeats=2), report=False,
        explanation_fraction=0.3,
        progress=lambda stage, event: events.append((stage, event.done, event.total, event.state)))
    return store, result, events


def test_pipeline_writes_every_documented_artifact(finished):
    store, result, events = finished
    run = stages.get_run(store, "tiny")
    steps = [c["step"] for c in run["checkpoints"]]
    assert len(steps) >= 3 and steps == sorted(steps)
    n = run["sizes"]["explanation"]
    assert n == 90  # 30% of 300 training images

    data = store.get_npz("runs/tiny/data/explanation.npz")
    assert data["images"].shape == (n, 28, 28, 1) and data["images"].dtype == np.uint8
    for step in steps:
        unit = store.get_npz(f"runs/tiny/interpretation/step-{step:06d}.npz")
        assert unit["saliency"].dtype == np.float16 and unit["saliency"].shape == (n, 7, 7)
        assert unit["confidences"].shape == (n, 10)
        np.testing.assert_allclose(unit["confidences"].sum(1), 1.0, atol=1e-5)
    protos = store.get_npz("runs/tiny/clustering/prototypes.npz")
    assert protos["assignments"].shape == (n, 7, 7) and protos["assignments"].max() < 8
    clusters = store.get_npz("runs/tiny/clustering/confidence_clusters.npz")
    assert clusters["labels"].shape == (len(steps) - 1, n)
    intensity = store.get_npz("runs/tiny/explanation/intensity.npz")["intensity"]
    assert intensity.shape == (len(steps), n, 8)
    # Eq. 4 on the stored arrays: the intensities of a sample sum to its total saliency.
    saliency = np.stack([store.get_npz(f"runs/tiny/interpretation/step-{s:06d}.npz")["saliency"] for s in steps])
    np.testing.assert_allclose(intensity.sum(-1), saliency.astype(np.float32).sum((-1, -2)), rtol=1e-4, atol=1e-4)
    mapping = store.get_npz("runs/tiny/explanation/mapping.npz")
    assert mapping["W"].shape == (len(steps) - 1, 8, 10)
    explanation = store.get_json("runs/tiny/explanation/explanation.json")
    assert len(explanation["per_class"]) == 10 and explanation == result.explanation
    confusion = store.get_npz("runs/tiny/evaluation/final.npz")["confusion"]
    pair = explanation["most_confused_pair"]
    assert pair["count"] == confusion[pair["a"], pair["b"]] + confusion[pair["b"], pair["a"]]
    if explanation["uncertain_prototype"] is not None:
        table = store.get_json("runs/tiny/finetune/table.json")
        assert [row["protocol"] for row in table["rows"]] == ["full", "curated->full"]
        assert "±" in store.get_bytes("runs/tiny/finetune/table.md").decode()
    stages_seen = {stage for stage, _, _, _ in events}
    assert {"train", "interpret", "explain"} <= stages_seen
    # the SDK's callback shape: each stage ends with one SUCCEEDED event, after its RUNNING ones
    for stage in stages_seen:
        states = [state for s, _, _, state in events if s == stage]
        assert states[-1] == "SUCCEEDED" and states.count("SUCCEEDED") == 1, (stage, states)


def test_second_run_resumes_without_redoing_units(finished, tiny_mnist_npz):
    store, _, _ = finished
    unit = store.path("runs/tiny/interpretation/step-000003.npz")
    before = unit.stat().st_mtime_ns
    stages.interpret_checkpoint(store, "tiny", 3, InterpretParams())
    run_pipeline(store, "tiny", model=TINY_MODEL, dataset={"kind": "npz", "root": tiny_mnist_npz},
                 train=TINY_TRAIN, prototypes=PROTOTYPES, clusters=CLUSTERS, report=False, explanation_fraction=0.3)
    assert unit.stat().st_mtime_ns == before


def test_a_run_is_not_reinterpreted_at_another_layer(finished):
    store, _, _ = finished
    with pytest.raises(FailedPrecondition, match="interpreted with"):
        stages.interpret_run(store, "tiny", InterpretParams(target_layer="block2"))


def test_bring_your_own_checkpoints(finished, tiny_mnist_npz):
    store, _, _ = finished
    stages.create_run(store, "byo", model=TINY_MODEL, dataset={"kind": "npz", "root": tiny_mnist_npz},
                      explanation_fraction=0.3)
    keys = [c["key"] for c in stages.get_run(store, "tiny")["checkpoints"]]
    index = stages.register_checkpoints(store, "byo", [(10 * i, key) for i, key in enumerate(keys)])
    assert [c["step"] for c in index["checkpoints"]] == [10 * i for i in range(len(keys))]
    stages.interpret_run(store, "byo", InterpretParams(target="label"))
    assert store.exists("runs/byo/interpretation/step-000010.npz")


def test_checkpoint_of_another_architecture_is_refused(finished, tiny_mnist_npz):
    import torch

    from i2x.models import checkpoint_to_bytes

    store, _, _ = finished
    stages.create_run(store, "wrong", model=TINY_MODEL, dataset={"kind": "npz", "root": tiny_mnist_npz},
                      explanation_fraction=0.3)
    other = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    other(torch.zeros(1, 1, 28, 28))
    with pytest.raises(InvalidArgument, match="architecture"):
        stages.register_checkpoints(store, "wrong", [(0, checkpoint_to_bytes(other.state_dict(), {"step": 0}))])


def test_bad_runs_say_what_to_change(tmp_path, tiny_mnist_npz):
    store = LocalStore(tmp_path)
    dataset = {"kind": "npz", "root": tiny_mnist_npz}
    with pytest.raises(InvalidArgument, match="num_classes=10"):
        stages.create_run(store, "r", model={**TINY_MODEL, "num_classes": 3}, dataset=dataset)
    with pytest.raises(InvalidArgument, match="target_layer"):
        stages.create_run(store, "r", model={**TINY_MODEL, "target_layer": "nope"}, dataset=dataset)
    with pytest.raises(InvalidArgument, match="no sample in the explanation set"):
        stages.create_run(store, "r", model=TINY_MODEL, dataset=dataset, explanation_fraction=0.02)
    with pytest.raises(InvalidArgument, match="run_id"):
        stages.create_run(store, "../x", model=TINY_MODEL, dataset=dataset)
    with pytest.raises(NotFound):
        stages.get_run(store, "absent")
    stages.create_run(store, "r", model=TINY_MODEL, dataset=dataset, train=TINY_TRAIN, explanation_fraction=0.3)
    with pytest.raises(FailedPrecondition, match="checkpoint index"):
        stages.interpret_run(store, "r", InterpretParams())
    with pytest.raises(FailedPrecondition, match="exists with other settings"):
        stages.create_run(store, "r", model=TINY_MODEL, dataset=dataset, train={**TINY_TRAIN, "epochs": 2},
                          explanation_fraction=0.3)
    with pytest.raises(FailedPrecondition, match="run the prototype"):
        stages.explain_run(store, "r", ExplainParams())


def test_evaluate_any_checkpoint_and_analyze_any_pair(finished):
    store, result, _ = finished
    steps = [c["step"] for c in stages.get_run(store, "tiny")["checkpoints"]]
    last = stages.evaluate_checkpoint(store, "tiny")
    final = store.get_npz("runs/tiny/evaluation/final.npz")["confusion"]
    assert last["step"] == steps[-1] and np.array_equal(np.array(last["confusion"]), final)
    assert last["accuracy"] == pytest.approx(np.trace(final) / final.sum())
    first = stages.evaluate_checkpoint(store, "tiny", steps[0])
    assert np.array(first["confusion"]).sum() == final.sum() == 100  # the 100 test images
    with pytest.raises(NotFound, match="no checkpoint at step 7"):
        stages.evaluate_checkpoint(store, "tiny", 7)
    own = result.explanation["pair_analysis"]
    again = stages.analyze_pair(store, "tiny", [own["a"], own["b"]])
    assert again["uncertain_prototype"] == own["uncertain_prototype"]
    assert [p["contribution"] for p in again["prototypes"]] == [p["contribution"] for p in own["prototypes"]]
    other = stages.analyze_pair(store, "tiny", [1, 7])
    assert (other["a"], other["b"]) == (1, 7)


def test_interpretation_steps_are_checked(finished):
    store, _, _ = finished
    with pytest.raises(NotFound, match="not checkpoints"):
        stages.interpret_run(store, "tiny", InterpretParams(), steps=[3, 5])
    with pytest.raises(InvalidArgument, match="at least 2"):
        stages.interpret_run(store, "tiny", InterpretParams(), steps=[3])
    with pytest.raises(FailedPrecondition, match="interpreted at steps"):
        stages.interpret_run(store, "tiny", InterpretParams(), steps=[3, 6])


def test_concurrent_stages_sharing_a_cache_keep_their_own_weights(finished, tiny_mnist_npz):
    """Jobs of one service share a cache; each must see the weights of its own checkpoint."""
    from concurrent.futures import ThreadPoolExecutor

    store, _, _ = finished
    checkpoints = stages.get_run(store, "tiny")["checkpoints"]
    steps = [c["step"] for c in checkpoints]
    expected = {step: stages.evaluate_checkpoint(store, "tiny", step)["confusion"] for step in steps}
    stages.create_run(store, "shared-cache", model=TINY_MODEL, dataset={"kind": "npz", "root": tiny_mnist_npz},
                      explanation_fraction=0.3)
    stages.register_checkpoints(store, "shared-cache", [(c["step"], c["key"]) for c in checkpoints])
    cache: dict = {}
    with ThreadPoolExecutor(4) as pool:
        confusions = pool.map(
            lambda step: stages.evaluate_checkpoint(store, "shared-cache", step, cache=cache)["confusion"], steps)
        got = dict(zip(steps, confusions))
    assert got == expected
    assert len(cache) == 1  # one decoded run, shared


def test_stage_parameters_refuse_unknown_keys():
    # A typo must not be dropped silently: "tua" would otherwise leave tau at its default.
    with pytest.raises(InvalidArgument, match=r"unknown keys \['tua'\]") as err:
        ExplainParams.from_dict({"tua": 0.1})
    assert err.value.field == "ExplainParams" and "'tau'" in str(err.value)
    assert ExplainParams.from_dict({"tau": 0.1}).tau == 0.1


def test_a_failed_explanation_leaves_the_last_good_one_as_it_was(finished):
    """build_explanation fails after Eq. 4-8 ran with other parameters: nothing is committed."""
    store, _, _ = finished
    keys = [f"runs/tiny/explanation/{name}" for name in ("intensity.npz", "mapping.npz", "explanation.json")]
    before = {key: store.get_bytes(key) for key in keys}
    with pytest.raises(TypeError, match="no_such_option"):
        stages.explain_run(store, "tiny", ExplainParams(tau=0.5, lam=1e6, extra={"no_such_option": 1}))
    assert {key: store.get_bytes(key) for key in keys} == before


def test_a_bad_layer_leaves_nothing_that_blocks_the_next_try(finished, tiny_mnist_npz):
    store, _, _ = finished
    stages.create_run(store, "layers", model=TINY_MODEL, dataset={"kind": "npz", "root": tiny_mnist_npz},
                      explanation_fraction=0.3)
    keys = [c["key"] for c in stages.get_run(store, "tiny")["checkpoints"]][:2]
    stages.register_checkpoints(store, "layers", list(enumerate(keys)))
    with pytest.raises(InvalidArgument, match="no layer named 'bogus'") as info:
        stages.interpret_run(store, "layers", InterpretParams(target_layer="bogus"))
    assert info.value.field == "target_layer"
    assert store.list("runs/layers/interpretation/") == []
    # A try that stopped before its first unit does not bind the run to its parameters either.
    store.put_json("runs/layers/interpretation/params.json", {"target": "label", "target_layer": "block2"})
    index = stages.interpret_run(store, "layers", InterpretParams())
    assert index["target_layer"] == "block3" and index["steps"] == [0, 1]
    assert store.get_json("runs/layers/interpretation/params.json")["target_layer"] == "block3"


def test_a_failed_registration_leaves_no_file_and_nan_weights_are_refused(finished, tiny_mnist_npz):
    import torch

    from i2x.models import checkpoint_from_bytes, checkpoint_to_bytes

    store, _, _ = finished
    stages.create_run(store, "half", model=TINY_MODEL, dataset={"kind": "npz", "root": tiny_mnist_npz},
                      explanation_fraction=0.3)
    good = stages.get_run(store, "tiny")["checkpoints"][0]["key"]
    state, _ = checkpoint_from_bytes(store.get_bytes(good))
    state = {name: tensor.clone() for name, tensor in state.items()}
    state["fc.weight"][0, 0] = float("nan")
    with pytest.raises(InvalidArgument, match="NaN or infinite weights") as info:
        stages.register_checkpoints(store, "half", [(0, good), (5, checkpoint_to_bytes(state, {"step": 5}))])
    assert "fc.weight" in str(info.value)
    assert store.list("runs/half/checkpoints/") == [] and store.list("runs/half/evaluation/") == []
    assert torch.isfinite(checkpoint_from_bytes(store.get_bytes(good))[0]["fc.weight"]).all()
def test_an_existing_run_given_another_spec_is_an_error_unless_overwrite(finished):
    store, _, _ = finished
    with pytest.raises(FailedPrecondition, match="overwrite"):
        run_pipeline(store, "tiny", train={**TINY_TRAIN, "epochs": 7}, report=False)
    with pytest.raises(FailedPrecondition, match="overwrite"):
        run_pipeline(store, "tiny", checkpoints={1: b"x"}, report=False)  # other steps than the run's
    with pytest.raises(InvalidArgument, match="model"):
        run_pipeline(store, "never-created", report=False)
    assert not store.exists("runs/never-created/run.json")
