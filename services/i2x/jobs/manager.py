"""Jobs: long work run in worker threads, its state kept in the store so a restart finds it.

A record lives at `jobs/<service>/<job_id>.json`. It is written on every state change, on
every progress event that names an artifact, and otherwise at most every PROGRESS_WRITE_SECONDS
(a job with thousands of units must not write thousands of records). Watchers get every
progress event in memory, bridged from worker threads to their asyncio loop.

Several replicas of one service share the prefix through leases: a record names its `owner`
(one JobManager instance) and a `heartbeat` time the owner refreshes every lease/3 seconds.
recover() takes over only jobs whose heartbeat is older than the lease, so a live replica's
jobs stay where they are and a crashed replica's jobs move to a live one. The store has no
compare-and-swap, so a claim is write, wait, re-read; a rare double run is wasted work, not
corruption, because units are idempotent. A cancel for a job another replica runs is a marker
object `jobs/<service>/<job_id>.cancel` that the owner's heartbeat picks up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from typing import Any, AsyncIterator, Callable, Iterable

from i2x import config
from i2x.core.errors import AlreadyExists, Cancelled, FailedPrecondition, I2XError, InvalidArgument, NotFound
from i2x.storage.base import Store
from i2x.storage.keys import validate_id

log = logging.getLogger(__name__)

JOB_STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
PROGRESS_WRITE_SECONDS = 0.5
# How often watch()/wait() re-read a record this process does not run (another replica's job).
POLL_SECONDS = 1.0
# Longest pause between writing a claim and re-reading it (shorter for short leases): another
# replica that read the record before our write must have written its own claim by then.
CLAIM_SETTLE_SECONDS = 0.5
# A terminal state is written again after 0.2, 0.4, ... up to 5 s until the store takes it.
FINAL_WRITE_FIRST_DELAY = 0.1
FINAL_WRITE_MAX_DELAY = 5.0

JobFunction = Callable[["JobContext"], "dict | None"]


@dataclass
class JobRecord:
    job_id: str
    service: str
    kind: str
    run_id: str
    state: str = "QUEUED"
    progress_done: int = 0
    progress_total: int = 0
    message: str = ""
    error: str = ""
    error_code: str = ""
    result: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    created: float = 0.0
    updated: float = 0.0
    artifacts: list[str] = field(default_factory=list)
    # The JobManager instance running the job ("" when nobody does) and when it last said so.
    # heartbeat 0 means released (take over at once); None means a record written before leases.
    owner: str = ""
    heartbeat: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES

    def lease_expired(self, lease_seconds: float, now: float) -> bool:
        """True when nobody holds this job: its owner's heartbeat (or, for a record from before
        leases, its last update) is older than the lease."""
        last_sign = self.updated if self.heartbeat is None else self.heartbeat
        return now - last_sign > lease_seconds

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "JobRecord":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def copy(self) -> "JobRecord":
        return JobRecord.from_dict(json.loads(json.dumps(self.to_dict())))


@dataclass
class JobEvent:
    job_id: str
    state: str
    done: int
    total: int
    message: str
    artifact: str | None
    time: float


class JobContext:
    """What a job function sees: its ids and params, progress reporting and cancellation."""

    def __init__(self, manager: "JobManager", record: JobRecord):
        self._manager = manager
        self.job_id = record.job_id
        self.run_id = record.run_id
        self.kind = record.kind
        self.params = dict(record.params)
        self.cancel_event = threading.Event()
        self._cancel_hooks: list[Callable[[], None]] = []
        self._hooks_lock = threading.Lock()
        self.interrupted = False  # set by shutdown(interrupt=True): leave the job for recovery

    def progress(self, done: int, total: int, message: str = "", artifact: str | None = None) -> None:
        self._manager._progress(self.job_id, int(done), int(total), message, artifact)

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled("the job was cancelled", field="job_id")

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Run `callback` when the job is cancelled (at once if it already is), e.g. ray.cancel of refs."""
        with self._hooks_lock:
            if not self.cancel_event.is_set():
                self._cancel_hooks.append(callback)
                return
        _run_hook(self.job_id, callback)

    def _cancel(self) -> None:
        with self._hooks_lock:
            self.cancel_event.set()
            hooks, self._cancel_hooks = self._cancel_hooks, []
        for hook in hooks:
            _run_hook(self.job_id, hook)


