"""Table 1's statistics (95% intervals, Welch's t test, removed shares) on hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from i2x.core.finetune import add_statistics, interval95, removed_fraction_per_class, table_markdown, welch_test


def _row(protocol: str, sums: list[int], accuracies: list[float]) -> dict:
    runs = [{"seed": r, "accuracy": acc, "a_to_b": s - s // 2, "b_to_a": s // 2, "sum": s}
            for r, (s, acc) in enumerate(zip(sums, accuracies))]

    def ms(values):
        values = np.asarray(values, dtype=float)
        return {"mean": float(values.mean()), "std": float(values.std(ddof=1))}

    return {"protocol": protocol, "runs": runs, **{m: ms([r[m] for r in runs]) for m in ("accuracy", "a_to_b",
                                                                                         "b_to_a", "sum")}}


def table(curated_full: list[int], full_full: list[int]) -> dict:
    acc = [0.90, 0.91, 0.92, 0.93, 0.94]
    return {"pair": [0, 1], "repeats": 5, "baseline": {"accuracy": 0.9, "a_to_b": 8, "b_to_a": 6, "sum": 14},
            "rows": [_row("full->full", full_full, acc), _row("curated->full", curated_full, acc)]}


def test_interval_by_hand():
    # mean 11, s = sqrt(2.5), n = 5: half width t(0.975, 4) x s / sqrt(5) = 2.7764 x 0.70711 = 1.9632
    low, high = interval95([10, 12, 11, 13, 9])
    assert low == pytest.approx(11 - 1.9632, abs=1e-4) and high == pytest.approx(11 + 1.9632, abs=1e-4)
    assert interval95([4]) == (None, None)


def test_welch_by_hand():
    # means 11 and 14, both variances 2.5: t = -3 / sqrt(2.5/5 + 2.5/5) = -3; df = 1 / (2 x 0.25/4) = 8
    test = welch_test([10, 12, 11, 13, 9], [14, 15, 13, 16, 12])
    assert test["t"] == pytest.approx(-3.0) and test["df"] == pytest.approx(8.0)
    assert test["p"] == pytest.approx(2 * stats.t.sf(3.0, 8))  # 0.0171
    assert welch_test([3, 3, 3], [3, 3, 3]) == {"t": None, "p": None, "df": None}
    assert welch_test([1], [2, 3])["p"] is None


def test_significant_and_not_significant_wording():
    out = add_statistics(table([10, 12, 11, 13, 9], [14, 15, 13, 16, 12]),
                         removed_fraction_per_class=[0.5, 0.25, 0.0])
    sums = next(t for t in out["tests"] if t["metric"] == "sum")
    assert sums["compared"] == ["curated->full", "full->full"] and sums["significant"] is True
    assert sums["text"] == ("Welch's t test, curated → full vs full → full, the pair's confusions: 11.00 vs 14.00, "
                            "t = -3.00, p = 0.017: significant at the 5% level.")
    acc = next(t for t in out["tests"] if t["metric"] == "accuracy")
    assert acc["t"] == pytest.approx(0.0) and acc["significant"] is False and "not significant" in acc["text"]
    row = next(r for r in out["rows"] if r["protocol"] == "curated->full")
    assert row["ci95"]["sum"] == pytest.approx([11 - 1.9632, 11 + 1.9632], abs=1e-4)
    md = table_markdown(out, ["two", "seven", "other"])
    assert "| curated → full | 92.00 ± 1.58 [90.04, 93.96] |" in md
    assert sums["text"] in md and acc["text"] in md
    assert "Removed by curation: 50% of 'two', 25% of 'seven'; nothing of the other classes." in md
    same = add_statistics(table([10, 14, 12, 11, 13], [11, 13, 12, 14, 10]))
    assert "12.00 vs 12.00, t = 0.00, p = 1.000: not significant at the 5% level." in same["tests"][0]["text"]
    # a table without the two tested protocols gets intervals, no test
    lone = add_statistics({**table([1, 2], [1, 2]), "rows": table([1, 2, 3], [1, 2, 3])["rows"][:1]})
    assert lone["tests"] == [] and "Welch" not in table_markdown(lone, ["a", "b", "c"])


def test_removed_fraction_per_class_by_hand():
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    # kept: two of four 0s, both 1s, the 2 -> 50%, 0%, 0%
    assert removed_fraction_per_class(labels, [1, 3, 4, 5, 6], 4) == [0.5, 0.0, 0.0, 0.0]
