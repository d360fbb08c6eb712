"""TFDS image datasets (mnist, fashion_mnist, cifar10, cifar100) for clusters.

Uses ``tfds.data_source`` (random access to prepared ArrayRecord data), which needs no
TensorFlow. Prepare the data once on a machine with internet (``tfds build`` or
``tfds.data_source(name, download=True)``) into a shared ``data_dir``; runs never download.
"""

from __future__ import annotations

import numpy as np

from bench.data.base import ArrayDataset, standardize

TFDS_NAMES = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10",
              "cifar100": "cifar100"}
NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100}


def _to_arrays(source) -> tuple[np.ndarray, np.ndarray]:
    items = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(item["image"]) for item in items])
    labels = np.asarray([int(item["label"]) for item in items], dtype=np.int32)
    return images, labels


def load_tfds(name: str, data_dir: str | None = None) -> ArrayDataset:
    """Whole train and test splits in memory, float32 [N, H, W, C], standardized per channel."""
    import tensorflow_datasets as tfds

    sources = tfds.data_source(TFDS_NAMES[name], split=["train", "test"], data_dir=data_dir,
                               download=False)
    (x_train, y_train), (x_test, y_test) = (_to_arrays(s) for s in sources)
    x_train, x_test = standardize(x_train.astype(np.float32) / 255.0,
                                  x_test.astype(np.float32) / 255.0, axis=(0, 1, 2))
    return ArrayDataset(name, x_train, y_train, x_test, y_test, num_classes=NUM_CLASSES[name])
