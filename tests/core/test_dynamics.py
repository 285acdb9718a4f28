"""Eq. 5-8 on tiny inputs worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from i2x.core.dynamics import (
    ConfidenceClusterer,
    RidgeMapping,
    cluster_aggregates,
    confidence_changes,
    fit_dynamics,
    intensity_changes,
)
from i2x.core.errors import InvalidArgument


def test_confidence_and_intensity_changes_by_hand():
    p = np.array([[[0.2, 0.8]], [[0.5, 0.5]], [[0.9, 0.1]]], dtype=np.float32)  # T=3, N=1, K=2
    # 0.5-0.2 = 0.3, 0.5-0.8 = -0.3 ; 0.9-0.5 = 0.4, 0.1-0.5 = -0.4
    np.testing.assert_allclose(confidence_changes(p), [[[0.3, -0.3]], [[0.4, -0.4]]], atol=1e-6)
    i = np.array([[[1.0, 0.0, 2.0]], [[4.0, 1.0, 2.0]]])  # T=2, N=1, M=3
    np.testing.assert_allclose(intensity_changes(i), [[[3.0, 1.0, 0.0]]])
    with pytest.raises(InvalidArgument, match="T >= 2"):
        confidence_changes(p[:1])
    with pytest.raises(InvalidArgument, match=r"\(T, N, M\)"):
        intensity_changes(i[0])


def test_clusterer_finds_two_blobs():
    rng = np.random.default_rng(0)
    dp = np.concatenate([rng.normal(0.3, 0.005, (15, 2)), rng.normal(-0.3, 0.005, (15, 2))])
    labels = ConfidenceClusterer(min_cluster_size=5).fit_predict(dp)
    assert labels.dtype == np.int32
    assert len(set(labels[:15])) == 1 and len(set(labels[15:])) == 1 and labels[0] != labels[15]
    assert labels[0] != -1 and labels[15] != -1


def test_clusterer_edge_cases():
    # fewer samples than min_cluster_size: no cluster can exist -> all noise
    np.testing.assert_array_equal(ConfidenceClusterer(min_cluster_size=10).fit_predict(np.ones((4, 3))), [-1] * 4)
    # identical rows: one cluster (hdbscan alone would call them all noise)
    np.testing.assert_array_equal(ConfidenceClusterer(min_cluster_size=5).fit_predict(np.zeros((12, 3))), [0] * 12)
    with pytest.raises(InvalidArgument, match=">= 2") as err:
        ConfidenceClusterer(min_cluster_size=1).fit_predict(np.zeros((3, 2)))
    assert err.value.field == "min_cluster_size"


def test_cluster_aggregates_by_hand():
    dp = np.array([[0.1, -0.1], [0.3, -0.3], [-0.2, 0.2], [9.0, 9.0], [0.0, 0.0]])
    di = np.array([[1.0, 0.05, -2.0], [3.0, -0.05, -4.0], [0.5, 1.0, 0.0], [100, 100, 100], [-0.5, 0.1, 0.2]])
    labels = np.array([5, 5, 2, -1, 2])  # sample 3 is noise and must not count
    dP, dI, ids = cluster_aggregates(dp, di, labels, tau=0.1)
    np.testing.assert_array_equal(ids, [2, 5])
    # cluster 2 = samples 2, 4: dP = ([-0.2,0.2]+[0,0])/2 = [-0.1, 0.1]
    #   dI = ([0.5,1,0]+[-0.5,0.1,0.2])/2 = [0, 0.55, 0.1] -> |0.1| <= tau -> [0, 0.55, 0]
    # cluster 5 = samples 0, 1: dP = ([0.1,-0.1]+[0.3,-0.3])/2 = [0.2, -0.2]
    #   dI = ([1,0.05,-2]+[3,-0.05,-4])/2 = [2, 0, -3]
    np.testing.assert_allclose(dP, [[-0.1, 0.1], [0.2, -0.2]])
    np.testing.assert_allclose(dI, [[0.0, 0.55, 0.0], [2.0, 0.0, -3.0]])
    assert dP.dtype == np.float64 and dI.dtype == np.float64
    # tau = 0 keeps the 0.1
    np.testing.assert_allclose(cluster_aggregates(dp, di, labels)[1][0], [0.0, 0.55, 0.1])


def test_cluster_aggregates_all_noise_and_errors():
    dP, dI, ids = cluster_aggregates(np.zeros((3, 2)), np.zeros((3, 4)), np.array([-1, -1, -1]))
    assert dP.shape == (0, 2) and dI.shape == (0, 4) and ids.shape == (0,)
    with pytest.raises(InvalidArgument, match=">= 0") as err:
        cluster_aggregates(np.zeros((3, 2)), np.zeros((3, 4)), np.zeros(3, int), tau=-0.5)
    assert err.value.field == "tau"
    with pytest.raises(InvalidArgument, match="same N"):
        cluster_aggregates(np.zeros((3, 2)), np.zeros((2, 4)), np.zeros(3, int))


def test_ridge_2x2_by_hand():
    dI = np.array([[1.0, 1.0], [0.0, 1.0]])
    dP = np.eye(2)
    # dI^T dI = [[1,1],[1,2]]; + lam I (lam=1) = [[2,1],[1,3]], det 5, inverse 1/5 [[3,-1],[-1,2]]
    # dI^T dP = dI^T = [[1,0],[1,1]] ; W = 1/5 [[3-1, -1], [-1+2, 2]] = [[0.4,-0.2],[0.2,0.4]]
    np.testing.assert_allclose(RidgeMapping(lam=1.0, relative=False).fit(dI, dP).coef_, [[0.4, -0.2], [0.2, 0.4]])
    # relative (default): lam_eff = lam x mean(diag) = lam x (1 + 2) / 2, so lam = 2/3 is the same system
    relative = RidgeMapping(lam=2 / 3).fit(dI, dP)
    assert relative.lam_effective_ == pytest.approx(1.0)
    np.testing.assert_allclose(relative.coef_, [[0.4, -0.2], [0.2, 0.4]])


def test_relative_ridge_scales_as_one_over_s():
    rng = np.random.default_rng(3)
    dI, dP = rng.normal(size=(6, 4)), rng.normal(size=(6, 3))
    base = RidgeMapping(0.5).fit(dI, dP).coef_
    for s in (10.0, 0.1):
        np.testing.assert_allclose(RidgeMapping(0.5).fit(s * dI, dP).coef_, base / s, rtol=1e-9)
    # the absolute penalty does not: at s = 10 the penalty is relatively 100x weaker
    absolute = RidgeMapping(0.5, relative=False)
    assert not np.allclose(absolute.fit(10 * dI, dP).coef_, absolute.fit(dI, dP).coef_ / 10, rtol=1e-3)
    # no intensity change at all: W = 0
    np.testing.assert_array_equal(RidgeMapping().fit(np.zeros((3, 2)), np.ones((3, 2))).coef_, np.zeros((2, 2)))


def test_ridge_matches_sklearn():
    rng = np.random.default_rng(1)
    dI, dP = rng.normal(size=(7, 4)), rng.normal(size=(7, 3))
    for lam in (0.01, 1.0, 25.0):
        reference = Ridge(alpha=lam, fit_intercept=False).fit(dI, dP).coef_.T  # sklearn stores (K, M)
        np.testing.assert_allclose(RidgeMapping(lam, relative=False).fit(dI, dP).coef_, reference, rtol=1e-8,
                                   atol=1e-10)


def test_ridge_no_clusters_and_bad_lambda():
    np.testing.assert_array_equal(RidgeMapping().fit(np.zeros((0, 3)), np.zeros((0, 2))).coef_, np.zeros((3, 2)))
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidArgument, match="> 0") as err:
            RidgeMapping(lam=bad).fit(np.ones((2, 2)), np.ones((2, 2)))
        assert err.value.field == "lam"


def hand_case():
    # T=3, N=4, K=2, M=2. Pair (0,1): clusters {0,1} and {2,3}
    p0 = np.zeros((4, 2))
    p1 = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    i0 = np.zeros((4, 2))
    i1 = np.array([[1.0, 1.0], [1.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    confidences = np.stack([p0, p1, p1])  # nothing changes between checkpoints 1 and 2
    intensities = np.stack([i0, i1, i1])
    labels = np.array([[0, 0, 1, 1], [-1, -1, -1, -1]])
    return confidences, intensities, labels


def test_fit_dynamics_with_given_labels_by_hand():
    confidences, intensities, labels = hand_case()
    result = fit_dynamics(confidences, intensities, [0, 40, 80], labels=labels, lam=2 / 3)
    # step 0: dP = [[1,0],[0,1]], dI = [[1,1],[0,1]] -> the 2x2 ridge case above (lam_eff = 2/3 x 1.5 = 1)
    np.testing.assert_allclose(result.W[0], [[0.4, -0.2], [0.2, 0.4]], rtol=1e-6)
    np.testing.assert_array_equal(result.W[1], np.zeros((2, 2)))  # step 40: all noise
    np.testing.assert_allclose(result.lam_effective, [1.0, 0.0])
    assert result.W.dtype == np.float32 and result.W.shape == (2, 2, 2)
    np.testing.assert_array_equal(result.steps, [0, 40])
    np.testing.assert_array_equal(result.n_clusters, [2, 0])
    np.testing.assert_array_equal(result.cluster_step, [0, 0])
    np.testing.assert_array_equal(result.cluster_label, [0, 1])
    np.testing.assert_allclose(result.dI, [[1, 1], [0, 1]])
    # tau = 1 zeroes every |dI| <= 1 -> dI all zero -> W = 0
    assert not fit_dynamics(confidences, intensities, [0, 40, 80], labels=labels, tau=1.0).W.any()


def test_fit_dynamics_clusters_itself():
    rng = np.random.default_rng(2)
    n = 30
    p0 = np.full((n, 2), 0.5)
    p1 = p0 + np.concatenate([rng.normal(0.2, 0.01, (15, 2)), rng.normal(-0.2, 0.01, (15, 2))])
    intensities = rng.normal(size=(2, n, 3))
    result = fit_dynamics(np.stack([p0, p1]), intensities, [10, 20], min_cluster_size=5)
    assert result.labels.shape == (1, n) and result.n_clusters[0] == 2


def test_fit_dynamics_validation():
    confidences, intensities, labels = hand_case()
    with pytest.raises(InvalidArgument, match="strictly increasing"):
        fit_dynamics(confidences, intensities, [0, 40, 40], labels=labels)
    with pytest.raises(InvalidArgument, match="3 integer checkpoint steps"):
        fit_dynamics(confidences, intensities, [0, 40], labels=labels)
    with pytest.raises(InvalidArgument) as err:
        fit_dynamics(confidences, intensities, [0, 40, 80], labels=labels[:1])
    assert err.value.field == "labels"
    with pytest.raises(InvalidArgument) as err:
        fit_dynamics(confidences, intensities, [0, 40, 80], min_cluster_size=1)
    assert err.value.field == "min_cluster_size"
    bad = confidences.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InvalidArgument, match="finite"):
        fit_dynamics(bad, intensities, [0, 40, 80], labels=labels)
