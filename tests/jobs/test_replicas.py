"""Several JobManager instances (replicas) on one store: leases, takeover, cross-replica cancel.

Real stores only (a temp dir, and S3 on moto's server). The lease is short (LEASE seconds) so a
"crashed" replica, one whose heartbeat was stopped, loses its jobs within the test; waits are
upper bounds, nothing is timed.
"""

from __future__ import annotations

import threading
import time

import pytest

from i2x.core.errors import InvalidArgument
from i2x.jobs import JobManager, JobRecord
from i2x.storage import LocalStore

WAIT = 20
LEASE = 1.0


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return request.getfixturevalue("s3_store")


@pytest.fixture
def replicas(store):
    """A factory of managers on `store`; every one is shut down after the test."""
    made = []

    def make(lease=LEASE, workers=2):
        manager = JobManager(store, "interpretation", max_workers=workers, lease_seconds=lease)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.shutdown(wait=True, interrupt=True)


class RunTracker:
    """Counts how many copies of each job run at the same moment, across managers."""

    def __init__(self):
        self._lock = threading.Lock()
        self.running: dict[str, int] = {}
        self.most_at_once: dict[str, int] = {}
        self.starts: dict[str, int] = {}

    def enter(self, job_id):
        with self._lock:
            self.running[job_id] = self.running.get(job_id, 0) + 1
            self.starts[job_id] = self.starts.get(job_id, 0) + 1
            self.most_at_once[job_id] = max(self.most_at_once.get(job_id, 0), self.running[job_id])

    def leave(self, job_id):
        with self._lock:
            self.running[job_id] -= 1


def gated_job(tracker, gate, started=None):
    """Runs until `gate` is set (checking for cancel), then succeeds."""

    def work(ctx):
        tracker.enter(ctx.job_id)
        try:
            if started is not None:
                started.set()
            while not gate.is_set():
                ctx.check_cancelled()
                time.sleep(0.01)
            return {"by": "gated"}
        finally:
            tracker.leave(ctx.job_id)

    return work


