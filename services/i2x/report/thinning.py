"""Per-checkpoint figures past MAX_FIGURE_COLUMNS checkpoints (docs/REPORT.md, "Many checkpoints").

A run may take up to I2X_MAX_CHECKPOINTS (2000) checkpoints; a figure with one column per
checkpoint stops being readable long before that. Past the limit (the same 200 above which
CreateRun warns MANY_CHECKPOINTS) each such figure draws at most MAX_FIGURE_COLUMNS columns,
by one of two rules, chosen per figure in i2x.report.build:

- `select`: the first and last checkpoints, every checkpoint the page names (`keep`), and every
  k-th one between, k the smallest stride that fits: real values at real steps.
- `bins`: every step falls in one bin of consecutive steps (the first and the last step alone)
  and the figure draws one aggregate per bin, for curves whose single spikes matter.

Each thinned figure's caption carries `Thinning.sentence`. Runs at or under the limit are drawn
as before. No matplotlib here: build.py computes the columns, the figure functions draw them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from i2x.core.checkpoint_count import MANY_CHECKPOINTS

MAX_FIGURE_COLUMNS = MANY_CHECKPOINTS


def key_limit(limit: int | None = None) -> int:
    """Most key checkpoints a class's page lists past the limit: a quarter of it, so that Fig. 3-4
    keeps both ends of each (t and the next checkpoint) and still has half its columns for the
    evenly spaced ones."""
    return max(1, (MAX_FIGURE_COLUMNS if limit is None else limit) // 4)


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass(frozen=True)
class Thinning:
    """Which of `total` columns a figure draws: `indices` for a selection, `groups` (index arrays
    covering 0..total-1 in order) for bins; both None when nothing is thinned."""

    total: int
    indices: np.ndarray | None = None
    stride: int = 1
    groups: list[np.ndarray] | None = None
    unit: str = "checkpoints"

    @property
    def thinned(self) -> bool:
        return self.indices is not None or self.groups is not None

    @property
    def columns(self) -> int:
        if self.groups is not None:
            return len(self.groups)
        return self.total if self.indices is None else len(self.indices)

    @property
    def sentence(self) -> str:
        """The caption's words for it ('' when nothing is thinned)."""
        if self.groups is not None:
            widest = max(len(g) for g in self.groups)
            return (f"Showing {self.columns:,} points for {self.total:,} {self.unit}: each is the value of largest "
                    f"magnitude among up to {widest} consecutive {self.unit}, drawn at the first of them, so no "
                    f"spike is lost; the first and last {self.unit} are drawn alone.")
        if self.indices is not None:
            return (f"Showing {self.columns:,} of {self.total:,} {self.unit}: every {ordinal(self.stride)}, plus "
                    "the first, last and key checkpoints.")
        return ""

    def take(self, values: np.ndarray) -> np.ndarray:
        """values (total, ...) -> the drawn columns: selected rows, or per bin the value of largest
        magnitude (sign kept) in each column."""
        values = np.asarray(values)
        if self.groups is not None:
            out = []
            for group in self.groups:
                block = values[group]
                pick = np.abs(block).argmax(axis=0)
                out.append(np.take_along_axis(block, pick[None, ...], axis=0)[0])
            return np.stack(out)
        return values if self.indices is None else values[self.indices]

    def steps(self, steps) -> np.ndarray:
        """The x of each drawn column: the selected steps, or each bin's first step."""
        steps = np.asarray(steps)
        if self.groups is not None:
            return np.array([steps[g[0]] for g in self.groups])
        return steps if self.indices is None else steps[self.indices]


def select(total: int, keep=(), limit: int | None = None) -> Thinning:
    """At most `limit` of `total` columns: 0, total-1, every index in `keep`, and every k-th
    index (0, k, 2k, ...) for the smallest k >= 2 that fits. When the kept ones alone reach the
    limit, only they are drawn (callers keep them under it: see key_limit)."""
    limit = MAX_FIGURE_COLUMNS if limit is None else int(limit)
    if total <= limit:
        return Thinning(total)
    must = {0, total - 1} | {int(k) for k in keep if 0 <= int(k) < total}
    stride = max(2, math.ceil((total - 1) / max(limit - 1, 1)))
    while True:
        chosen = must | set(range(0, total, stride))
        if len(chosen) <= limit or stride >= total:
            break
        stride += 1
    if len(chosen) > limit:
        chosen = must
    return Thinning(total, np.array(sorted(chosen)), stride)


def bins(total: int, limit: int | None = None, unit: str = "checkpoints") -> Thinning:
    """At most `limit` bins over `total` columns: the first and last alone, the others split
    evenly (sizes differ by at most one)."""
    limit = MAX_FIGURE_COLUMNS if limit is None else int(limit)
    if total <= limit:
        return Thinning(total, unit=unit)
    middle = np.array_split(np.arange(1, total - 1), max(limit - 2, 1))
    return Thinning(total, groups=[np.array([0])] + [g for g in middle if len(g)] + [np.array([total - 1])],
                    unit=unit)
