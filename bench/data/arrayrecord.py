"""Datasets as ArrayRecord files: the exported format, and random-access readers of it and of
prepared TFDS data (both without TensorFlow).

An exported directory (``python -m bench.data.export <dataset> <dir>``) holds::

    metadata.json                             format, shapes, dtypes, classes, split sizes,
                                              the data's SHA-256 (as ArrayDataset.checksum)
    train-00000-of-00004.array_record ...     one record per example: x bytes then y bytes
    test-00000-of-00001.array_record ...

Records are the raw bytes of the example's arrays (C order), integers stored in the smallest
unsigned type that holds them (labels and byte tokens: uint8) and widened back on reading, so
what is read equals what was exported, bit for bit. Records are written with ArrayRecord's
``group_size:1`` (one record per chunk), which makes random access one read.

A prepared TFDS dataset (``tfds build`` / ``tfds.data_source(..., download=True)`` once on a
machine with internet) is itself a directory of ArrayRecord files; :class:`TFDSSplit` reads it
through ``tfds.data_source`` (by name and ``data_dir``, or by the prepared directory's path).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench.schema import ConfigError

FORMAT = "batch-bench-arrayrecord"
VERSION = 1
METADATA = "metadata.json"
SPLITS = ("train", "test")
WRITER_OPTIONS = "group_size:1"


@dataclass(frozen=True)
class Feature:
    """One array of an example: its shape, the dtype it is read as, the dtype it is stored as."""

    shape: tuple[int, ...]
    dtype: str
    stored: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.stored).itemsize

    def as_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype, "stored": self.stored}

    @classmethod
    def of(cls, arrays: Sequence[np.ndarray]) -> "Feature":
        """The feature of arrays [N, ...] (one per split): non-negative integers are stored in
        the smallest unsigned type that holds them all."""
        first = arrays[0]
        stored = first.dtype
        if first.dtype.kind in "iu" and all(a.size == 0 or a.min() >= 0 for a in arrays):
            top = max((int(a.max()) for a in arrays if a.size), default=0)
            stored = next(np.dtype(t) for t in (np.uint8, np.uint16, np.uint32, first.dtype)
                          if top <= np.iinfo(t).max)
        return cls(tuple(first.shape[1:]), first.dtype.name, np.dtype(stored).name)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Feature":
        return cls(tuple(d["shape"]), d["dtype"], d["stored"])


@dataclass(frozen=True)
class Codec:
    """Example <-> record bytes for the fixed-shape features x and y."""

    x: Feature
    y: Feature

    @property
    def record_dtype(self) -> np.dtype:
        """One record as a numpy structured type: x's bytes, then y's (no padding)."""
        return np.dtype([("x", self.x.stored, self.x.shape), ("y", self.y.stored, self.y.shape)])

    def encode(self, x: np.ndarray, y: np.ndarray) -> bytes:
        return (np.ascontiguousarray(x, self.x.stored).tobytes()
                + np.ascontiguousarray(y, self.y.stored).tobytes())

    def decode(self, record: bytes) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.decode_many([record])
        return x[0], y[0]

    def decode_many(self, records: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Stacked x [n, ...], y [n, ...] of ``records`` (one join, one typed view, one cast)."""
        rows = np.frombuffer(b"".join(records), self.record_dtype, count=len(records))
        return (np.array(rows["x"], self.x.dtype), np.array(rows["y"], self.y.dtype))


def shard_names(split: str, shards: int) -> list[str]:
    return [f"{split}-{i:05d}-of-{shards:05d}.array_record" for i in range(shards)]


def write_split(directory: Path, split: str, x: np.ndarray, y: np.ndarray, codec: Codec,
                shards: int) -> list[str]:
    """Write one split as ``shards`` files of consecutive examples; returns the file names."""
    from array_record.python.array_record_module import ArrayRecordWriter

    shards = max(1, min(shards, len(x)))
    names = shard_names(split, shards)
    bounds = np.linspace(0, len(x), shards + 1).astype(int)
    for name, lo, hi in zip(names, bounds[:-1], bounds[1:]):
        writer = ArrayRecordWriter(str(directory / name), WRITER_OPTIONS)
        for i in range(lo, hi):
            writer.write(codec.encode(x[i], y[i]))
        writer.close()
    return names


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """The metadata of an exported directory, its keys checked (ConfigError when it is not one)."""
    path = Path(directory).expanduser() / METADATA
    if not path.is_file():
        raise ConfigError(f"dataset.path={directory}: no {METADATA} there; write one with "
                          f"python -m bench.data.export <dataset> {directory}")
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"dataset.path={directory}: {METADATA} is not JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        got = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else (None, None)
        raise ConfigError(f"{path}: not a {FORMAT} v{VERSION} metadata file "
                          f"(format {got[0]!r}, version {got[1]!r})")
    try:
        _check_metadata(meta)
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"dataset.path={directory}: {METADATA} is malformed ({err}); "
                          f"re-export with python -m bench.data.export") from None
    return meta


