"""The interpretation service's connection to Ray, watched: connect with backoff, notice a lost
connection, reconnect, and tell the health service and the jobs.

A service started before its Ray head (a pod restarted with the cluster, a head being
replaced) does not exit: RayLink.start() connects in a thread, retrying with exponential
backoff up to I2X_RAY_RECONNECT_SECONDS between tries, and health stays NOT_SERVING until
it is connected. A Ray Client connection (ray://HOST:10001, what KubeRay deployments use)
that Ray gives up on (after RAY_CLIENT_RECONNECT_GRACE_PERIOD, Ray's own setting, 30 s) is
seen by the probe every PROBE_SECONDS or by a job's failed Ray call; then health turns
NOT_SERVING, the link reconnects the same way, and `generation` goes up: the warm pool drops
the actors of the old connection (a restarted head has none of them) and the waiting jobs
hand their unfinished units to new actors. Units are idempotent (a written unit is skipped),
so nothing finished is redone. The in-process Ray ('local') cannot be lost apart from the
service. A GCS address (HOST:6379) makes the service a Ray driver, which Ray ends itself
when its node goes; the restarted process then waits for Ray here.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from i2x import config, raycluster
from i2x.core.errors import Cancelled, Unavailable

log = logging.getLogger(__name__)

PROBE_SECONDS = 1.0
FIRST_BACKOFF_SECONDS = 0.5


def reconnect_setting(setting: str | None = None) -> float:
    return config.number("I2X_RAY_RECONNECT_SECONDS", setting, low=0.5, high=3600, unit="seconds")


def wait_setting(setting: str | None = None) -> float:
    """I2X_RAY_WAIT_SECONDS: how long a job waits for Ray resources or for Ray itself (0: no limit)."""
    return config.number("I2X_RAY_WAIT_SECONDS", setting, unit="seconds", zero_means="0: no limit")


def _short(error) -> str:
    """One line for a job message: a gRPC error's details, not its repr."""
    details = getattr(error, "details", None)
    text = details() if callable(details) else str(error)
    return " ".join(str(text).split())[:200]


class RayLink:
    """One per interpretation service. listeners(connected: bool) hear every change; tickers run
    once per probe while connected (the pool releases idle actors there)."""

    def __init__(self, address: str | None = None, *, backoff_max: float | None = None,
                 probe_seconds: float = PROBE_SECONDS):
        self.address = config.get("I2X_RAY_ADDRESS", address)
        self.client_mode = self.address.startswith("ray://")
        self.backoff_max = reconnect_setting() if backoff_max is None else float(backoff_max)
        self.probe_seconds = probe_seconds
        self.generation = 0  # connections made so far: actors of an older one are gone
        self.last_error = ""
        self.attempts = 0
        self.listeners: list[Callable[[bool], None]] = []
        self.tickers: list[Callable[[], None]] = []
        self._connected = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> "RayLink":
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="i2x-ray-link", daemon=True)
                self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wait(self, timeout: float | None = None, cancel=None) -> bool:
        """Block until connected (True), `timeout` s pass or `cancel` is set (False)."""
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._connected.wait(0.2):
            if self._stop.is_set():
                raise Unavailable("the interpretation service is shutting down; retry on another replica",
                                  field="job")
            if cancel is not None and cancel.is_set():
                raise Cancelled("the job was cancelled", field="job_id")
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return True

    def describe(self) -> str:
        """For job messages: where Ray is and why it is not connected."""
        if not self.last_error:
            return f"connecting to Ray at {self.address}"
        return f"Ray at {self.address} is unreachable: {self.last_error}"

    def alive(self) -> bool:
        import ray

        if not ray.is_initialized():
            return False
        if self.client_mode:
            return bool(ray.util.client.ray.is_connected())
        return True

    def lost(self, error: BaseException | str) -> bool:
        """A job's Ray call failed: True (and reconnecting) if the connection is gone."""
        if self.connected and (not self.alive() or self._connection_error(error)):
            self._drop(_short(error))
        self._wake.set()
        return not self.connected

    def _connection_error(self, error) -> bool:
        """A Ray Client call that failed on its gRPC stream: the head (or the way to it) is gone,
        even while Ray's client still tries to reconnect for its grace period."""
        if not self.client_mode or isinstance(error, str):
            return False
        import grpc

        return isinstance(error, (ConnectionError, grpc.RpcError)) or "Ray client" in str(error)

    # -- the thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        delay = FIRST_BACKOFF_SECONDS
        while not self._stop.is_set():
            if not self.connected:
                try:
                    self._connect()
                    delay = FIRST_BACKOFF_SECONDS
                except Exception as error:  # noqa: BLE001  (any failure to connect is retried)
                    self.attempts += 1
                    self.last_error = str(error)
                    log.warning("Ray at %s: %s; retrying in %.1f s", self.address, error, delay)
                    self._stop.wait(delay)
                    delay = min(delay * 2, self.backoff_max)
                continue
            if not self.alive():
                self._drop("the connection was lost")
                continue
            for tick in list(self.tickers):
                try:
                    tick()
                except Exception:  # noqa: BLE001  (a tick must not stop the watch)
                    log.exception("Ray link tick failed")
            self._wake.wait(self.probe_seconds)
            self._wake.clear()

    def _reachable(self) -> None:
        """A quick TCP check of HOST:PORT first: ray.init on a ray:// address that nothing listens
        on retries for ~30 s itself, which would stretch this link's backoff."""
        import socket

        target = self.address.removeprefix("ray://")
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            return  # 'local', 'auto': Ray finds the cluster itself
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
        except OSError as error:
            raise Unavailable(f"nothing answers at {target} ({error.strerror or error})",
                              field="I2X_RAY_ADDRESS") from None

    def _connect(self) -> None:
        import ray

        self._reachable()
        if self.client_mode and self.generation:
            ray.shutdown()  # forget the old client context (dead, or given up on) before a new ray.init
        raycluster.connect(self.address)
        self.generation += 1
        self.last_error = ""
        self._connected.set()
        log.info("Ray at %s: connected (connection %d)", self.address, self.generation)
        self._tell(True)

    def _drop(self, reason: str) -> None:
        with self._lock:
            if not self._connected.is_set():
                return
            self._connected.clear()
        self.last_error = reason
        log.warning("Ray at %s: %s; reconnecting", self.address, reason)
        self._tell(False)

    def _tell(self, connected: bool) -> None:
        for listener in list(self.listeners):
            try:
                listener(connected)
            except Exception:  # noqa: BLE001
                log.exception("Ray link listener failed")
