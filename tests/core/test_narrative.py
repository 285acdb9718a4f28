"""The sentences a person reads, checked against real build_explanation output."""

from __future__ import annotations

import numpy as np

from test_explain import end_to_end_case, fallback_case

from i2x.core.explain import build_explanation
from i2x.core.finetune import add_statistics
from i2x.core.narrative import analysed_line, curation_line, headline, summary_lines, uncertain_line, warning_lines


def test_the_headline_is_the_most_confused_pair_and_the_analysed_pair_says_why():
    out = build_explanation(**fallback_case())
    assert headline(out) == ("Most confused pair on the test split: 'a' / 'b', 5 test confusions "
                             "(3 'a' predicted as 'b', 2 'b' as 'a').")
    assert analysed_line(out) == (
        "Analysed pair: 'b' / 'c' (3 test confusions), the most confused pair that has an uncertain prototype. "
        "Passed over: 'a' / 'b' (5): no prototype present in both classes alternates between them (2 reliable, "
        "0 one-class, 0 background, 1 inactive).")
    assert uncertain_line(out) == ("Uncertain prototype: P-1 (in 100% of 'b' and 100% of 'c'). It changes sides "
                                   "between 'b' / 'c' with no other prototype taking over, so the model is unsure "
                                   "what it means.")
    # 12 per class, cap 50%: 6 of 'b' and 6 of 'c' go
    assert curation_line(out) == ("Curation (scope 'all') removes 12 of the 36 explanation samples, those where P-1 "
                                  "covers the most positions, at most 50% of any class (see CURATION_LIMITED): "
                                  "50% of 'b', 50% of 'c'.")
    uncapped = build_explanation(**fallback_case(), max_removed_fraction=1.0)
    assert curation_line(uncapped) == ("Curation (scope 'all') removes the 24 of 36 explanation samples that hold "
                                       "P-1: 100% of 'b', 100% of 'c'.")
    lines = summary_lines(out)
    # warnings first, then the headline, the analysed pair, the prototype, the curation
    assert lines[:3] == warning_lines(out) and lines[0].startswith("warning FEW_PAIR_CONFUSIONS: ")
    assert lines[3:] == [headline(out), analysed_line(out), uncertain_line(out), curation_line(out)]


def test_same_pair_has_no_analysed_line_and_ties_are_explained():
    case = end_to_end_case()
    case["confusion"] = np.array([[10, 3], [2, 10]])
    out = build_explanation(**case)
    assert analysed_line(out) is None
    three = fallback_case()
    # (0,1) = 2+2 and (1,2) = 1+3: a tie on count that the larger direction (3) decides for (1,2)
    three["confusion"] = np.array([[10, 2, 0], [2, 10, 1], [0, 3, 10]])
    out = build_explanation(**three)
    assert headline(out).endswith("; tied on count with another pair, ranked first by the larger single direction.")
    assert analysed_line(out) is None  # (1,2) has the uncertain prototype itself


def test_a_near_chance_model_gets_no_confident_sentence():
    case = fallback_case()
    case["confusion"] = np.array([[12, 0, 0], [12, 0, 0], [12, 0, 0]])
    out = build_explanation(**case)
    lines = summary_lines(out)
    assert lines[0].startswith("warning NEAR_CHANCE_ACCURACY: test accuracy 33% is near chance (33%")
    assert lines[-1] == ("No uncertain prototype is named: the model is near chance, so no prototype can be "
                         "trusted to explain it.")
    assert not any(line.startswith(("Uncertain prototype", "Curation", "Analysed pair")) for line in lines)


def test_table_significance_follows_the_explanation():
    out = build_explanation(**fallback_case())
    runs = lambda sums: [{"seed": r, "accuracy": 0.9, "a_to_b": s, "b_to_a": 0, "sum": s}  # noqa: E731
                         for r, s in enumerate(sums)]
    table = add_statistics({"pair": [1, 2], "repeats": 3, "rows": [
        {"protocol": "full->full", "runs": runs([5, 6, 7])}, {"protocol": "curated->full", "runs": runs([5, 7, 6])}]})
    lines = summary_lines(out, table)
    assert lines[-2] == ("Welch's t test, curated → full vs full → full, the pair's confusions: 6.00 vs 6.00, "
                         "t = 0.00, p = 1.000: not significant at the 5% level.")
    assert lines[-1].endswith("cannot be tested (needs 2 or more repeats with some variation).")
