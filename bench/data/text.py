"""Byte-level language-model data: corpora packed into fixed-length next-token sequences.

Layout every LM loader returns (an :class:`ArrayDataset`): ``x`` int32 [N, T] tokens and ``y``
int32 [N, T] the next tokens (``y[i, t] = x[i, t + 1]`` inside the corpus), ``num_classes`` =
the vocabulary (256 for bytes). A run of tokens is cut into windows of T + 1 tokens with stride
T, so every token but the first is a target exactly once and sequences never overlap as
inputs. Held-out split: the last ``test_fraction`` of each source, packed apart from its
training part, so no sequence crosses the split (and none crosses from one source to another).

``dataset=pydoc``: English documentation that ships with every Python
(``pydoc_data.topics``, ~465k bytes), optionally followed by the standard library's non-test
sources (~11 MB of code). Both change between Python versions, so the provenance records the
Python version and the SHA-256 of the assembled corpus.

ArrayDataset has no field for provenance, so loaders return ``(dataset, provenance)``.
"""

from __future__ import annotations

import hashlib
import math
import platform
import sysconfig
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench.data.base import ArrayDataset

BYTE_VOCAB = 256
TEST_DIR_NAMES = frozenset({"test", "tests", "idle_test", "__pycache__", "site-packages"})


# ---------------------------------------------------------------- packing and splitting

def pack(tokens: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of ``context + 1`` tokens with stride ``context``: (x, y) int32 [N, T] with
    N = (len - 1) // T; the tail that does not fill a window is dropped."""
    if context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    n = (len(tokens) - 1) // context
    x = np.asarray(tokens[:n * context], dtype=np.int32).reshape(n, context)
    y = np.asarray(tokens[1:n * context + 1], dtype=np.int32).reshape(n, context)
    return x, y


def split_point(num_tokens: int, test_fraction: float) -> int:
    """Index where the held-out tail starts: the last ``test_fraction`` of the tokens."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    return num_tokens - int(math.ceil(num_tokens * test_fraction))


def pack_splits(parts: Sequence[np.ndarray], context: int, test_fraction: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): each part split at its own ``split_point`` and each
    piece packed on its own, so no sequence crosses the split or a part boundary."""
    train, test = [], []
    for tokens in parts:
        cut = split_point(len(tokens), test_fraction)
        train.append(pack(tokens[:cut], context))
        test.append(pack(tokens[cut:], context))
    if sum(len(x) for x, _ in test) == 0:
        raise ValueError(f"held-out split has no sequence of context {context} "
                         f"(corpus parts of {[len(p) for p in parts]} tokens)")

    def cat(pairs, i):
        return np.concatenate([p[i] for p in pairs]) if pairs else np.zeros((0, context), np.int32)
    return cat(train, 0), cat(train, 1), cat(test, 0), cat(test, 1)


# ---------------------------------------------------------------- measures

def sha256_hex(data: bytes | np.ndarray) -> str:
    raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    return hashlib.sha256(raw).hexdigest()


def bits_per_byte(loss_nats_per_token: float, bytes_per_token: float = 1.0) -> float:
    """Cross-entropy in bits per byte of text: nats/token / ln 2 / (bytes per token)."""
    if not bytes_per_token > 0:
        raise ValueError(f"bytes_per_token must be > 0, got {bytes_per_token}")
    return loss_nats_per_token / math.log(2.0) / bytes_per_token


def unigram_entropy(tokens: np.ndarray, vocab_size: int | None = None) -> float:
    """Entropy in nats of the tokens' empirical frequencies: the loss of the best model that
    ignores context, the first reference line a trained LM must get clearly below."""
    counts = np.bincount(np.asarray(tokens).ravel(), minlength=vocab_size or 0)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# ---------------------------------------------------------------- the pydoc corpus

def pydoc_topics_bytes() -> bytes:
    """``pydoc_data.topics.topics`` as UTF-8, topics in sorted key order, separated by a blank line."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics)).encode("utf-8")


def is_test_source(relative: Path) -> bool:
    return (any(part in TEST_DIR_NAMES for part in relative.parts[:-1])
            or relative.name.startswith("test_") or relative.name == "test.py")


def stdlib_source_paths(root: Path | None = None) -> list[Path]:
    """The standard library's ``*.py`` files outside test packages, in sorted relative-path order."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if not is_test_source(p.relative_to(root))]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def stdlib_sources_bytes(root: Path | None = None) -> bytes:
    """The non-test stdlib sources, raw bytes, files joined by a newline."""
    return b"\n".join(p.read_bytes() for p in stdlib_source_paths(root))


def bytes_to_tokens(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def load_pydoc(context: int = 128, test_fraction: float = 0.1, include_stdlib: bool = False
               ) -> tuple[ArrayDataset, dict[str, Any]]:
    """The byte-level pydoc corpus, packed; see the module docstring."""
    parts = [("pydoc_data.topics", pydoc_topics_bytes())]
    if include_stdlib:
        parts.append(("stdlib non-test sources", stdlib_sources_bytes()))
    data, provenance = packed_byte_dataset("pydoc", parts, context, test_fraction)
    provenance["python_version"] = platform.python_version()
    return data, provenance


def packed_byte_dataset(name: str, parts: Sequence[tuple[str, bytes]], context: int,
                        test_fraction: float) -> tuple[ArrayDataset, dict[str, Any]]:
    """Named byte strings -> (packed ArrayDataset with vocab 256, provenance)."""
    tokens = [bytes_to_tokens(data) for _, data in parts]
    x_train, y_train, x_test, y_test = pack_splits(tokens, context, test_fraction)
    dataset = ArrayDataset(name, x_train, y_train, x_test, y_test, num_classes=BYTE_VOCAB)
    corpus = hashlib.sha256()
    for _, data in parts:
        corpus.update(data)
    provenance = {
        "source": " + ".join(source for source, _ in parts),
        "tokenizer": "bytes (UTF-8), vocabulary 256",
        "sha256": corpus.hexdigest(),              # of the parts' bytes, concatenated in order
        "num_bytes": sum(len(data) for _, data in parts),
        "num_tokens": sum(len(data) for _, data in parts),
        "parts": [{"name": source, "num_bytes": len(data), "sha256": sha256_hex(data)}
                  for source, data in parts],
        "context": context, "test_fraction": test_fraction,
        "train_sequences": len(x_train), "test_sequences": len(x_test),
        "train_unigram_entropy_nats": unigram_entropy(y_train, BYTE_VOCAB),
    }
    return dataset, provenance
