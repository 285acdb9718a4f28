"""A local I2X system: the store, a Ray head (unless one is given) and the four services as
subprocesses. `i2x up` and `i2x demo` both use it (this module imports neither of them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from i2x import config


class _Child:
    """One service subprocess; its output goes to `log` (or is echoed with a prefix) and is
    scanned for the listening line."""

    def __init__(self, service: str, argv: list[str], env: dict, log=None):
        self.service = service
        self.address: str | None = None
        self.ready = threading.Event()
        self.log = log
        self.process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        bufsize=1, start_new_session=True)  # Ctrl-C reaches the parent only
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        marker = f"i2x {self.service} listening on "
        for line in self.process.stdout:
            if line.startswith(marker):
                self.address = line[len(marker):].split()[0]
                self.ready.set()
            if self.log is not None:
                self.log.write(line)
                self.log.flush()
            else:
                sys.stdout.write(f"[{self.service}] {line}")
                sys.stdout.flush()
        self.ready.set()  # exited: stop waiting

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)


class LocalSystem:
    """The store, a Ray head (unless one is given) and the four services as subprocesses.

    A context manager: `with LocalSystem(...) as system:` waits until every service listens
    (system.addresses: service -> host:port) and stops all of it, Ray included, on exit.
    log_dir: write each service's output to <log_dir>/<service>.log instead of echoing it.
    """

    def __init__(self, store_url: str | None = None, *, host: str = "127.0.0.1", base_port: int | None = None,
                 ray_address: str | None = None, ray_cpus: int | None = None, token: str | None = None,
                 timeout: float = 120.0, log_dir: str | None = None):
        from i2x.storage import open_store

        self.store = open_store(store_url)  # creates a local directory / checks the bucket before anything starts
        self.host, self.base_port, self.token, self.timeout, self.log_dir = host, base_port, token, timeout, log_dir
        self.ray_address = ray_address or (None if config.get("I2X_RAY_ADDRESS") == "local"
                                           else config.get("I2X_RAY_ADDRESS"))
        self.ray_cpus = ray_cpus
        self.started_ray = False
        self.children: list[_Child] = []
        self.addresses: dict[str, str] = {}

    def __enter__(self) -> "LocalSystem":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        from i2x import raycluster

        if self.ray_address is None:  # a head owned by this process: ray.shutdown() stops exactly what it started
            import ray

            ray.init(num_cpus=self.ray_cpus, include_dashboard=False, log_to_driver=False)
            self.started_ray = True
            self.ray_address = raycluster.gcs_address()
        # Built after ray.init: it sets RAY_AUTH_MODE=token, which the services need to join this head.
        url = self.store.url
        env = dict(os.environ, I2X_STORE=url[len("file://"):] if url.startswith("file://") else url,
                   I2X_HOST=self.host, I2X_RAY_ADDRESS=self.ray_address)
        if self.token:
            env["I2X_API_TOKEN"] = self.token
        if self.log_dir:
            os.makedirs(self.log_dir, exist_ok=True)
        for offset, service in enumerate(config.SERVICES):
            port = config.SERVICE_PORTS[service] if self.base_port is None else (
                0 if self.base_port == 0 else self.base_port + offset)
            argv = [sys.executable, "-m", "i2x.cli", "serve", service, "--port", str(port)]
            log = open(os.path.join(self.log_dir, f"{service}.log"), "w") if self.log_dir else None
            self.children.append(_Child(service, argv, env, log))
        deadline = time.monotonic() + self.timeout
        for child in self.children:
            child.ready.wait(max(0.0, deadline - time.monotonic()))
        failed = [c.service for c in self.children if c.address is None]
        if failed:
            where = f" (logs in {self.log_dir})" if self.log_dir else " (see their output above)"
            raise RuntimeError(f"{', '.join(failed)} did not start{where}")
        self.addresses = {c.service: c.address for c in self.children}

    def exited(self) -> list[str]:
        return [c.service for c in self.children if c.process.poll() is not None]

    def stop(self) -> None:
        for child in self.children:
            child.stop()
        grace = float(config.get("I2X_GRACE_SECONDS")) + 5
        for child in self.children:
            try:
                child.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                child.process.kill()
            if child.log is not None:
                child.log.close()
        self.children = []
        if self.started_ray:
            import ray

            ray.shutdown()
            self.started_ray = False