def _check_metadata(meta: dict[str, Any]) -> None:
    """Every key readers use, with its type; shard names are plain file names, so a metadata
    file cannot make a reader open anything outside its directory."""
    for feature in ("x", "y"):
        f = Feature.from_dict(meta["features"][feature])
        if not all(isinstance(d, int) and d >= 1 for d in f.shape):
            raise ValueError(f"features.{feature}.shape {list(f.shape)} must be positive integers")
        np.dtype(f.dtype), np.dtype(f.stored)
    if not (isinstance(meta["num_classes"], int) and meta["num_classes"] >= 1):
        raise ValueError(f"num_classes={meta['num_classes']!r} must be an integer >= 1")
    for split in SPLITS:
        info = meta["splits"][split]
        if not (isinstance(info["num_examples"], int) and info["num_examples"] >= 0):
            raise ValueError(f"splits.{split}.num_examples={info['num_examples']!r}")
        for name in info["shards"]:
            if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
                raise ValueError(f"shard name {name!r} of split {split} must be a file name inside "
                                 f"the dataset directory")


def verify_shards(directory: str | Path, meta: dict[str, Any]) -> None:
    """Every shard present and holding, together, the split's ``num_examples`` records of the
    metadata's size (ArrayRecord reads only each file's index): a missing, empty, truncated or
    foreign file, or metadata that does not describe the files, stops with one line."""
    from array_record.python.array_record_module import ArrayRecordReader

    directory = Path(directory).expanduser()
    codec = Codec(Feature.from_dict(meta["features"]["x"]), Feature.from_dict(meta["features"]["y"]))
    size = codec.x.nbytes + codec.y.nbytes
    for split in SPLITS:
        info, total = meta["splits"][split], 0
        for name in info["shards"]:
            path = directory / name
            if not path.is_file():
                raise ConfigError(f"dataset.path={directory}: shard {name} is missing")
            try:
                reader = ArrayRecordReader(str(path))
                try:
                    count = reader.num_records()
                    first = reader.read([0])[0] if count else None
                finally:
                    reader.close()
            except RuntimeError as err:  # Riegeli's 'Corrupted ... file' and kin
                raise ConfigError(f"dataset.path={directory}: shard {name} is not a readable "
                                  f"ArrayRecord file (truncated?): {str(err).splitlines()[0][:120]}") from None
            if count == 0 and info["num_examples"]:
                raise ConfigError(f"dataset.path={directory}: shard {name} holds no readable "
                                  f"records (truncated or not ArrayRecord)")
            if first is not None and len(first) != size:
                raise ConfigError(f"dataset.path={directory}: records of {name} are {len(first)} "
                                  f"bytes, the metadata's features make {size}")
            total += count
        if total != info["num_examples"]:
            raise ConfigError(f"dataset.path={directory}: split {split} holds {total} records, "
                              f"the metadata says {info['num_examples']} (truncated shard?)")


