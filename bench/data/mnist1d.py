"""MNIST-1D (Greydanus 2020): generated procedurally, no download, the package's default split."""

from __future__ import annotations

from importlib.metadata import version

import numpy as np

from bench.data.base import ArrayDataset, DataInfo, standardize
from bench.data.disk_cache import cached_arrays

# What load_mnist1d returns (the package's default split), known without generating it.
INFO = DataInfo("mnist1d", (40, 1), 10, 4000, 1000)


def load_mnist1d(seed: int | None = None) -> ArrayDataset:
    """4,000 train / 1,000 test sequences of length 40, 10 classes, as shape [N, 40, 1].

    ``seed=None`` keeps the package default (42), the split every MNIST-1D paper reports on.
    """
    def make() -> dict[str, np.ndarray]:
        # imported only to generate: the package imports matplotlib and scipy (seconds)
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        if seed is not None:
            args.seed = seed
        made = make_dataset(args)
        return {k: made[k] for k in ("x", "y", "x_test", "y_test")}

    # the package's default arguments are fixed by its version; the seed is the one we change
    key = {"mnist1d": version("mnist1d"), "seed": 42 if seed is None else seed}
    data = cached_arrays("mnist1d", key, make)  # generating takes seconds; same arrays
    x_train, x_test = standardize(data["x"][..., None], data["x_test"][..., None], axis=(0, 1))
    return ArrayDataset("mnist1d", x_train, data["y"].astype(np.int32), x_test,
                        data["y_test"].astype(np.int32), num_classes=10)
