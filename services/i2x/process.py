"""Which process this is, for errors a person reads ("the interpretation service could not import
..."): a model factory must be importable in the services AND in their Ray workers."""

from __future__ import annotations

import os
import socket
import sys


def describe_process() -> str:
    """'the training service (pid 12, host h)', 'a Ray worker (pid 40, host h)' or 'this process (...)'."""
    where = f"pid {os.getpid()}, host {socket.gethostname()}"
    ray = sys.modules.get("ray")
    try:
        if ray is not None and ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE:
            return f"a Ray worker ({where})"
    except Exception:  # noqa: BLE001  (only a label)
        pass
    service = os.environ.get("_I2X_PROCESS_SERVICE")  # set by `i2x serve`
    return f"the {service} service ({where})" if service else f"this process ({where})"