class ExportedSplit:
    """Random access to one split of an exported directory: ``read(indices) -> (x, y)``.

    Picklable (grain worker processes reopen the files); reads in a batch go through
    ArrayRecord's parallel ``__getitems__``.
    """

    def __init__(self, directory: str | Path, split: str, meta: dict[str, Any] | None = None):
        self.directory = Path(directory).expanduser()
        self.split = split
        self.meta = meta if meta is not None else read_metadata(self.directory)
        info = self.meta["splits"][split]
        self.num_examples = int(info["num_examples"])
        self.paths = [str(self.directory / name) for name in info["shards"]]
        self.codec = Codec(Feature.from_dict(self.meta["features"]["x"]),
                           Feature.from_dict(self.meta["features"]["y"]))
        self._source: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_source": None}

    @property
    def source(self) -> Any:
        if self._source is None:
            import grain

            missing = [p for p in self.paths if not Path(p).is_file()]
            if missing:
                raise ConfigError(f"dataset.path={self.directory}: shard {missing[0]} is missing")
            self._source = grain.sources.ArrayRecordDataSource(self.paths)
        return self._source

    def __len__(self) -> int:
        return self.num_examples

    def read(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Examples ``indices`` as stacked arrays x [n, ...], y [n, ...]."""
        return self.codec.decode_many(self.source.__getitems__([int(i) for i in indices]))

    def update_digest(self, digest: Any, feature: str, chunk: int = 4096) -> None:
        """Feed ``feature``'s array, as ArrayDataset.checksum hashes it, into ``digest``."""
        f = getattr(self.codec, feature)
        digest.update(f"{np.dtype(f.dtype).str}{(self.num_examples, *f.shape)}".encode())
        for lo in range(0, self.num_examples, chunk):
            arrays = self.read(range(lo, min(lo + chunk, self.num_examples)))
            digest.update(np.ascontiguousarray(arrays[0 if feature == "x" else 1]).tobytes())


def exported_sha256(directory: str | Path) -> str:
    """SHA-256 of an exported directory's examples, computed as ArrayDataset.checksum would."""
    meta = read_metadata(directory)
    digest = hashlib.sha256()
    splits = {s: ExportedSplit(directory, s, meta) for s in SPLITS}
    for split, feature in (("train", "x"), ("train", "y"), ("test", "x"), ("test", "y")):
        splits[split].update_digest(digest, feature)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------- TFDS

TFDS_EVAL_SPLIT = {"imagenet2012": "validation"}


class TFDSSplit:
    """Random access to a prepared TFDS split via ``tfds.data_source`` (no TensorFlow):
    ``read(indices) -> (list of uint8 images [H, W, C], int32 labels)``; images may differ in
    size (ImageNet). ``name`` is a TFDS name (found under ``data_dir``) or the path of a
    prepared dataset directory (the one holding ``dataset_info.json``)."""

    def __init__(self, name: str, split: str, data_dir: str | None = None,
                 image_key: str = "image", label_key: str = "label"):
        self.name, self.split, self.data_dir = name, split, data_dir
        self.image_key, self.label_key = image_key, label_key
        self._source: Any = None
        self.num_examples = len(self.source)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_source": None}

    @property
    def source(self) -> Any:
        if self._source is None:
            import tensorflow_datasets as tfds

            try:
                if Path(self.name).expanduser().is_dir():
                    builder = tfds.builder_from_directory(str(Path(self.name).expanduser()))
                    self._source = builder.as_data_source(split=self.split)
                else:
                    self._source = tfds.data_source(self.name, split=self.split,
                                                    data_dir=self.data_dir, download=False)
            except Exception as err:  # noqa: BLE001 -- TFDS raises many kinds; say what to do
                raise ConfigError(
                    f"TFDS {self.name} (split {self.split}) is not prepared under "
                    f"{self.data_dir or 'TFDS_DATA_DIR / ~/tensorflow_datasets'}: prepare it once "
                    f"with internet access (tfds build {self.name} --data_dir=<dir>) "
                    f"[{type(err).__name__}]") from None
        return self._source

    def __len__(self) -> int:
        return self.num_examples

    def read(self, indices: Sequence[int]) -> tuple[list[np.ndarray], np.ndarray]:
        keys = [int(i) for i in indices]
        try:
            items = self.source.__getitems__(keys)   # ArrayRecord's parallel batched read
        except TypeError:  # tfds.testing.mock_data's source has no batched read
            items = [self.source[k] for k in keys]
        images = [np.asarray(item[self.image_key]) for item in items]
        images = [im[..., None] if im.ndim == 2 else im for im in images]
        return images, np.asarray([int(item[self.label_key]) for item in items], np.int32)


def tfds_num_classes(name: str, data_dir: str | None = None, label_key: str = "label") -> int:
    import tensorflow_datasets as tfds

    path = Path(name).expanduser()
    builder = tfds.builder_from_directory(str(path)) if path.is_dir() else tfds.builder(
        name, data_dir=data_dir)
    return int(builder.info.features[label_key].num_classes)
