"""Job handles: result(timeout), watch(), cancel(); like google-cloud's long-running operations."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Iterator

import grpc

from i2x.v1 import jobs_pb2

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


def _state(value: int) -> str:
    return jobs_pb2.JobState.Name(value).removeprefix("JOB_STATE_")


@dataclass
class JobEvent:
    job_id: str
    state: str
    done: int
    total: int
    message: str
    artifact: str | None
    time: float


@dataclass
class JobInfo:
    job_id: str
    service: str
    kind: str
    run_id: str
    state: str
    done: int
    total: int
    message: str
    error: str
    error_code: str
    result: dict
    params: dict
    artifacts: list[str]

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    @classmethod
    def from_proto(cls, m: jobs_pb2.Job) -> "JobInfo":
        return cls(m.job_id, m.service, m.kind, m.run_id, _state(m.state), m.progress_done, m.progress_total,
                   m.message, m.error, m.error_code, json.loads(m.result_json) if m.result_json else {},
                   json.loads(m.params_json) if m.params_json else {}, list(m.artifacts))


class JobFailed(RuntimeError):
    """A job ended FAILED or CANCELLED; .code is the gRPC status name, .job the final JobInfo."""

    def __init__(self, job: JobInfo):
        self.job = job
        self.code = job.error_code or ("CANCELLED" if job.state == "CANCELLED" else "UNKNOWN")
        super().__init__(f"job {job.job_id} ({job.service}/{job.kind} on run {job.run_id}) {job.state}: "
                         f"{job.error or job.message} [{self.code}]")


class Job:
    """A job on one service. `client` supplies the retrying calls and the stub."""

    def __init__(self, client, service: str, proto: jobs_pb2.Job):
        self._client = client
        self.service = service
        self.job_id = proto.job_id
        self.info = JobInfo.from_proto(proto)

    def __repr__(self) -> str:
        return f"Job({self.service}/{self.info.kind} {self.job_id} {self.info.state})"

    def refresh(self) -> JobInfo:
        proto = self._client._call(self.service, "jobs", "GetJob", jobs_pb2.GetJobRequest(job_id=self.job_id))
        self.info = JobInfo.from_proto(proto)
        return self.info

    def done(self) -> bool:
        return self.refresh().finished

    def watch(self, *, deadline: float | None = None) -> Iterator[JobEvent]:
        """Progress events until the job ends; reconnects when the stream drops (UNAVAILABLE).
        deadline (time.monotonic()): the stream ends with DEADLINE_EXCEEDED then."""
        attempt = 0
        while True:
            try:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                stream = self._client._stub(self.service, "jobs").WatchJob(
                    jobs_pb2.WatchJobRequest(job_id=self.job_id), metadata=self._client._metadata,
                    timeout=remaining)
                for e in stream:
                    attempt = 0
                    event = JobEvent(e.job_id, _state(e.state), e.done, e.total, e.message, e.artifact or None,
                                     e.time)
                    yield event
                    if event.state in TERMINAL:
                        return
                if self.refresh().finished:
                    return
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt >= self._client.retries:
                    raise
                time.sleep(self._client._backoff(attempt))
                attempt += 1

    def result(self, timeout: float | None = None) -> dict:
        """Wait for the end; the job's result dict, or JobFailed; TimeoutError after `timeout` s.

        Waits on the WatchJob stream, so the end is known the moment the service reports it
        (polling GetJob with backoff added up to a second per job); polls only when the stream
        is not served."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for _ in self.watch(deadline=deadline):
                pass
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise TimeoutError(f"job {self.job_id} still {self.refresh().state} after {timeout} s") from None
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
        delay = 0.05
        while not self.refresh().finished:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.job_id} still {self.info.state} after {timeout} s")
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())) if deadline else delay)
            delay = min(delay * 1.5, 1.0)
        if self.info.state != "SUCCEEDED":
            raise JobFailed(self.info)
        return self.info.result

    def wait(self, timeout: float | None = None, progress=None) -> dict:
        """Follow watch() (calling progress(event) on each) and return result()."""
        if progress is not None:
            for event in self.watch():
                progress(event)
        return self.result(timeout)

    def cancel(self) -> JobInfo:
        proto = self._client._call(self.service, "jobs", "CancelJob", jobs_pb2.CancelJobRequest(job_id=self.job_id))
        self.info = JobInfo.from_proto(proto)
        return self.info
