"""JobManager on real stores (a temp dir; S3 on moto for the persistence and recovery paths)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest

from i2x.core.errors import Cancelled, FailedPrecondition, InvalidArgument, NotFound
from i2x.jobs import JOB_STATES, JobManager, JobRecord
from i2x.storage import LocalStore

WAIT = 20  # seconds; generous upper bounds only, no timing assertions
LEASE = 1.0  # a short job lease, so a "crashed" manager's jobs expire within the test


def recover_until(manager, resumable, count, timeout=WAIT):
    """Call recover() until it has taken over `count` jobs (a dead owner's lease must run out first)."""
    handled, deadline = [], time.monotonic() + timeout
    while len(handled) < count and time.monotonic() < deadline:
        handled += manager.recover(resumable)
        time.sleep(0.05)
    return handled


class CountingStore(LocalStore):
    """A real LocalStore that also counts writes per key (to check write throttling)."""

    def __init__(self, root):
        super().__init__(root)
        self.puts: dict[str, int] = {}

    def put_bytes(self, key, data, content_type="application/octet-stream"):
        self.puts[key] = self.puts.get(key, 0) + 1
        super().put_bytes(key, data, content_type)


@pytest.fixture
def store(tmp_path):
    return CountingStore(tmp_path / "store")


@pytest.fixture
def manager(store):
    jobs = JobManager(store, "training", max_workers=2)
    yield jobs
    jobs.shutdown(wait=True, interrupt=True)


def test_success_result_and_record_in_store(manager, store):
    def work(ctx):
        for unit in range(3):
            ctx.progress(unit + 1, 3, f"unit {unit}", artifact=f"runs/{ctx.run_id}/u{unit}.npz")
        return {"sum": sum(ctx.params["values"])}

    record = manager.submit("train", "run-1", {"values": [1, 2, 3]}, work)
    assert record.state == "QUEUED" and record.run_id == "run-1"
    final = manager.wait(record.job_id, timeout=WAIT)
    assert final.state == "SUCCEEDED" and final.result == {"sum": 6}
    assert (final.progress_done, final.progress_total) == (3, 3)
    assert final.artifacts == ["runs/run-1/u0.npz", "runs/run-1/u1.npz", "runs/run-1/u2.npz"]
    stored = JobRecord.from_dict(store.get_json(f"jobs/training/{record.job_id}.json"))
    assert stored == final
    assert manager.get(record.job_id) == final


def test_domain_error_fails_with_its_code_and_field(manager):
    def bad(ctx):
        raise InvalidArgument("must be positive, got -3", field="epochs")

    final = manager.wait(manager.submit("train", "r", {}, bad).job_id, timeout=WAIT)
    assert final.state == "FAILED" and final.error_code == "INVALID_ARGUMENT"
    assert final.error == "epochs: must be positive, got -3"


def test_unexpected_error_is_one_line_without_traceback(manager):
    def crash(ctx):
        raise RuntimeError("boom\nsecond line")

    final = manager.wait(manager.submit("train", "r", {}, crash).job_id, timeout=WAIT)
    assert final.state == "FAILED" and final.error_code == "INTERNAL"
    # The exception's text may hold paths or hosts: the client gets its type and where to look.
    assert final.error == ("internal error (RuntimeError); the server log has the details under job_id "
                           f"{final.job_id}")
    assert "boom" not in final.error


def test_bad_inputs_refused(manager):
    with pytest.raises(InvalidArgument) as info:
        manager.submit("train", "../etc", {}, lambda ctx: None)
    assert info.value.field == "run_id"
    with pytest.raises(InvalidArgument) as info:
        manager.submit("train", "r", {"x": object()}, lambda ctx: None)
    assert info.value.field == "params"
    with pytest.raises(InvalidArgument) as info:
        manager.get("a/b")
    assert info.value.field == "job_id"
    with pytest.raises(NotFound) as info:
        manager.get("no-such-job")
    assert info.value.field == "job_id"
    with pytest.raises(InvalidArgument) as info:
        manager.list(states=["DONE"])
    assert info.value.field == "states"


def test_cancel_running_job_runs_hooks_and_stops_it(manager):
    started, hook_calls = threading.Event(), []

    def long(ctx):
        ctx.on_cancel(lambda: hook_calls.append("ray.cancel"))
        started.set()
        while True:
            ctx.check_cancelled()
            time.sleep(0.01)

    job = manager.submit("interpret", "r", {}, long)
    assert started.wait(WAIT)
    manager.cancel(job.job_id)
    final = manager.wait(job.job_id, timeout=WAIT)
    assert final.state == "CANCELLED" and hook_calls == ["ray.cancel"]
    # jobs.proto: cancelling a finished job changes nothing and returns it.
    again = manager.cancel(job.job_id)
    assert again.to_dict() == manager.get(job.job_id).to_dict() == final.to_dict()


def test_cancel_queued_job_never_runs_it(store):
    jobs = JobManager(store, "clustering", max_workers=1)
    gate, ran = threading.Event(), []
    first = jobs.submit("k", "r", {}, lambda ctx: gate.wait(WAIT) and None)
    second = jobs.submit("k", "r", {}, lambda ctx: ran.append(1))
    assert jobs.cancel(second.job_id).state == "CANCELLED"
    gate.set()
    assert jobs.wait(first.job_id, timeout=WAIT).state == "SUCCEEDED"
    assert jobs.wait(second.job_id, timeout=WAIT).state == "CANCELLED" and ran == []
    jobs.shutdown()


def test_list_filters_by_run_kind_and_state(store):
    ids = (f"job-{i}" for i in itertools.count())
    jobs = JobManager(store, "explanation", max_workers=1, job_id_factory=lambda: next(ids))
    for run_id, kind in [("a", "explain"), ("b", "explain"), ("a", "curate")]:
        jobs.wait(jobs.submit(kind, run_id, {}, lambda ctx: {}).job_id, timeout=WAIT)
    jobs.wait(jobs.submit("explain", "b", {}, lambda ctx: 1 / 0).job_id, timeout=WAIT)
    assert [r.job_id for r in jobs.list()] == ["job-0", "job-1", "job-2", "job-3"]
    assert [r.job_id for r in jobs.list(run_id="a")] == ["job-0", "job-2"]
    assert [r.job_id for r in jobs.list(kind="explain", run_id="b")] == ["job-1", "job-3"]
    assert [r.job_id for r in jobs.list(states=["FAILED"])] == ["job-3"]
    # Another manager on the same store (a restarted process) sees the same records.
    again = JobManager(store, "explanation")
    assert [r.state for r in again.list()] == ["SUCCEEDED", "SUCCEEDED", "SUCCEEDED", "FAILED"]
    assert JobManager(store, "training").list() == []  # services do not see each other's jobs
    jobs.shutdown()
    again.shutdown()


def test_progress_writes_are_throttled(manager, store):
    def many_units(ctx):
        for unit in range(2000):
            ctx.progress(unit + 1, 2000)
        ctx.progress(2000, 2000, artifact="runs/r/final.npz")
        return {}

    job = manager.submit("interpret", "r", {}, many_units)
    assert manager.wait(job.job_id, timeout=WAIT).state == "SUCCEEDED"
    writes = store.puts[f"jobs/training/{job.job_id}.json"]
    # QUEUED, RUNNING, the artifact event, SUCCEEDED, plus at most one per 0.5 s of progress;
    # 2000 unthrottled events would have meant 2000+ writes.
    assert 4 <= writes < 100


def test_watch_replays_then_streams_every_event(manager):
    step = [threading.Event() for _ in range(3)]

    def gated(ctx):
        for unit in range(3):
            assert step[unit].wait(WAIT)
            ctx.progress(unit + 1, 3, f"unit {unit}", artifact=f"u{unit}")
        return {"ok": True}

    job = manager.submit("interpret", "r", {}, gated)

    async def follow():
        events = []
        async for event in manager.watch(job.job_id):
            events.append(event)
            if len(events) == 1:
                for gate in step:  # release the work only once the watcher is attached
                    gate.set()
        return events

    events = asyncio.run(asyncio.wait_for(follow(), WAIT))
    assert events[0].state in ("QUEUED", "RUNNING") and events[0].artifact is None
    progress = [(e.done, e.total, e.artifact) for e in events if e.artifact]
    assert progress == [(1, 3, "u0"), (2, 3, "u1"), (3, 3, "u2")]
    assert events[-1].state == "SUCCEEDED" and all(e.job_id == job.job_id for e in events)

    async def replay():  # a finished job: one event, its final state
        return [e async for e in manager.watch(job.job_id)]

    finished = asyncio.run(replay())
    assert [(e.state, e.done, e.total) for e in finished] == [("SUCCEEDED", 3, 3)]


def test_concurrent_jobs_on_several_runs_do_not_cross(store):
    jobs = JobManager(store, "interpretation", max_workers=3)
    barrier = threading.Barrier(3, timeout=WAIT)  # all three really run at the same time
    watchers_ready = threading.Event()  # and start only once every watcher is attached

    def per_run(ctx):
        barrier.wait()
        assert watchers_ready.wait(WAIT)
        for unit in range(20):
            ctx.progress(unit + 1, 20, artifact=f"runs/{ctx.run_id}/step-{unit:06d}.npz")
        return {"run": ctx.run_id, "scale": ctx.params["scale"]}

    async def submit_and_watch():
        submitted = [jobs.submit("interpret", f"run-{i}", {"scale": i}, per_run) for i in range(3)]

        attached = []

        async def collect(job_id):
            events = []
            async for event in jobs.watch(job_id):
                events.append(event)
                if len(events) == 1:
                    attached.append(job_id)
                    if len(attached) == 3:
                        watchers_ready.set()
            return events

        streams = await asyncio.gather(*(collect(j.job_id) for j in submitted))
        return submitted, streams

    submitted, streams = asyncio.run(asyncio.wait_for(submit_and_watch(), WAIT))
    for i, (job, events) in enumerate(zip(submitted, streams)):
        final = jobs.get(job.job_id)
        assert final.state == "SUCCEEDED" and final.result == {"run": f"run-{i}", "scale": i}
        assert final.artifacts == [f"runs/run-{i}/step-{u:06d}.npz" for u in range(20)]
        assert all(e.job_id == job.job_id for e in events)
        assert [e.artifact for e in events if e.artifact] == final.artifacts
    jobs.shutdown()


def test_wait_with_timeout_returns_unfinished_record(manager):
    gate = threading.Event()
    job = manager.submit("k", "r", {}, lambda ctx: gate.wait(WAIT) and None)
    assert manager.wait(job.job_id, timeout=0.05).state in ("QUEUED", "RUNNING")
    gate.set()
    assert manager.wait(job.job_id, timeout=WAIT).state == "SUCCEEDED"


def _unit_job(store, computed, stall_after=None, stall_gate=None):
    """A resumable job: one artifact per unit, units whose artifact exists are skipped."""

    def work(ctx):
        total = ctx.params["units"]
        for unit in range(total):
            key = f"runs/{ctx.run_id}/unit-{unit}.json"
            if not store.exists(key):
                if stall_after is not None and unit == stall_after:
                    stall_gate.wait(WAIT)  # the "crash": this process never gets further
                    raise Cancelled("process gone")
                computed.append(unit)
                store.put_json(key, {"unit": unit})
            ctx.progress(unit + 1, total, artifact=key)
        return {"units": total}

    return work


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_restart_resumes_without_redoing_finished_units(backend, tmp_path, request):
    store = LocalStore(tmp_path / "store") if backend == "local" else request.getfixturevalue("s3_store")
    first_computed, gate = [], threading.Event()
    before = JobManager(store, "interpretation", max_workers=2, lease_seconds=LEASE)
    done_job = before.submit("interpret", "old", {"units": 1}, _unit_job(store, []))
    assert before.wait(done_job.job_id, timeout=WAIT).state == "SUCCEEDED"
    resumable_job = before.submit("interpret", "run-a", {"units": 4},
                                  _unit_job(store, first_computed, stall_after=2, stall_gate=gate))
    doomed_job = before.submit("train", "run-b", {}, lambda ctx: gate.wait(WAIT) and None)
    deadline = time.monotonic() + WAIT
    while before.get(resumable_job.job_id).progress_done < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first_computed == [0, 1]
    # The first process "dies" here: its heartbeat stops, its records say RUNNING. Once the lease
    # runs out a new process takes over.
    before.stop_heartbeat()
    after = JobManager(store, "interpretation", max_workers=2, lease_seconds=LEASE)
    second_computed = []

    def resumable(record):
        if record.kind == "interpret":
            return _unit_job(store, second_computed)
        return None  # training cannot resume: fail it cleanly

    handled = recover_until(after, resumable, 2)
    assert sorted(handled) == sorted([resumable_job.job_id, doomed_job.job_id])
    resumed = after.wait(resumable_job.job_id, timeout=WAIT)
    assert resumed.state == "SUCCEEDED" and resumed.result == {"units": 4}
    assert second_computed == [2, 3]  # units 0 and 1 were not redone
    failed = after.get(doomed_job.job_id)
    assert failed.state == "FAILED" and failed.error_code == "ABORTED"
    assert "restarted" in failed.error
    assert after.get(done_job.job_id).state == "SUCCEEDED"  # finished jobs are left alone
    assert after.recover(resumable) == []  # nothing left to recover
    gate.set()
    before.shutdown(wait=True)
    after.shutdown(wait=True)


def test_shutdown_interrupt_leaves_job_for_recovery(store):
    started = threading.Event()

    def loop(ctx):
        started.set()
        while True:
            ctx.check_cancelled()
            time.sleep(0.01)

    first = JobManager(store, "training")
    job = first.submit("train", "r", {}, loop)
    assert started.wait(WAIT)
    first.shutdown(wait=True, interrupt=True)
    assert first.get(job.job_id).state == "QUEUED"
    with pytest.raises(FailedPrecondition):
        first.submit("train", "r", {}, loop)
    second = JobManager(store, "training")
    assert second.recover(lambda record: (lambda ctx: {"resumed": True})) == [job.job_id]
    assert second.wait(job.job_id, timeout=WAIT).result == {"resumed": True}
    second.shutdown()


def test_job_states_constant():
    assert JOB_STATES == ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")


def test_watch_and_cancel_a_job_another_process_owns(store):
    owner, gate = JobManager(store, "training"), threading.Event()
    job = owner.submit("train", "r", {}, lambda ctx: gate.wait(WAIT) and {"n": 1})
    observer = JobManager(store, "training")  # sees the job only through the store

    async def follow():
        events = []
        async for event in observer.watch(job.job_id):
            events.append(event)
            gate.set()
        return events

    events = asyncio.run(asyncio.wait_for(follow(), WAIT))
    assert events[0].state in ("QUEUED", "RUNNING") and events[-1].state == "SUCCEEDED"
    assert observer.wait(job.job_id, timeout=WAIT).result == {"n": 1}
    owner.shutdown()
    # A job left RUNNING by a dead process can be cancelled by whoever holds the store.
    store.put_json("jobs/training/orphan.json", JobRecord(
        job_id="orphan", service="training", kind="train", run_id="r", state="RUNNING").to_dict())
    assert observer.cancel("orphan").state == "CANCELLED"
    assert JobManager(store, "training").get("orphan").state == "CANCELLED"
    observer.shutdown()
