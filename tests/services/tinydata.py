"""A tiny learnable .npz dataset (DatasetSpec(kind="npz")) for tests and smoke runs."""

from __future__ import annotations

import numpy as np


def write_tiny_npz(path, n_train: int = 48, n_test: int = 24, n_classes: int = 3, seed: int = 0) -> str:
    """A learnable toy set: class c is a bright 8x8 square at one of three positions, plus noise."""
    rng = np.random.default_rng(seed)

    def make(n):
        labels = np.arange(n) % n_classes
        images = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(labels):
            r, col = [(2, 2), (10, 16), (18, 6)][c]
            images[i, r:r + 8, col:col + 8] = 220
        return images, labels.astype(np.int64)

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return str(path)


if __name__ == "__main__":
    import sys

    print(write_tiny_npz(sys.argv[1]))
