"""Architectures and layer lookup.

- ``small_cnn`` (default): five conv-BN-ReLU layers in three blocks with two 2x max-poolings, then global average
  pooling and one Linear layer. At 28x28 input its last block (``block3``, the default Grad-CAM
  layer) gives a 7x7 map, and Grad-CAM there is CAM (forward only, see i2x.core.saliency).
- ``resnet50``, ``inception_v3``: torchvision, ``weights=None``, first convolution replaced for
  1-channel input, ``num_classes`` outputs. inception_v3 is built with ``aux_logits=False,
  init_weights=True`` and needs input of at least 75x75 (its stem shrinks smaller input to nothing).
- ``custom``: ``factory="package.module:function"``, called as
  ``function(in_channels=..., num_classes=...)`` and returning an ``nn.Module``; name the
  Grad-CAM layer in ``target_layer`` (a name from ``model.named_modules()``).
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import asdict, dataclass

from torch import nn

from i2x.core.errors import InvalidArgument, check_fields

ARCHS = ("small_cnn", "resnet50", "inception_v3", "custom")
INCEPTION_MIN_INPUT = 75
SMALL_CNN_MIN_INPUT = 4
_DEFAULT_LAYERS = {"small_cnn": "block3", "resnet50": "layer4", "inception_v3": "Mixed_7c"}


@dataclass
class ModelSpec:
    arch: str = "small_cnn"
    in_channels: int = 1
    num_classes: int = 10
    input_size: int = 28
    factory: str | None = None
    target_layer: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        return cls(**check_fields(cls, d, "model"))


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """conv(32) -> pool -> 2x conv(64) -> pool -> 2x conv(128) -> GAP -> Linear. 7x7 features at 28x28 input."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.block1 = nn.Sequential(_conv_block(in_channels, width), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(_conv_block(width, 2 * width), _conv_block(2 * width, 2 * width), nn.MaxPool2d(2))
        self.block3 = nn.Sequential(_conv_block(2 * width, 4 * width), _conv_block(4 * width, 4 * width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(self.pool(x).flatten(1))


def build_model(spec: ModelSpec) -> nn.Module:
    """A freshly initialised model for `spec` (no pretrained weights, nothing downloaded)."""
    _validate(spec)
    if spec.arch == "small_cnn":
        return SmallCNN(spec.in_channels, spec.num_classes)
    if spec.arch == "resnet50":
        from torchvision.models import resnet50

        model = resnet50(weights=None, num_classes=spec.num_classes)
        if spec.in_channels != 3:
            model.conv1 = nn.Conv2d(spec.in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        return model
    if spec.arch == "inception_v3":
        from torchvision.models import inception_v3
        from torchvision.models.inception import BasicConv2d

        model = inception_v3(weights=None, aux_logits=False, init_weights=True, num_classes=spec.num_classes,
                             transform_input=False)
        if spec.in_channels != 3:
            model.Conv2d_1a_3x3 = BasicConv2d(spec.in_channels, 32, kernel_size=3, stride=2)
        return model
    return _build_custom(spec)


def default_target_layer(spec: ModelSpec) -> str:
    """`spec.target_layer` when set, else the layer whose output feeds the GAP + Linear head."""
    if spec.target_layer:
        return spec.target_layer
    if spec.arch in _DEFAULT_LAYERS:
        return _DEFAULT_LAYERS[spec.arch]
    raise InvalidArgument("a custom model has no default Grad-CAM layer; set model.target_layer to a name "
                          "from model.named_modules() (usually the last convolutional block)", field="target_layer")


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name` in `model.named_modules()`; InvalidArgument listing valid names otherwise."""
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(str(name)[:200], names, n=5, cutoff=0.5)
    # Blocks (modules with children) are the usual choices; leaves would make the list very long.
    blocks = [n for n, m in model.named_modules() if n and any(True for _ in m.children())]
    shown = blocks if len(names) > 60 else names
    listing = ", ".join(shown[:60]) + (f", ... ({len(shown) - 60} more)" if len(shown) > 60 else "")
    hint = f"did you mean {close}? " if close else ""
    from i2x.limits import quote

    raise InvalidArgument(f"no layer named {quote(name)} in {type(model).__name__}; {hint}valid names "
                          f"(from model.named_modules()) include: {listing}", field="target_layer")


def _validate(spec: ModelSpec) -> None:
    if spec.arch not in ARCHS:
        raise InvalidArgument(f"unknown architecture {spec.arch!r}; choose one of {list(ARCHS)}", field="model.arch")
    if spec.in_channels not in (1, 3) and spec.arch != "custom":
        raise InvalidArgument(f"in_channels must be 1 or 3, got {spec.in_channels}", field="model.in_channels")
    if spec.num_classes < 2:
        raise InvalidArgument(f"num_classes must be at least 2, got {spec.num_classes}", field="model.num_classes")
    if spec.arch == "inception_v3" and spec.input_size < INCEPTION_MIN_INPUT:
        raise InvalidArgument(f"inception_v3 needs input of at least {INCEPTION_MIN_INPUT}x{INCEPTION_MIN_INPUT} "
                              f"pixels, got {spec.input_size}; resize the images (e.g. dataset.image_size / "
                              f"model.input_size = {INCEPTION_MIN_INPUT} or 299) or use another architecture",
                              field="model.input_size")
    if spec.arch == "small_cnn" and spec.input_size < SMALL_CNN_MIN_INPUT:
        raise InvalidArgument(f"small_cnn needs input of at least {SMALL_CNN_MIN_INPUT}x{SMALL_CNN_MIN_INPUT} pixels "
                              f"(two 2x poolings), got {spec.input_size}; set model.input_size to the image size "
                              "(28 for MNIST)", field="model.input_size")
    if spec.arch == "resnet50" and spec.input_size < 32:
        raise InvalidArgument(f"resnet50 needs input of at least 32x32 pixels, got {spec.input_size}; "
                              "resize the images or use small_cnn", field="model.input_size")


def check_spec(spec: ModelSpec) -> ModelSpec:
    """The checks build_model makes before building (arch, channels, classes, input size)."""
    _validate(spec)
    return spec


def _build_custom(spec: ModelSpec) -> nn.Module:
    if not spec.factory or spec.factory.count(":") != 1:
        raise InvalidArgument(f"a custom model needs factory='package.module:function', got {spec.factory!r}",
                              field="model.factory")
    module_name, function_name = spec.factory.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        from i2x.process import describe_process

        raise InvalidArgument(f"{describe_process()} cannot import {module_name!r} ({exc}); install the module "
                              "where the services and their Ray workers run, or put it on their PYTHONPATH "
                              "(README: 'Your own model')", field="model.factory") from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise InvalidArgument(f"{module_name!r} has no callable {function_name!r}", field="model.factory")
    model = factory(in_channels=spec.in_channels, num_classes=spec.num_classes)
    if not isinstance(model, nn.Module):
        raise InvalidArgument(f"{spec.factory} returned {type(model).__name__}, not a torch.nn.Module",
                              field="model.factory")
    return model
