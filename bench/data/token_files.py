"""``dataset=tokens``: pre-tokenized token files (e.g. an exported FineWeb-Edu sample) for clusters.

A token file is a flat array of token ids, uint16 (vocabularies up to 65536, e.g. GPT-2's
50257) or uint32, either raw little-endian ``.bin`` (nanoGPT's format) or ``.npy``, with a
metadata JSON beside it named ``<file>.json`` (``train.bin`` -> ``train.bin.json``)::

    {"dtype": "uint16", "vocab_size": 50257, "num_tokens": 10000000,
     "sha256": "<of the token bytes>", "tokenizer": "gpt2", "source": "fineweb-edu sample-10BT",
     "bytes_per_token": 4.6}                      # optional: for bits per byte

:func:`write_token_file` writes both. Files are memory-mapped: :class:`PackedTokens` gives the
packed layout of :mod:`bench.data.text` (windows of T + 1 tokens, stride T) for any rows
without reading the rest of the file; :func:`load_token_file` materializes the splits (capped by
``max_train_tokens``) as an ArrayDataset for the in-memory loader. Held-out data: a second file
(``test_path``), or else the last ``test_fraction`` of the file.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from bench.data.base import ArrayDataset
from bench.data.text import split_point

DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
HASH_CHUNK = 1 << 24     # tokens hashed per read: bounded memory for any file size


def metadata_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def _token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def tokens_sha256(tokens: np.ndarray) -> str:
    """SHA-256 of the tokens' little-endian bytes, read in chunks (works on a memmap)."""
    digest = hashlib.sha256()
    for start in range(0, len(tokens), HASH_CHUNK):
        digest.update(np.ascontiguousarray(tokens[start:start + HASH_CHUNK]).tobytes())
    return digest.hexdigest()


def write_token_file(path: str | Path, tokens: np.ndarray, vocab_size: int, **metadata: Any) -> Path:
    """Write ``tokens`` as ``.bin`` or ``.npy`` (by suffix) in the smallest dtype that holds
    ``vocab_size``, and its metadata JSON (dtype, vocab_size, num_tokens, sha256 + ``metadata``)."""
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"token ids must be in [0, {vocab_size})")
    name = _token_dtype(vocab_size)
    data = tokens.astype(DTYPES[name])
    if path.suffix == ".npy":
        np.save(path, data)
    elif path.suffix == ".bin":
        data.tofile(path)
    else:
        raise ValueError(f"token file must end in .bin or .npy, got {path.name}")
    meta = {**metadata, "dtype": name, "vocab_size": int(vocab_size), "num_tokens": int(data.size),
            "sha256": tokens_sha256(data)}
    metadata_path(path).write_text(json.dumps(meta, indent=1, sort_keys=True))
    return path


class TokenFile:
    """A memory-mapped token file and its metadata; ValueError (one line) for a file that is
    missing, empty, truncated, not in the format, or whose metadata does not describe it."""

    def __init__(self, path: str | Path, verify_sha256: bool = False):
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise ValueError("no such token file")
        self.metadata = read_token_metadata(self.path)
        self.tokens = _map_tokens(self.path, self.metadata)
        expected = self.metadata.get("num_tokens")
        if expected is not None and expected != len(self.tokens):
            raise ValueError(f"{self.path.name}: metadata says {expected} tokens, file has "
                             f"{len(self.tokens)} (truncated or wrong metadata)")
        if verify_sha256 and "sha256" in self.metadata:
            actual = tokens_sha256(self.tokens)
            if actual != self.metadata["sha256"]:
                raise ValueError(f"{self.path.name}: SHA-256 {actual} does not match the metadata's "
                                 f"{self.metadata['sha256']}")

    @property
    def vocab_size(self) -> int:
        return int(self.metadata["vocab_size"])

    def __len__(self) -> int:
        return len(self.tokens)


def read_token_metadata(path: Path) -> dict[str, Any]:
    """The metadata JSON of a token file, its keys checked (vocab_size, dtype, num_tokens,
    bytes_per_token)."""
    meta_file = metadata_path(path)
    if not meta_file.is_file():
        raise ValueError(f"{path.name}: missing metadata {meta_file.name} (dtype, vocab_size)")
    try:
        meta = json.loads(meta_file.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{meta_file.name}: not JSON ({err})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_file.name}: expected a JSON object, got {type(meta).__name__}")
    vocab = meta.get("vocab_size")
    if not (isinstance(vocab, int) and not isinstance(vocab, bool) and vocab >= 2):
        raise ValueError(f"{meta_file.name}: vocab_size must be an integer >= 2, got {vocab!r}")
    dtype = meta.get("dtype")
    if dtype is not None and (dtype not in DTYPES or vocab > np.iinfo(DTYPES[dtype]).max + 1):
        raise ValueError(f"{meta_file.name}: dtype {dtype!r} cannot hold vocab_size {vocab}; "
                         f"valid: {', '.join(DTYPES)}")
    count = meta.get("num_tokens")
    if count is not None and not (isinstance(count, int) and count >= 0):
        raise ValueError(f"{meta_file.name}: num_tokens must be an integer >= 0, got {count!r}")
    bpt = meta.get("bytes_per_token")
    if bpt is not None and not (isinstance(bpt, (int, float)) and not isinstance(bpt, bool)
                                and math.isfinite(bpt) and bpt > 0):
        raise ValueError(f"{meta_file.name}: bytes_per_token must be a number > 0, got {bpt!r}")
    return meta


