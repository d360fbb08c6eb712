"""Dataset registry: ``dataset=<name>`` picks a section below; ``load_dataset(cfg.dataset)``
returns an :class:`ArrayDataset` (host arrays; bench.core.job places them on device).

Each option is one registered section: its keys (defaults, types, ranges) and its ``load()``.
Loader code is imported only when a dataset is loaded. Adding a dataset: a loader module, one
registered section here, and ``conf/dataset/<name>.yaml``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from dataclasses import replace
from typing import Iterator

from bench.data.base import ArrayDataset, DataInfo, data_info
from bench.schema import ConfigError, Registry, frozen, param

DATASETS: Registry["DatasetConfig"] = Registry("dataset", default="mnist1d")


@frozen
class DatasetConfig:
    name: str = param("mnist1d", help="dataset=<name> selects the option")
    num_train: int | None = param(None, ge=1, help="use only the first n training examples")

    def load(self) -> ArrayDataset:
        raise NotImplementedError

    def describe(self) -> DataInfo:
        """Shapes, classes and split sizes from metadata only (what the pre-flight checks read
        before anything is loaded or compiled); options whose loading is cheap load."""
        with data_errors(f"dataset={self.name}"):
            return data_info(self.load())


@contextlib.contextmanager
def data_errors(where: str) -> Iterator[None]:
    """A loader's ValueError or OSError (a bad file, an impossible setting) as one ConfigError
    line naming the key."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, OSError, KeyError) as err:
        raise ConfigError(f"{where}: {err}") from None


@DATASETS.register("mnist1d")
@frozen
class MNIST1DConfig(DatasetConfig):
    """MNIST-1D (Greydanus 2020), generated offline: 4,000 train / 1,000 test, length 40."""

    def load(self) -> ArrayDataset:
        from bench.data.mnist1d import load_mnist1d
        return load_mnist1d()

    def describe(self) -> DataInfo:
        from bench.data.mnist1d import INFO  # generating the data takes seconds
        return INFO


@DATASETS.register("digits")
@frozen
class DigitsConfig(DatasetConfig):
    """scikit-learn's 8x8 digits (1,797 images, shipped with the package), 80/20 split."""
    seed: int = param(0, help="train/test split seed")

    def load(self) -> ArrayDataset:
        from bench.data.digits import load_digits
        return load_digits(seed=self.seed)

    def describe(self) -> DataInfo:
        from bench.data.digits import INFO  # scikit-learn's import takes seconds
        return INFO


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

    def describe(self) -> DataInfo:
        from bench.data.tfds import describe_tfds
        return describe_tfds(self.name, self.data_dir)


# ----------------------------------------------------------------------------- language


