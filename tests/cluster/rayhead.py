"""A real Ray head (and worker nodes) as `ray start --block` subprocesses on loopback ports.

Each node runs in its own process group and its own --temp-dir, so kill() ends exactly the
processes it started (never `ray stop`, which ends every Ray of the user on the machine) and
restart() brings up a fresh head on the same ports, as a restarted head pod would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray_binary() -> str:
    return str(Path(sys.executable).with_name("ray"))


class RayNode:
    """One `ray start` process group: the head (address None) or a worker joining `address`."""

    def __init__(self, *, num_cpus: int = 1, address: str | None = None, resources: str | None = None,
                 env: dict | None = None):
        self.num_cpus, self.join, self.resources = num_cpus, address, resources
        self.env = {**os.environ, "RAY_DISABLE_USAGE_STATS": "1", **(env or {})}
        self.temp = tempfile.mkdtemp(prefix="i2x-ray-")
        self.gcs_port, self.client_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 120.0, tries: int = 3) -> "RayNode":
        """Start the node and wait for `ray start` to report it up. Ray gives a raylet 30 s to
        register (fixed in Ray): on a loaded machine that can fail, so it is tried again."""
        for attempt in range(tries):
            try:
                self._launch()
                self._wait_up(timeout)
                return self
            except RuntimeError:
                if attempt == tries - 1:
                    raise
                self.kill()
        return self

    def _launch(self) -> None:
        ports = [free_port() for _ in range(6)]
        args = [_ray_binary(), "start", "--block", f"--num-cpus={self.num_cpus}", "--num-gpus=0",
                "--disable-usage-stats", f"--node-manager-port={ports[0]}",
                f"--object-manager-port={ports[1]}", f"--metrics-export-port={ports[2]}",
                f"--dashboard-agent-listen-port={ports[3]}", f"--dashboard-agent-grpc-port={ports[4]}",
                f"--runtime-env-agent-port={ports[5]}", "--object-store-memory=80000000"]
        if self.resources:
            args.append(f"--resources={self.resources}")
        if self.join is None:
            args += ["--head", f"--port={self.gcs_port}", f"--ray-client-server-port={self.client_port}",
                     "--include-dashboard=false", f"--temp-dir={self.temp}"]
        else:
            args += [f"--address={self.join}"]
        self._log_path = Path(self.temp) / f"ray-start-{time.monotonic_ns()}.log"
        with open(self._log_path, "wb") as log:
            self.proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def _wait_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self._log_path.read_text(errors="replace")
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited {self.proc.returncode}: {text[-2000:]}")
            if "Ray runtime started" in text:
                return
            time.sleep(0.3)
        raise TimeoutError(f"Ray node not up within {timeout} s")

    def kill(self) -> None:
        """SIGKILL the node's whole process group (gcs, raylet, workers), as a lost pod."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.proc = None
        time.sleep(0.5)

    def restart(self) -> "RayNode":
        self.kill()
        return self.start()
