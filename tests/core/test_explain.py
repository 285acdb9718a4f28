"""Structured explanations (docs/METHOD.md) on small hand-built cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from i2x.core.errors import InvalidArgument
from i2x.core.dynamics import fit_dynamics
from i2x.core.intensity import prototype_intensity
from i2x.core.explain import (
    background_prototypes,
    build_explanation,
    class_presence,
    curation_summary,
    near_chance,
    rank_confused_pairs,
    confused_pairs,
    min_group_size_for,
    class_explanation,
    curated_indices,
    most_confused_pair,
    pair_analysis,
    presence,
    shared_prototypes,
    specialized_prototypes,
)


def test_presence_by_hand():
    assignments = np.array([[[0, 1], [1, 1]], [[3, 3], [3, 2]]])
    # sample 0 holds {0, 1}; sample 1 holds {2, 3}
    np.testing.assert_array_equal(presence(assignments, 4), [[True, True, False, False], [False, False, True, True]])
    with pytest.raises(InvalidArgument, match=r"\[0, 3\)"):
        presence(assignments, 3)


def test_shared_prototypes_by_hand():
    p = np.array([[1, 1, 0, 1], [1, 0, 1, 1], [1, 1, 1, 1]], dtype=bool)  # counts per prototype: 3, 2, 2, 3
    assert shared_prototypes(p) == [0, 3]                  # in all 3 samples
    assert shared_prototypes(p, min_fraction=0.6) == [0, 1, 2, 3]  # ceil(0.6*3) = 2 samples suffice
    assert shared_prototypes(p, min_fraction=0.7) == [0, 3]        # ceil(2.1) = 3
    with pytest.raises(InvalidArgument) as err:
        shared_prototypes(p, min_fraction=0)
    assert err.value.field == "min_fraction"


SUBGROUPS = np.array([
    # P0 shared; samples 0-2 also hold P1, P2; samples 3-5 hold P3, P4; only sample 5 holds P5
    [1, 1, 1, 0, 0, 0],
    [1, 1, 1, 0, 0, 0],
    [1, 1, 1, 0, 0, 0],
    [1, 0, 0, 1, 1, 0],
    [1, 0, 0, 1, 1, 0],
    [1, 0, 0, 1, 1, 1],
], dtype=bool)


@pytest.mark.parametrize("method", ["jaccard", "kmeans"])
def test_specialized_prototypes_by_hand(method):
    groups = specialized_prototypes(SUBGROUPS, [0], n_groups=2, method=method)
    # equal sizes: ordered by first member. P5 is in 1/3 of group 2 < 0.5 -> not specialized
    assert [g["members"] for g in groups] == [[0, 1, 2], [3, 4, 5]]
    assert [g["prototypes"] for g in groups] == [[1, 2], [3, 4]]
    assert groups[1]["fractions"] == [1.0, 1.0]
    # min_group_fraction 1/3 admits P5 in the second group
    assert specialized_prototypes(SUBGROUPS, [0], n_groups=2, min_group_fraction=0.3)[1]["prototypes"] == [3, 4, 5]


def test_specialized_prototypes_caps_groups():
    # two distinct presence vectors cannot make 3 groups; one sample makes one group
    groups = specialized_prototypes(SUBGROUPS[:4], [0], n_groups=3)
    assert len(groups) == 2 and groups[0]["members"] == [0, 1, 2]
    assert specialized_prototypes(SUBGROUPS[:1], [0]) == [
        {"members": [0], "size": 1, "prototypes": [1, 2], "fractions": [1.0, 1.0], "below_min_size": False}]


def test_specialized_groups_need_a_minimum_size():
    # SUBGROUPS[:4]: groups {0, 1, 2} (P1, P2) and {3} (P3, P4). With min_group_size 3 the lone
    # sample 3 is an anecdote: its group keeps its member but names no specialized prototype.
    groups = specialized_prototypes(SUBGROUPS[:4], [0], n_groups=2, min_group_size=3)
    assert [(g["members"], g["prototypes"], g["below_min_size"]) for g in groups] == [
        ([0, 1, 2], [1, 2], False), ([3], [], True)]
    # the rule build_explanation uses: max(3, ceil(10% of n_c))
    assert min_group_size_for(6) == 3 and min_group_size_for(30) == 3 and min_group_size_for(31) == 4
    assert min_group_size_for(200) == 20


def class_case():
    # K=3, M=4, T=3 (2 pairs). class 0 = samples 0, 1 (both hold P0, P1); class 1 = sample 2; class 2 = sample 3
    pres = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=bool)
    labels = np.array([0, 0, 1, 2])
    conf = np.full((3, 4, 3), 1 / 3)
    conf[:, 0, 0] = [0.2, 0.5, 0.505]
    conf[:, 1, 0] = [0.4, 0.5, 0.5]
    # mean class-0 change: pair 0 = (0.3 + 0.1)/2 = 0.2 ; pair 1 = (0.005 + 0)/2 = 0.0025 (< 0.01)
    W = np.zeros((2, 4, 3))
    W[:, 0] = [0.8, -0.6, -0.1]   # P0 drives class 0; class 1 moves the opposite way with 0.6 >= 0.5*0.8
    W[:, 1] = [0.3, 0.1, 0.0]     # |0.3| < 0.5 * max|W[:, 0]| (= 1.0) -> not a driver
    W[:, 2] = [-1.0, 0.0, 0.0]    # the largest, but not a prototype of class 0
    return pres, labels, conf, W


def test_class_explanation_by_hand():
    pres, labels, conf, W = class_case()
    out = class_explanation(0, presence=pres, labels=labels, confidences=conf, W=W, steps=[0, 40, 80],
                            class_names=["zero", "one", "two"])
    assert out["shared"] == [0, 1] and out["n_samples"] == 2
    assert out["specialized"] == [{"members": [0, 1], "size": 2, "prototypes": [], "fractions": [],
                                   "below_min_size": True}]
    assert out["presence"] == [1.0, 1.0, 0.0, 0.0]
    np.testing.assert_allclose(out["confidence_change"], [0.2, 0.0025])
    assert len(out["key_checkpoints"]) == 1  # pair 1's change 0.0025 is below 0.01
    key = out["key_checkpoints"][0]
    assert (key["index"], key["step"], key["next_step"]) == (0, 0, 40)
    assert key["confidence_change"] == pytest.approx(0.2)
    # class 2's -0.1 is below 0.5 * 0.8 = 0.4: not separated
    assert key["prototypes"] == [{"prototype": 0, "weight": 0.8, "support": 1.0,
                                  "separates_from": [{"class": 1, "weight": -0.6}]}]
    assert out["statements"] == ["step 0: P-0 (in 100% of 'zero') separates 'zero' from 'one'"]
    assert out["statement_details"] == [{"step": 0, "prototype": 0, "class": 0, "opponent": 1, "support": 1.0,
                                         "text": out["statements"][0]}]
    # a stricter opponent_fraction (0.8: needs |W| >= 0.64) drops class 1
    strict = class_explanation(0, presence=pres, labels=labels, confidences=conf, W=W, steps=[0, 40],
                               opponent_fraction=0.8)
    assert strict["key_checkpoints"][0]["prototypes"][0]["separates_from"] == []
    assert strict["key_checkpoints"][0]["next_step"] is None  # T-1 pair steps given


def test_class_explanation_errors():
    pres, labels, conf, W = class_case()
    kwargs = dict(presence=pres, labels=np.array([0, 0, 1, 1]), confidences=conf, W=W, steps=[0, 40, 80])
    with pytest.raises(InvalidArgument, match="class 2 has no samples.*0: 2, 1: 2, 2: 0"):
        class_explanation(2, **kwargs)
    with pytest.raises(InvalidArgument, match="unknown class index 5"):
        class_explanation(5, **kwargs)


def pair_case():
    # M=5, 4 steps, K=2; W[:, m, 1] = 0 so D = W[:, m, 0]. Scale = max |D| over relevant = 1.0
    D = np.array([
        [1.0, 0.8, 0.9, 1.0],     # P0: always +            -> reliable, favours 0
        [0.5, -0.5, 0.5, 0.02],   # P1: flips at t1 (P0 is + there) and t2 (P2 is - there) -> compensated
        [0.0, 0.0, -0.6, 0.4],    # P2: flips at t3; the only other significant one, P0, is + -> uncertain
        [0.0, 0.0, 0.0, 0.0],     # P3: never significant  -> inactive
        [5.0, -5.0, 5.0, -5.0],   # P4: absent from both classes -> not relevant, not in the scale
    ])
    W = np.zeros((4, 5, 2))
    W[:, :, 0] = D.T
    pres = np.zeros((4, 5), dtype=bool)
    pres[:, :4] = True
    labels = np.array([0, 0, 1, 1])
    return pres, labels, W


def test_pair_analysis_by_hand():
    pres, labels, W = pair_case()
    out = pair_analysis(0, 1, presence=pres, labels=labels, W=W, steps=[0, 10, 20, 30, 40])
    assert out["steps"] == [0, 10, 20, 30] and out["scale"] == 1.0
    assert [row["prototype"] for row in out["prototypes"]] == [0, 1, 2, 3]
    assert [row["category"] for row in out["prototypes"]] == ["reliable", "compensated", "uncertain", "inactive"]
    assert out["reliable"] == [{"prototype": 0, "favours": 0}]
    # P2's unsupported flip at step 30 has |D| = 0.4 -> score 0.4 / 1.0
    assert out["uncertain"] == [{"prototype": 2, "score": pytest.approx(0.4), "flips": 1, "unsupported_flips": 1,
                                 "unsupported_steps": [30], "presence_a": 1.0, "presence_b": 1.0}]
    # P1 flips at steps 10 and 20, |D| 0.5 each -> alternation 1.0; its 0.02 at step 30 is below 0.1 * 1.0
    assert out["compensated"][0]["prototype"] == 1 and out["compensated"][0]["score"] == pytest.approx(1.0)
    assert out["prototypes"][1]["flip_steps"] == [10, 20] and out["prototypes"][1]["significant_steps"] == 3
    assert out["inactive"] == [3]
    assert out["uncertain_prototype"] == 2 and out["uncertain_prototype_source"] == "uncertain"
    assert out["prototypes"][2]["contribution"] == [0.0, 0.0, -0.6, 0.4]
    assert out["one_class"] == [] and out["background"] == [] and out["withheld"] is None


def test_pair_analysis_falls_back_and_errors():
    pres, labels, W = pair_case()
    W[3, 2, :] = 0  # P2 keeps only its -0.6 at step 20 (reliable for class 1, still supporting P1's flip)
    out = pair_analysis(0, 1, presence=pres, labels=labels, W=W, steps=[0, 10, 20, 30])
    assert out["reliable"] == [{"prototype": 0, "favours": 0}, {"prototype": 2, "favours": 1}]
    # no uncertain prototype left: the compensated P1 is the best guess
    assert out["uncertain"] == [] and out["uncertain_prototype"] == 1
    assert out["uncertain_prototype_source"] == "compensated"
    with pytest.raises(InvalidArgument, match="two different classes") as err:
        pair_analysis(1, 1, presence=pres, labels=labels, W=W, steps=[0, 10, 20, 30])
    assert err.value.field == "b"
    with pytest.raises(InvalidArgument, match="unknown class index 2"):
        pair_analysis(0, 2, presence=pres, labels=labels, W=W, steps=[0, 10, 20, 30])


def test_most_confused_pair_by_hand():
    c = np.array([[5, 1, 0], [3, 7, 2], [0, 2, 9]])
    # symmetric sums: (0,1) = 1+3 = 4, (0,2) = 0, (1,2) = 2+2 = 4 -> tie, (0,1) wins by its larger direction 3
    assert most_confused_pair(c) == (0, 1, 4)
    c[2, 1] = 3  # (1,2) = 2+3 = 5
    assert most_confused_pair(c) == (1, 2, 5)
    with pytest.raises(InvalidArgument, match="no off-diagonal"):
        most_confused_pair(np.diag([3, 4]))


def test_curated_indices_by_hand():
    pres = np.array([[0, 1, 0], [1, 1, 0], [0, 1, 1], [1, 0, 0], [0, 0, 1]], dtype=bool)
    labels = np.array([0, 1, 2, 0, 1])
    # P1 is in samples 0, 1, 2 -> scope all keeps 3, 4
    np.testing.assert_array_equal(curated_indices(pres, labels, 1), [3, 4])
    # scope pair (0, 1): sample 2 is of class 2, so it stays
    np.testing.assert_array_equal(curated_indices(pres, labels, 1, scope="pair", pair=(0, 1)), [2, 3, 4])
    with pytest.raises(InvalidArgument, match="0..2") as err:
        curated_indices(pres, labels, 3)
    assert err.value.field == "prototype"
    with pytest.raises(InvalidArgument, match="pair=\\(a, b\\)"):
        curated_indices(pres, labels, 1, scope="pair")
    with pytest.raises(InvalidArgument) as err:
        curated_indices(pres, labels, 1, scope="classes")
    assert err.value.field == "scope"


def end_to_end_case():
    _, _, W = pair_case()
    W = W[:, :4]  # M = 4
    # one row of 4 positions per sample. class 0 = samples 0, 1; class 1 = samples 2, 3.
    # sample 0 holds P0..P3; sample 1 lacks P1 and holds P2 twice; sample 2 holds all; sample 3 lacks P2.
    assignments = np.array([[[0, 1, 2, 3]], [[0, 2, 2, 3]], [[0, 1, 2, 3]], [[0, 0, 1, 3]]])
    labels = np.array([0, 0, 1, 1])
    conf = np.linspace(0.5, 0.9, 5)[:, None, None] * np.array([1.0, 0.0]) + np.array([0.0, 0.1])
    conf = np.broadcast_to(conf, (5, 4, 2)).copy()
    return dict(classes=["two", "seven"], assignments=assignments, labels=labels, confidences=conf,
                W=W, steps=[0, 10, 20, 30, 40], confusion=np.array([[10, 3], [2, 10]]), n_prototypes=4)


def test_build_explanation_end_to_end():
    out = build_explanation(**end_to_end_case(), tau=0.5, lam=2.0)
    assert json.loads(json.dumps(out)) == out
    assert out["schema_version"] == 2
    assert out["most_confused_pair"] == {"a": 0, "b": 1, "names": ["two", "seven"], "count": 5, "a_to_b": 3,
                                         "b_to_a": 2, "source": "confusion", "tie_break": None}
    assert out["analysed_pair"] == {"a": 0, "b": 1, "names": ["two", "seven"], "count": 5, "a_to_b": 3,
                                    "b_to_a": 2, "reason": "most-confused", "skipped": []}
    # P0 and P3 are in every sample of both classes: background. P1 is in 50% of 'two', 100% of 'seven'.
    assert out["background_prototypes"] == [0, 3]
    categories = {row["prototype"]: row["category"] for row in out["pair_analysis"]["prototypes"]}
    assert categories == {0: "background", 1: "compensated", 2: "uncertain", 3: "background"}
    assert out["pair_analysis"]["reliable"] == []  # P0 never flips, but background is never evidence
    assert out["uncertain_prototype"] == 2 and out["checkpoint_steps"] == [0, 10, 20, 30, 40]
    assert [c["shared"] for c in out["per_class"]] == [[0, 2, 3], [0, 1, 3]]
    assert [c["presence"] for c in out["per_class"]] == [[1.0, 0.5, 1.0, 1.0], [1.0, 1.0, 0.5, 1.0]]
    # accuracy 20/25 = 0.8; chance 13/25 = 0.52: not near chance
    assert out["test_accuracy"] == 0.8 and out["chance_accuracy"] == 0.52
    # P2 is in samples 0, 1 ('two', n=2) and 2 ('seven', n=2). Cap 50%: one per class may go. In 'two'
    # sample 1 (P2 on 2 positions) goes before sample 0 (1 position); 'seven' loses sample 2, within the cap.
    summary = out["curation"]["scopes"]["all"]
    assert {k: summary[k] for k in ("size_before", "size_after", "removed", "removed_per_class",
                                    "removed_fraction_per_class", "removed_indices", "cap", "limited",
                                    "limited_classes")} == {
        "size_before": 4, "size_after": 2, "removed": 2, "removed_per_class": [1, 1],
        "removed_fraction_per_class": [0.5, 0.5], "removed_indices": [1, 2], "cap": 0.5, "limited": True,
        "limited_classes": [0]}
    assert "2 of the 2 'two' samples (100%)" in summary["message"] and "max_removed_fraction to 1.0" in summary["message"]
    assert [w["code"] for w in out["warnings"]] == ["FEW_CLASS_SAMPLES", "FEW_PAIR_CONFUSIONS", "CURATION_LIMITED"]
    assert out["warnings"][2]["message"] == summary["message"]
    assert out["samples_per_class"] == [2, 2] and out["parameters"]["n_prototypes"] == 4
    assert out["parameters"]["tau"] == 0.5 and out["parameters"]["lam"] == 2.0
    assert "min_cluster_size" not in out["parameters"]  # recorded only when given
    # without the cap every sample holding P2 goes
    uncapped = build_explanation(**end_to_end_case(), max_removed_fraction=1.0)
    assert uncapped["curation"]["scopes"]["all"]["removed_indices"] == [0, 1, 2]
    assert uncapped["curation"]["scopes"]["all"]["limited"] is False
    assert "CURATION_LIMITED" not in [w["code"] for w in uncapped["warnings"]]


def test_curation_cap_by_hand():
    # class 0 = samples 0-3, all hold P0 (areas 1, 3, 2, 3); class 1 = samples 4, 5, only 4 holds P0
    pres = np.array([[1], [1], [1], [1], [1], [0]], dtype=bool)
    labels = np.array([0, 0, 0, 0, 1, 1])
    area = np.array([1, 3, 2, 3, 1, 0])
    np.testing.assert_array_equal(curated_indices(pres, labels, 0), [5])  # no cap: all holders go
    # cap 0.5: 2 of class 0 may go, the largest areas (samples 1 and 3); class 1 loses 1 of 2 (= the cap)
    np.testing.assert_array_equal(curated_indices(pres, labels, 0, max_removed_fraction=0.5, area=area), [0, 2, 5])
    # cap 0.25: 1 of class 0 (sample 1: area 3 ties with 3, lower index first); class 1 floor(0.5) = 0
    np.testing.assert_array_equal(curated_indices(pres, labels, 0, max_removed_fraction=0.25, area=area),
                                  [0, 2, 3, 4, 5])
    summary = curation_summary(pres, labels, 0, n_classes=2, max_removed_fraction=0.25, area=area)
    assert summary["removed_fraction_per_class"] == [0.25, 0.0] and summary["limited_classes"] == [0, 1]
    with pytest.raises(InvalidArgument) as err:
        curated_indices(pres, labels, 0, max_removed_fraction=1.5)
    assert err.value.field == "max_removed_fraction"


def fallback_case():
    # K = 3, M = 3, two positions per sample: class 0 holds {P0, P2}, class 1 {P0, P1}, class 2 {P1, P2};
    # no prototype is in all three classes, so none is background. W[t, m, c] over 4 pairs of checkpoints:
    # class 0 all zero; class 1: P0 = -1, P1 = -0.5 throughout, so D(0,1) = +1 / +0.5 at every step:
    # both reliable, P2 (W = 0) inactive: nothing to curate for the most confused pair (0,1).
    # class 2: P0 = -1 (D(1,2)[P0] = 0, inactive), P1 = [-1.3, 0.3, -1.3, 0.3], so
    # D(1,2)[P1] = -0.5 - W2 = [0.8, -0.8, 0.8, -0.8]: P1, in every sample of 1 and 2, flips with nothing
    # opposing -> uncertain.
    W = np.zeros((4, 3, 3))
    W[:, 0, 1], W[:, 1, 1] = -1.0, -0.5
    W[:, 0, 2], W[:, 1, 2] = -1.0, [-1.3, 0.3, -1.3, 0.3]
    maps = {0: [0, 2], 1: [0, 1], 2: [1, 2]}
    labels = np.repeat([0, 1, 2], 12)
    assignments = np.array([[maps[c]] for c in labels])
    conf = np.zeros((5, 36, 3))
    conf[:, :, :] = np.eye(3)[labels] * 0.8 + 0.1  # the final model is right on every explanation sample
    # symmetric counts: (0,1) = 3+2 = 5, (1,2) = 1+2 = 3, (0,2) = 0; accuracy 30/38
    confusion = np.array([[10, 3, 0], [2, 10, 1], [0, 2, 10]])
    return dict(classes=["a", "b", "c"], assignments=assignments, labels=labels, confidences=conf, W=W,
                steps=[0, 10, 20, 30, 40], confusion=confusion, n_prototypes=3)


def test_without_an_uncertain_prototype_the_next_confused_pair_is_analysed():
    case = fallback_case()
    assert confused_pairs(case["confusion"]) == [(0, 1, 5), (1, 2, 3)]
    out = build_explanation(**case)
    # the headline stays the true most confused pair; the analysed pair says why it differs
    assert out["most_confused_pair"] == {"a": 0, "b": 1, "names": ["a", "b"], "count": 5, "a_to_b": 3,
                                         "b_to_a": 2, "source": "confusion", "tie_break": None}
    analysed = out["analysed_pair"]
    assert (analysed["a"], analysed["b"], analysed["count"], analysed["reason"]) == (1, 2, 3, "next-confused")
    assert analysed["skipped"] == [{"a": 0, "b": 1, "count": 5, "why": (
        "no prototype present in both classes alternates between them (2 reliable, 0 one-class, 0 background, "
        "1 inactive)")}]
    assert (out["pair_analysis"]["a"], out["pair_analysis"]["b"]) == (1, 2)
    assert out["uncertain_prototype"] == 1 and out["uncertain_prototype_source"] == "uncertain"
    assert out["background_prototypes"] == []
    codes = [w["code"] for w in out["warnings"]]
    assert codes == ["FEW_PAIR_CONFUSIONS", "MOST_CONFUSED_PAIR_SKIPPED", "CURATION_LIMITED"]
    # asked for a pair explicitly: analysed as given, and the headline is still the most confused pair
    given = build_explanation(**case, pair=(2, 0))
    assert given["analysed_pair"]["reason"] == "given" and given["analysed_pair"]["count"] == 0
    assert (given["analysed_pair"]["a"], given["analysed_pair"]["b"]) == (0, 2)
    assert (given["most_confused_pair"]["a"], given["most_confused_pair"]["b"]) == (0, 1)
    assert given["uncertain_prototype"] is None
    assert "NO_UNCERTAIN_PROTOTYPE" in [w["code"] for w in given["warnings"]]


def test_ranking_of_confused_pairs_and_tie_breaks():
    # (0,1) = 2+2 = 4, (1,2) = 1+3 = 4, (0,2) = 2+1 = 3: (1,2) wins the tie by its larger direction (3 > 2)
    c = np.array([[9, 2, 2], [2, 9, 1], [1, 3, 9]])
    ranking = rank_confused_pairs(c)
    assert [(p["a"], p["b"], p["count"], p["tie_break"]) for p in ranking] == [
        (1, 2, 4, "larger single direction"), (0, 1, 4, None), (0, 2, 3, None)]
    # equal directions: (0,1) = 2+2 and (1,2) = 2+2; without more data the lowest index decides,
    # with the explanation-set confusions (1,2) = 3 > (0,1) = 1 decides
    c = np.array([[9, 2, 0], [2, 9, 2], [0, 2, 9]])
    assert [(p["a"], p["b"], p["tie_break"]) for p in rank_confused_pairs(c)] == [(0, 1, "lowest index"),
                                                                                 (1, 2, None)]
    secondary = np.array([[5, 1, 0], [0, 5, 1], [0, 2, 5]])
    ranked = rank_confused_pairs(c, secondary)
    assert [(p["a"], p["b"], p["secondary"], p["tie_break"]) for p in ranked] == [
        (1, 2, 3, "confusions on the explanation set"), (0, 1, 1, None)]
    assert most_confused_pair(c, secondary) == (1, 2, 4)


def test_one_class_prototype_that_flips_is_not_uncertain():
    pres, labels, W = pair_case()
    # P2 (unsupported flip at step 30) now only in class 0's samples: it cannot confuse 0 with 1
    pres[2:, 2] = False
    out = pair_analysis(0, 1, presence=pres, labels=labels, W=W, steps=[0, 10, 20, 30])
    row = next(r for r in out["prototypes"] if r["prototype"] == 2)
    assert (row["category"], row["presence_a"], row["presence_b"], row["shared_by_pair"]) == (
        "one-class", 1.0, 0.0, False)
    assert row["unsupported_flips"] == 1 and out["one_class"] == [2] and out["uncertain"] == []
    assert out["uncertain_prototype"] == 1 and out["uncertain_prototype_source"] == "compensated"
    # in one of class 1's two samples (50% >= 25%) it is shared, hence uncertain again
    pres[2, 2] = True
    again = pair_analysis(0, 1, presence=pres, labels=labels, W=W, steps=[0, 10, 20, 30])
    assert again["uncertain_prototype"] == 2
    # ... unless each class must hold it in at least 60% of its samples
    strict = pair_analysis(0, 1, presence=pres, labels=labels, W=W, steps=[0, 10, 20, 30], min_shared_fraction=0.6)
    assert strict["one_class"] == [2] and strict["uncertain_prototype"] == 1


def test_background_prototypes_by_hand():
    # 3 classes of 10 samples. P0 in every sample; P1 in 9/10 of classes 0, 1 and 8/10 of class 2;
    # P2 in all of classes 0 and 1 only.
    labels = np.repeat([0, 1, 2], 10)
    pres = np.zeros((30, 3), dtype=bool)
    pres[:, 0] = True
    pres[[i for i in range(30) if i % 10 != 0], 1] = True   # 9 of 10 per class
    pres[21, 1] = False                                      # class 2: 8 of 10
    pres[:20, 2] = True
    np.testing.assert_allclose(class_presence(pres, labels, 3)[:, 1], [0.9, 0.9, 0.8])
    # >= 90% of the samples of >= ceil(0.9 x 3) = 3 classes: only P0
    assert background_prototypes(pres, labels, 3) == [0]
    # >= 80% of the samples: P1 too; 2 of 3 classes (class_fraction 0.6): P2 too
    assert background_prototypes(pres, labels, 3, sample_fraction=0.8) == [0, 1]
    assert background_prototypes(pres, labels, 3, class_fraction=0.6) == [0, 1, 2]


def test_background_prototype_drives_no_statement():
    pres, labels, conf, W = class_case()
    out = class_explanation(0, presence=pres, labels=labels, confidences=conf, W=W, steps=[0, 40, 80],
                            background=[0])
    assert out["statements"] == [] and out["key_checkpoints"] == []  # P0 was the only driver


def test_near_chance_model_gets_no_uncertain_prototype():
    case = fallback_case()
    # predicts class 0 for everything: accuracy 12/36 = chance (the largest class: 12/36)
    case["confusion"] = np.array([[12, 0, 0], [12, 0, 0], [12, 0, 0]])
    out = build_explanation(**case)
    assert out["test_accuracy"] == pytest.approx(1 / 3) and out["chance_accuracy"] == pytest.approx(1 / 3)
    assert out["warnings"][0]["code"] == "NEAR_CHANCE_ACCURACY"
    assert out["uncertain_prototype"] is None and out["curation"] is None
    assert out["pair_analysis"]["withheld"] == "NEAR_CHANCE_ACCURACY"
    assert out["pair_analysis"]["uncertain_prototype"] is None
    assert out["analysed_pair"]["reason"] == "most-confused"  # no hunting through pairs either
    # the rule: accuracy < chance + 0.2 x (1 - chance); 0.48 < 1/3 + 0.2 x 2/3 = 0.4667 is false
    assert near_chance(0.46, 1 / 3, 0.2) and not near_chance(0.47, 1 / 3, 0.2)


def test_few_checkpoints_and_mostly_noise_warnings():
    case = fallback_case()
    # 3 checkpoints (2 pairs); 40 of 72 confidence changes are noise (56% > 50%)
    case.update(confidences=case["confidences"][:3], W=case["W"][:2], steps=[0, 10, 20])
    noise = np.zeros((2, 36), dtype=int)
    noise.flat[:40] = -1
    out = build_explanation(**case, cluster_labels=noise)
    codes = [w["code"] for w in out["warnings"]]
    assert codes[:2] == ["FEW_CHECKPOINTS", "MOSTLY_NOISE"] and "56%" in out["warnings"][1]["message"]
    assert "FEW_CLASS_SAMPLES" not in codes  # 12 samples per class >= 10
    noise.flat[:] = 0
    noise.flat[:36] = -1  # exactly half: not "most"
    assert "MOSTLY_NOISE" not in [w["code"] for w in build_explanation(**case, cluster_labels=noise)["warnings"]]


def _statements(out: dict) -> dict:
    """Everything a person reads from an explanation, without the raw weights."""
    per_class = [{"shared": c["shared"], "specialized": [(g["members"], g["prototypes"]) for g in c["specialized"]],
                  "key": [(k["step"], [(p["prototype"], [o["class"] for o in p["separates_from"]])
                                       for p in k["prototypes"]]) for k in c["key_checkpoints"]],
                  "statements": c["statements"]} for c in out["per_class"]]
    pair = out["pair_analysis"]
    return {"per_class": per_class, "analysed": out["analysed_pair"],
            "categories": [(r["prototype"], r["category"], r["favours"], r["flip_steps"]) for r in pair["prototypes"]],
            "uncertain": out["uncertain_prototype"], "curation": out["curation"], "warnings": out["warnings"]}


def scale_case():
    rng = np.random.default_rng(7)
    n, K, M, T = 60, 3, 6, 7
    labels = np.repeat(np.arange(K), n // K)
    # class c draws its 3x3 map from prototypes {c, c+1, c+2, 5} (mod 5 for the first three)
    assignments = np.stack([rng.choice([c % 5, (c + 1) % 5, (c + 2) % 5, 5], size=(3, 3)) for c in labels])
    pres = presence(assignments, M)
    logits = np.cumsum(rng.normal(0, 0.6, (T, n, K)), axis=0) + 0.4 * np.arange(T)[:, None, None] * np.eye(K)[labels]
    conf = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    saliency = np.abs(rng.normal(1, 0.8, (T, n, 3, 3)))
    cluster_labels = rng.integers(-1, 4, (T - 1, n))
    return labels, assignments, conf, saliency, cluster_labels


def test_statements_do_not_depend_on_the_unit_of_saliency():
    labels, assignments, conf, saliency, cluster_labels = scale_case()
    steps = np.arange(1, 8) * 10
    confusion = np.array([[15, 3, 2], [4, 14, 2], [1, 2, 17]])

    def explain(scale: float, relative: bool = True) -> dict:
        # every saliency map times `scale`, then Eq. 4 and Eq. 5-8 as the explanation stage runs them
        intensity = np.stack([prototype_intensity(saliency[t] * scale, assignments, 6) for t in range(len(steps))])
        dyn = fit_dynamics(conf, intensity, steps, labels=cluster_labels, lam=0.5, relative_lam=relative)
        return _statements(build_explanation(classes=["x", "y", "z"], assignments=assignments, labels=labels,
                                             confidences=conf, W=dyn.W, steps=steps, confusion=confusion,
                                             n_prototypes=6, min_class_samples=5, max_removed_fraction=1.0))

    base = explain(1.0)
    # the case is not empty: there are statements, pair categories and an uncertain prototype to compare
    assert sum(len(c["statements"]) for c in base["per_class"]) > 0
    assert base["uncertain"] is not None and len(base["categories"]) >= 3
    for scale in (10.0, 0.1):
        assert explain(scale) == base
    # the absolute penalty of the old Eq. 8 changes what is said when the unit changes
    assert any(explain(s, relative=False) != explain(1.0, relative=False) for s in (10.0, 0.1))


def test_build_explanation_rejects_empty_class():
    _, _, W = pair_case()
    with pytest.raises(InvalidArgument, match="class 2 has no samples.*2: 0"):
        build_explanation(classes=["a", "b", "c"], assignments=np.zeros((4, 1, 2), int), labels=np.array([0, 0, 1, 1]),
                          confidences=np.full((5, 4, 3), 1 / 3), W=np.zeros((4, 4, 3)), steps=[0, 1, 2, 3, 4],
                          confusion=np.eye(3, dtype=int), n_prototypes=4)
