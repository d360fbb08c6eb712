"""Dataset registry: ``dataset=<name>`` picks a section below; ``load_dataset(cfg.dataset)``
returns an :class:`ArrayDataset` (host arrays; bench.job places them on device).

Each option is one registered section: its keys (defaults, types, ranges) and its ``load()``.
Loader code is imported only when a dataset is loaded. Adding a dataset: a loader module, one
registered section here, and ``conf/dataset/<name>.yaml``.
"""

from __future__ import annotations

from bench.data.base import ArrayDataset
from bench.schema import Registry, frozen, param

DATASETS: Registry["DatasetConfig"] = Registry("dataset", default="mnist1d")


@frozen
class DatasetConfig:
    name: str = param("mnist1d", help="dataset=<name> selects the option")
    num_train: int | None = param(None, ge=1, help="use only the first n training examples")

    def load(self) -> ArrayDataset:
        raise NotImplementedError


@DATASETS.register("mnist1d")
@frozen
class MNIST1DConfig(DatasetConfig):
    """MNIST-1D (Greydanus 2020), generated offline: 4,000 train / 1,000 test, length 40."""

    def load(self) -> ArrayDataset:
        from bench.data.mnist1d import load_mnist1d
        return load_mnist1d()


@DATASETS.register("digits")
@frozen
class DigitsConfig(DatasetConfig):
    """scikit-learn's 8x8 digits (1,797 images, shipped with the package), 80/20 split."""
    seed: int = param(0, help="train/test split seed")

    def load(self) -> ArrayDataset:
        from bench.data.digits import load_digits
        return load_digits(seed=self.seed)


@DATASETS.register("synthetic")
@frozen
class SyntheticConfig(DatasetConfig):
    """Teacher-student classification: labels from a random one-hidden-layer teacher."""
    seed: int = param(0, help="teacher and input seed")
    input_dim: int = param(32, ge=1)
    num_classes: int = param(10, ge=2)
    teacher_width: int = param(64, ge=1)
    synthetic_train: int = param(4096, ge=1, help="training examples")
    synthetic_test: int = param(1024, ge=1, help="test examples")
    label_noise: float = param(0.0, ge=0, le=1, help="fraction of labels replaced at random")

    def load(self) -> ArrayDataset:
        from bench.data.synthetic import load_synthetic
        return load_synthetic(num_train=self.synthetic_train, num_test=self.synthetic_test,
                              input_dim=self.input_dim, num_classes=self.num_classes,
                              teacher_width=self.teacher_width, label_noise=self.label_noise,
                              seed=self.seed)


@DATASETS.register("mnist", "fashion_mnist", "cifar10", "cifar100")
@frozen
class TFDSImageConfig(DatasetConfig):
    """TFDS image classification from prepared ArrayRecord data (no download at run time)."""
    data_dir: str | None = param(None, help="TFDS data_dir holding the prepared data", results=False)

    def load(self) -> ArrayDataset:
        from bench.data.tfds import load_tfds
        return load_tfds(self.name, self.data_dir)


def load_dataset(cfg: DatasetConfig) -> ArrayDataset:
    """The dataset of ``cfg``, cut to the first ``num_train`` training examples when set."""
    data = cfg.load()
    if cfg.num_train is not None:
        data = ArrayDataset(data.name, data.x_train[: cfg.num_train], data.y_train[: cfg.num_train],
                            data.x_test, data.y_test, data.num_classes)
    return data


__all__ = ["ArrayDataset", "DATASETS", "DatasetConfig", "load_dataset"]