def wait_for(condition, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_live_replicas_job_is_not_taken_over(replicas, store):
    tracker, gate, started = RunTracker(), threading.Event(), threading.Event()
    a, b = replicas(), replicas()
    job = a.submit("interpret", "r", {}, gated_job(tracker, gate, started))
    assert started.wait(WAIT)
    taken = []
    b.start_recovery(lambda record: taken.append(record.job_id) or gated_job(tracker, gate))
    # Three lease periods: A's heartbeat keeps the job, B's background recovery leaves it alone.
    for _ in range(30):
        assert b.recover(lambda record: gated_job(tracker, gate)) == []
        time.sleep(LEASE / 10)
    stored = JobRecord.from_dict(store.get_json(a.key(job.job_id)))
    assert stored.owner == a.owner and stored.state == "RUNNING"
    assert time.time() - stored.heartbeat <= LEASE + 1  # renewed, not the submit time
    gate.set()
    assert a.wait(job.job_id, timeout=WAIT).state == "SUCCEEDED"
    assert taken == [] and tracker.starts == {job.job_id: 1}
    assert b.get(job.job_id).state == "SUCCEEDED"  # B reads A's job through the store


def test_a_crashed_replicas_job_is_taken_over_by_a_live_one(replicas, store):
    tracker, frozen, started = RunTracker(), threading.Event(), threading.Event()

    def stuck(ctx):
        # The crashed process's run: it never finishes on its own; once "thawed" it tries to
        # report progress and returns, which must not touch the record B now owns.
        tracker.enter(ctx.job_id)
        started.set()
        frozen.wait(WAIT)
        tracker.leave(ctx.job_id)
        ctx.progress(1, 1, artifact="runs/r/late.npz")
        return {"by": "a"}

    a, b = replicas(), replicas()
    job = a.submit("interpret", "r", {}, stuck)
    assert started.wait(WAIT)
    a.stop_heartbeat()  # A "crashes": its job stays RUNNING in the store, its lease runs out
    resumed_gate = threading.Event()
    resumed_gate.set()
    b.start_recovery(lambda record: gated_job(tracker, resumed_gate))
    # wait() returns once the final state is stored (get() shows it as soon as it is decided)
    assert wait_for(lambda: b.get(job.job_id).state == "SUCCEEDED")
    assert b.wait(job.job_id, timeout=WAIT).state == "SUCCEEDED"
    final = JobRecord.from_dict(store.get_json(b.key(job.job_id)))
    assert final.owner == b.owner and final.result == {"by": "gated"}
    assert final.message == "done" and final.artifacts == []
    frozen.set()  # A wakes up after losing its lease
    assert a.wait(job.job_id, timeout=WAIT).state == "SUCCEEDED"
    after = JobRecord.from_dict(store.get_json(b.key(job.job_id)))
    assert after == final, "the replica that lost the lease overwrote the new owner's record"
    assert tracker.starts[job.job_id] == 2  # once in A (crashed), once in B
    # B started only after A's run had stalled past its lease: never two live runs, except the
    # frozen one, which did no work after the takeover.


def test_cancel_on_another_replica_stops_the_job(replicas, store):
    tracker, gate, started = RunTracker(), threading.Event(), threading.Event()
    a, b = replicas(), replicas()
    job = a.submit("interpret", "r", {}, gated_job(tracker, gate, started))
    assert started.wait(WAIT)
    answer = b.cancel(job.job_id)
    assert answer.state == "RUNNING" and answer.message == "cancel requested"
    marker = b.cancel_key(job.job_id)
    assert marker == f"jobs/interpretation/{job.job_id}.cancel" and store.exists(marker)
    # A's heartbeat (every LEASE/3 s) sees the marker and cancels its run.
    assert a.wait(job.job_id, timeout=WAIT).state == "CANCELLED"
    assert wait_for(lambda: b.get(job.job_id).state == "CANCELLED")
    assert not store.exists(marker)  # cleaned up by the owner
    assert tracker.starts == {job.job_id: 1} and not gate.is_set()
    # ListJobs is not confused by markers: only the record's job.
    assert [r.job_id for r in b.list()] == [job.job_id]


def test_interrupting_shutdown_hands_jobs_over_at_once(store):
    # A long lease: a handover that waited for the lease would not happen within this test.
    long_lease = 600.0
    tracker, gate, started = RunTracker(), threading.Event(), threading.Event()
    a = JobManager(store, "interpretation", max_workers=1, lease_seconds=long_lease)
    running = a.submit("interpret", "r", {}, gated_job(tracker, gate, started))
    waiting = a.submit("interpret", "r", {}, gated_job(tracker, gate))  # one worker: stays QUEUED
    assert started.wait(WAIT)
    a.shutdown(wait=True, interrupt=True)
    for job in (running, waiting):
        left = JobRecord.from_dict(store.get_json(a.key(job.job_id)))
        assert left.state == "QUEUED" and left.owner == "" and left.heartbeat == 0
    assert JobRecord.from_dict(store.get_json(a.key(running.job_id))).message == "interrupted by shutdown"
    b = JobManager(store, "interpretation", max_workers=2, lease_seconds=long_lease)
    gate.set()
    assert sorted(b.recover(lambda record: gated_job(tracker, gate))) == sorted([running.job_id, waiting.job_id])
    for job in (running, waiting):
        assert b.wait(job.job_id, timeout=WAIT).state == "SUCCEEDED"
        assert b.get(job.job_id).owner == b.owner
    assert tracker.starts == {running.job_id: 2, waiting.job_id: 1}
    assert max(tracker.most_at_once.values()) == 1
    b.shutdown()


def test_two_replicas_recovering_at_once_run_a_job_once(replicas, store):
    store.put_json("jobs/interpretation/orphan.json", JobRecord(
        job_id="orphan", service="interpretation", kind="interpret", run_id="r", state="QUEUED",
        owner="", heartbeat=0.0).to_dict())
    tracker, gate = RunTracker(), threading.Event()
    gate.set()
    a, b = replicas(lease=2.0), replicas(lease=2.0)
    barrier, handled = threading.Barrier(2, timeout=WAIT), {}

    def recover(manager, name):
        barrier.wait()
        handled[name] = manager.recover(lambda record: gated_job(tracker, gate))

    threads = [threading.Thread(target=recover, args=(m, n)) for m, n in ((a, "a"), (b, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert sorted(handled["a"] + handled["b"]) == ["orphan"]
    winner = a if handled["a"] else b
    assert winner.wait("orphan", timeout=WAIT).state == "SUCCEEDED"
    assert tracker.starts == {"orphan": 1}


def test_records_from_before_leases_are_taken_over_only_when_old(replicas, store):
    now = time.time()
    for job_id, updated in (("stale", now - 3600), ("recent", now)):
        record = JobRecord(job_id=job_id, service="interpretation", kind="interpret", run_id="r",
                           state="RUNNING", created=updated, updated=updated).to_dict()
        del record["owner"], record["heartbeat"]  # written by a version without leases
        store.put_json(f"jobs/interpretation/{job_id}.json", record)
    manager = replicas(lease=600.0)
    assert manager.recover(lambda record: (lambda ctx: {"ok": True})) == ["stale"]
    assert manager.wait("stale", timeout=WAIT).state == "SUCCEEDED"
    assert manager.get("recent").state == "RUNNING"


def test_a_job_cancelled_while_its_owner_is_dead_is_never_resumed(replicas, store):
    ran = []
    store.put_json("jobs/interpretation/dead.json", JobRecord(
        job_id="dead", service="interpretation", kind="interpret", run_id="r", state="RUNNING",
        owner="gone-host-1-abc", heartbeat=time.time() - 3600).to_dict())
    manager = replicas()
    assert manager.cancel("dead").state == "CANCELLED"  # nobody holds it: closed directly
    assert manager.recover(lambda record: (lambda ctx: ran.append(1))) == []
    assert manager.get("dead").state == "CANCELLED" and ran == []


def test_lease_setting_is_validated(monkeypatch, store):
    monkeypatch.setenv("I2X_JOB_LEASE_SECONDS", "0")
    with pytest.raises(InvalidArgument) as info:
        JobManager(store, "training")
    assert info.value.field == "I2X_JOB_LEASE_SECONDS" and "positive" in str(info.value)
    monkeypatch.setenv("I2X_JOB_LEASE_SECONDS", "ten")
    with pytest.raises(InvalidArgument):
        JobManager(store, "training")
    monkeypatch.setenv("I2X_JOB_LEASE_SECONDS", "12.5")
    manager = JobManager(store, "training")
    assert manager.lease_seconds == 12.5
    assert manager.owner.count("-") >= 2  # host-pid-random
    manager.shutdown()
    with pytest.raises(InvalidArgument) as info:
        JobManager(store, "training", lease_seconds=-1)
    assert info.value.field == "lease_seconds"
