"""Dataset loaders: the embedded MNIST subset, torchvision-format roots, ImageFolder, npz."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch

from i2x.core.errors import InvalidArgument
from i2x.data import DatasetSpec, dataset_stats, explanation_indices, load_dataset, to_tensor


def test_mnist5k_split_is_stratified_and_deterministic():
    splits = load_dataset(DatasetSpec())
    assert splits.train.images.shape == (4000, 28, 28, 1) and splits.train.images.dtype == np.uint8
    assert splits.test.images.shape == (1000, 28, 28, 1) and splits.test.labels.dtype == np.int64
    # 500 images per class, 20% held out -> 100 per class in test, 400 in train.
    assert np.bincount(splits.test.labels).tolist() == [100] * 10
    assert np.bincount(splits.train.labels).tolist() == [400] * 10
    assert splits.classes == [str(i) for i in range(10)]
    again = load_dataset(DatasetSpec())
    assert np.array_equal(again.test.images, splits.test.images)
    other = load_dataset(DatasetSpec(split_seed=1))
    assert not np.array_equal(other.test.images, splits.test.images)


def test_explanation_indices_fraction_sorted_deterministic():
    idx = explanation_indices(4000)
    assert idx.dtype == np.int64 and len(idx) == 400  # 10% of 4000
    assert np.all(np.diff(idx) > 0)  # sorted and unique
    assert np.array_equal(idx, explanation_indices(4000, 0.1, 42))
    assert not np.array_equal(idx, explanation_indices(4000, 0.1, 43))
    with pytest.raises(InvalidArgument, match="fraction"):
        explanation_indices(100, 1.5)


def test_to_tensor_scales_and_normalises_by_hand():
    images = np.array([[[[0, 255]]]], dtype=np.uint8)  # N=1, H=1, W=1, C=2
    x = to_tensor(images, mean=(0.5, 0.0), std=(0.25, 0.5))
    # channel 0: (0/255 - 0.5)/0.25 = -2 ; channel 1: (255/255 - 0)/0.5 = 2
    assert x.shape == (1, 2, 1, 1)
    assert torch.allclose(x.flatten(), torch.tensor([-2.0, 2.0]))


def _write_idx(path, array, magic):
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in array.shape) + array.tobytes())


def test_mnist_root_missing_files_names_them(tmp_path):
    with pytest.raises(InvalidArgument) as err:
        load_dataset(DatasetSpec(kind="mnist", root=str(tmp_path)))
    assert err.value.field == "dataset.root"
    assert "train-images-idx3-ubyte" in str(err.value) and str(tmp_path / "MNIST" / "raw") in str(err.value)
    assert "downloaded" in str(err.value)


def test_mnist_root_reads_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    train_x = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28).astype(np.uint8)
    _write_idx(raw / "train-images-idx3-ubyte", train_x, 2051)
    _write_idx(raw / "train-labels-idx1-ubyte", np.array([5, 0, 4], dtype=np.uint8), 2049)
    _write_idx(raw / "t10k-images-idx3-ubyte", train_x[:2], 2051)
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.array([7, 2], dtype=np.uint8), 2049)
    splits = load_dataset(DatasetSpec(kind="mnist", root=str(tmp_path)))
    assert splits.train.images.shape == (3, 28, 28, 1)
    assert np.array_equal(splits.train.images[..., 0], train_x)
    assert splits.train.labels.tolist() == [5, 0, 4] and splits.test.labels.tolist() == [7, 2]


def _cifar_batch(n, first_label):
    data = (np.arange(n * 3072) % 256).astype(np.uint8).reshape(n, 3072)
    return {"data": data, "labels": [(first_label + i) % 10 for i in range(n)]}


def test_cifar10_root_missing_and_tiny_batches(tmp_path):
    with pytest.raises(InvalidArgument, match="cifar-10-batches-py") as err:
        load_dataset(DatasetSpec(kind="cifar10", root=str(tmp_path)))
    assert "data_batch_1" in str(err.value) and "test_batch" in str(err.value)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(_cifar_batch(2, i)))
    (folder / "test_batch").write_bytes(pickle.dumps(_cifar_batch(3, 0)))
    splits = load_dataset(DatasetSpec(kind="cifar10", root=str(tmp_path)))
    assert splits.train.images.shape == (10, 32, 32, 3) and splits.test.images.shape == (3, 32, 32, 3)
    # CIFAR rows are channel-major: pixel (0,0) of red is byte 0, of green byte 1024, of blue byte 2048.
    assert splits.test.images[0, 0, 0].tolist() == [0, 1024 % 256, 2048 % 256]
    assert splits.train.labels.tolist()[:2] == [1, 2] and splits.classes[3] == "cat"


class _Evil:
    def __reduce__(self):
        import os

        return (os.getcwd, ())


def test_cifar10_batch_that_runs_code_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({"data": _Evil(), "labels": [0]}))
    with pytest.raises(InvalidArgument, match="refusing to load posix.getcwd|refusing to load os.getcwd"):
        load_dataset(DatasetSpec(kind="cifar10", root=str(tmp_path)))


def test_imagefolder_resizes_and_splits(tmp_path):
    from PIL import Image

    for c, name in enumerate(["cats", "dogs"]):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(np.full((10, 12), 40 * c + i, dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    splits = load_dataset(DatasetSpec(kind="imagefolder", root=str(tmp_path), image_size=8, test_fraction=0.34))
    assert splits.classes == ["cats", "dogs"]
    assert splits.train.images.shape == (4, 8, 8, 1) and splits.test.images.shape == (2, 8, 8, 1)
    assert sorted(splits.test.labels.tolist()) == [0, 1]  # stratified: one of each class


def test_imagefolder_mixed_sizes_need_image_size(tmp_path):
    from PIL import Image

    (tmp_path / "a").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a" / "0.png")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "a" / "1.png")
    with pytest.raises(InvalidArgument, match="image_size"):
        load_dataset(DatasetSpec(kind="imagefolder", root=str(tmp_path)))


def test_npz_accepts_hw_images_and_computes_stats(tmp_path):
    path = tmp_path / "d.npz"
    x = np.concatenate([np.full((2, 3, 3), 51, np.uint8), np.full((2, 3, 3), 153, np.uint8)])
    np.savez(path, x_train=x, y_train=np.array([0, 0, 1, 1]), x_test=x[:2], y_test=np.array([0, 1]))
    spec = DatasetSpec(kind="npz", root=str(path))
    splits = load_dataset(spec)
    assert splits.train.images.shape == (4, 3, 3, 1) and splits.classes == ["0", "1"]
    mean, std = dataset_stats(spec)
    # half the pixels are 51/255 = 0.2, half 153/255 = 0.6: mean 0.4, std 0.2
    assert mean == pytest.approx((0.4,)) and std == pytest.approx((0.2,))


def test_npz_missing_arrays_named(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(InvalidArgument, match="y_train"):
        load_dataset(DatasetSpec(kind="npz", root=str(path)))


def test_bad_spec_fields():
    with pytest.raises(InvalidArgument, match="mnist5k"):
        load_dataset(DatasetSpec(kind="imagenet"))
    with pytest.raises(InvalidArgument, match="root"):
        load_dataset(DatasetSpec(kind="mnist"))
    assert DatasetSpec.from_dict(DatasetSpec(kind="npz", root="x").to_dict()) == DatasetSpec(kind="npz", root="x")
