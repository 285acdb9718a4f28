"""Run every bench/bench_*.py in turn (`make bench`); extra arguments (e.g. --quick) go to each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main() -> int:
    failed = []
    for script in sorted(Path(__file__).parent.glob("bench_*.py")):
        print(f"\n=== {script.name} ===", flush=True)
        if script.name == "bench_gpu.py" and not _has_cuda():
            print("skipped: torch sees no CUDA GPU here (`bench_gpu.py --smoke` runs its tiny CPU shape)")
            continue
        if subprocess.call([sys.executable, str(script), *sys.argv[1:]]) != 0:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
