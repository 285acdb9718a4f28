"""Abstract prototypes (Eq. 3): PCA then KMeans over every spatial feature vector.

Memory-bounded for the paper's full setting (6,000 samples x 7x7 positions x 2048 dims =
294,000 vectors, 1.2 GB as float16, 2.4 GB as float32): PCA is fitted on a seeded random
sample of at most `max_fit_vectors` vectors, every vector is then projected in batches of
`batch_size` (only the reduced (N*h*w, C) float32 array is held), and KMeans runs on the
reduced vectors. The input may be a float16 np.memmap; it is never cast to float32 whole.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA

from i2x.core.errors import FailedPrecondition, InvalidArgument

# int16 assignment maps hold prototype ids up to this value.
MAX_PROTOTYPES = np.iinfo(np.int16).max


def _check_features(features) -> np.ndarray:
    if not hasattr(features, "ndim") or not hasattr(features, "dtype"):
        features = np.asarray(features)
    if features.ndim != 4:
        raise InvalidArgument(
            f"expected feature maps of shape (N, h, w, d), channels-last, got shape {tuple(features.shape)}; "
            "transpose (N, d, h, w) maps with .transpose(0, 2, 3, 1)",
            field="features",
        )
    if not np.issubdtype(features.dtype, np.floating):
        raise InvalidArgument(f"expected a float array, got dtype {features.dtype}", field="features")
    if min(features.shape) == 0:
        raise InvalidArgument(f"feature maps are empty: shape {tuple(features.shape)}", field="features")
    return features


def _check_finite(batch: np.ndarray, flat_index) -> None:
    """flat_index: the flat (N*h*w) index of the batch's first row, or of every row."""
    if not np.isfinite(batch).all():
        row = int(np.flatnonzero(~np.isfinite(batch).all(axis=1))[0])
        bad = int(flat_index[row]) if np.ndim(flat_index) else int(flat_index) + row
        raise InvalidArgument(
            f"feature vector {bad} (flat index over N*h*w) holds NaN or inf; check the model's features "
            "(a diverged checkpoint?) before extracting prototypes",
            field="features",
        )


