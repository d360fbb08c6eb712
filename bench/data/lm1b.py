"""``dataset=lm1b``: TFDS One Billion Word (Chelba et al. 2013; Shallue et al. 2019's LM1B),
byte-level.

Read through ``tfds.data_source`` (random access to prepared ArrayRecord data, no TensorFlow),
as :mod:`bench.data.tfds`: prepare it once where there is internet (``tfds build lm1b`` into a
shared ``data_dir``); runs never download. Sentences are UTF-8 encoded and joined by a newline;
the corpus is packed as in :mod:`bench.data.text`. The held-out data is TFDS's own ``test``
split. Shallue et al. used a 32k subword vocabulary; this is byte-level (vocabulary 256), so
losses are per byte, not comparable to theirs per subword.

The train split has ~30M sentences (~4 GB as bytes): ``max_train_sentences`` caps what is read
into memory (the first n sentences, in the prepared order).
"""

from __future__ import annotations

from typing import Any

from bench.data.base import ArrayDataset
from bench.data.text import BYTE_VOCAB, bytes_to_tokens, pack, sha256_hex, unigram_entropy

def _text_bytes(example: dict) -> bytes:
    text = example["text"]
    return text.encode("utf-8") if isinstance(text, str) else bytes(text)


def _read_sentences(source, limit: int | None) -> bytes:
    n = len(source) if limit is None else min(limit, len(source))
    return b"\n".join(_text_bytes(source[i]) for i in range(n))


def load_lm1b(context: int = 128, data_dir: str | None = None, max_train_sentences: int | None = None,
              max_test_sentences: int | None = None) -> tuple[ArrayDataset, dict[str, Any]]:
    """(packed byte-level LM1B, provenance)."""
    import tensorflow_datasets as tfds

    train_source, test_source = tfds.data_source("lm1b", split=["train", "test"], data_dir=data_dir,
                                                 download=False)
    train_bytes = _read_sentences(train_source, max_train_sentences)
    test_bytes = _read_sentences(test_source, max_test_sentences)
    x_train, y_train = pack(bytes_to_tokens(train_bytes), context)
    x_test, y_test = pack(bytes_to_tokens(test_bytes), context)
    if len(x_test) == 0:
        raise ValueError(f"lm1b: the test split has no sequence of context {context}")
    dataset = ArrayDataset("lm1b", x_train, y_train, x_test, y_test, num_classes=BYTE_VOCAB)
    provenance = {
        "source": "tfds lm1b (train / test splits), sentences joined by newlines",
        "tokenizer": "bytes (UTF-8), vocabulary 256",
        "tfds_version": tfds.__version__,
        "sha256": {"train": sha256_hex(train_bytes), "test": sha256_hex(test_bytes)},
        "num_bytes": {"train": len(train_bytes), "test": len(test_bytes)},
        "sentences": {"train": min(len(train_source), max_train_sentences or len(train_source)),
                      "test": min(len(test_source), max_test_sentences or len(test_source))},
        "context": context, "train_sequences": len(x_train), "test_sequences": len(x_test),
        "train_unigram_entropy_nats": unigram_entropy(y_train, BYTE_VOCAB),
    }
    return dataset, provenance
