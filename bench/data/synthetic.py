"""Teacher-student classification: labels are the argmax of a fixed random two-layer teacher."""

from __future__ import annotations

import numpy as np

from bench.data.base import ArrayDataset


def load_synthetic(*, num_train: int, num_test: int, input_dim: int, num_classes: int,
                   teacher_width: int, label_noise: float, seed: int) -> ArrayDataset:
    """Gaussian inputs [N, input_dim]; a fraction ``label_noise`` of labels is resampled uniformly."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(input_dim, teacher_width)) / np.sqrt(input_dim)
    w2 = rng.normal(size=(teacher_width, num_classes)) / np.sqrt(teacher_width)
    x = rng.normal(size=(num_train + num_test, input_dim)).astype(np.float32)
    y = np.argmax(np.tanh(x @ w1) @ w2, axis=1)
    flip = rng.random(len(y)) < label_noise
    y[flip] = rng.integers(0, num_classes, size=int(flip.sum()))
    y = y.astype(np.int32)
    return ArrayDataset("synthetic", x[:num_train], y[:num_train], x[num_train:], y[num_train:],
                        num_classes=num_classes)