def _map_tokens(path: Path, meta: dict[str, Any]) -> np.ndarray:
    """The tokens, memory-mapped (``.npy``: its header's dtype; ``.bin``: the metadata's)."""
    if path.suffix == ".npy":
        try:
            tokens = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(f"{path.name}: not a readable .npy array ({err})") from None
    elif path.suffix == ".bin":
        dtype = meta.get("dtype")
        if dtype not in DTYPES:
            raise ValueError(f"{metadata_path(path).name}: dtype must be one of {sorted(DTYPES)}, "
                             f"got {dtype!r}")
        size = path.stat().st_size
        if size == 0:
            raise ValueError(f"{path.name}: the file is empty")
        if size % DTYPES[dtype].itemsize:
            raise ValueError(f"{path.name}: {size} bytes is not a whole number of {dtype} tokens "
                             f"(truncated?)")
        tokens = np.memmap(path, dtype=DTYPES[dtype], mode="r")
    else:
        raise ValueError(f"token file must end in .bin or .npy, got {path.name}")
    if tokens.ndim != 1 or tokens.dtype.str not in {d.str for d in DTYPES.values()}:
        raise ValueError(f"{path.name}: expected 1-D uint16/uint32 tokens, got "
                         f"{tokens.dtype} {tokens.shape}")
    if "dtype" in meta and tokens.dtype != DTYPES[meta["dtype"]]:
        raise ValueError(f"{path.name}: tokens are {tokens.dtype}, the metadata says {meta['dtype']}")
    return tokens


class PackedTokens:
    """Packed (x, y) rows of tokens[start:stop] of a (memory-mapped) array, read on demand."""

    def __init__(self, tokens: np.ndarray, start: int, stop: int, context: int):
        if context < 1:
            raise ValueError(f"context must be >= 1, got {context}")
        self.tokens, self.start, self.context = tokens, start, context
        self.num_sequences = max((stop - start - 1) // context, 0)

    def __len__(self) -> int:
        return self.num_sequences

    def __getitem__(self, rows: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) int32 [len(rows), T] of the given sequence indices (only those are read)."""
        rows = np.arange(self.num_sequences)[rows] if isinstance(rows, slice) else np.asarray(rows)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_sequences):
            raise IndexError(f"sequence index out of range [0, {self.num_sequences})")
        offsets = self.start + rows[:, None] * self.context + np.arange(self.context + 1)[None, :]
        window = np.asarray(self.tokens[offsets.ravel()], dtype=np.int32).reshape(offsets.shape)
        return window[:, :-1], window[:, 1:]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All rows: one contiguous read."""
        n, t = self.num_sequences, self.context
        flat = np.asarray(self.tokens[self.start:self.start + n * t + 1], dtype=np.int32)
        return flat[:-1].reshape(n, t), flat[1:].reshape(n, t)


def token_file_splits(path: str | Path, context: int, test_fraction: float = 0.1,
                      test_path: str | Path | None = None, verify_sha256: bool = False
                      ) -> tuple[PackedTokens, PackedTokens, dict[str, Any]]:
    """(train rows, test rows, provenance) without reading the token data."""
    train_file = TokenFile(path, verify_sha256)
    if test_path is None:
        cut = split_point(len(train_file), test_fraction)
        train = PackedTokens(train_file.tokens, 0, cut, context)
        test = PackedTokens(train_file.tokens, cut, len(train_file), context)
        files = [train_file]
    else:
        test_file = TokenFile(test_path, verify_sha256)
        if test_file.vocab_size != train_file.vocab_size:
            raise ValueError(f"vocabularies differ: {train_file.path.name} {train_file.vocab_size}, "
                             f"{test_file.path.name} {test_file.vocab_size}")
        train = PackedTokens(train_file.tokens, 0, len(train_file), context)
        test = PackedTokens(test_file.tokens, 0, len(test_file), context)
        files = [train_file, test_file]
    provenance = {
        "source": train_file.metadata.get("source", str(train_file.path)),
        "tokenizer": train_file.metadata.get("tokenizer"),
        "vocab_size": train_file.vocab_size,
        "files": [{"path": str(f.path), "num_tokens": len(f), "sha256": f.metadata.get("sha256"),
                   "sha256_verified": verify_sha256 and "sha256" in f.metadata} for f in files],
        "context": context, "test_fraction": None if test_path else test_fraction,
        "train_sequences": len(train), "test_sequences": len(test),
    }
    if train_file.metadata.get("bytes_per_token") is not None:  # absent: not stated (bits per token)
        provenance["bytes_per_token"] = train_file.metadata["bytes_per_token"]
    return train, test, provenance


def capped(rows: PackedTokens, max_tokens: int | None) -> PackedTokens:
    """The first ``max_tokens`` targets' worth of ``rows`` (all of them for None)."""
    if max_tokens is None:
        return rows
    return PackedTokens(rows.tokens, rows.start,
                        rows.start + min(max_tokens, len(rows) * rows.context) + 1, rows.context)


def load_token_file(path: str | Path, context: int, test_fraction: float = 0.1,
                    test_path: str | Path | None = None, max_train_tokens: int | None = None,
                    max_test_tokens: int | None = None, verify_sha256: bool = False,
                    name: str = "tokens") -> tuple[ArrayDataset, dict[str, Any]]:
    """The splits in memory as an ArrayDataset (the first ``max_*_tokens`` of each split)."""
    train, test, provenance = token_file_splits(path, context, test_fraction, test_path, verify_sha256)
    x_train, y_train = capped(train, max_train_tokens).arrays()
    x_test, y_test = capped(test, max_test_tokens).arrays()
    provenance.update(train_sequences=len(x_train), test_sequences=len(x_test))
    return ArrayDataset(name, x_train, y_train, x_test, y_test, provenance["vocab_size"]), provenance
