"""Confidence and intensity dynamics (Eq. 5-8).

Per consecutive checkpoint pair (t, t+1): confidence changes dp (Eq. 5) clustered with
HDBSCAN (noise = -1), cluster aggregates dP_l and dI_l with the threshold tau (Eq. 6-7),
and a ridge regression without intercept from dI to dP giving W_t (M x K) (Eq. 8).

The ridge penalty is relative by default: lam_t = lam x mean(diag(dI_t^T dI_t)), so multiplying
every saliency map by s multiplies each W_t by 1/s and changes no statement built on W (every
rule in i2x.core.explain compares weights of one run with each other). docs/METHOD.md says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from i2x.core.errors import InvalidArgument


# -- validation helpers -------------------------------------------------------------------------
def _float_array(x, name: str, ndim: int, shape_doc: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != ndim:
        raise InvalidArgument(f"expected shape {shape_doc}, got shape {x.shape}", field=name)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise InvalidArgument(f"expected a numeric array, got dtype {x.dtype}", field=name)
    if not np.isfinite(x).all():
        raise InvalidArgument("holds NaN or inf; every value must be finite", field=name)
    return x


def _check_tau(tau) -> float:
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.integer, np.floating)) \
            or not np.isfinite(tau) or tau < 0:
        raise InvalidArgument(f"must be a finite number >= 0, got {tau!r}", field="tau")
    return float(tau)


def _check_lam(lam) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.integer, np.floating)) \
            or not np.isfinite(lam) or lam <= 0:
        raise InvalidArgument(f"must be a finite number > 0 (the ridge penalty lambda), got {lam!r}", field="lam")
    return float(lam)


def _check_min_cluster_size(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
        raise InvalidArgument(f"must be an integer >= 2, got {value!r}", field="min_cluster_size")
    return int(value)


def _check_min_samples(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidArgument(f"must be None (= min_cluster_size) or an integer >= 1, got {value!r}",
                              field="min_samples")
    return int(value)


def _result_float(x: np.ndarray) -> np.dtype:
    return np.result_type(x.dtype, np.float32)


# -- Eq. 5 and intensity changes ----------------------------------------------------------------
def confidence_changes(confidences) -> np.ndarray:
    """dp[t, n] = p[t+1, n] - p[t, n]: (T, N, K) -> (T-1, N, K)."""
    p = _float_array(confidences, "confidences", 3, "(T, N, K)")
    if p.shape[0] < 2:
        raise InvalidArgument(f"need at least 2 checkpoints (T >= 2), got T={p.shape[0]}", field="confidences")
    return np.diff(p.astype(_result_float(p), copy=False), axis=0)


def intensity_changes(intensities) -> np.ndarray:
    """dI[t, n] = I[t+1, n] - I[t, n]: (T, N, M) -> (T-1, N, M)."""
    i = _float_array(intensities, "intensities", 3, "(T, N, M)")
    if i.shape[0] < 2:
        raise InvalidArgument(f"need at least 2 checkpoints (T >= 2), got T={i.shape[0]}", field="intensities")
    return np.diff(i.astype(_result_float(i), copy=False), axis=0)


# -- Eq. 5: HDBSCAN of confidence changes -------------------------------------------------------
class ConfidenceClusterer:
    """HDBSCAN (the `hdbscan` package) over one step's confidence changes dp (N, K).

    Edge cases HDBSCAN itself handles badly: fewer than min_cluster_size samples -> all noise;
    all rows identical (and at least min_cluster_size of them) -> one cluster 0, since they
    are the densest group possible (HDBSCAN would call them all noise).
    """

    def __init__(self, min_cluster_size: int = 5, min_samples: int | None = None,
                 cluster_selection_epsilon: float = 0.0, *, core_dist_n_jobs: int = 1):
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.cluster_selection_epsilon = cluster_selection_epsilon
        self.core_dist_n_jobs = core_dist_n_jobs

    def fit_predict(self, dp) -> np.ndarray:
        min_cluster_size = _check_min_cluster_size(self.min_cluster_size)
        min_samples = _check_min_samples(self.min_samples)
        eps = self.cluster_selection_epsilon
        if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)) \
                or not np.isfinite(eps) or eps < 0:
            raise InvalidArgument(f"must be a finite number >= 0, got {eps!r}", field="cluster_selection_epsilon")
        dp = _float_array(dp, "dp", 2, "(N, K)").astype(np.float64, copy=False)
        n = dp.shape[0]
        if n < min_cluster_size:
            self.labels_ = np.full(n, -1, dtype=np.int32)
            return self.labels_
        if np.all(dp == dp[0]):
            self.labels_ = np.zeros(n, dtype=np.int32)
            return self.labels_
        import hdbscan  # imported here: it is slow to import and only this class needs it

        model = hdbscan.HDBSCAN(
            min_cluster_size=min_cluster_size,
            # min_samples may not exceed the number of points the core distance is computed over
            min_samples=None if min_samples is None else min(min_samples, n - 1) or 1,
            cluster_selection_epsilon=float(eps),
            core_dist_n_jobs=self.core_dist_n_jobs,
        )
        self.labels_ = np.asarray(model.fit_predict(dp), dtype=np.int32)
        return self.labels_


# -- Eq. 6-7 ------------------------------------------------------------------------------------
def cluster_aggregates(dp, di, labels, tau: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cluster l != -1 (ascending): dP_l = mean dp, dI_l = mean di over its members; then
    dI_l[m] = 0 wherever |dI_l[m]| <= tau. Returns (dP (L, K), dI (L, M), cluster_ids (L,))."""
    tau = _check_tau(tau)
    dp = _float_array(dp, "dp", 2, "(N, K)")
    di = _float_array(di, "di", 2, "(N, M)")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise InvalidArgument(f"expected integer labels of shape (N,), got {labels.dtype} {labels.shape}",
                              field="labels")
    if not (dp.shape[0] == di.shape[0] == labels.shape[0]):
        raise InvalidArgument(
            f"dp {dp.shape}, di {di.shape} and labels {labels.shape} must have the same N (first axis)",
            field="labels",
        )
    if labels.size and labels.min() < -1:
        raise InvalidArgument(f"labels must be >= -1 (noise), got {int(labels.min())}", field="labels")
    cluster_ids = np.unique(labels[labels != -1]).astype(np.int64)
    dP = np.zeros((len(cluster_ids), dp.shape[1]), dtype=np.float64)
    dI = np.zeros((len(cluster_ids), di.shape[1]), dtype=np.float64)
    for row, cluster in enumerate(cluster_ids):
        members = labels == cluster
        dP[row] = dp[members].mean(axis=0, dtype=np.float64)
        dI[row] = di[members].mean(axis=0, dtype=np.float64)
    dI[np.abs(dI) <= tau] = 0.0
    return dP, dI, cluster_ids


