"""Follow a live run: interpret each checkpoint as it is registered, then write the index.

The interpretation service runs this as a job (StartInterpretation with follow). It polls the
run's checkpoints/index.json, which register_live_checkpoints rewrites after each checkpoint, and
sends each new step to map_units (the warm Ray pool) as one unit. When the run is finished
("live": false), every unit already exists and stages.interpret_run writes interpretation/index.json
at once, so the later stages start right after training ends instead of after a second pass.
"""

from __future__ import annotations

import logging
import time

from i2x.core.errors import Cancelled, FailedPrecondition
from i2x.engine import stages
from i2x.engine.params import InterpretParams
from i2x.storage import Store

POLL_SECONDS = 0.5
log = logging.getLogger(__name__)


def follow_run(store: Store, run_id: str, params: InterpretParams, *, new_map_units=None, progress=None,
               cancel=None, idle_timeout: float = 3600.0, poll: float = POLL_SECONDS) -> dict:
    """Interpret the checkpoints of `run_id` as they arrive; returns interpret_run's index once the run
    is finished. FailedPrecondition when no checkpoint arrives for idle_timeout seconds while it is live.
    new_map_units() gives a map_units for one batch of new steps (a Ray fan-out is single-use);
    default: in-process."""
    record = stages.get_run(store, run_id)
    layer = params.target_layer or record["target_layer"]
    stages._interpretation_params(store, run_id, params, layer)  # fixed now: every unit uses the same
    if new_map_units is None:
        cache: dict = {}

        def new_map_units():
            return lambda todo: (stages.interpret_checkpoint(store, run_id, step, params, cache) for step in todo)

    done: set[int] = set()
    last_change = time.monotonic()
    while True:
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled by request")
        record = stages.get_run(store, run_id)
        steps = [int(c["step"]) for c in record["checkpoints"]]
        finished = bool(steps) and not record["live"]
        todo = [s for s in steps if s not in done]
        if todo:
            for key in new_map_units()(todo):
                step = int(key.rsplit("step-", 1)[-1].split(".")[0])
                done.add(step)
                log.info("follow %s: step %d interpreted (%d of %d registered)", run_id, step, len(done), len(steps))
                state = "" if finished else ", training goes on"
                if progress is not None:
                    progress(len(done), len(steps), f"interpreted step {step} ({len(done)} of {len(steps)}"
                             f" registered{state})", key)
            last_change = time.monotonic()
            continue
        if finished:
            log.info("follow %s: the run is finished; writing the index of %d units", run_id, len(steps))
            return stages.interpret_run(store, run_id, params, cancel=cancel, map_units=new_map_units())
        if time.monotonic() - last_change > idle_timeout:
            raise FailedPrecondition(
                f"run {run_id!r} is still live but no checkpoint arrived for {idle_timeout:.0f} s "
                f"({len(steps)} so far); finish the run (RegisterCheckpoints finish) and interpret again",
                field="run_id")
        if cancel is not None and hasattr(cancel, "wait"):
            cancel.wait(poll)
        else:
            time.sleep(poll)
