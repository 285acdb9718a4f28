"""Peak memory of PrototypeExtractor in the paper's full setting (target: below 4 GiB).

Simulates the features of 6,000 images x 7x7 positions x 2048 channels (ResNet-50's last
conv layer) as float16 in a np.memmap file in a temporary folder, then fits
PrototypeExtractor(n_prototypes=32) in a fresh child process, so the peak RSS it reports
is the fit's alone (generating the file does not count). Also prints tracemalloc's peak of
numpy allocations and the wall time. Reference: the same vectors held whole in float32 are
N*h*w*d*4 bytes (printed), before PCA or KMeans allocate anything.

    nice .venv/bin/python bench/bench_prototypes_memory.py [--n 6000] [--dim 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GIB = 1024 ** 3


def generate(path: Path, n: int, h: int, w: int, d: int, seed: int = 0) -> None:
    """Features with cluster structure: 48 random directions plus noise, ReLU'd like conv features."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(48, d)).astype(np.float32) * 2.0
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, h, w, d))
    chunk = 200
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        which = rng.integers(0, len(centers), size=(stop - start, h, w))
        block = centers[which] + rng.standard_normal(size=(stop - start, h, w, d), dtype=np.float32)
        out[start:stop] = np.maximum(block, 0.0).astype(np.float16)
    out.flush()
    del out


def fit_child(path: str, n_prototypes: int) -> None:
    import tracemalloc

    from i2x.core.prototypes import PrototypeExtractor

    features = np.load(path, mmap_mode="r")
    tracemalloc.start()
    started = time.perf_counter()
    extractor = PrototypeExtractor(n_prototypes=n_prototypes).fit(features)
    wall = time.perf_counter() - started
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "wall_s": wall,
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux reports KiB
        "tracemalloc_peak_bytes": traced_peak,
        "assignments_shape": list(extractor.assignments_.shape),
        "n_components": extractor.n_components_,
        "n_fit_vectors": extractor.n_fit_vectors_,
        "kmeans": type(extractor.kmeans_).__name__,
        "prototypes_used": int(np.unique(extractor.assignments_).size),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=6000)
    parser.add_argument("--size", type=int, default=7)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--prototypes", type=int, default=32)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        fit_child(args.child, args.prototypes)
        return

    n, h, w, d = args.n, args.size, args.size, args.dim
    with tempfile.TemporaryDirectory(prefix="i2x-bench-") as tmp:
        path = Path(tmp) / "features.npy"
        started = time.perf_counter()
        generate(path, n, h, w, d)
        print(f"features: {n} x {h} x {w} x {d} float16 memmap, {path.stat().st_size / GIB:.2f} GiB on disk "
              f"(generated in {time.perf_counter() - started:.0f} s)")
        print(f"the same vectors whole in float32 would take {n * h * w * d * 4 / GIB:.2f} GiB")
        child = subprocess.run([sys.executable, __file__, "--child", str(path), "--prototypes", str(args.prototypes)],
                               capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if child.returncode != 0:
            sys.exit(f"fit failed:\n{child.stderr}")
        result = json.loads(child.stdout.strip().splitlines()[-1])
    peak = result["peak_rss_bytes"] / GIB
    print(f"PrototypeExtractor(n_prototypes={args.prototypes}).fit: wall {result['wall_s']:.1f} s, "
          f"peak RSS {peak:.2f} GiB (includes memmap pages read), "
          f"tracemalloc peak {result['tracemalloc_peak_bytes'] / GIB:.2f} GiB")
    print(f"  PCA on {result['n_fit_vectors']} sampled vectors -> {result['n_components']} components, "
          f"{result['kmeans']}, {result['prototypes_used']} prototypes used, assignments {result['assignments_shape']}")
    print(f"target peak < 4 GiB: {'PASS' if peak < 4 else 'FAIL'}")


if __name__ == "__main__":
    main()
