"""Which torch device a computation runs on: one resolver shared by saliency, training and fine-tuning.

A device is asked for as text: ``cpu``, ``cuda`` (the first visible GPU), ``cuda:N``, ``mps`` or
``auto`` (CUDA when torch sees a GPU, else the CPU). Inside a Ray actor or task that was granted
GPUs, Ray sets CUDA_VISIBLE_DEVICES to them, so ``cuda`` / ``cuda:0`` is the GPU Ray assigned.

Asking for a GPU where torch sees none is an error (FailedPrecondition naming the field); the
work never falls back to the CPU silently: on a GPU cluster that fallback would be hours instead of
seconds and nobody would notice.
"""

from __future__ import annotations

import os
import re
import sys
from contextlib import nullcontext

import torch

from i2x.core.errors import FailedPrecondition, InvalidArgument

DEVICE_HELP = "cpu, cuda, cuda:N, mps or auto"
PRECISIONS = ("fp32", "bf16", "fp16")
_PATTERN = re.compile(r"^(cpu|auto|mps|cuda(:\d+)?)$")


def check_device(text: str | None, field: str = "device") -> str:
    """The normalised device text (lower case, no blanks); InvalidArgument when it is not one of DEVICE_HELP.
    Only the spelling is checked: whether this node has that device is resolve_device's business."""
    value = str(text if text is not None else "").strip().lower()
    if not _PATTERN.match(value):
        raise InvalidArgument(f"device must be {DEVICE_HELP}, got {text!r}", field=field)
    return value


def wants_gpu(text: str | None) -> bool:
    """True when the device text asks for a GPU for certain (cuda or cuda:N; auto does not)."""
    return str(text or "").strip().lower().startswith("cuda")


def resolve_device(text: str | None = "auto", field: str = "device") -> torch.device:
    """The torch.device for `text` on this node, or FailedPrecondition when it does not have it."""
    value = check_device(text, field)
    if value == "cpu":
        return torch.device("cpu")
    if value == "auto":
        granted = ray_granted_gpus()
        if granted:  # Ray granted this worker a GPU: auto means that GPU, and its absence is an error
            value = "cuda"
        else:
            return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if value == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise FailedPrecondition(f"{field} is 'mps' but torch sees no Apple GPU on this node; "
                                     "use cpu or auto", field=field)
        return torch.device("mps")
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        why = (f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None
               else f"torch {torch.__version__} built with CUDA {torch.version.cuda or 'none'}")
        granted = ray_granted_gpus()
        if granted:
            why = f"Ray granted GPU {', '.join(granted)}; torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}, " + why
        raise FailedPrecondition(f"{field} is {str(text).strip().lower()!r} but torch sees no CUDA GPU on this node "
                                 f"({why}); run it where a GPU is granted, or set the device to cpu", field=field)
    index = int(value.split(":")[1]) if ":" in value else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise FailedPrecondition(f"{field} is {value!r} but this node has {count} visible GPU(s) "
                                 f"(cuda:0..cuda:{count - 1})", field=field)
    return torch.device("cuda", index)


def ray_granted_gpus() -> list[str]:
    """The GPU ids Ray granted this worker process ([] outside a Ray task or actor that asked for GPUs).
    Never imports Ray: only a process that already uses it can have been granted anything."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return []
    try:
        return [str(g) for g in ray.get_gpu_ids()]
    except Exception:  # noqa: BLE001  (a driver, or a worker shutting down)
        return []


def device_name(device: torch.device | str) -> str:
    """The GPU's name for a CUDA device ('NVIDIA H200'), else ''."""
    device = torch.device(device)
    if device.type != "cuda":
        return ""
    return torch.cuda.get_device_name(device)


def check_precision(text: str | None, field: str = "precision") -> str:
    value = str(text if text is not None else "").strip().lower()
    if value not in PRECISIONS:
        raise InvalidArgument(f"precision must be one of {', '.join(PRECISIONS)}, got {text!r}", field=field)
    return value


def autocast(device: torch.device, precision: str):
    """The autocast context for `precision` on `device` (fp32: none). fp16 needs a GPU: torch's CPU
    fp16 autocast exists but is slow and loses range, so it is refused there."""
    precision = check_precision(precision)
    if precision == "fp32":
        return nullcontext()
    if precision == "fp16" and device.type == "cpu":
        raise InvalidArgument("precision fp16 needs a GPU; use bf16 on the CPU (or fp32)", field="precision")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def batch_size_for(device: torch.device, per_image_bytes: int, *, fraction: float = 0.5,
                   low: int = 16, high: int = 1024) -> int:
    """A batch size that fits `fraction` of the device's free memory, given an estimate of the bytes one
    image costs (activations of the forward pass plus the kept feature map); a power of two in low..high.
    On the CPU: 64, the library's default."""
    if device.type != "cuda":
        return 64
    free, _total = torch.cuda.mem_get_info(device)
    size = max(1, int(free * fraction // max(per_image_bytes, 1)))
    size = 1 << (size.bit_length() - 1)
    return max(low, min(high, size))
