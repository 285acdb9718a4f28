"""Job records in the store, runner threads, progress events, cancel, restart recovery."""

from i2x.jobs.manager import (
    JOB_STATES,
    TERMINAL_STATES,
    JobContext,
    JobEvent,
    JobManager,
    JobRecord,
)

__all__ = ["JOB_STATES", "TERMINAL_STATES", "JobContext", "JobEvent", "JobManager", "JobRecord"]
