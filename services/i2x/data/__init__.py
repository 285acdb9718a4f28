"""Datasets: the embedded MNIST subset, local torchvision-format MNIST / CIFAR-10, ImageFolder, .npz.

Every loader returns uint8 images (N, H, W, C) and int64 labels, split into train and test.
Nothing is ever downloaded.
"""

from i2x.data.datasets import (
    DATASET_KINDS,
    ArrayDataset,
    DatasetSpec,
    Splits,
    dataset_stats,
    explanation_indices,
    load_dataset,
    to_tensor,
)

__all__ = [
    "DATASET_KINDS",
    "ArrayDataset",
    "DatasetSpec",
    "Splits",
    "dataset_stats",
    "explanation_indices",
    "load_dataset",
    "to_tensor",
]
