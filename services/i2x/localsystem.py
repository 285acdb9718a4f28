"""A local I2X system: the store, a Ray head (unless one is given) and the four services as
subprocesses. `i2x up` and `i2x demo` both use it (this module imports neither of them)."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from i2x import config
from i2x.cli_errors import UserError


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
                 timeout: float = 120.0, log_dir: str | None = None, signal_handler: Callable | None = None):
        from i2x.storage import open_store

        url = store_url or config.get("I2X_STORE")
        local = None if url.startswith("s3://") else Path(url.removeprefix("file://")).expanduser().resolve()
        # A folder this call creates is removed again if the start fails (nothing left by a failed command).
        self._created = local if local is not None and not local.exists() else None
        self.store = open_store(store_url)  # creates a local directory / checks the bucket before anything starts
        # Installed for SIGINT and SIGTERM once the Ray head runs (ray.init installs its own SIGTERM
        # handler, which would otherwise win and skip the orderly stop); the old ones come back in stop().
        self.signal_handler = signal_handler
        self._previous_handlers: dict = {}
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
            self._remove_created_store()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _ports(self) -> list[int]:
        return [config.SERVICE_PORTS[s] if self.base_port is None else (0 if self.base_port == 0 else self.base_port + i)
                for i, s in enumerate(config.SERVICES)]

    def check_ports(self) -> None:
        """A port already taken is a person's problem to solve with --base-port, found before anything starts."""
        for service, port in zip(config.SERVICES, self._ports()):
            if port == 0:
                continue
            with socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET) as probe:
                try:
                    probe.bind((self.host, port))
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        raise
                    raise UserError(f"port {port} ({service}) on {self.host} is in use (another `i2x up`?): "
                                    "choose free ports with --base-port N (N to N+3), or --base-port 0 for any")

    def _remove_created_store(self) -> None:
        if self._created is None or not self._created.is_dir():
            return
        for folder, _, _ in sorted(os.walk(self._created), key=lambda entry: -len(entry[0])):
            try:
                os.rmdir(folder)  # only empty folders: never anything a service wrote
            except OSError:
                pass

    def _install_signal_handler(self) -> None:
        if self.signal_handler is not None and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous_handlers[signum] = signal.signal(signum, self.signal_handler)

    def start(self) -> None:
        from i2x import raycluster

        self.check_ports()
        if self.ray_address is None:  # a head owned by this process: ray.shutdown() stops exactly what it started
            import ray

            ray.init(num_cpus=self.ray_cpus, include_dashboard=False, log_to_driver=False)
            self.started_ray = True
            self.ray_address = raycluster.gcs_address()
        self._install_signal_handler()
        # Built after ray.init: it sets RAY_AUTH_MODE=token, which the services need to join this head.
        url = self.store.url
        env = dict(os.environ, I2X_STORE=url[len("file://"):] if url.startswith("file://") else url,
                   I2X_HOST=self.host, I2X_RAY_ADDRESS=self.ray_address)
        if self.token:
            env["I2X_API_TOKEN"] = self.token
        if self.log_dir:
            os.makedirs(self.log_dir, exist_ok=True)
        for service, port in zip(config.SERVICES, self._ports()):
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
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}
