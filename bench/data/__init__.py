"""Dataset registry: ``dataset=<name>`` picks a section below; ``load_dataset(cfg.dataset)``
returns an :class:`ArrayDataset` (host arrays; bench.job places them on device).

Each option is one registered section: its keys (defaults, types, ranges) and its ``load()``.
Loader code is imported only when a dataset is loaded. Adding a dataset: a loader module, one
registered section here, and ``conf/dataset/<name>.yaml``.
"""

from __future__ import annotations

from dataclasses import replace

from bench.data.base import ArrayDataset
from bench.schema import ConfigError, Registry, frozen, param

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


# ----------------------------------------------------------------------------- language


@frozen
class TextConfig(DatasetConfig):
    """Language modelling: sequences of ``context`` tokens packed from a corpus (x: tokens,
    y: the next tokens); ``num_train`` counts sequences."""
    context: int = param(128, ge=1, help="tokens per sequence (T)")
    test_fraction: float = param(0.1, gt=0, lt=1, help="held-out tail of each source")


@DATASETS.register("pydoc")
@frozen
class PydocConfig(TextConfig):
    """English text shipped with every Python (pydoc_data.topics, ~466k bytes), byte-level;
    the record stores the Python version and the corpus SHA-256 (it changes between versions)."""
    include_stdlib: bool = param(False, help="add the standard library's non-test sources (~12 MB)")

    def load(self) -> ArrayDataset:
        from bench.data.text import load_pydoc
        data, provenance = load_pydoc(self.context, self.test_fraction, self.include_stdlib)
        return replace(data, provenance=provenance)


@DATASETS.register("markov")
@frozen
class MarkovConfig(TextConfig):
    """A random Markov chain over bytes with an exactly known entropy rate (the loss floor)."""
    seed: int = param(0, help="chain and sample seed")
    markov_train: int = param(8192, ge=1, help="training sequences")
    markov_test: int = param(1024, ge=1, help="test sequences")
    alphabet_size: int = param(16, ge=2, le=256)
    order: int = param(2, ge=1)
    concentration: float = param(0.5, gt=0, help="Dirichlet concentration of the transitions")

    def load(self) -> ArrayDataset:
        from bench.data.markov import load_markov
        data, provenance = load_markov(self.context, self.markov_train, self.markov_test, self.seed,
                                       self.alphabet_size, self.order, self.concentration)
        return replace(data, provenance=provenance)


@DATASETS.register("lm1b")
@frozen
class LM1BConfig(TextConfig):
    """TFDS lm1b (Shallue et al.'s LM1B), byte-level, from prepared ArrayRecord data."""
    data_dir: str | None = param(None, help="TFDS data_dir holding the prepared data", results=False)
    max_train_sentences: int | None = param(None, ge=1)
    max_test_sentences: int | None = param(None, ge=1)

    def load(self) -> ArrayDataset:
        from bench.data.lm1b import load_lm1b
        data, provenance = load_lm1b(self.context, self.data_dir, self.max_train_sentences,
                                     self.max_test_sentences)
        return replace(data, provenance=provenance)


@DATASETS.register("tokens")
@frozen
class TokenFileConfig(TextConfig):
    """Pre-tokenized uint16/uint32 token files (.bin/.npy + metadata JSON), memory-mapped."""
    path: str = param("", help="token file (required)", results=False)
    test_path: str | None = param(None, help="held-out token file (default: the tail)", results=False)
    max_train_tokens: int | None = param(None, ge=1)
    max_test_tokens: int | None = param(None, ge=1)
    verify_sha256: bool = param(False, results=False)

    def check(self, where: str) -> None:
        if not self.path:
            raise ConfigError(f"{where}path is required for dataset=tokens (a .bin or .npy token file)")

    def load(self) -> ArrayDataset:
        from bench.data.token_files import load_token_file
        data, provenance = load_token_file(self.path, self.context, self.test_fraction,
                                           self.test_path, self.max_train_tokens,
                                           self.max_test_tokens, self.verify_sha256)
        return replace(data, provenance=provenance)


def load_dataset(cfg: DatasetConfig) -> ArrayDataset:
    """The dataset of ``cfg``, cut to the first ``num_train`` training examples when set."""
    data = cfg.load()
    return data.subset(cfg.num_train) if cfg.num_train is not None else data


__all__ = ["ArrayDataset", "DATASETS", "DatasetConfig", "load_dataset"]
