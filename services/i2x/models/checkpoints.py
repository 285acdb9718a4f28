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


def _torch_weights(data: bytes) -> tuple[dict[str, torch.Tensor], dict]:
    """A torch.save file (state dict, or a dict holding one under state_dict/model), loaded with
    weights_only=True: torch refuses anything but tensors and plain containers, so no code runs."""
    import io

    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise InvalidArgument(f"not a loadable torch weights file ({str(exc).splitlines()[0][:200]}); give "
                              "safetensors or a torch.save'd state dict", field="checkpoint") from None
    if isinstance(obj, dict):
        for name in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(name), dict):
                metadata = {k: v for k, v in obj.items() if isinstance(v, (int, float, str, bool))}
                obj = obj[name]
                break
        else:
            metadata = {}
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj), metadata
    raise InvalidArgument("the torch file holds no state dict of tensors; save model.state_dict()",
                          field="checkpoint")


def checkpoint_from_bytes(data: bytes, device: str | torch.device | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a safetensors checkpoint, or of a torch.save'd state dict
    (zip format, read with weights_only=True). `device`: where the tensors go (default: the CPU);
    a GPU unit passes its device so that load_state_dict then copies on the device."""
    if device is not None and torch.device(device).type != "cpu":
        tensors, metadata = checkpoint_from_bytes(data)
        return {k: v.to(device, non_blocking=True) for k, v in tensors.items()}, metadata
    from safetensors import SafetensorError
    from safetensors.torch import load

    if data[:4] == b"PK\x03\x04":  # torch.save's zip container
        return _torch_weights(data)
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
