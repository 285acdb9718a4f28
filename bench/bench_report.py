"""Report build time: today's i2x.report against the implementation at a git ref (issue 9).

Both build the HTML report (figures included) of the same finished run, each in a fresh child
process on its own copy of the run, after importing what the pipeline's report stage already
has loaded (numpy, matplotlib, torch, scikit-learn, i2x.data): the timed part is
build_report(store, run) alone. The old implementation is `git show REF:services/i2x/report/*`
into a temporary folder put first on PYTHONPATH, so its `i2x.report` shadows today's.
Rounds alternate old and new; the figure is the median per side and the ratio of the medians.

    make demo                                              # writes ./i2x-data/runs/demo-mnist5k
    nice -n 10 .venv/bin/python bench/bench_report.py --store ./i2x-data --run demo-mnist5k
    .venv/bin/python bench/bench_report.py --quick         # a small synthetic run, new side only
    nice -n 10 .venv/bin/python bench/bench_report.py --checkpoints 1000 --baseline-ref REF   # many checkpoints

Target: the demo's report in <= 5 s on the dev machine (2 shared CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASELINE_REF = "06cc232"  # main before issue 9's report work

CHILD = r"""
import json, sys, time
import numpy, matplotlib, torch, sklearn.cluster  # loaded in the pipeline's process already
import i2x.data
import i2x.report, i2x.report.html, i2x.report.build
from i2x.storage import LocalStore
from i2x.report import build_report
store = LocalStore(sys.argv[1])
kwargs = {"workers": int(sys.argv[3])} if len(sys.argv) > 3 else {}
start, cpu = time.perf_counter(), time.process_time()
html = build_report(store, sys.argv[2], **kwargs)
print(json.dumps({"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu, "bytes": len(html.encode()),
                  "module": i2x.report.__file__}))
"""


def old_tree(ref: str, into: Path) -> Path:
    files = subprocess.run(["git", "-C", str(REPO), "ls-tree", "--name-only", ref, "services/i2x/report/"],
                           capture_output=True, text=True, check=True).stdout.split()
    target = into / "i2x" / "report"
    target.mkdir(parents=True)
    for name in files:
        if name.endswith(".py"):
            source = subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:{name}"], capture_output=True,
                                    check=True).stdout
            (target / Path(name).name).write_bytes(source)
    return into


def run_child(store_copy: Path, run_id: str, pythonpath: Path | None, workers: int | None = None) -> dict:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = f"{pythonpath}{os.pathsep}{env.get('PYTHONPATH', '')}"
    extra = [str(workers)] if workers is not None else []
    out = subprocess.run([sys.executable, "-c", CHILD, str(store_copy), run_id, *extra], capture_output=True, text=True,
                         env=env, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise SystemExit(f"report build failed ({'old' if pythonpath else 'new'}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def copy_run(store: Path, run_id: str, into: Path) -> Path:
    shutil.copytree(store / "runs" / run_id, into / "runs" / run_id,
                    ignore=shutil.ignore_patterns("figures", "report.html"))
    return into


def synthetic_store(into: Path, checkpoints: int | None = None) -> tuple[Path, str]:
    """tests/report/synthetic.py's run (6 checkpoints), or one with `checkpoints` (steps 0, 40, ...)."""
    sys.path.insert(0, str(REPO))
    from i2x.storage import LocalStore
    from tests.report.synthetic import write_synthetic_run

    run_id = f"bench-synthetic-{checkpoints}" if checkpoints else "bench-synthetic"
    steps = {"steps": tuple(range(0, 40 * checkpoints, 40))} if checkpoints else {}
    write_synthetic_run(LocalStore(into), run_id, **steps)
    return into, run_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="i2x-data", help="a local store (folder) holding the run")
    parser.add_argument("--run", default="demo-mnist5k")
    parser.add_argument("--baseline-ref", default=BASELINE_REF, help="git ref of the old implementation")
    parser.add_argument("--repeats", type=int, default=1, help="rounds (each: one old and one new build)")
    parser.add_argument("--no-baseline", action="store_true", help="time today's implementation only")
    parser.add_argument("--workers", type=int, default=None,
                        help="today's build_report(workers=N); 1: every figure in the timed process, so its CPU "
                             "time is the whole work (default: the library's choice)")
    parser.add_argument("--quick", action="store_true", help="a small synthetic run if the store has no such run; "
                                                             "today's implementation only")
    parser.add_argument("--checkpoints", type=int, default=None,
                        help="time a synthetic run with this many checkpoints instead of --store/--run "
                             "(4 classes, 40 images; the figures thin past 200: docs/REPORT.md)")
    args = parser.parse_args()
    if args.checkpoints is not None and args.checkpoints < 2:
        parser.error("--checkpoints needs at least 2")
    with tempfile.TemporaryDirectory(prefix="i2x-bench-report-") as tmp:
        tmp = Path(tmp)
        store, run_id = Path(args.store).resolve(), args.run
        if args.checkpoints:
            store, run_id = synthetic_store(tmp / "synthetic", args.checkpoints)
            print(f"(a synthetic run with {args.checkpoints} checkpoints)")
        elif not (store / "runs" / run_id / "run.json").exists():
            if not args.quick:
                raise SystemExit(f"no run {run_id!r} in {store}: run `make demo` first (or pass --store/--run, "
                                 "or --quick for a synthetic run)")
            store, run_id = synthetic_store(tmp / "synthetic")
            print(f"(no run in {args.store}: timing a synthetic run, not the demo)")
        baseline = not (args.no_baseline or args.quick)
        old_path = old_tree(args.baseline_ref, tmp / "old") if baseline else None
        times: dict[str, list[float]] = {"old": [], "new": []}
        cpu: dict[str, list[float]] = {"old": [], "new": []}
        sizes = {}
        for r in range(max(args.repeats, 1)):
            for side in (("old", "new") if r % 2 == 0 else ("new", "old")):
                if side == "old" and not baseline:
                    continue
                copy = copy_run(store, run_id, tmp / f"{side}-{r}")
                result = run_child(copy, run_id, old_path if side == "old" else None,
                                   None if side == "old" else args.workers)
                times[side].append(result["seconds"])
                cpu[side].append(result["cpu"])
                sizes[side] = result["bytes"]
                print(f"round {r + 1} {side}: {result['seconds']:.2f} s ({result['cpu']:.2f} s CPU), report {result['bytes'] / 1e6:.1f} MB",
                      flush=True)
        new = statistics.median(times["new"])
        print(f"\nreport build of {run_id!r} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}):")
        print(f"  new (this tree):          {new:.2f} s, {statistics.median(cpu['new']):.2f} s CPU "
              f"(median of {len(times['new'])}{', workers=' + str(args.workers) if args.workers else ''}), "
              f"{sizes['new'] / 1e6:.1f} MB")
        if times["old"]:
            old = statistics.median(times["old"])
            print(f"  old ({args.baseline_ref}): {old:.2f} s, {statistics.median(cpu['old']):.2f} s CPU "
                  f"(median of {len(times['old'])}), "
                  f"{sizes['old'] / 1e6:.1f} MB")
            print(f"  ratio old/new:            {old / new:.1f}x faster")
        print(f"  target <= 5 s: {'pass' if new <= 5 else 'FAIL'}")


if __name__ == "__main__":
    main()
