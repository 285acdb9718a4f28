"""Model zoo (small CNN, torchvision resnet50 / inception_v3, user factories), layer lookup, checkpoints."""

from i2x.models.checkpoints import checkpoint_from_bytes, checkpoint_to_bytes, load_weights
from i2x.models.zoo import (
    ARCHS,
    INCEPTION_MIN_INPUT,
    ModelSpec,
    SmallCNN,
    build_model,
    default_target_layer,
    resolve_layer,
)

__all__ = [
    "ARCHS",
    "INCEPTION_MIN_INPUT",
    "ModelSpec",
    "SmallCNN",
    "build_model",
    "checkpoint_from_bytes",
    "checkpoint_to_bytes",
    "default_target_layer",
    "load_weights",
    "resolve_layer",
]
