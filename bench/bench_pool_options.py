"""The interpretation pool against what Ray maintains: WarmPool vs Ray Data vs Ray Serve (issue 8).

The same checkpoints are interpreted through three executors on one local Ray with 2 CPUs, each
with at most 2 workers of 1 CPU and 1 torch thread, every pass on a new run registered from the
same checkpoint keys (as bench_services.py's section B does: no worker has that run's images or
model cached). Every pass is stages.interpret_run with the executor as its map_units, so the
units, the index and what is timed are the same for all three; the written units (saliency,
confidences, predictions) are asserted equal across executors, step by step.

  pool   our WarmPool + RayFanout (interpretation/fanout.py). Warm: the pool's 2 actors are
         started and waited for before timing ("start-up": pool.warm()), as the service keeps
         them. From 0 actors: a fresh pool per pass, actor start-up included (what a job finds
         after the actors idled out, I2X_RAY_IDLE_SECONDS), --from-zero passes per width.
  data   Ray Data: from_items(steps).map_batches(<InterpretWorker as a callable class>,
         compute=ActorPoolStrategy(min_size=1, max_size=workers), batch_size=1, num_cpus=1),
         consumed with iter_rows; a new dataset execution per pass, as a job would run it, so its
         actors start inside every pass (there is no warm figure).
  serve  Ray Serve: a deployment of the same worker (max_ongoing_requests=1: a unit uses its
         replica's one CPU), autoscaling_config max_replicas=workers, target_ongoing_requests=1,
         upscale_delay_s=0 (the default 30 s would keep a short job on one replica), no HTTP or
         gRPC proxy (proxy_location="Disabled"); a pass sends one request per checkpoint through
         the DeploymentHandle and waits for all. min_replicas=1 (a service that keeps one warm):
         deployed before timing ("deploy" is serve.start + serve.run); the first pass after the
         deploy is printed apart (it scales 1 -> 2), then the timed back-to-back passes.
         min_replicas=0 (a service that scales to zero): each pass starts from 0 replicas, waited
         for after the previous pass (downscale delays set to 1 s for that).

Warm figures: best and median of --rounds back-to-back passes, 2 workers and 1 worker. Start-up
figures as they come. The executors run one after the other (each releases its CPUs before the
next starts), so a change of load between them skews the comparison; --ab ROUNDS measures that
instead (section d): the pool and the Serve deployment both kept warm at 2 workers (Ray's logical
CPUs 6 so that they and a Data execution fit; still 2 workers busy at a time on the 2 cores), then
ROUNDS rounds of one pass of each, whoever goes first rotating; each pass is set against the
pool's pass of the same round. Then --from-zero rounds from 0 workers: a fresh pool (what a job
finds after an idle release), Serve with min_replicas=0 waited for at 0 replicas, a Data execution.

Processes and memory (a-c): the Ray processes (children of this process, by process title, read
from /proc) that each executor adds at 2 workers, their PSS, and the CPU they use idle, over what
ran just before that executor started (Ray Data leaves its helper actors behind).

    nice -n 10 .venv/bin/python bench/bench_pool_options.py           # 20 checkpoints x 1000 images
    .venv/bin/python bench/bench_pool_options.py --quick              # 10 x 400
    nice -n 10 .venv/bin/python bench/bench_pool_options.py --ab 8    # d only: paired passes
    .venv/bin/python bench/bench_pool_options.py --smoke              # a tiny run: does it all work
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections import Counter

os.environ.setdefault("I2X_TORCH_THREADS", "1")  # one torch thread per worker
os.environ.setdefault("I2X_RAY_CPUS_PER_TASK", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")

EXECUTORS = ("pool", "data", "serve")


class DataWorker:
    """Ray Data's callable class: fanout.InterpretWorker, one step per batch."""

    def __init__(self, spec: dict, threads: int):
        from i2x.interpretation.fanout import InterpretWorker

        self.worker = InterpretWorker(spec, threads)

    def __call__(self, batch: dict, run_id: str, params: dict) -> dict:
        import numpy as np

        return {"key": np.array([self.worker.interpret(run_id, int(s), params) for s in batch["step"]])}


class ServeWorker:
    """The Serve deployment's class: fanout.InterpretWorker, one step per request."""

    def __init__(self, spec: dict, threads: int):
        from i2x.interpretation.fanout import InterpretWorker

        self.worker = InterpretWorker(spec, threads)

    def interpret(self, run_id: str, step: int, params: dict) -> str:
        return self.worker.interpret(run_id, step, params)


