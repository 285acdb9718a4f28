"""PrototypeExtractor (Eq. 3): PCA + KMeans on tiny feature maps whose clusters are known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from i2x.core.errors import FailedPrecondition, InvalidArgument
from i2x.core.prototypes import PrototypeExtractor


def two_group_features(n=6, size=2, dim=5, seed=0, dtype=np.float32):
    """Each position is near one of two far-apart points (+10 e0 or +10 e1); returns (features, group map)."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 2, size=(n, size, size))
    group[0, 0, 0], group[0, 0, 1] = 0, 1  # both groups occur
    centers = np.zeros((2, dim))
    centers[0, 0], centers[1, 1] = 10.0, 10.0
    features = centers[group] + 0.01 * rng.standard_normal((n, size, size, dim))
    return features.astype(dtype), group


def assert_same_partition(assignments, group):
    # Prototype ids are arbitrary: the map group -> prototype must be one-to-one.
    pairs = set(zip(group.ravel().tolist(), assignments.ravel().tolist()))
    assert len(pairs) == 2 and len({g for g, _ in pairs}) == 2 and len({p for _, p in pairs}) == 2


def test_recovers_known_groups_and_sets_fitted_attributes():
    features, group = two_group_features()
    extractor = PrototypeExtractor(n_prototypes=2, n_components=32).fit(features)
    assert extractor.assignments_.shape == (6, 2, 2) and extractor.assignments_.dtype == np.int16
    assert_same_partition(extractor.assignments_, group)
    # n_components clipped to d = 5 (fewer than 32, fewer than the 24 vectors)
    assert extractor.n_components_ == 5 and extractor.centroids_.shape == (2, 5)
    assert extractor.centroids_.dtype == np.float32 and extractor.n_features_in_ == 5
    np.testing.assert_array_equal(extractor.transform(features), extractor.assignments_)


def test_n_components_clipped_to_sample_size():
    features, _ = two_group_features(dim=8)
    extractor = PrototypeExtractor(n_prototypes=2, n_components=32, max_fit_vectors=4).fit(features)
    assert extractor.n_fit_vectors_ == 4 and extractor.n_components_ == 4  # min(32, d=8, 4 sampled)


def test_float16_memmap_minibatch_and_small_batches(tmp_path):
    features, group = two_group_features(n=8, dtype=np.float16)
    stored = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float16, shape=features.shape)
    stored[:] = features
    stored.flush()
    memmap = np.load(tmp_path / "f.npy", mmap_mode="r")
    # batch_size 3 does not divide 32 vectors; threshold 10 forces MiniBatchKMeans
    extractor = PrototypeExtractor(n_prototypes=2, batch_size=3, minibatch_threshold=10).fit(memmap)
    assert type(extractor.kmeans_).__name__ == "MiniBatchKMeans"
    assert_same_partition(extractor.assignments_, group)
    np.testing.assert_array_equal(extractor.fit_transform(memmap), extractor.assignments_)


def test_seeded_fit_is_reproducible():
    features, _ = two_group_features(n=10, dim=6, seed=3)
    first = PrototypeExtractor(n_prototypes=3, max_fit_vectors=20, random_state=7).fit_transform(features)
    second = PrototypeExtractor(n_prototypes=3, max_fit_vectors=20, random_state=7).fit_transform(features)
    np.testing.assert_array_equal(first, second)


def test_too_many_prototypes_says_how_many_vectors():
    features, _ = two_group_features(n=2)  # 2*2*2 = 8 vectors
    with pytest.raises(InvalidArgument, match="only 8 feature vectors.*n_prototypes <= 8") as err:
        PrototypeExtractor(n_prototypes=9).fit(features)
    assert err.value.field == "n_prototypes"


@pytest.mark.parametrize("bad", [1, 0, -3, 2.5])
def test_fewer_than_two_prototypes(bad):
    with pytest.raises(InvalidArgument) as err:
        PrototypeExtractor(n_prototypes=bad).fit(two_group_features()[0])
    assert err.value.field == "n_prototypes"


def test_wrong_ndim_and_nan():
    features, _ = two_group_features()
    with pytest.raises(InvalidArgument, match=r"\(N, h, w, d\)"):
        PrototypeExtractor(n_prototypes=2).fit(features[0])
    features[1, 1, 0, 2] = np.nan  # flat vector index 1*4 + 1*2 + 0 = 6
    with pytest.raises(InvalidArgument, match="vector 6 .*NaN") as err:
        PrototypeExtractor(n_prototypes=2).fit(features)
    assert err.value.field == "features"


def test_transform_checks_fit_and_channels():
    features, _ = two_group_features()
    with pytest.raises(FailedPrecondition):
        PrototypeExtractor(n_prototypes=2).transform(features)
    extractor = PrototypeExtractor(n_prototypes=2).fit(features)
    with pytest.raises(InvalidArgument, match="4 channels.*fitted on 5"):
        extractor.transform(features[..., :4])


def test_transform_rejects_nan_in_any_batch():
    features, _ = two_group_features()
    extractor = PrototypeExtractor(n_prototypes=2, batch_size=5).fit(features)
    features[5, 1, 1, 0] = np.inf  # flat vector index 5*4 + 1*2 + 1 = 23, in the last batch
    with pytest.raises(InvalidArgument, match="vector 23 "):
        extractor.transform(features)
