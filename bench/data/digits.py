"""scikit-learn's bundled 8x8 digits (offline): a fixed stratified 80/20 split."""

from __future__ import annotations

import numpy as np

from bench.data.base import ArrayDataset, DataInfo

# What load_digits returns (1,797 images, 80/20 split), known without importing scikit-learn.
INFO = DataInfo("digits", (8, 8, 1), 10, 1437, 360)


def load_digits(seed: int = 0) -> ArrayDataset:
    """1,437 train / 360 test images [N, 8, 8, 1] scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    x = (bunch.images[..., None] / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=seed, stratify=y)
    return ArrayDataset("digits", x_train, y_train, x_test, y_test, num_classes=10)
