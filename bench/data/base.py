"""The in-memory dataset every loader returns."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ArrayDataset:
    """Train/test arrays on the host. Classification: inputs float32 [N, ...], labels int32 [N].
    Language modelling: tokens int32 [N, T], next tokens int32 [N, T] (``num_classes`` is the
    vocabulary). ``provenance``: where the data came from (corpus checksums, versions, and for
    synthetic languages the exact entropy rate), stored in every record."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError(f"{self.name}: inputs and labels differ in length")

    @property
    def num_train(self) -> int:
        return len(self.x_train)

    @property
    def num_test(self) -> int:
        return len(self.x_test)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def tokens_per_example(self) -> int | None:
        """T for a language-modelling dataset (labels [N, T]); None for classification."""
        return int(self.y_train.shape[1]) if self.y_train.ndim == 2 else None

    @property
    def bytes_per_token(self) -> float:
        """For bits per byte: 1 for byte-level corpora, else the token files' metadata."""
        return float(self.provenance.get("bytes_per_token", 1.0))

    def subset(self, num_train: int) -> "ArrayDataset":
        """The first ``num_train`` training examples (the test set unchanged)."""
        return replace(self, x_train=self.x_train[:num_train], y_train=self.y_train[:num_train])

    def checksum(self) -> str:
        """SHA-256 of the four arrays as used (dtype, shape and bytes): where the data came from."""
        digest = hashlib.sha256()
        for a in (self.x_train, self.y_train, self.x_test, self.y_test):
            a = np.ascontiguousarray(a)
            digest.update(f"{a.dtype.str}{a.shape}".encode())
            digest.update(a.tobytes())
        return digest.hexdigest()


def standardize(x_train: np.ndarray, x_test: np.ndarray, axis: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Standardize with statistics of the training set only (no test leakage)."""
    mean = x_train.mean(axis=axis, keepdims=True)
    std = x_train.std(axis=axis, keepdims=True) + 1e-8
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)