def _run_hook(job_id: str, hook: Callable[[], None]) -> None:
    try:
        hook()
    except Exception:  # a failing hook must not stop the others or the cancel itself
        log.exception("cancel hook of job %s failed", job_id)


def request_job_id(kind: str, run_id: str, request_id: str) -> str:
    """The job id of a start with a client's request_id: the same on every replica and retry."""
    import hashlib

    digest = hashlib.sha256(f"{kind}\0{run_id}\0{request_id}".encode()).hexdigest()
    return f"req-{digest[:32]}"


def lease_seconds_setting() -> float:
    """I2X_JOB_LEASE_SECONDS as a positive number of seconds."""
    text = config.get("I2X_JOB_LEASE_SECONDS")
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise InvalidArgument(f"I2X_JOB_LEASE_SECONDS is {text!r}; give a positive number of seconds "
                              "(default 30)", field="I2X_JOB_LEASE_SECONDS")
    return value


def new_owner_id() -> str:
    """host-pid-random: unique per JobManager instance, readable in a record."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class JobManager:
    def __init__(self, store: Store, service: str, *, max_workers: int = 2,
                 job_id_factory: Callable[[], str] | None = None, lease_seconds: float | None = None):
        self.store = store
        self.service = validate_id(service, "service")
        if int(max_workers) < 1:
            raise InvalidArgument(f"max_workers is {max_workers}; give at least 1", field="max_workers")
        if lease_seconds is None:
            lease_seconds = lease_seconds_setting()
        elif not 0 < float(lease_seconds) < float("inf"):
            raise InvalidArgument(f"lease_seconds is {lease_seconds}; give a positive number of seconds",
                                  field="lease_seconds")
        self.lease_seconds = float(lease_seconds)
        self.owner = new_owner_id()
        self._executor = ThreadPoolExecutor(max_workers=int(max_workers),
                                            thread_name_prefix=f"i2x-job-{service}")
        self._new_id = job_id_factory or (lambda: uuid.uuid4().hex)
        self._lock = threading.RLock()
        self._submit_lock = threading.Lock()
        self._records: dict[str, JobRecord] = {}    # jobs this process runs (or ran)
        self._contexts: dict[str, JobContext] = {}
        self._futures: dict[str, Future] = {}
        self._finished: dict[str, threading.Event] = {}
        self._watchers: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]]] = {}
        self._write_locks: dict[str, threading.Lock] = {}
        self._last_write: dict[str, float] = {}
        # When the store last confirmed a job is ours; a write after a longer gap than the lease
        # re-reads the record first (another replica may have taken the job over meanwhile).
        self._confirmed: dict[str, float] = {}
        self._gone: set[str] = set()  # jobs this instance no longer runs: released or taken over
        # Resumed jobs: the (done, total) they had; progress below it is not reported again.
        self._floor: dict[str, tuple[int, int]] = {}
        self._closed = False
        self._stop = threading.Event()
        self._heartbeat_thread = threading.Thread(target=self._heartbeat_loop, daemon=True,
                                                  name=f"i2x-heartbeat-{service}")
        self._heartbeat_thread.start()
        self._recovery_thread: threading.Thread | None = None

    # -- keys and persistence ------------------------------------------------------------------
    def key(self, job_id: str) -> str:
        return f"jobs/{self.service}/{job_id}.json"

    def cancel_key(self, job_id: str) -> str:
        """The marker a replica writes to cancel a job another replica runs."""
        return f"jobs/{self.service}/{job_id}.cancel"

    def _write(self, job_id: str, *, final: bool = False) -> None:
        """Persist the latest state; the per-job lock keeps an older snapshot from landing last.

        final=True (a terminal state): retried until the store takes it, so a store outage can
        not leave a FAILED or CANCELLED job RUNNING in the store for recovery to bring back."""
        attempt = 0
        while True:
            with self._write_locks[job_id]:
                with self._lock:
                    if job_id in self._gone:
                        return  # another replica runs it now: its record is not ours to write
                    snapshot = self._records[job_id].to_dict()
                    self._last_write[job_id] = time.monotonic()
                    unconfirmed = time.time() - self._confirmed.get(job_id, 0.0) > self.lease_seconds
                if unconfirmed and not self._still_ours(job_id):
                    return
                try:
                    self.store.put_json(self.key(job_id), snapshot)
                    return
                except Exception:  # noqa: BLE001  (any store error: an outage, a timeout)
                    # A store outage must not kill the job; the next write carries the state.
                    log.warning("could not write job record %s (state %s)%s", job_id, snapshot["state"],
                                "; retrying" if final else "", exc_info=True,
                                extra=self._log_ids(job_id))
            if not final:
                return
            attempt += 1
            time.sleep(min(FINAL_WRITE_MAX_DELAY, FINAL_WRITE_FIRST_DELAY * 2 ** min(attempt, 10)))

    def _log_ids(self, job_id: str) -> dict:
        record = self._records.get(job_id)
        return {"service": self.service, "job_id": job_id, "run_id": record.run_id if record else ""}

    def _log_state(self, record: JobRecord, previous: str | None) -> None:
        """One log line per job state change, with the ids in `extra` (read by a JSON formatter)."""
        ids = {"service": self.service, "job_id": record.job_id, "run_id": record.run_id}
        detail = f": {record.error_code} {record.error}" if record.state == "FAILED" else ""
        log.info("job %s (%s, run %s) %s -> %s%s", record.job_id, record.kind, record.run_id or "-",
                 previous or "new", record.state, detail, extra={**ids, "kind": record.kind,
                                                                 "state": record.state, "previous": previous})

    def _still_ours(self, job_id: str) -> bool:
        """Re-read the record: False (and the job is given up here) when another replica holds it
        or it was closed elsewhere. A store error counts as ours: the next check decides."""
        try:
            stored = self._load(job_id)
        except NotFound:
            return True
        except I2XError:
            log.exception("could not re-read job record %s", job_id)
            return True
        if stored.owner == self.owner and not stored.finished:
            with self._lock:
                self._confirmed[job_id] = time.time()
            return True
        self._lose(job_id, stored)
        return False

    def _lose(self, job_id: str, stored: JobRecord) -> None:
        """Stop running a job whose lease another replica took (or that was closed elsewhere)."""
        with self._lock:
            mine = self._records.get(job_id)
            if job_id in self._gone or mine is None or mine.finished:
                return  # already given up, or it just finished here (our own final write was read)
            self._gone.add(job_id)
            context = self._contexts.get(job_id)
            self._emit(job_id, None)  # watchers here go on following the store
            self._watchers.pop(job_id, None)
        log.warning("job %s: %s; stopping it here", job_id,
                    f"closed elsewhere ({stored.state})" if stored.finished else f"now run by {stored.owner!r}")
        if context is not None:
            context.interrupted = True
            context._cancel()

    def _put_final(self, record: JobRecord) -> None:
        """Store a terminal record this instance does not run (recover, cancel of an orphan),
        retried like _write(final=True): a closed job must not come back as RUNNING."""
        attempt = 0
        while True:
            try:
                self.store.put_json(self.key(record.job_id), record.to_dict())
                return
            except Exception:  # noqa: BLE001
                attempt += 1
                log.warning("could not write job record %s (state %s); retrying", record.job_id, record.state,
                            exc_info=True, extra={"service": self.service, "job_id": record.job_id,
                                                  "run_id": record.run_id})
                if self._stop.is_set() and attempt > 3:
                    raise
                time.sleep(min(FINAL_WRITE_MAX_DELAY, FINAL_WRITE_FIRST_DELAY * 2 ** min(attempt, 10)))

    def _load(self, job_id: str) -> JobRecord:
        try:
            return JobRecord.from_dict(self.store.get_json(self.key(job_id)))
        except NotFound:
            raise NotFound(f"no job {job_id!r} in service {self.service!r}", field="job_id") from None

    # -- public API ----------------------------------------------------------------------------
    def submit(self, kind: str, run_id: str, params: dict, fn: JobFunction, *, request_id: str = "") -> JobRecord:
        """Queue fn as a new job. request_id (a client's id of this start): a submit with the same
        kind, run and request_id returns the first job instead of starting another (the same
        params), or is AlreadyExists (other params)."""
        validate_id(kind, "kind")
        if run_id:
            validate_id(run_id, "run_id")
        params = dict(params or {})
        try:
            json.dumps(params)
        except (TypeError, ValueError) as error:
            raise InvalidArgument(f"job parameters must be JSON values: {error}", field="params") from None
        if self._closed:
            raise FailedPrecondition("the service is shutting down; submit the job again later",
                                     field="job")
        if request_id:
            validate_id(request_id, "request_id")
            with self._submit_lock:  # one process: concurrent duplicates make one job
                job_id = request_job_id(kind, run_id, request_id)
                try:
                    existing = self.get(job_id)
                except NotFound:
                    return self._submit(kind, run_id, params, fn, job_id)
                if existing.params != params:
                    raise AlreadyExists(f"request_id {request_id!r} already started job {job_id} with other "
                                        "parameters; give a new request_id for a new job", field="request_id")
                return existing
        return self._submit(kind, run_id, params, fn, None)

    def _submit(self, kind: str, run_id: str, params: dict, fn: JobFunction, job_id: str | None) -> JobRecord:
        now = time.time()
        job_id = validate_id(job_id or self._new_id(), "job_id")
        record = JobRecord(job_id=job_id, service=self.service, kind=kind, run_id=run_id or "",
                           state="QUEUED", params=params, created=now, updated=now, message="queued",
                           owner=self.owner, heartbeat=now)
        with self._lock:
            if job_id in self._records or self.store.exists(self.key(job_id)):
                raise FailedPrecondition(f"job id {job_id!r} is taken; the id factory must give new ids",
                                         field="job_id")
        queued = record.copy()  # the state as submitted; the worker may already be changing it
        self._log_state(queued, None)
        self._start(record, fn)
        return queued

    def by_request(self, kind: str, run_id: str, request_id: str) -> JobRecord | None:
        """The job a start with this request_id made, or None."""
        if not request_id:
            return None
        try:
            return self.get(request_job_id(kind, run_id, validate_id(request_id, "request_id")))
        except NotFound:
            return None

    def active_count(self) -> int:
        """Jobs this instance holds that have not finished (queued or running)."""
        with self._lock:
            return sum(1 for j, r in self._records.items() if not r.finished and j not in self._gone)

    def get(self, job_id: str) -> JobRecord:
        validate_id(job_id, "job_id")
        with self._lock:
            if job_id in self._records and job_id not in self._gone:
                return self._records[job_id].copy()
        return self._load(job_id)

    def list(self, *, run_id: str | None = None, kind: str | None = None,
             states: Iterable[str] | None = None) -> list[JobRecord]:
        wanted = set(states or ())
        unknown = wanted - set(JOB_STATES)
        if unknown:
            raise InvalidArgument(f"unknown job states {sorted(unknown)}; use some of {list(JOB_STATES)}",
                                  field="states")
        records = {}
        for key in self.store.list(f"jobs/{self.service}/"):
            if not key.endswith(".json"):
                continue  # cancel markers
            job_id = key.rsplit("/", 1)[-1].removesuffix(".json")
            try:
                records[job_id] = self.get(job_id)
            except (NotFound, InvalidArgument, ValueError, TypeError):
                log.warning("skipping unreadable job record %s", key)
        with self._lock:  # jobs whose first write failed are still ours
            for job_id, record in self._records.items():
                if job_id not in self._gone:
                    records.setdefault(job_id, record.copy())
        selected = [r for r in records.values()
                    if (run_id is None or r.run_id == run_id) and (kind is None or r.kind == kind)
                    and (not wanted or r.state in wanted)]
        return sorted(selected, key=lambda r: (r.created, r.job_id))

    def cancel(self, job_id: str) -> JobRecord:
        record = self.get(job_id)
        if record.finished:
            return record  # jobs.proto: cancelling a finished job changes nothing
        with self._lock:
            ours = job_id not in self._gone
            context = self._contexts.get(job_id) if ours else None
        if context is None:
            if not record.lease_expired(self.lease_seconds, time.time()):
                # A live replica runs it: leave a marker its heartbeat turns into a cancel.
                self.store.put_json(self.cancel_key(job_id), {"requested": time.time(), "by": self.owner})
                record.message = "cancel requested"
                return record
            # Nobody runs it (its process died and no replica took it over yet): close it here.
            previous = record.state
            record.state, record.message, record.updated = "CANCELLED", "cancelled", time.time()
            self._put_final(record)
            self._log_state(record, previous)
            return record
        self._cancel_local(job_id)
        return self.get(job_id)

    def _cancel_local(self, job_id: str) -> None:
        with self._lock:
            context = self._contexts[job_id]
            future = self._futures.get(job_id)
        context._cancel()
        if future is not None and future.cancel():
            # Still waiting for a worker: it will never start.
            self._finish(job_id, "CANCELLED", message="cancelled before it started")
        else:
            self._update(job_id, message="cancel requested")

    async def watch(self, job_id: str) -> AsyncIterator[JobEvent]:
        """The current state, then every progress event, until a terminal state."""
        validate_id(job_id, "job_id")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        entry = (loop, queue)
        with self._lock:
            record = self._records.get(job_id) if job_id not in self._gone else None
            if record is not None:
                # Registered under the same lock that orders updates: nothing lost, nothing twice.
                first = _event(record, None)
                if not record.finished:
                    self._watchers.setdefault(job_id, []).append(entry)
        if record is None:
            async for event in self._poll_foreign(job_id):
                yield event
            return
        try:
            yield first
            if first.state in TERMINAL_STATES:
                return
            while True:
                event = await queue.get()
                if event is None:
                    # Released at shutdown or taken over by another replica: follow the store.
                    async for polled in self._poll_foreign(job_id):
                        yield polled
                    return
                yield event
                if event.state in TERMINAL_STATES:
                    return
        finally:
            with self._lock:
                watchers = self._watchers.get(job_id, [])
                if entry in watchers:
                    watchers.remove(entry)

    async def _poll_foreign(self, job_id: str) -> AsyncIterator[JobEvent]:
        last = None
        while True:
            record = await asyncio.to_thread(self.get, job_id)
            event = _event(record, None)
            key = (event.state, event.done, event.total, event.message)
            if key != last:
                last = key
                yield event
            if record.finished:
                return
            await asyncio.sleep(POLL_SECONDS)

    def wait(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """The record once finished, or as it stands when `timeout` seconds have passed."""
        validate_id(job_id, "job_id")
        with self._lock:
            done = self._finished.get(job_id)
        if done is not None:
            done.wait(timeout)
            return self.get(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self.get(job_id)
            if record.finished or (deadline is not None and time.monotonic() >= deadline):
                return record
            time.sleep(POLL_SECONDS if deadline is None else max(0.0, min(POLL_SECONDS, deadline - time.monotonic())))

    def recover(self, resumable: Callable[[JobRecord], JobFunction | None]) -> list[str]:
        """Take over unfinished jobs nobody holds: re-run when `resumable` gives a function, else FAIL them.

        A job is taken over when its lease expired (its owner crashed or released it at shutdown),
        never while another live replica heartbeats it. Returns the ids this call took over."""
        if self._closed:
            return []
        now = time.time()
        candidates = []
        for record in self.list(states=("QUEUED", "RUNNING")):
            with self._lock:
                if record.job_id in self._records and record.job_id not in self._gone:
                    continue  # ours, alive
                future = self._futures.get(record.job_id)
            if future is not None and not future.done():
                continue  # given up here but its thread has not stopped yet: not twice in one process
            if record.lease_expired(self.lease_seconds, now):
                candidates.append(record)
        claimed = self._claim(candidates)
        handled = []
        for record in claimed:
            previous = record.state
            if self.store.exists(self.cancel_key(record.job_id)):
                record.state, record.message, record.updated = "CANCELLED", "cancelled", time.time()
                record.owner, record.heartbeat = "", 0.0
                self._put_final(record)
                self._log_state(record, previous)
                self.store.delete(self.cancel_key(record.job_id))
                handled.append(record.job_id)
                continue
            try:
                fn = resumable(record)
            except Exception as error:  # a bad record must not stop recovery of the others
                log.exception("cannot resume job %s", record.job_id)
                fn, reason = None, f"could not resume after a restart: {_one_line(error)}"
            else:
                reason = "the service restarted before the job finished; submit it again"
            if fn is None:
                record.state, record.error, record.error_code = "FAILED", reason, "ABORTED"
                record.message, record.updated = "service restarted", time.time()
                record.owner, record.heartbeat = "", 0.0
                self._put_final(record)
                self._log_state(record, previous)
            else:
                record.state, record.message, record.updated = "QUEUED", "resumed after a restart", time.time()
                with self._lock:  # progress never goes back: the resumed run starts again from 0
                    self._floor[record.job_id] = (record.progress_done, record.progress_total)
                self._log_state(record, previous)
                try:
                    self._start(record, fn)
                except RuntimeError:  # the executor shut down meanwhile: leave it to another replica
                    self._release(record.job_id)
                    continue
            handled.append(record.job_id)
        return handled

    def _claim(self, candidates: list[JobRecord]) -> list[JobRecord]:
        """Write this owner into each record, wait, re-read: the records still naming us are ours.

        S3 has no compare-and-swap: when two replicas claim at once, the write that lands last
        wins and the other replica sees it on re-reading. Only a replica whose read-to-write gap
        exceeds the settle time could still run a job twice (wasted work; units are idempotent)."""
        written = []
        for record in candidates:
            try:
                fresh = self._load(record.job_id)  # just before writing: keeps the race window short
            except I2XError:
                continue
            if fresh.finished or not fresh.lease_expired(self.lease_seconds, time.time()):
                continue
            fresh.owner, fresh.heartbeat = self.owner, time.time()
            self.store.put_json(self.key(fresh.job_id), fresh.to_dict())
            written.append(fresh)
        if not written:
            return []
        time.sleep(min(CLAIM_SETTLE_SECONDS, self.lease_seconds / 10))
        mine = []
        for record in written:
            try:
                again = self._load(record.job_id)
            except I2XError:
                continue
            if again.owner == self.owner and not again.finished:
                mine.append(again)
            else:
                log.info("job %s was claimed by %r first", record.job_id, again.owner)
        return mine

    def start_recovery(self, resumable: Callable[[JobRecord], JobFunction | None]) -> list[str]:
        """recover() now, then every lease/2 seconds in the background until shutdown, so a job
        of a crashed replica moves to a live one. Returns what the first pass took over."""
        handled = self.recover(resumable)
        with self._lock:
            if self._recovery_thread is None and not self._closed:
                self._recovery_thread = threading.Thread(target=self._recovery_loop, args=(resumable,),
                                                         daemon=True, name=f"i2x-recovery-{self.service}")
                self._recovery_thread.start()
        return handled

    def _recovery_loop(self, resumable: Callable[[JobRecord], JobFunction | None]) -> None:
        while not self._stop.wait(self.lease_seconds / 2) and not self._closed:
            try:
                taken = self.recover(resumable)
            except Exception:  # a store outage: try again next period
                log.exception("periodic job recovery failed")
                continue
            if taken:
                log.info("took over jobs %s whose owners stopped heartbeating", taken)

    def stop_heartbeat(self) -> None:
        """Stop renewing leases and recovering, as a crashed or frozen process would (tests use it
        to play a dead replica); jobs still running here re-check ownership before any write."""
        self._stop.set()
        self._heartbeat_thread.join(timeout=10)

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                self._beat()
            except Exception:  # a store outage must not end the heartbeat
                log.exception("job heartbeat failed")
            with self._lock:
                idle = self._closed and all(r.finished or j in self._gone for j, r in self._records.items())
            if idle:
                return

    def _beat(self) -> None:
        """Renew the lease of every job run here; turn cancel markers into cancels; give up jobs
        another replica took over (this process was frozen longer than the lease)."""
        with self._lock:
            ours = [j for j, r in self._records.items() if not r.finished and j not in self._gone]
        for job_id in ours:
            if not self._still_ours(job_id):
                continue
            if self.store.exists(self.cancel_key(job_id)):
                log.info("job %s: cancel requested through the store", job_id)
                self._cancel_local(job_id)
            with self._lock:
                record = self._records[job_id]
                if record.finished:
                    continue
                record.heartbeat = time.time()
            self._write(job_id)

    def _release(self, job_id: str) -> None:
        """Leave an unfinished job QUEUED with no owner so any replica takes it over at once."""
        with self._lock:
            record = self._records[job_id]
            if record.finished or job_id in self._gone:
                return
            previous = record.state
            record.state, record.owner, record.heartbeat = "QUEUED", "", 0.0
            record.updated = time.time()
            if previous != "QUEUED":
                self._log_state(record, previous)
            self._emit(job_id, _event(record, None))
            self._emit(job_id, None)  # watchers here go on following the store
            self._watchers.pop(job_id, None)
        self._write(job_id)
        with self._lock:
            self._gone.add(job_id)

    def shutdown(self, wait: bool = True, *, interrupt: bool = False) -> None:
        """Stop taking jobs. Queued jobs are released (QUEUED, no owner) for another replica or
        the next process to take over at once.

        interrupt=True also asks running jobs to stop (their cancel event is set); they are left
        QUEUED with "interrupted by shutdown" and no owner, so recover() resumes them, instead of
        CANCELLED.
        """
        self._closed = True
        with self._lock:
            contexts = [c for j, c in self._contexts.items()
                        if not self._records[j].finished and j not in self._gone]
        if interrupt:
            for context in contexts:
                context.interrupted = True
                context._cancel()
        self._executor.shutdown(wait=wait, cancel_futures=True)
        with self._lock:
            never_started = [j for j, f in self._futures.items() if f.cancelled()]
        for job_id in never_started:
            self._release(job_id)
        if wait:
            self._stop.set()

    # -- running -------------------------------------------------------------------------------
    def _start(self, record: JobRecord, fn: JobFunction) -> None:
        job_id = record.job_id
        with self._lock:
            self._records[job_id] = record
            self._contexts[job_id] = JobContext(self, record)
            self._finished[job_id] = threading.Event()
            self._write_locks[job_id] = threading.Lock()
            self._confirmed[job_id] = time.time()
            self._gone.discard(job_id)
        self._write(job_id)
        future = self._executor.submit(self._run, job_id, fn)
        with self._lock:
            self._futures[job_id] = future

    def _run(self, job_id: str, fn: JobFunction) -> None:
        context = self._contexts[job_id]
        if context.cancel_event.is_set():
            self._finish(job_id, "CANCELLED", message="cancelled before it started")
            return
        self._update(job_id, state="RUNNING", message="running")
        try:
            result = fn(context) or {}
            if not isinstance(result, dict):
                raise TypeError(f"a job function returns a dict or None, not {type(result).__name__}")
            json.dumps(result)
        except Cancelled:
            if context.interrupted:
                self._interrupted(job_id)
            else:
                self._finish(job_id, "CANCELLED", message="cancelled")
        except Exception as error:
            # The client gets one line and a stable code; the traceback stays in the server log.
            message, code = client_error(error)
            log.error("job %s (%s) failed: %s %s", job_id, self._records[job_id].kind, code, message,
                      exc_info=error, extra=self._log_ids(job_id))
            if code == "INTERNAL":
                message = (f"internal error ({type(_cause(error)).__name__}); the server log has the details "
                           f"under job_id {job_id}")
            self._finish(job_id, "FAILED", message="failed", error=message, error_code=code)
        else:
            self._finish(job_id, "SUCCEEDED", message="done", result=result)

    def _interrupted(self, job_id: str) -> None:
        with self._lock:
            self._records[job_id].message = "interrupted by shutdown"
        self._release(job_id)  # no-op for a job another replica took over
        self._finished[job_id].set()

    def _update(self, job_id: str, **changes: Any) -> None:
        with self._lock:
            record = self._records[job_id]
            if record.finished:  # a late update (e.g. a cancel racing the end) changes nothing
                return
            previous = record.state
            for name, value in changes.items():
                setattr(record, name, value)
            record.updated = time.time()
            if record.state != previous:
                self._log_state(record, previous)
            self._emit(job_id, _event(record, None))
        self._write(job_id)

    def _finish(self, job_id: str, state: str, **changes: Any) -> None:
        with self._lock:
            record = self._records[job_id]
            if record.finished:
                return
            if state == "SUCCEEDED" and record.progress_total:
                record.progress_done = record.progress_total
            previous = record.state
            record.state = state
            for name, value in changes.items():
                setattr(record, name, value)
            record.updated = time.time()
            self._floor.pop(job_id, None)
            self._log_state(record, previous)
            self._emit(job_id, _event(record, None))
            self._watchers.pop(job_id, None)
            gone = job_id in self._gone
        self._write(job_id, final=True)
        if not gone:
            try:  # a cancel marker has done its work (deleting a missing key is not an error)
                self.store.delete(self.cancel_key(job_id))
            except I2XError:
                log.warning("could not delete the cancel marker of job %s", job_id)
        self._finished[job_id].set()

    def _progress(self, job_id: str, done: int, total: int, message: str, artifact: str | None) -> None:
        with self._lock:
            record = self._records[job_id]
            if record.finished:
                return
            floor = self._floor.get(job_id)
            if floor is not None:
                if total == floor[1] and done < floor[0]:
                    done = floor[0]  # a resumed job skips finished units: don't show them again
                else:
                    del self._floor[job_id]
            record.progress_done, record.progress_total = done, total
            if message:
                record.message = message
            if artifact and artifact not in record.artifacts:
                record.artifacts.append(artifact)
            record.updated = time.time()
            self._emit(job_id, _event(record, artifact))
            due = artifact or time.monotonic() - self._last_write.get(job_id, 0.0) >= PROGRESS_WRITE_SECONDS
        if due:
            self._write(job_id)

    def _emit(self, job_id: str, event: JobEvent | None) -> None:
        """Hand an event to every watcher's loop (called with self._lock held, from any thread)."""
        alive = []
        for loop, queue in self._watchers.get(job_id, []):
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
                alive.append((loop, queue))
            except RuntimeError:  # the watcher's loop is closed
                pass
        if job_id in self._watchers:
            self._watchers[job_id] = alive


def _event(record: JobRecord, artifact: str | None) -> JobEvent:
    return JobEvent(job_id=record.job_id, state=record.state, done=record.progress_done,
                    total=record.progress_total, message=record.message, artifact=artifact,
                    time=record.updated)


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Longest Job.error: one line a client can act on.
MAX_ERROR_CHARS = 300


def _cause(error: BaseException) -> BaseException:
    """The error a Ray task raised, when `error` is Ray's wrapper of it (RayTaskError carries
    the remote traceback in its text; its .cause is the original exception)."""
    seen = 0
    while seen < 5 and type(error).__module__.startswith("ray.") and isinstance(getattr(error, "cause", None),
                                                                              BaseException):
        error, seen = error.cause, seen + 1
    return error


def client_error(error: BaseException) -> tuple[str, str]:
    """(one line for Job.error, stable code): an I2XError's "field: message" and its gRPC code
    (unwrapped from Ray's task error), else the exception type and INTERNAL. Never a traceback."""
    cause = _cause(error)
    if isinstance(cause, I2XError):
        text = f"{cause.field}: {cause.message}" if cause.field else str(cause.message)
        code = cause.grpc_code
    else:
        text, code = _one_line(cause), "INTERNAL"
    text = " ".join(ANSI_ESCAPE.sub("", text).split())
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS - 3] + "..."
    return text, code


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:500] if text else type(error).__name__
