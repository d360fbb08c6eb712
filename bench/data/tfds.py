"""TFDS image datasets (mnist, fashion_mnist, cifar10, cifar100) for clusters.

Uses ``tfds.data_source`` (random access to prepared ArrayRecord data), which needs no
TensorFlow. Prepare the data once on a machine with internet (``tfds build`` or
``tfds.data_source(name, download=True)``) into a shared ``data_dir``; runs never download.
"""

from __future__ import annotations

import numpy as np

import os
from pathlib import Path

from bench.data.base import ArrayDataset, DataInfo, standardize
from bench.schema import ConfigError

TFDS_NAMES = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10",
              "cifar100": "cifar100"}
NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100}
# Image shape and (train, test) sizes of the TFDS releases these options read.
SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3),
          "cifar100": (32, 32, 3)}
SPLIT_SIZES = {"mnist": (60000, 10000), "fashion_mnist": (60000, 10000),
               "cifar10": (50000, 10000), "cifar100": (50000, 10000)}


def tfds_data_dir(data_dir: str | None) -> Path:
    """Where TFDS looks for prepared data: ``data_dir``, else $TFDS_DATA_DIR, else
    ~/tensorflow_datasets (TFDS's own rule)."""
    return Path(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def require_prepared(name: str, data_dir: str | None) -> None:
    """ConfigError (one line) unless TFDS ``name`` is prepared under its data_dir (a
    ``dataset_info.json`` below ``<data_dir>/<name>/``), checked without importing TFDS."""
    root = tfds_data_dir(data_dir) / name
    if not (root.is_dir() and next(root.glob("**/dataset_info.json"), None) is not None):
        raise ConfigError(f"dataset={name}: TFDS {name} is not prepared under {root.parent} "
                          f"(dataset.data_dir, $TFDS_DATA_DIR or ~/tensorflow_datasets); prepare it "
                          f"once with internet access: tfds build {name} --data_dir=<dir>")


def describe_tfds(name: str, data_dir: str | None) -> DataInfo:
    require_prepared(TFDS_NAMES[name], data_dir)
    return DataInfo(name, SHAPES[name], NUM_CLASSES[name], *SPLIT_SIZES[name])


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
