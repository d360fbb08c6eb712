"""The in-memory dataset every loader returns."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from bench.schema import ConfigError


@dataclass(frozen=True)
class DataInfo:
    """What the pre-flight checks read about a dataset before it is loaded (metadata only):
    ``num_train`` is what the source holds before ``dataset.num_train`` cuts it (None: not
    known without reading the data); ``tokens_per_example`` is T of language data."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    num_train: int | None
    num_test: int | None
    tokens_per_example: int | None = None
    streamed: bool = False


def data_info(data: Any, streamed: bool = False) -> DataInfo:
    """The DataInfo of a loaded ArrayDataset or StreamDataset (same attribute names)."""
    return DataInfo(data.name, tuple(data.input_shape), int(data.num_classes), int(data.num_train),
                    int(data.num_test), data.tokens_per_example, streamed)


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
        value = self.provenance.get("bytes_per_token")  # absent or null: not stated
        return 1.0 if value is None else float(value)

    def check_ranges(self, where: str) -> None:
        """Labels (classification) or token ids (language data, x and y) in [0, num_classes):
        a cheap scan at load, so bad data stops with one line instead of training to NaN."""
        arrays = (self.y_train, self.y_test) + ((self.x_train, self.x_test)
                                                 if self.tokens_per_example is not None else ())
        arrays = [a for a in arrays if a.size]
        if not arrays:
            return
        lo, hi = min(int(a.min()) for a in arrays), max(int(a.max()) for a in arrays)
        what = "token ids" if self.tokens_per_example is not None else "labels"
        if lo < 0 or hi >= self.num_classes:
            bound = "vocab_size" if self.tokens_per_example is not None else "num_classes"
            raise ConfigError(f"{where}: {what} span [{lo}, {hi}] but the metadata's {bound} is "
                              f"{self.num_classes}; valid {what} are 0..{self.num_classes - 1} "
                              f"(fix the data or its metadata)")

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
