"""Datasets by name: ``load_dataset(cfg.dataset)`` returns an :class:`ArrayDataset`."""

from __future__ import annotations

from bench.config import TFDS_DATASETS, DatasetConfig
from bench.data.base import ArrayDataset


def load_dataset(cfg: DatasetConfig) -> ArrayDataset:
    if cfg.name == "mnist1d":
        from bench.data.mnist1d import load_mnist1d
        data = load_mnist1d()
    elif cfg.name == "digits":
        from bench.data.digits import load_digits
        data = load_digits(seed=cfg.seed)
    elif cfg.name == "synthetic":
        from bench.data.synthetic import load_synthetic
        data = load_synthetic(num_train=cfg.synthetic_train, num_test=cfg.synthetic_test,
                              input_dim=cfg.input_dim, num_classes=cfg.num_classes,
                              teacher_width=cfg.teacher_width, label_noise=cfg.label_noise,
                              seed=cfg.seed)
    elif cfg.name in TFDS_DATASETS:
        from bench.data.tfds import load_tfds
        data = load_tfds(cfg.name, cfg.data_dir)
    else:  # validate() names the allowed values before we get here
        raise ValueError(f"unknown dataset {cfg.name!r}")
    if cfg.num_train is not None:
        data = ArrayDataset(data.name, data.x_train[: cfg.num_train], data.y_train[: cfg.num_train],
                            data.x_test, data.y_test, data.num_classes)
    return data


__all__ = ["ArrayDataset", "load_dataset"]
