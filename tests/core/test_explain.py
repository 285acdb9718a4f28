"""Structured explanations (docs/METHOD.md) on small hand-built cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from i2x.core.errors import InvalidArgument
from i2x.core.explain import (
    build_explanation,
    confused_pairs,
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
        {"members": [0], "size": 1, "prototypes": [1, 2], "fractions": [1.0, 1.0]}]


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
    assert out["specialized"] == [{"members": [0, 1], "size": 2, "prototypes": [], "fractions": []}]
    np.testing.assert_allclose(out["confidence_change"], [0.2, 0.0025])
    assert len(out["key_checkpoints"]) == 1  # pair 1's change 0.0025 is below 0.01
    key = out["key_checkpoints"][0]
    assert (key["index"], key["step"], key["next_step"]) == (0, 0, 40)
    assert key["confidence_change"] == pytest.approx(0.2)
    # class 2's -0.1 is below 0.5 * 0.8 = 0.4: not separated
    assert key["prototypes"] == [{"prototype": 0, "weight": 0.8, "separates_from": [{"class": 1, "weight": -0.6}]}]
    assert out["statements"] == ["step 0: P-0 separates zero from one"]
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
                                 "unsupported_steps": [30]}]
    # P1 flips at steps 10 and 20, |D| 0.5 each -> alternation 1.0; its 0.02 at step 30 is below 0.1 * 1.0
    assert out["compensated"][0]["prototype"] == 1 and out["compensated"][0]["score"] == pytest.approx(1.0)
    assert out["prototypes"][1]["flip_steps"] == [10, 20] and out["prototypes"][1]["significant_steps"] == 3
    assert out["inactive"] == [3]
    assert out["uncertain_prototype"] == 2 and out["uncertain_prototype_source"] == "uncertain"
    assert out["prototypes"][2]["contribution"] == [0.0, 0.0, -0.6, 0.4]


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
    # symmetric sums: (0,1) = 1+3 = 4, (0,2) = 0, (1,2) = 2+2 = 4 -> tie, the first (0,1) wins
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


def test_build_explanation_end_to_end():
    _, _, W = pair_case()
    W = W[:, :4]  # M = 4
    # one row of 4 positions per sample; samples 0-2 hold P0..P3, sample 3 lacks P2
    assignments = np.array([[[0, 1, 2, 3]], [[0, 1, 2, 3]], [[0, 1, 2, 3]], [[0, 0, 1, 3]]])
    labels = np.array([0, 0, 1, 1])
    conf = np.linspace(0.5, 0.9, 5)[:, None, None] * np.array([1.0, 0.0]) + np.array([0.0, 0.1])
    conf = np.broadcast_to(conf, (5, 4, 2)).copy()
    out = build_explanation(classes=["two", "seven"], assignments=assignments, labels=labels, confidences=conf,
                            W=W, steps=[0, 10, 20, 30, 40], confusion=np.array([[10, 3], [2, 10]]), n_prototypes=4,
                            tau=0.5, lam=2.0)
    assert json.loads(json.dumps(out)) == out
    assert out["most_confused_pair"] == {"a": 0, "b": 1, "names": ["two", "seven"], "count": 5, "a_to_b": 3,
                                         "b_to_a": 2, "source": "confusion", "skipped": []}
    assert out["uncertain_prototype"] == 2 and out["checkpoint_steps"] == [0, 10, 20, 30, 40]
    assert [c["shared"] for c in out["per_class"]] == [[0, 1, 2, 3], [0, 1, 3]]
    # P2 is in samples 0, 1 (class 0) and 2 (class 1): all three go, under either scope (both classes are the pair)
    assert out["curation"]["scopes"]["all"] == {"size_before": 4, "size_after": 1, "removed": 3,
                                                "removed_per_class": [2, 1], "removed_indices": [0, 1, 2]}
    assert out["samples_per_class"] == [2, 2] and out["parameters"]["n_prototypes"] == 4
    assert out["parameters"]["tau"] == 0.5 and out["parameters"]["lam"] == 2.0
    assert "min_cluster_size" not in out["parameters"]  # recorded only when given


def test_build_explanation_rejects_empty_class():
    _, _, W = pair_case()
    with pytest.raises(InvalidArgument, match="class 2 has no samples.*2: 0"):
        build_explanation(classes=["a", "b", "c"], assignments=np.zeros((4, 1, 2), int), labels=np.array([0, 0, 1, 1]),
                          confidences=np.full((5, 4, 3), 1 / 3), W=np.zeros((4, 4, 3)), steps=[0, 1, 2, 3, 4],
                          confusion=np.eye(3, dtype=int), n_prototypes=4)


def test_without_an_uncertain_prototype_the_next_confused_pair_is_taken():
    # K = 3, M = 2, both prototypes in every sample. W[t, m, c] over 4 pairs of checkpoints:
    # class 0 all zero; class 1: P0 = -1, P1 = -0.5 throughout, so D(0,1) = W0 - W1 = +1 / +0.5
    # at every step: both reliable for class 0, nothing to curate for the most confused pair (0,1).
    # class 2: P0 = -1 (D(1,2)[P0] = 0, inactive), P1 = [-1.3, 0.3, -1.3, 0.3], so
    # D(1,2)[P1] = -0.5 - W2 = [0.8, -0.8, 0.8, -0.8]: it flips with nothing opposing -> uncertain.
    W = np.zeros((4, 2, 3))
    W[:, 0, 1], W[:, 1, 1] = -1.0, -0.5
    W[:, 0, 2], W[:, 1, 2] = -1.0, [-1.3, 0.3, -1.3, 0.3]
    assignments = np.tile(np.array([[[0, 1]]]), (6, 1, 1))
    labels = np.array([0, 0, 1, 1, 2, 2])
    conf = np.full((5, 6, 3), 1 / 3)
    # symmetric counts: (0,1) = 3+2 = 5, (1,2) = 1+2 = 3, (0,2) = 0
    confusion = np.array([[10, 3, 0], [2, 10, 1], [0, 2, 10]])
    assert confused_pairs(confusion) == [(0, 1, 5), (1, 2, 3)]
    out = build_explanation(classes=["a", "b", "c"], assignments=assignments, labels=labels, confidences=conf,
                            W=W, steps=[0, 10, 20, 30, 40], confusion=confusion, n_prototypes=2)
    pair = out["most_confused_pair"]
    assert (pair["a"], pair["b"], pair["count"], pair["source"]) == (1, 2, 3, "confusion-fallback")
    assert pair["skipped"] == [{"a": 0, "b": 1, "count": 5}]
    assert out["uncertain_prototype"] == 1 and out["uncertain_prototype_source"] == "uncertain"
    # asked for a pair explicitly: no fallback
    given = build_explanation(classes=["a", "b", "c"], assignments=assignments, labels=labels, confidences=conf,
                              W=W, steps=[0, 10, 20, 30, 40], confusion=confusion, n_prototypes=2, pair=(0, 1))
    assert given["uncertain_prototype"] is None and given["most_confused_pair"]["source"] == "given"