class PrototypeExtractor:
    """PCA + KMeans prototypes over channels-last feature maps, scikit-learn style.

    Fitted attributes: ``pca_`` (sklearn PCA), ``kmeans_`` (KMeans or MiniBatchKMeans),
    ``centroids_`` float32 (M, C), ``assignments_`` int16 (N, h, w), ``n_features_in_`` (d),
    ``n_components_`` (C after clipping), ``n_fit_vectors_`` (the PCA sample size).

    Extra keywords: ``n_init`` (KMeans restarts), ``minibatch_threshold`` (MiniBatchKMeans above
    this many vectors), ``svd_solver`` ("auto": covariance_eigh when the sample has at least d
    vectors, which needs no centred copy of the sample; else scikit-learn's choice).
    """

    def __init__(
        self,
        n_prototypes: int = 32,
        n_components: int = 32,
        max_fit_vectors: int = 100_000,
        batch_size: int = 8192,
        random_state: int = 0,
        *,
        n_init: int = 3,
        minibatch_threshold: int = 100_000,
        svd_solver: str = "auto",
    ):
        self.n_prototypes = n_prototypes
        self.n_components = n_components
        self.max_fit_vectors = max_fit_vectors
        self.batch_size = batch_size
        self.random_state = random_state
        self.n_init = n_init
        self.minibatch_threshold = minibatch_threshold
        self.svd_solver = svd_solver

    # -- validation -------------------------------------------------------------------------
    def _check_params(self) -> None:
        checks = (
            ("n_prototypes", self.n_prototypes, 2, "at least 2 (one prototype explains nothing)"),
            ("n_components", self.n_components, 1, "at least 1"),
            ("max_fit_vectors", self.max_fit_vectors, 2, "at least 2"),
            ("batch_size", self.batch_size, 1, "at least 1"),
            ("n_init", self.n_init, 1, "at least 1"),
            ("minibatch_threshold", self.minibatch_threshold, 1, "at least 1"),
        )
        for name, value, low, valid in checks:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise InvalidArgument(f"must be an integer, {valid}; got {value!r}", field=name)
        if self.n_prototypes > MAX_PROTOTYPES:
            raise InvalidArgument(
                f"must be <= {MAX_PROTOTYPES} (assignment maps are int16); got {self.n_prototypes}",
                field="n_prototypes",
            )

    def _check_fitted(self) -> None:
        if not hasattr(self, "kmeans_"):
            raise FailedPrecondition("PrototypeExtractor is not fitted yet; call fit(features) first")

    # -- fitting ----------------------------------------------------------------------------
    def fit(self, features) -> "PrototypeExtractor":
        self._check_params()
        features = _check_features(features)
        n, h, w, d = features.shape
        n_vectors = n * h * w
        if self.n_prototypes > n_vectors:
            raise InvalidArgument(
                f"the features hold only {n_vectors} feature vectors (N*h*w = {n}*{h}*{w}); "
                f"pick n_prototypes <= {n_vectors} (got {self.n_prototypes})",
                field="n_prototypes",
            )
        flat = features.reshape(n_vectors, d)  # a view for contiguous arrays and memmaps

        # PCA on a seeded sample; sorted indices read a memmap front to back.
        rng = np.random.default_rng(self.random_state)
        n_sample = min(self.max_fit_vectors, n_vectors)
        sample_idx = np.sort(rng.choice(n_vectors, size=n_sample, replace=False))
        sample = np.empty((n_sample, d), dtype=np.float32)
        for start in range(0, n_sample, self.batch_size):  # gather in batches: no float16 copy of the sample
            rows = sample_idx[start:start + self.batch_size]
            sample[start:start + len(rows)] = flat[rows]
            _check_finite(sample[start:start + len(rows)], rows)
        self.n_components_ = int(min(self.n_components, d, n_sample))
        # With more vectors than dims, the d x d covariance route needs no centred copy of the
        # sample (0.8 GB less at 100k x 2048) and is faster than the randomized SVD.
        solver = self.svd_solver
        if solver == "auto":
            solver = "covariance_eigh" if n_sample >= d else "auto"
        self.pca_ = PCA(n_components=self.n_components_, svd_solver=solver, random_state=self.random_state)
        self.pca_.fit(sample)
        del sample
        self.n_features_in_ = d
        self.n_fit_vectors_ = n_sample

        reduced = self._reduce(flat)
        if n_vectors > self.minibatch_threshold:
            self.kmeans_ = MiniBatchKMeans(
                n_clusters=self.n_prototypes, n_init=self.n_init, random_state=self.random_state,
                batch_size=max(4096, self.n_prototypes * 16),
            )
        else:
            self.kmeans_ = KMeans(n_clusters=self.n_prototypes, n_init=self.n_init, random_state=self.random_state)
        self.kmeans_.fit(reduced)
        self.centroids_ = np.asarray(self.kmeans_.cluster_centers_, dtype=np.float32)
        self.assignments_ = self._predict(reduced).reshape(n, h, w)
        return self

    def _reduce(self, flat) -> np.ndarray:
        """Project every vector to C components in batches; only (N*h*w, C) float32 is kept."""
        n_vectors = flat.shape[0]
        reduced = np.empty((n_vectors, self.n_components_), dtype=np.float32)
        for start in range(0, n_vectors, self.batch_size):
            batch = np.asarray(flat[start:start + self.batch_size], dtype=np.float32)
            _check_finite(batch, start)
            reduced[start:start + len(batch)] = self.pca_.transform(batch)
        return reduced

    def _predict(self, reduced: np.ndarray) -> np.ndarray:
        labels = np.empty(reduced.shape[0], dtype=np.int16)
        for start in range(0, reduced.shape[0], self.batch_size):
            labels[start:start + self.batch_size] = self.kmeans_.predict(reduced[start:start + self.batch_size])
        return labels

    # -- use --------------------------------------------------------------------------------
    def transform(self, features) -> np.ndarray:
        """Assignment maps (N, h, w) int16 of new feature maps to the fitted prototypes."""
        self._check_fitted()
        features = _check_features(features)
        n, h, w, d = features.shape
        if d != self.n_features_in_:
            raise InvalidArgument(
                f"features have {d} channels but the prototypes were fitted on {self.n_features_in_}; "
                "use feature maps from the same layer",
                field="features",
            )
        return self._predict(self._reduce(features.reshape(n * h * w, d))).reshape(n, h, w)

    def fit_transform(self, features) -> np.ndarray:
        return self.fit(features).assignments_