# -- Eq. 8 --------------------------------------------------------------------------------------
class RidgeMapping:
    """W = (dI^T dI + lam_eff I)^-1 dI^T dP, no intercept: coef_ (M, K). No clusters -> zeros.

    relative=True (default): lam_eff = lam x mean(diag(dI^T dI)), the mean squared intensity
    change per prototype, so the penalty has the unit of dI^T dI and W scales as 1/s when dI is
    multiplied by s. dI all zero -> W = 0 (no intensity changed; nothing to map). relative=False:
    lam_eff = lam (scikit-learn's Ridge(alpha=lam, fit_intercept=False)). lam_effective_ holds it.
    """

    def __init__(self, lam: float = 1.0, relative: bool = True):
        self.lam = lam
        self.relative = relative

    def fit(self, dI, dP) -> "RidgeMapping":
        lam = _check_lam(self.lam)
        dI = _float_array(dI, "dI", 2, "(L, M)").astype(np.float64, copy=False)
        dP = _float_array(dP, "dP", 2, "(L, K)").astype(np.float64, copy=False)
        if dI.shape[0] != dP.shape[0]:
            raise InvalidArgument(f"dI {dI.shape} and dP {dP.shape} must have the same number of clusters L",
                                  field="dP")
        m = dI.shape[1]
        gram = dI.T @ dI
        scale = float(np.trace(gram)) / m if m else 0.0
        self.lam_effective_ = lam * scale if self.relative else lam
        if dI.shape[0] == 0 or self.lam_effective_ <= 0:
            self.coef_ = np.zeros((m, dP.shape[1]), dtype=np.float64)
            return self
        # lam_effective_ > 0 makes the M x M system positive definite, so solve() is safe.
        self.coef_ = np.linalg.solve(gram + self.lam_effective_ * np.eye(m), dI.T @ dP)
        return self

    def predict(self, dI) -> np.ndarray:
        return np.asarray(dI, dtype=np.float64) @ self.coef_


