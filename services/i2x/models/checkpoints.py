"""Checkpoints as safetensors bytes: tensors plus a JSON metadata header. Loading never runs code.

The header's ``__metadata__`` (str -> str) holds ``"i2x"``: the metadata dict as JSON, and each
top-level scalar (step, epoch, seed, loss, accuracy, arch) also as its own string so that other
tools can read it without JSON.
"""

from __future__ import annotations

import json
import struct

import torch
from torch import nn

from i2x.core.errors import InvalidArgument


def checkpoint_to_bytes(state_dict: dict, metadata: dict) -> bytes:
    from safetensors.torch import save

    # safetensors wants contiguous tensors that share no memory.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    header = {"i2x": json.dumps(metadata, sort_keys=True)}
    header.update({k: str(v) for k, v in metadata.items() if isinstance(v, (str, int, float, bool))})
    return save(tensors, metadata=header)


def checkpoint_from_bytes(data: bytes) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        (header_len,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + header_len])
        tensors = load(data)
    except (struct.error, ValueError, SafetensorError, TypeError) as exc:
        raise InvalidArgument(f"not a safetensors checkpoint ({exc}); give a file written by "
                              "checkpoint_to_bytes / safetensors", field="checkpoint") from None
    meta = header.get("__metadata__") or {}
    metadata = json.loads(meta["i2x"]) if "i2x" in meta else dict(meta)
    return tensors, metadata


def load_weights(model: nn.Module, state_dict: dict) -> None:
    """Load `state_dict` into `model`; InvalidArgument naming the differences if it is another architecture."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("mismatched shapes", mismatched)):
            if items:
                parts.append(f"{len(items)} {label} (e.g. {items[:3]})")
        raise InvalidArgument(f"the checkpoint is of another architecture than {type(model).__name__}: "
                              f"{'; '.join(parts)}; load it into the model spec it was trained with",
                              field="checkpoint")
    model.load_state_dict(state_dict, strict=True)
