"""Where a unit ran: the Ray node, the device and GPU, the seconds and the CUDA memory it took.

interpretation/placement/<step>.json holds one such record per unit; interpret_run gathers them
into interpretation/index.json's `placement` list (docs/ARTIFACTS.md). The bench reads them to
assert that CUDA did the work.
"""

from __future__ import annotations

import socket
import sys

import torch

from i2x.core.device import device_name, ray_granted_gpus


def ray_node_id() -> str:
    """This process's Ray node id, '' outside Ray (never imports or starts Ray itself)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ""
    try:
        return ray.get_runtime_context().get_node_id() or ""
    except Exception:  # noqa: BLE001  (a driver that lost its cluster still records the rest)
        return ""


def start_unit(device: torch.device) -> None:
    """Reset the CUDA peak-memory counter so the record holds this unit's peak."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def placement_record(step: int, device: torch.device, seconds: float) -> dict:
    device = torch.device(device)
    text = "cpu" if device.type == "cpu" else f"{device.type}:{device.index or 0}"
    record = {"step": int(step), "node_id": ray_node_id(), "host": socket.gethostname(), "device": text,
              "device_name": device_name(device), "seconds": round(float(seconds), 4)}
    if device.type == "cuda":
        record["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
        record["ray_gpu_ids"] = ray_granted_gpus()
    return record