# ---------------------------------------------------------------- processes and memory (/proc)

def _children(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(name))
    found, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def processes() -> dict[str, tuple[int, float, float]]:
    """{process title: (count, PSS MiB, CPU s used so far)} of this process's descendants (Ray's
    processes, locally); ray::Actor.method counts as ray::Actor."""
    out: dict[str, list] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for pid in _children(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().split(b"\0")[0].decode(errors="replace")
            with open(f"/proc/{pid}/smaps_rollup") as f:
                pss = next(int(line.split()[1]) for line in f if line.startswith("Pss:")) / 1024
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        except (OSError, StopIteration, ValueError, IndexError):
            continue
        if title.startswith("ray::"):
            title = title.split(".")[0].split(" ")[0]
        else:
            title = os.path.basename(title.split(" ")[0])
        entry = out.setdefault(title, [0, 0.0, 0.0])
        entry[0] += 1
        entry[1] += pss
        entry[2] += cpu
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def idle_cpu(seconds: float = 10.0) -> str:
    """'ServeController 4.1%, ...': the CPU the Ray processes use while nothing is asked of them."""
    first = processes()
    time.sleep(seconds)
    second = processes()
    busy = {k: 100 * (second[k][2] - first[k][2]) / seconds for k in second
            if k in first and k.startswith("ray::") and second[k][0] == first[k][0]}
    shown = [f"{k[5:]} {v:.1f}%" for k, v in sorted(busy.items(), key=lambda kv: -kv[1]) if v >= 0.5]
    return f"idle {seconds:g} s, CPU of one core: total {sum(busy.values()):.1f}% ({', '.join(shown) or 'none >= 0.5%'})"


def added(snapshot: dict, before: dict) -> str:
    """'3 processes, 812 MiB PSS (ray::ServeController 1 x 190 MiB, ...); tree +640 MiB': the Ray
    processes (by title; not the idle workers Ray keeps) that are new since `before`, and the
    change in the whole tree's PSS (an idle worker taken by an actor counts there)."""
    new = {k: (n - before.get(k, (0,))[0], p / n) for k, (n, p, _) in sorted(snapshot.items())
           if n > before.get(k, (0,))[0] and k.startswith("ray::") and k != "ray::IDLE"}
    count = sum(n for n, _ in new.values())
    pss = sum(n * each for n, each in new.values())
    tree = sum(v[1] for v in snapshot.values()) - sum(v[1] for v in before.values())
    listed = ", ".join(f"{k[5:]} {n} x {each:.0f} MiB" for k, (n, each) in new.items())
    return f"{count} processes, {pss:.0f} MiB PSS ({listed or 'none'}); whole tree {tree:+.0f} MiB"


def _paired(times: dict[str, list[float]], order: list[str]) -> None:
    for name in order:
        ratios = [t / p for t, p in zip(times[name], times["pool"])]
        print(f"   {name:5s} {_stats(times[name])}   vs the pool in the same round: median "
              f"{statistics.median(ratios):.2f}x")


def _stats(times: list[float]) -> str:
    return f"best {min(times):6.2f} s  median {statistics.median(times):6.2f} s" if times else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 checkpoints x 400 images")
    parser.add_argument("--smoke", action="store_true", help="3 checkpoints x 100 images, 1 round: it works")
    parser.add_argument("--rounds", type=int, default=3, help="timed back-to-back passes per executor and width")
    parser.add_argument("--from-zero", type=int, default=2, help="passes of Serve min_replicas=0 from 0 replicas")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds the idle CPU of each executor is read over")
    parser.add_argument("--ab", type=int, default=0, metavar="ROUNDS",
                        help="instead of a-c: the three at 2 workers, one pass each per round, for ROUNDS rounds")
    parser.add_argument("--order", default="pool,data,serve", help="the executors' order (the load drifts)")
    parser.add_argument("--skip", action="append", default=[], choices=EXECUTORS, help="leave an executor out")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.from_zero, args.idle = 1, 1, 2.0

    import numpy as np
    import ray
    import ray.data
    import torch
    from ray import serve

    from i2x.engine import stages
    from i2x.engine.params import InterpretParams
    from i2x.interpretation.fanout import RayFanout, WarmPool, store_spec
    from i2x.raycluster import worker_env
    from i2x.storage import LocalStore

    torch.set_num_threads(1)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    for name in ("ray.data", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)
    every, fraction = (50, 0.1) if args.quick else (25, 0.25)
    if args.smoke:
        every, fraction = 160, 0.025
    root = tempfile.mkdtemp(prefix="i2x-bench-pool-")
    store = LocalStore(os.path.join(root, "store"))
    print(f"uptime: {_uptime()}")
    started = time.perf_counter()
    stages.create_run(store, "base", model={"arch": "small_cnn", "num_classes": 10}, dataset={"kind": "mnist5k"},
                      train={"preset": "tiny", "checkpoint_every": every}, explanation_fraction=fraction)
    stages.train_run(store, "base")
    record = stages.get_run(store, "base")
    sources = [(int(c["step"]), c["key"]) for c in stages.list_checkpoints(store, "base")]
    steps = [s for s, _ in sources]
    n = record["sizes"]["explanation"]
    print(f"{len(steps)} checkpoints x {n} images (mnist5k, small_cnn, tiny preset; trained in "
          f"{time.perf_counter() - started:.1f} s)")
    interp = InterpretParams()
    params = interp.to_dict()
    spec = store_spec(store)
    runtime_env = {"env_vars": worker_env()}
    runs = iter(range(10**6))
    checked: Counter = Counter()  # executor -> passes whose units equal the reference
    reference: dict[int, dict] = {}  # step -> the first pass's unit

    def new_run(label: str) -> str:
        run_id = f"{label}-{next(runs)}"
        stages.create_run(store, run_id, model=record["model"], dataset=record["dataset"],
                          explanation_fraction=fraction)
        stages.register_checkpoints(store, run_id, sources)
        return run_id

    def check(run_id: str, label: str) -> None:
        """The units this pass wrote equal the first pass's, array by array."""
        for step in steps:
            unit = store.get_npz(stages.interpretation_key(run_id, step))
            if step not in reference:
                reference[step] = unit
                continue
            for name in ("saliency", "confidences", "predictions"):
                assert np.array_equal(unit[name], reference[step][name]), \
                    f"{label}: {name} of step {step} differs from the first pass's"
        checked[label] += 1

    def timed(label: str, map_units, run_id: str) -> float:
        start = time.perf_counter()
        stages.interpret_run(store, run_id, interp, map_units=map_units)
        elapsed = time.perf_counter() - start
        check(run_id, label)
        return elapsed

    # Ray Data: a new dataset execution per pass (per job), consumed as its rows come.
    def data_units(workers: int, run_id: str, seen: dict | None = None):
        def map_units(todo: list[int]):
            ds = ray.data.from_items([{"step": s} for s in todo], override_num_blocks=len(todo))
            ds = ds.map_batches(DataWorker, batch_size=1, num_cpus=1, runtime_env=runtime_env,
                                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
                                fn_constructor_kwargs={"spec": spec, "threads": 1},
                                fn_kwargs={"run_id": run_id, "params": params})
            for i, row in enumerate(ds.iter_rows()):
                if seen is not None and i == len(todo) // 2 and workers == 2:
                    seen["snapshot"] = processes()  # mid-execution: its actors are up
                yield str(row["key"])
        return map_units

    # Ray Serve: an application per variant, called through its DeploymentHandle.
    def deploy(name: str, workers: int, min_replicas: int, **autoscaling):
        app = serve.deployment(ServeWorker).options(
            name="interpret", max_ongoing_requests=1,
            ray_actor_options={"num_cpus": 1, "runtime_env": runtime_env},
            autoscaling_config={"min_replicas": min_replicas, "max_replicas": workers,
                                "target_ongoing_requests": 1, "upscale_delay_s": 0, **autoscaling},
        ).bind(spec, 1)
        return serve.run(app, name=name, route_prefix=None)

    def replicas(name: str, states=("RUNNING", "STARTING")) -> int:
        counts = serve.status().applications[name].deployments["interpret"].replica_states
        return sum(int(counts.get(state, 0)) for state in states)

    def wait_replicas(name: str, wanted: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while replicas(name, ("RUNNING",)) != wanted or replicas(name) != wanted:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def serve_pass(handle, label: str) -> float:
        run_id = new_run(label)

        def map_units(todo: list[int]):
            responses = [handle.interpret.remote(run_id, s, params) for s in todo]
            for response in responses:
                yield response.result()
        return timed("serve", map_units, run_id)

    def data_pass(workers: int, label: str, seen: dict | None = None) -> float:
        run_id = new_run(label)
        return timed("data", data_units(workers, run_id, seen), run_id)

    def pool_pass(pool, workers: int, label: str) -> float:
        run_id = new_run(label)
        return timed("pool", RayFanout(pool, run_id, interp, max_workers=workers), run_id)

    ray.init(num_cpus=6 if args.ab else 2, include_dashboard=False, log_to_driver=False)
    try:
        time.sleep(1.0)  # the idle workers Ray prestarts are part of the baseline
        baseline = processes()
        print(f"baseline (ray.init, {6 if args.ab else 2} logical CPUs): {sum(v[0] for v in baseline.values())} processes, "
              f"{sum(v[1] for v in baseline.values()):.0f} MiB PSS; {idle_cpu(args.idle)}")

        # ---- a. our pool
        def section_pool() -> None:
            before = processes()
            warm: dict[int, list[float]] = {1: [], 2: []}
            pool = WarmPool(spec, size=2, idle_seconds=0)
            try:
                start = time.perf_counter()
                pool.warm()  # the service's pool is up before any user job after the first
                t_warm = time.perf_counter() - start
                for r in range(args.rounds):
                    for workers in (2, 1) if r % 2 == 0 else (1, 2):
                        warm[workers].append(pool_pass(pool, workers, f"pool{workers}"))
                snapshot = processes()  # after its passes, as Serve's (a worker grows with its first units)
                pool_idle = idle_cpu(args.idle)
            finally:
                pool.shutdown()
            cold: dict[int, list[float]] = {1: [], 2: []}
            for _ in range(max(1, args.from_zero)):
                for workers in (2, 1):  # a fresh pool: what a job finds after the actors idled out
                    pool = WarmPool(spec, size=workers, idle_seconds=0)
                    try:
                        cold[workers].append(pool_pass(pool, workers, f"pool-cold{workers}"))
                    finally:
                        pool.shutdown()
            print("a. WarmPool + RayFanout")
            print(f"   warm, 2 workers: {_stats(warm[2])}   1 worker: {_stats(warm[1])}   "
                  f"speedup {min(warm[1]) / min(warm[2]):.2f}x (best)")
            print(f"   start-up: pool.warm() of 2 actors {t_warm:.2f} s")
            print(f"   from 0 actors (a fresh pool per pass, start-up included): 2 workers {_stats(cold[2])}   "
                  f"1 worker {_stats(cold[1])}")
            print(f"   adds, 2 actors after the warm passes: {added(snapshot, before)}")
            print(f"   {pool_idle}")
            time.sleep(1.0)

        # ---- b. Ray Data: a dataset execution per job
        def section_data() -> None:
            before = processes()
            seen: dict = {}

            data: dict[int, list[float]] = {1: [], 2: []}
            t_first = data_pass(2, "data-first", seen)
            for r in range(args.rounds):
                for workers in (2, 1) if r % 2 == 0 else (1, 2):
                    data[workers].append(data_pass(workers, f"data{workers}", seen))
            print("b. Ray Data, map_batches(ActorPoolStrategy(min_size=1, max_size=workers)), an execution per pass")
            print(f"   2 workers: {_stats(data[2])}   1 worker: {_stats(data[1])}   "
                  f"speedup {min(data[1]) / min(data[2]):.2f}x (best); actor start-up is in every pass")
            print(f"   first execution in this process: {t_first:.2f} s")
            if "snapshot" in seen:
                print(f"   adds, mid-execution with 2 workers: {added(seen['snapshot'], before)}")
            print(f"   after the executions: {added(processes(), before)}; {idle_cpu(args.idle)}")
            time.sleep(1.0)

        # ---- c. Ray Serve: a deployment kept by the service
        def section_serve() -> None:
            before = processes()
            start = time.perf_counter()
            serve.start(proxy_location="Disabled")
            t_start = time.perf_counter() - start
            start = time.perf_counter()
            handle = deploy("interp2", 2, 1)
            t_deploy = time.perf_counter() - start
            t_first = serve_pass(handle, "serve-first")
            first_replicas = replicas("interp2")
            # Back-to-back jobs find it scaled up (downscale_delay_s: 600 s).
            scaled = wait_replicas("interp2", 2, 60)
            served: dict[int, list[float]] = {1: [], 2: []}
            for _ in range(args.rounds):
                served[2].append(serve_pass(handle, "serve2"))
            snapshot = processes()
            at_two = replicas("interp2")
            serve_idle = idle_cpu(args.idle)
            serve.delete("interp2")
            handle = deploy("interp1", 1, 1)
            for _ in range(args.rounds):
                served[1].append(serve_pass(handle, "serve1"))
            serve.delete("interp1")
            zero = []
            if args.from_zero > 0:
                start = time.perf_counter()
                handle = deploy("interp0", 2, 0, downscale_delay_s=1, downscale_to_zero_delay_s=1,
                                metrics_interval_s=1, look_back_period_s=2)
                t_deploy0 = time.perf_counter() - start
                for _ in range(args.from_zero):
                    assert wait_replicas("interp0", 0, 180), "Serve min_replicas=0: not at 0 replicas in 180 s"
                    zero.append(serve_pass(handle, "serve0"))
                serve.delete("interp0")
            serve.shutdown()
            print("c. Ray Serve, autoscaling max_replicas=workers, target_ongoing_requests=1, no proxy")
            print(f"   min_replicas=1, warm, 2 workers: {_stats(served[2])} ({at_two} replicas at the end)   "
                  f"1 worker: {_stats(served[1])}   speedup {min(served[1]) / min(served[2]):.2f}x (best)")
            print(f"   start-up: serve.start {t_start:.2f} s, deploy (serve.run, 1 replica up) {t_deploy:.2f} s; "
                  f"first pass after the deploy {t_first:.2f} s ({first_replicas} replicas after it; "
                  f"the timed passes {'found 2 running' if scaled else 'did NOT find 2 running within 60 s'})")
            if zero:
                print(f"   min_replicas=0, a pass from 0 replicas: {_stats(zero)} (deploy with 0 replicas "
                      f"{t_deploy0:.2f} s)")
            print(f"   adds, min_replicas=1 scaled to {at_two}: {added(snapshot, before)}")
            print(f"   {serve_idle}")

        # ---- d. A/B: the three at 2 workers, pass after pass, under the same load
        def section_ab() -> None:
            pool = WarmPool(spec, size=2, idle_seconds=0)
            pool.warm()
            serve.start(proxy_location="Disabled")
            handle = deploy("ab", 2, 1)
            serve_pass(handle, "serve-first")
            scaled = wait_replicas("ab", 2, 60)
            kinds = {"pool": lambda: pool_pass(pool, 2, "pool"), "serve": lambda: serve_pass(handle, "serve"),
                     "data": lambda: data_pass(2, "data")}
            times: dict[str, list[float]] = {k: [] for k in kinds}
            order = list(kinds)
            for r in range(args.ab):
                for name in order[r % 3:] + order[:r % 3]:  # who goes first rotates
                    times[name].append(kinds[name]())
            pool.shutdown()
            serve.delete("ab")
            print(f"d. A/B, 2 workers each, {args.ab} rounds (each round: one pass of each, the first rotating); "
                  f"logical CPUs 6 so that all three stay up; Serve {'at 2 replicas' if scaled else 'NOT at 2'}")
            _paired(times, order)
            if args.from_zero > 0:  # from 0 workers: a fresh pool (after an idle release), Serve min 0, Data
                handle = deploy("ab0", 2, 0, downscale_delay_s=1, downscale_to_zero_delay_s=1,
                                metrics_interval_s=1, look_back_period_s=2)

                def fresh_pool() -> float:
                    fresh = WarmPool(spec, size=2, idle_seconds=0)
                    try:
                        return pool_pass(fresh, 2, "pool-cold")
                    finally:
                        fresh.shutdown()

                def serve_from_zero() -> float:
                    assert wait_replicas("ab0", 0, 180), "Serve min_replicas=0: not at 0 replicas in 180 s"
                    return serve_pass(handle, "serve0")

                kinds = {"pool": fresh_pool, "serve": serve_from_zero, "data": lambda: data_pass(2, "data")}
                times = {k: [] for k in kinds}
                for r in range(args.from_zero):
                    for name in order[r % 3:] + order[:r % 3]:
                        times[name].append(kinds[name]())
                serve.delete("ab0")
                print(f"   from 0 workers, {args.from_zero} rounds: a fresh pool, Serve min_replicas=0 "
                      "(waited for at 0 replicas), a Data execution")
                _paired(times, order)
            serve.shutdown()

        if args.ab:
            section_ab()
        for name in args.order.split(",") if not args.ab else []:
            if name not in args.skip:
                {"pool": section_pool, "data": section_data, "serve": section_serve}[name]()
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    print(f"units equal across executors, step by step: {', '.join(f'{k} {v} passes' for k, v in checked.items())}")
    print(f"uptime: {_uptime()}")
    return 0


def _uptime() -> str:
    with open("/proc/loadavg") as f:
        return "load average " + ", ".join(f.read().split()[:3])


if __name__ == "__main__":
    raise SystemExit(main())
