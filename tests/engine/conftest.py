"""A tiny real dataset for engine tests: 30 MNIST images per class cut from the embedded subset."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_mnist_npz(tmp_path_factory) -> str:
    from i2x.data import DatasetSpec, load_dataset

    splits = load_dataset(DatasetSpec(kind="mnist5k"))
    rng = np.random.default_rng(0)

    def take(data, per_class):
        idx = np.concatenate([rng.choice(np.flatnonzero(data.labels == c), per_class, replace=False)
                              for c in range(10)])
        idx.sort()
        return data.images[idx][..., 0], data.labels[idx]

    x_train, y_train = take(splits.train, 30)
    x_test, y_test = take(splits.test, 10)
    path = tmp_path_factory.mktemp("data") / "tiny-mnist.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return str(path)