@frozen
class TextConfig(DatasetConfig):
    """Language modelling: sequences of ``context`` tokens packed from a corpus (x: tokens,
    y: the next tokens); ``num_train`` counts sequences."""
    context: int = param(128, ge=1, help="tokens per sequence (T)")
    test_fraction: float = param(0.1, gt=0, lt=1, help="held-out tail of each source")

    def describe(self) -> DataInfo:
        with data_errors(f"dataset={self.name} dataset.context={self.context}"):
            info = data_info(self.load())
        if not info.num_test:
            raise ConfigError(f"dataset.context={self.context}: the test split of dataset={self.name} "
                              f"holds no sequence of {self.context + 1} tokens; use a shorter "
                              f"dataset.context or a larger dataset.test_fraction")
        return info


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

    # Largest transition table (contexts x alphabet, float64) the chain may draw: 128 MiB.
    MAX_TABLE = 1 << 24

    def check(self, where: str) -> None:
        entries = self.alphabet_size ** (self.order + 1)
        if entries > self.MAX_TABLE:
            raise ConfigError(
                f"{where}order={self.order} with {where}alphabet_size={self.alphabet_size}: the chain"
                f" has {self.alphabet_size}^{self.order} contexts ({entries:.3g} transition entries, "
                f"limit {self.MAX_TABLE:.3g}); use a smaller order or alphabet")
        if self.concentration < 1e-3:
            raise ConfigError(f"{where}concentration={self.concentration:g} makes an almost "
                              f"deterministic chain that may never mix; use >= 0.001")

    def describe(self) -> DataInfo:
        from bench.data.text import BYTE_VOCAB  # sampling the chain is what loading costs
        return DataInfo("markov", (self.context,), BYTE_VOCAB, self.markov_train,
                        self.markov_test, self.context)

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

    def describe(self) -> DataInfo:
        from bench.data.text import BYTE_VOCAB
        from bench.data.tfds import require_prepared
        require_prepared("lm1b", self.data_dir)  # the corpus length is known only once read
        return DataInfo("lm1b", (self.context,), BYTE_VOCAB, None, None, self.context)


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
        with data_errors(f"dataset.path={self.path}"):
            data, provenance = load_token_file(self.path, self.context, self.test_fraction,
                                               self.test_path, self.max_train_tokens,
                                               self.max_test_tokens, self.verify_sha256)
        return replace(data, provenance=provenance)

    def describe(self) -> DataInfo:
        from bench.data.token_files import capped, token_file_splits
        with data_errors(f"dataset.path={self.path}"):  # metadata and file sizes only
            train, test, provenance = token_file_splits(self.path, self.context, self.test_fraction,
                                                        self.test_path)
        if not len(train):
            raise ConfigError(f"dataset.context={self.context} is longer than the training tokens of "
                              f"dataset.path={self.path} (no sequence of {self.context + 1} tokens); "
                              f"use a shorter dataset.context")
        info = DataInfo("tokens", (self.context,), provenance["vocab_size"],
                        len(capped(train, self.max_train_tokens)),
                        len(capped(test, self.max_test_tokens)), self.context)
        if not info.num_test:
            raise ConfigError(f"dataset.context={self.context}: the test split of dataset.path="
                              f"{self.test_path or self.path} holds no sequence of {self.context + 1}"
                              f" tokens; use a shorter context, a larger dataset.test_fraction or"
                              f" dataset.max_test_tokens")
        if not info.num_train:
            raise ConfigError(f"dataset.max_train_tokens={self.max_train_tokens} is shorter than one "
                              f"sequence of dataset.context={self.context} tokens")
        return info


def load_dataset(cfg: DatasetConfig) -> ArrayDataset:
    """The dataset of ``cfg``, cut to the first ``num_train`` training examples when set; its
    labels (token ids) checked against ``num_classes`` (the vocabulary)."""
    data = cfg.load()
    data.check_ranges(f"dataset={cfg.name}" + (f" dataset.path={cfg.path}" if getattr(cfg, "path", "") else ""))
    return data.subset(cfg.num_train) if cfg.num_train is not None else data


__all__ = ["ArrayDataset", "DATASETS", "DatasetConfig", "load_dataset"]


# ----------------------------------------------------------------------------- streamed (grain)


@frozen
class StreamableConfig(DatasetConfig):
    """A dataset in ArrayRecord files, held in memory or streamed by grain (bench.data.stream):
    each process then reads only its slice of every global batch."""
    loader: str = param("memory", choices=("memory", "stream"), results=False,
                        help="memory: whole dataset on every device; stream: grain over ArrayRecord")
    augment: str = param("none", choices=("none", "cifar", "imagenet"),
                         help="cifar: pad-crop-flip; imagenet: random-resized crop + flip (loader=stream)")
    threads: int = param(8, ge=1, results=False, help="grain reader threads per process")
    prefetch: int = param(8, ge=1, results=False, help="training steps read ahead per process")
    workers: int = param(0, ge=0, results=False, help="grain worker processes (0: threads only)")

    def check(self, where: str) -> None:
        if self.augment != "none" and self.loader != "stream":
            raise ConfigError(f"{where}augment={self.augment} needs {where}loader=stream "
                              f"(augmentation runs in the streamed input pipeline)")

    def stream_options(self):
        from bench.data.stream import StreamOptions
        return StreamOptions(threads=self.threads, prefetch=self.prefetch, workers=self.workers)

    def open_stream(self):
        """The dataset as a bench.data.stream.StreamDataset."""
        raise NotImplementedError

    def describe(self) -> DataInfo:
        """From the stream's metadata (TFDS: its dataset info), in memory or streamed."""
        with data_errors(f"dataset={self.name}"):
            return data_info(self.open_stream(), streamed=self.loader == "stream")


