"""A unit computes on the device its parameters name, records where it ran, and a GPU asked for
where torch sees none fails the unit with a message that says so, writing nothing."""

from __future__ import annotations

import pytest
import torch

from i2x.core.errors import FailedPrecondition, InvalidArgument
from i2x.engine import stages
from i2x.engine.params import InterpretParams
from i2x.models import ModelSpec, build_model, checkpoint_to_bytes
from i2x.storage import LocalStore


@pytest.fixture()
def run(tmp_path, tiny_mnist_npz):
    store = LocalStore(tmp_path / "store")
    stages.create_run(store, "dev", model={"arch": "small_cnn"}, dataset={"kind": "npz", "root": tiny_mnist_npz},
                      explanation_fraction=0.2)
    pairs = []
    for step in (10, 20):
        torch.manual_seed(step)
        pairs.append((step, checkpoint_to_bytes(build_model(ModelSpec()).state_dict(), {"step": step})))
    stages.register_checkpoints(store, "dev", pairs)
    return store


def test_gpu_unit_without_cuda_fails_and_writes_nothing(run, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FailedPrecondition, match="params.device is 'cuda' but torch sees no CUDA GPU") as info:
        stages.interpret_run(run, "dev", InterpretParams(device="cuda"))
    assert info.value.field == "params.device"
    written = [k for k in run.list("runs/dev/interpretation/") if not k.endswith("params.json")]
    assert written == []


def test_cpu_units_record_their_placement(run):
    index = stages.interpret_run(run, "dev", InterpretParams(device="cpu", batch_size=0, precision="bf16"))
    assert [p["step"] for p in index["placement"]] == [10, 20]
    for record in index["placement"]:
        assert record["device"] == "cpu" and record["device_name"] == "" and record["seconds"] > 0
        assert isinstance(record["node_id"], str) and "cuda_peak_bytes" not in record
    assert run.get_json("runs/dev/interpretation/placement/step-000010.json") == index["placement"][0]
    # precision is part of what a run was interpreted with; the device is not
    assert run.get_json("runs/dev/interpretation/params.json")["precision"] == "bf16"
    with pytest.raises(FailedPrecondition, match="was interpreted with"):
        stages.interpret_run(run, "dev", InterpretParams(device="cpu", precision="fp32"))
    assert stages.interpret_run(run, "dev", InterpretParams(device="auto", precision="bf16"))["steps"] == [10, 20]


def test_bad_device_and_precision_name_the_field(run):
    with pytest.raises(InvalidArgument, match="device must be cpu, cuda, cuda:N, mps or auto") as info:
        stages.interpret_run(run, "dev", InterpretParams(device="gpu0"))
    assert info.value.field == "device"
    with pytest.raises(InvalidArgument, match="precision must be one of fp32, bf16, fp16") as info:
        stages.interpret_run(run, "dev", InterpretParams(precision="half"))
    assert info.value.field == "precision"
