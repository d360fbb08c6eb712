"""Byte-level LM data: packing and held-out split, the pydoc corpus and its provenance, token
files (memory-mapped) equal to in-memory packing, lm1b under TFDS mock data, bits per byte and
unigram entropy."""

from __future__ import annotations

import hashlib
import json
import math
import platform
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from bench.data.text import (bits_per_byte, is_test_source, load_pydoc, pack, pack_splits,
                             split_point, stdlib_source_paths, stdlib_sources_bytes,
                             unigram_entropy)
from bench.data.token_files import (PackedTokens, TokenFile, load_token_file, metadata_path,
                                    write_token_file)

# ---------------------------------------------------------------- packing


def test_pack_windows_of_t_plus_one_with_stride_t():
    x, y = pack(np.arange(11), 3)
    np.testing.assert_array_equal(x, [[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    np.testing.assert_array_equal(y, [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert x.dtype == y.dtype == np.int32
    # every token but the first is a target exactly once when the windows fit exactly
    _, y = pack(np.arange(13), 4)
    np.testing.assert_array_equal(np.sort(y.ravel()), np.arange(1, 13))


def test_split_point_is_the_last_fraction():
    assert split_point(100, 0.1) == 90
    assert split_point(101, 0.1) == 90          # ceil: the held-out tail gets the rounding
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\), got 1.0"):
        split_point(100, 1.0)


def test_no_sequence_crosses_the_split_or_a_part_boundary():
    # token value = its position in the corpus, so a sequence shows where it came from
    parts = [np.arange(0, 1000), np.arange(1000, 1500)]
    cuts = [split_point(1000, 0.1), 1000 + split_point(500, 0.1)]
    x_tr, y_tr, x_te, y_te = pack_splits(parts, 16, 0.1)
    for x, y in [(x_tr, y_tr), (x_te, y_te)]:
        np.testing.assert_array_equal(y, x + 1)                  # contiguous, no jump anywhere
        np.testing.assert_array_equal(np.diff(x, axis=1), 1)
    train_region = lambda v: (v < cuts[0]) | ((v >= 1000) & (v < cuts[1]))
    assert train_region(x_tr).all() and train_region(y_tr).all()
    assert not train_region(x_te).any() and not train_region(y_te).any()
    assert len(x_tr) == (cuts[0] - 1) // 16 + (cuts[1] - 1000 - 1) // 16
    assert len(x_te) == (1000 - cuts[0] - 1) // 16 + (1500 - cuts[1] - 1) // 16


def test_empty_held_out_split_is_an_error():
    with pytest.raises(ValueError, match=r"held-out split has no sequence of context 64 \(corpus parts of \[100\] tokens\)"):
        pack_splits([np.arange(100)], 64, 0.1)


# ---------------------------------------------------------------- pydoc corpus


def independent_pydoc_bytes() -> bytes:
    from pydoc_data.topics import topics
    return "\n\n".join(topics[k] for k in sorted(topics)).encode("utf-8")


def test_pydoc_corpus_layout_and_provenance():
    data, prov = load_pydoc(context=128)
    corpus = independent_pydoc_bytes()
    assert prov["sha256"] == hashlib.sha256(corpus).hexdigest() == prov["parts"][0]["sha256"]
    assert prov["python_version"] == platform.python_version()
    assert prov["num_bytes"] == prov["num_tokens"] == len(corpus) > 400_000
    assert data.num_classes == 256 and data.input_shape == (128,)
    assert data.x_train.dtype == data.y_train.dtype == np.int32
    cut = split_point(len(corpus), 0.1)
    assert bytes(data.x_train[0].astype(np.uint8)) == corpus[:128]
    assert bytes(data.y_train[0].astype(np.uint8)) == corpus[1:129]
    assert bytes(data.x_test[0].astype(np.uint8)) == corpus[cut:cut + 128]
    assert (data.num_train, data.num_test) == ((cut - 1) // 128, (len(corpus) - cut - 1) // 128)
    assert prov["train_unigram_entropy_nats"] == pytest.approx(unigram_entropy(data.y_train, 256))


def test_pydoc_corpus_is_stable_within_a_run():
    (a, pa), (b, pb) = load_pydoc(context=64), load_pydoc(context=64)
    assert pa["sha256"] == pb["sha256"]
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)


@pytest.mark.parametrize("path, excluded", [
    ("json/decoder.py", False), ("test/support/__init__.py", True),
    ("unittest/test/test_case.py", True), ("idlelib/idle_test/htest.py", True),
    ("lib2to3/tests/data/bom.py", True), ("test_foo.py", True), ("contest.py", False),
    ("site-packages/numpy/core.py", True)])
def test_stdlib_test_sources_are_excluded(path, excluded):
    assert is_test_source(Path(path)) is excluded


def test_stdlib_sources_in_sorted_order_without_tests(tmp_path):
    for rel, text in [("b.py", "B"), ("a/z.py", "Z"), ("a/tests/t.py", "T"), ("test_x.py", "X"),
                      ("a/notes.txt", "N")]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert [p.relative_to(tmp_path).as_posix() for p in stdlib_source_paths(tmp_path)] == ["a/z.py", "b.py"]
    assert stdlib_sources_bytes(tmp_path) == b"Z\nB"


def test_pydoc_with_stdlib_sources_adds_the_code_corpus():
    data, prov = load_pydoc(context=256, include_stdlib=True)
    docs, code = prov["parts"]
    assert docs["sha256"] == hashlib.sha256(independent_pydoc_bytes()).hexdigest()
    assert code["num_bytes"] > 5_000_000 and prov["num_bytes"] == docs["num_bytes"] + code["num_bytes"]
    root = Path(sysconfig.get_paths()["stdlib"])
    files = {p.relative_to(root).as_posix() for p in stdlib_source_paths()}
    assert "json/decoder.py" in files and "test/__init__.py" not in files
    assert not any(is_test_source(Path(f)) for f in files)
    # each part split and packed on its own
    cuts = [split_point(docs["num_bytes"], 0.1), split_point(code["num_bytes"], 0.1)]
    assert data.num_train == (cuts[0] - 1) // 256 + (cuts[1] - 1) // 256


# ---------------------------------------------------------------- measures


def test_bits_per_byte():
    assert bits_per_byte(math.log(2)) == pytest.approx(1.0)
    assert bits_per_byte(math.log(2), bytes_per_token=4) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="bytes_per_token must be > 0, got 0"):
        bits_per_byte(1.0, 0)


def test_unigram_entropy():
    assert unigram_entropy(np.array([0, 0, 1, 1])) == pytest.approx(math.log(2))
    assert unigram_entropy(np.array([[3, 3], [3, 9]])) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert unigram_entropy(np.full(10, 7)) == 0.0
    assert unigram_entropy(np.arange(256), 256) == pytest.approx(math.log(256))


# ---------------------------------------------------------------- token files


@pytest.fixture
def corpus_tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 50257, size=10_001).astype(np.int64)


@pytest.mark.parametrize("suffix", [".bin", ".npy"])
def test_token_file_reader_equals_in_memory_packing(tmp_path, corpus_tokens, suffix):
    path = write_token_file(tmp_path / f"train{suffix}", corpus_tokens, vocab_size=50257,
                            tokenizer="gpt2", source="random ids")
    meta = json.loads(metadata_path(path).read_text())
    assert meta["dtype"] == "uint16" and meta["num_tokens"] == 10_001 and meta["tokenizer"] == "gpt2"
    assert isinstance(TokenFile(path).tokens, np.memmap)            # mapped, not read
    data, prov = load_token_file(path, context=64, verify_sha256=True)
    x_tr, y_tr, x_te, y_te = pack_splits([corpus_tokens], 64, 0.1)
    for a, b in [(data.x_train, x_tr), (data.y_train, y_tr), (data.x_test, x_te), (data.y_test, y_te)]:
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.int32
    assert data.num_classes == 50257 and prov["files"][0]["sha256_verified"] is True


def test_packed_rows_are_read_on_demand(tmp_path, corpus_tokens):
    path = write_token_file(tmp_path / "t.bin", corpus_tokens, vocab_size=50257)
    rows = PackedTokens(TokenFile(path).tokens, 0, 9000, 32)
    x_all, y_all = pack(corpus_tokens[:9000], 32)
    pick = np.array([5, 0, 200, 5])
    x, y = rows[pick]
    np.testing.assert_array_equal(x, x_all[pick])
    np.testing.assert_array_equal(y, y_all[pick])
    np.testing.assert_array_equal(rows[10:12][0], x_all[10:12])
    with pytest.raises(IndexError, match=r"sequence index out of range \[0, 281\)"):
        rows[np.array([281])]


def test_large_vocabulary_uses_uint32_and_a_separate_test_file(tmp_path):
    rng = np.random.default_rng(1)
    train, test = rng.integers(0, 100_000, 5000), rng.integers(0, 100_000, 700)
    tr = write_token_file(tmp_path / "train.bin", train, vocab_size=100_000)
    te = write_token_file(tmp_path / "val.bin", test, vocab_size=100_000)
    assert tr.stat().st_size == 4 * 5000
    data, prov = load_token_file(tr, context=50, test_path=te, max_train_tokens=1000)
    np.testing.assert_array_equal(data.x_train, pack(train, 50)[0][:20])
    np.testing.assert_array_equal(data.y_test, pack(test, 50)[1])
    assert prov["test_fraction"] is None and len(prov["files"]) == 2


def test_token_file_errors(tmp_path, corpus_tokens):
    path = write_token_file(tmp_path / "t.bin", corpus_tokens, vocab_size=50257)
    meta = json.loads(metadata_path(path).read_text())
    metadata_path(path).write_text(json.dumps({**meta, "sha256": "0" * 64}))
    with pytest.raises(ValueError, match=r"t.bin: SHA-256 [0-9a-f]{64} does not match the metadata's 0{64}"):
        TokenFile(path, verify_sha256=True)
    metadata_path(path).write_text(json.dumps({**meta, "num_tokens": 5}))
    with pytest.raises(ValueError, match="t.bin: metadata says 5 tokens, file has 10001"):
        TokenFile(path)
    metadata_path(path).unlink()
    with pytest.raises(ValueError, match=r"t.bin: missing metadata t.bin.json \(dtype, vocab_size\)"):
        TokenFile(path)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 10\)"):
        write_token_file(tmp_path / "u.bin", np.arange(11), vocab_size=10)


# ---------------------------------------------------------------- lm1b (TFDS mock data)


def test_lm1b_is_byte_encoded_sentences_joined_by_newlines():
    tfds = pytest.importorskip("tensorflow_datasets")
    from bench.data.lm1b import load_lm1b

    with tfds.testing.mock_data(num_examples=60):
        data, prov = load_lm1b(context=32, max_train_sentences=50)
        train = tfds.data_source("lm1b", split="train", download=False)
        test = tfds.data_source("lm1b", split="test", download=False)
        text = lambda src, n: "\n".join(str(src[i]["text"]) for i in range(n)).encode()
        train_bytes, test_bytes = text(train, 50), text(test, 60)
    x, y = pack(np.frombuffer(train_bytes, np.uint8), 32)
    np.testing.assert_array_equal(data.x_train, x)
    np.testing.assert_array_equal(data.y_train, y)
    np.testing.assert_array_equal(data.x_test, pack(np.frombuffer(test_bytes, np.uint8), 32)[0])
    assert prov["sha256"]["train"] == hashlib.sha256(train_bytes).hexdigest()
    assert prov["sentences"] == {"train": 50, "test": 60} and data.num_classes == 256
