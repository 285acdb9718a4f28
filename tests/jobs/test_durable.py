"""Durable job state: a final state outlives a store outage, a closed job never comes back,
progress never goes back on resume, and every state change is logged with its ids."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from i2x.core.errors import Cancelled, InvalidArgument
from i2x.jobs import JobManager
from i2x.storage import LocalStore

WAIT = 30


@pytest.fixture
def own_s3():
    """A moto S3 server of this test alone, so the test can stop (an outage) and restart it."""
    from moto.server import ThreadedMotoServer

    from s3server import ACCESS_KEY, SECRET_KEY, _free_port
    from i2x.storage.s3 import S3Store

    port = _free_port()
    servers = [ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)]
    servers[0].start()

    class Outage:
        store = S3Store(endpoint=f"127.0.0.1:{port}", bucket="i2x-durable", access_key=ACCESS_KEY,
                        secret_key=SECRET_KEY, secure=False, region="us-east-1")

        @staticmethod
        def stop():
            servers[-1].stop()

        @staticmethod
        def restart():  # moto keeps its buckets in process memory: the objects are still there
            servers.append(ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False))
            servers[-1].start()

    yield Outage
    servers[-1].stop()


def test_a_failure_during_an_s3_outage_is_stored_and_never_resumed(own_s3):
    store = own_s3.store
    first = JobManager(store, "explanation", lease_seconds=1.0)

    def fails_while_the_store_is_down(ctx):
        own_s3.stop()
        threading.Timer(1.5, own_s3.restart).start()
        raise InvalidArgument("lam is too large", field="params.lam")

    job = first.submit("explain", "r1", {}, fails_while_the_store_is_down)
    assert first.wait(job.job_id, timeout=WAIT).state == "FAILED"
    deadline = time.monotonic() + WAIT
    stored = None
    while time.monotonic() < deadline:
        try:
            stored = store.get_json(first.key(job.job_id))
        except Exception:  # noqa: BLE001  (still down)
            stored = None
        if stored and stored["state"] == "FAILED":
            break
        time.sleep(0.2)
    assert stored["state"] == "FAILED" and stored["error"] == "params.lam: lam is too large"
    assert stored["error_code"] == "INVALID_ARGUMENT"
    first.stop_heartbeat()  # as if the process died now
    time.sleep(1.2)  # past the lease
    second = JobManager(store, "explanation", lease_seconds=1.0)
    resumed = []
    assert second.recover(lambda record: resumed.append(record.job_id) or (lambda ctx: None)) == []
    assert resumed == [] and second.get(job.job_id).state == "FAILED"
    first.shutdown()
    second.shutdown()


def test_cancel_of_a_finished_job_changes_nothing(tmp_path):
    jobs = JobManager(LocalStore(tmp_path), "training")
    job = jobs.submit("train", "r", {}, lambda ctx: {"ok": 1})
    final = jobs.wait(job.job_id, timeout=WAIT)
    assert jobs.cancel(job.job_id).to_dict() == final.to_dict()
    assert JobManager(LocalStore(tmp_path), "training").cancel(job.job_id).state == "SUCCEEDED"
    jobs.shutdown()


def test_progress_never_goes_back_when_a_job_resumes(tmp_path):
    store = LocalStore(tmp_path)
    started = threading.Event()

    def halfway(ctx):
        ctx.progress(6, 10, "unit 6")
        started.set()
        while True:
            ctx.check_cancelled()
            time.sleep(0.01)

    first = JobManager(store, "interpretation")
    job = first.submit("interpret", "r", {}, halfway)
    assert started.wait(WAIT)
    first.shutdown(wait=True, interrupt=True)
    assert store.get_json(first.key(job.job_id))["progress_done"] == 6

    seen = []

    def resumed(ctx):  # a stage restarts its count at 0 and skips the finished units quickly
        for done in range(0, 11):
            ctx.progress(done, 10, f"unit {done}")
            seen.append(second.get(job.job_id).progress_done)
        return {}

    second = JobManager(store, "interpretation")
    assert second.recover(lambda record: resumed) == [job.job_id]
    assert second.wait(job.job_id, timeout=WAIT).state == "SUCCEEDED"
    assert seen == [6, 6, 6, 6, 6, 6, 6, 7, 8, 9, 10]
    second.shutdown()


def test_every_state_change_is_logged_with_its_ids(tmp_path, caplog):
    jobs = JobManager(LocalStore(tmp_path), "clustering")
    caplog.set_level(logging.INFO, logger="i2x.jobs.manager")

    def bad(ctx):
        raise InvalidArgument("no layer named 'bogus'", field="params.target_layer")

    job = jobs.submit("prototypes", "run-7", {}, bad)
    jobs.wait(job.job_id, timeout=WAIT)
    changes = [(r.previous, r.state) for r in caplog.records
               if getattr(r, "job_id", None) == job.job_id and hasattr(r, "state")]
    assert changes == [(None, "QUEUED"), ("QUEUED", "RUNNING"), ("RUNNING", "FAILED")]
    failed = [r for r in caplog.records if getattr(r, "state", None) == "FAILED"][0]
    assert (failed.service, failed.run_id) == ("clustering", "run-7")
    assert "INVALID_ARGUMENT" in failed.getMessage() and "bogus" in failed.getMessage()
    jobs.shutdown()


def test_a_ray_task_error_reaches_the_client_as_its_cause_in_one_line(tmp_path):
    """Ray wraps an error raised in an actor: its text is the whole remote traceback."""
    exceptions = pytest.importorskip("ray.exceptions")
    cause = InvalidArgument("the checkpoint is of another architecture", field="checkpoint")
    remote_traceback = ("Traceback (most recent call last):\n  File \"/opt/ray/worker.py\", line 9\n"
                        "\x1b[36mray::InterpretWorker.interpret()\x1b[39m (pid=4242, ip=10.0.0.7)\n")
    wrapped = exceptions.RayTaskError("interpret", remote_traceback, cause).as_instanceof_cause()
    assert "pid=4242" in str(wrapped)

    jobs = JobManager(LocalStore(tmp_path), "interpretation")

    def unit_failed(ctx):
        raise wrapped

    final = jobs.wait(jobs.submit("interpret", "r", {}, unit_failed).job_id, timeout=WAIT)
    assert (final.error_code, final.error) == ("INVALID_ARGUMENT",
                                               "checkpoint: the checkpoint is of another architecture")
    jobs.shutdown()


def test_cancelled_error_inside_a_job_is_still_a_cancel(tmp_path):
    jobs = JobManager(LocalStore(tmp_path), "training")

    def stops(ctx):
        ctx.cancel_event.set()
        raise Cancelled("cancelled by request")

    assert jobs.wait(jobs.submit("train", "r", {}, stops).job_id, timeout=WAIT).state == "CANCELLED"
    jobs.shutdown()
