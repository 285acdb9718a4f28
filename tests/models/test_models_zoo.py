"""Model zoo, layer lookup and safetensors checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from i2x.core.errors import InvalidArgument
from i2x.models import (
    ModelSpec,
    SmallCNN,
    build_model,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
    default_target_layer,
    load_weights,
    resolve_layer,
)


def tiny_factory(in_channels, num_classes):
    """A user model for the custom-factory test: importable as test_models_zoo:tiny_factory."""
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))


def test_small_cnn_has_7x7_map_at_its_default_layer():
    spec = ModelSpec()
    model = build_model(spec).eval()
    layer = resolve_layer(model, default_target_layer(spec))
    seen = {}
    layer.register_forward_hook(lambda _m, _i, out: seen.update(shape=tuple(out.shape)))
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert seen["shape"] == (2, 128, 7, 7)


def test_resnet50_single_channel_and_default_layer():
    spec = ModelSpec(arch="resnet50", in_channels=1, num_classes=3, input_size=32)
    model = build_model(spec).eval()
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 3)
    assert default_target_layer(spec) == "layer4"


def test_inception_below_minimum_input_is_an_error_and_75_works():
    with pytest.raises(InvalidArgument, match="at least 75x75") as err:
        build_model(ModelSpec(arch="inception_v3", input_size=28))
    assert err.value.field == "model.input_size"
    spec = ModelSpec(arch="inception_v3", in_channels=1, num_classes=4, input_size=75)
    model = build_model(spec).eval()
    assert model(torch.zeros(1, 1, 75, 75)).shape == (1, 4)
    assert default_target_layer(spec) == "Mixed_7c"
    resolve_layer(model, "Mixed_7c")


def test_wrong_layer_name_lists_valid_names():
    model = SmallCNN(width=4)
    with pytest.raises(InvalidArgument) as err:
        resolve_layer(model, "block4")
    message = str(err.value)
    assert err.value.field == "target_layer"
    assert "block4" in message and "block3" in message and "block1.0" in message and "did you mean" in message


def test_custom_factory_and_its_errors():
    spec = ModelSpec(arch="custom", factory="test_models_zoo:tiny_factory", in_channels=3, num_classes=5,
                     target_layer="0")
    assert build_model(spec)(torch.zeros(1, 3, 8, 8)).shape == (1, 5)
    assert default_target_layer(spec) == "0"
    with pytest.raises(InvalidArgument, match="package.module:function"):
        build_model(ModelSpec(arch="custom", factory="nocolon"))
    with pytest.raises(InvalidArgument, match="cannot import"):
        build_model(ModelSpec(arch="custom", factory="no_such_module_xyz:f"))
    with pytest.raises(InvalidArgument, match="target_layer"):
        default_target_layer(ModelSpec(arch="custom", factory="test_models_zoo:tiny_factory"))


def test_checkpoint_round_trip_keeps_tensors_and_metadata():
    model = SmallCNN(width=4)
    meta = {"step": 40, "epoch": 1, "seed": 0, "loss": 0.25, "accuracy": 0.5, "arch": "small_cnn"}
    data = checkpoint_to_bytes(model.state_dict(), meta)
    header_len = int.from_bytes(data[:8], "little")
    assert data[8:9] == b"{" and b'"__metadata__"' in data[8:8 + header_len]  # a JSON header, no pickle
    tensors, metadata = checkpoint_from_bytes(data)
    assert metadata == meta
    for key, value in model.state_dict().items():
        assert torch.equal(tensors[key], value)
    with pytest.raises(InvalidArgument, match="safetensors") as err:
        checkpoint_from_bytes(b"\x80\x04not a checkpoint")
    assert err.value.field == "checkpoint"


def test_checkpoint_of_another_architecture_is_named():
    state = SmallCNN(width=4).state_dict()
    with pytest.raises(InvalidArgument, match="another architecture") as err:
        load_weights(SmallCNN(width=8), state)
    assert "mismatched shapes" in str(err.value) and err.value.field == "checkpoint"
    with pytest.raises(InvalidArgument, match="missing keys"):
        load_weights(tiny_factory(1, 10), state)
    target = SmallCNN(width=4)
    load_weights(target, state)
    assert torch.equal(target.fc.weight, state["fc.weight"])


class _Payload:
    """Pickling this object would run os.system on load: torch.load(weights_only=True) must refuse it."""

    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_torch_saved_state_dicts_load_without_running_code():
    import io

    model = SmallCNN(width=4)
    for wrapped in (model.state_dict(), {"state_dict": model.state_dict(), "step": 40}):
        buffer = io.BytesIO()
        torch.save(wrapped, buffer)
        tensors, metadata = checkpoint_from_bytes(buffer.getvalue())
        assert all(torch.equal(tensors[k], v) for k, v in model.state_dict().items())
    assert metadata == {"step": 40}
    buffer = io.BytesIO()
    torch.save({"weights": _Payload()}, buffer)
    with pytest.raises(InvalidArgument, match="not a loadable torch weights file") as err:
        checkpoint_from_bytes(buffer.getvalue())
    assert err.value.field == "checkpoint"