@DATASETS.register("arrayrecord")
@frozen
class ArrayRecordConfig(StreamableConfig):
    """ArrayRecord files: a ``python -m bench.data.export`` directory (read bit for bit as
    exported), or a prepared TFDS dataset directory (images normalized per channel)."""
    path: str = param("", results=False, help="exported directory, or <data_dir>/<name>/<version> of TFDS")
    padding: int = param(4, ge=0, help="zero padding of augment=cifar, in pixels")
    image_size: int | None = param(None, ge=1, help="augment=imagenet crop size (null: stored size)")

    def check(self, where: str) -> None:
        if not self.path:
            raise ConfigError(f"{where}path is required for dataset=arrayrecord (a directory "
                              f"written by python -m bench.data.export, or a prepared TFDS one)")
        if self.augment == "imagenet" and self.image_size is None:
            raise ConfigError(f"{where}augment=imagenet needs {where}image_size")
        super().check(where)

    def _augment(self):
        from bench.data.augment import Augment
        return Augment(self.augment, self.image_size, self.padding)

    def _is_tfds(self) -> bool:
        return (Path(self.path).expanduser() / "dataset_info.json").is_file()

    def open_stream(self):
        from bench.data.stream import exported_stream, tfds_stream
        if self._is_tfds():
            return tfds_stream(self.path, None, self._augment())
        return exported_stream(self.path, self._augment())

    def describe(self) -> DataInfo:
        if not Path(self.path).expanduser().is_dir():
            raise ConfigError(f"dataset.path={self.path}: no such directory (an export of python -m "
                              f"bench.data.export, or a prepared TFDS dataset directory)")
        if not self._is_tfds():
            from bench.data.arrayrecord import read_metadata, verify_shards
            verify_shards(self.path, read_metadata(self.path))
        return super().describe()

    def load(self) -> ArrayDataset:
        from bench.data.stream import load_in_memory
        return load_in_memory(self.open_stream())


@DATASETS.register("imagenet2012")
@frozen
class ImageNetConfig(StreamableConfig):
    """TFDS imagenet2012 (ILSVRC-2012: 1,281,167 train / 50,000 validation images, 1000
    classes), prepared ArrayRecord read as it is; streamed only (it does not fit in memory)."""
    loader: str = param("stream", choices=("memory", "stream"), results=False,
                        help="stream (imagenet2012 does not fit in memory)")
    augment: str = param("imagenet", choices=("none", "cifar", "imagenet"),
                         help="imagenet: random-resized crop + flip; none: center crops")
    data_dir: str | None = param(None, help="TFDS data_dir holding the prepared data", results=False)
    image_size: int = param(224, ge=1, help="training crop and evaluation center-crop size")

    def check(self, where: str) -> None:
        if self.loader != "stream":
            raise ConfigError(f"{where}loader=memory: dataset=imagenet2012 does not fit in memory "
                              f"(1.28M images of varying size); use {where}loader=stream")
        super().check(where)

    def open_stream(self):
        from bench.data.augment import Augment
        from bench.data.stream import tfds_stream
        return tfds_stream("imagenet2012", self.data_dir, Augment(self.augment, self.image_size))

    def load(self) -> ArrayDataset:
        raise ConfigError("dataset=imagenet2012 is streamed from its prepared TFDS files as they "
                          "are; it is not loaded into memory (nor exported)")


def open_dataset(cfg: DatasetConfig):
    """The dataset of ``cfg`` as the job uses it: an ArrayDataset in memory, or a
    bench.data.stream.StreamDataset with ``loader=stream``; cut to ``num_train`` when set."""
    if getattr(cfg, "loader", "memory") != "stream":
        return load_dataset(cfg)
    data = cfg.open_stream()
    return data.subset(cfg.num_train) if cfg.num_train is not None else data


__all__ += ["StreamableConfig", "open_dataset"]