# -- all steps ----------------------------------------------------------------------------------
@dataclass
class DynamicsResult:
    steps: np.ndarray          # (T-1,) int64, the step t of each checkpoint pair (t, t+1)
    labels: np.ndarray         # (T-1, N) int32, HDBSCAN label of dp_t (noise -1)
    W: np.ndarray              # (T-1, M, K) float32, Eq. 8
    dP: np.ndarray             # (S, K) float64, cluster aggregates of every step, stacked (Eq. 6)
    dI: np.ndarray             # (S, M) float64, same rows, after tau (Eq. 7)
    cluster_step: np.ndarray   # (S,) int64, the step t each aggregate row belongs to
    cluster_label: np.ndarray  # (S,) int32, the HDBSCAN label of that row's cluster
    n_clusters: np.ndarray     # (T-1,) int64, L per step
    lam_effective: np.ndarray | None = None  # (T-1,) float64, the ridge penalty used per step


def fit_dynamics(confidences, intensities, steps, *, min_cluster_size: int = 5, min_samples: int | None = None,
                 tau: float = 0.0, lam: float = 1.0, labels=None,
                 cluster_selection_epsilon: float = 0.0, relative_lam: bool = True) -> DynamicsResult:
    """Eq. 5-8 over every consecutive pair of checkpoints.

    confidences (T, N, K), intensities (T, N, M), steps (T,) strictly increasing checkpoint steps.
    labels: precomputed HDBSCAN labels (T-1, N); when None they are computed here.
    relative_lam: lam is relative to mean(diag(dI_t^T dI_t)) (RidgeMapping), so W does not depend
    on the unit of saliency except for a common factor.
    """
    tau = _check_tau(tau)
    lam = _check_lam(lam)
    _check_min_cluster_size(min_cluster_size)
    _check_min_samples(min_samples)
    dp = confidence_changes(confidences)
    di = intensity_changes(intensities)
    if dp.shape[:2] != di.shape[:2]:
        raise InvalidArgument(
            f"confidences (T, N) = {dp.shape[0] + 1, dp.shape[1]} and intensities (T, N) = "
            f"{di.shape[0] + 1, di.shape[1]} must cover the same checkpoints and samples",
            field="intensities",
        )
    steps = np.asarray(steps)
    n_pairs = dp.shape[0]
    if steps.shape != (n_pairs + 1,) or not np.issubdtype(steps.dtype, np.integer):
        raise InvalidArgument(f"expected {n_pairs + 1} integer checkpoint steps (one per checkpoint), "
                              f"got {steps.dtype} {steps.shape}", field="steps")
    if np.any(np.diff(steps) <= 0):
        raise InvalidArgument(f"checkpoint steps must be strictly increasing, got {steps.tolist()}", field="steps")
    if labels is None:
        clusterer = ConfidenceClusterer(min_cluster_size, min_samples, cluster_selection_epsilon)
        labels = np.stack([clusterer.fit_predict(dp[t]) for t in range(n_pairs)]) if n_pairs else \
            np.zeros((0, dp.shape[1]), dtype=np.int32)
    labels = np.asarray(labels)
    if labels.shape != dp.shape[:2] or not np.issubdtype(labels.dtype, np.integer):
        raise InvalidArgument(f"expected integer labels of shape (T-1, N) = {dp.shape[:2]}, "
                              f"got {labels.dtype} {labels.shape}", field="labels")
    labels = labels.astype(np.int32, copy=False)

    n_prototypes, n_classes = di.shape[2], dp.shape[2]
    W = np.zeros((n_pairs, n_prototypes, n_classes), dtype=np.float32)
    dPs, dIs, cluster_step, cluster_label, n_clusters = [], [], [], [], []
    lam_effective = np.zeros(n_pairs, dtype=np.float64)
    for t in range(n_pairs):
        dP_t, dI_t, ids = cluster_aggregates(dp[t], di[t], labels[t], tau)
        ridge = RidgeMapping(lam, relative=relative_lam).fit(dI_t, dP_t)
        W[t] = ridge.coef_
        lam_effective[t] = ridge.lam_effective_
        dPs.append(dP_t)
        dIs.append(dI_t)
        cluster_step.append(np.full(len(ids), steps[t], dtype=np.int64))
        cluster_label.append(ids.astype(np.int32))
        n_clusters.append(len(ids))
    return DynamicsResult(
        steps=steps[:-1].astype(np.int64),
        labels=labels,
        W=W,
        dP=np.concatenate(dPs) if dPs else np.zeros((0, n_classes)),
        dI=np.concatenate(dIs) if dIs else np.zeros((0, n_prototypes)),
        cluster_step=np.concatenate(cluster_step) if cluster_step else np.zeros(0, dtype=np.int64),
        cluster_label=np.concatenate(cluster_label) if cluster_label else np.zeros(0, dtype=np.int32),
        n_clusters=np.asarray(n_clusters, dtype=np.int64),
        lam_effective=lam_effective,
    )
