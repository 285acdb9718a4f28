"""A figure-drawing worker: reads a pickled list of figure specs on stdin, writes the pickled
list of PNG bytes on stdout. Started by i2x.report.build.Drawing as `python -m` (a fresh
interpreter: nothing of the caller's __main__ is imported again, no fork of its threads)."""

import pickle
import sys

from i2x.report.build import _draw_spec

if __name__ == "__main__":
    specs = pickle.load(sys.stdin.buffer)
    pickle.dump([_draw_spec(spec) for spec in specs], sys.stdout.buffer, protocol=pickle.HIGHEST_PROTOCOL)
