"""The streamed input pipeline: ArrayRecord export round trip, the plan's example order per
process slice, augmentation seeded per example, iterator state, in-memory fit errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from bench.config import ConfigError, from_dict
from bench.data import DATASETS, load_dataset, open_dataset
from bench.data.arrayrecord import exported_sha256, read_metadata
from bench.data.augment import Augment, center_crop, example_rng, pad_crop_flip, random_resized_crop
from bench.data.export import export
from bench.rules.plan import BatchPlan
from bench.data.stream import (LocalSlice, StreamOptions, TrainStream, eval_chunks, exported_stream,
                               load_in_memory, require_fits_in_memory)
from bench.core.job import eval_indices
from conftest import REPO

SYNTH = {"name": "synthetic", "synthetic_train": 300, "synthetic_test": 70, "input_dim": 6}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The synthetic dataset exported (3 train shards) and as loaded in memory."""
    data = load_dataset(from_dict({"dataset": SYNTH}).dataset)
    directory = tmp_path_factory.mktemp("synthetic")
    export(data, directory, shards=3)
    return data, directory


def test_export_round_trip_is_bit_exact(exported):
    data, directory = exported
    meta = read_metadata(directory)
    assert meta["splits"]["train"]["num_examples"] == 300 and len(meta["splits"]["train"]["shards"]) == 3
    assert meta["features"]["x"] == {"shape": [6], "dtype": "float32", "stored": "float32"}
    assert meta["features"]["y"] == {"shape": [], "dtype": "int32", "stored": "uint8"}
    assert meta["sha256"] == data.checksum() == exported_sha256(directory)
    loaded = open_dataset(from_dict({"dataset": {"name": "arrayrecord", "path": str(directory)}}).dataset)
    for key in ("x_train", "y_train", "x_test", "y_test"):
        a, b = getattr(data, key), getattr(loaded, key)
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert loaded.checksum() == data.checksum() and loaded.num_classes == data.num_classes


def test_export_cli_writes_metadata_and_refuses_to_overwrite(tmp_path):
    cmd = [sys.executable, "-m", "bench.data.export", "synthetic", str(tmp_path),
           "dataset.synthetic_train=64", "dataset.synthetic_test=16"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert (meta["splits"]["train"]["num_examples"], meta["splits"]["test"]["num_examples"]) == (64, 16)
    assert meta["source"]["overrides"] == ["dataset=synthetic", "dataset.synthetic_train=64",
                                           "dataset.synthetic_test=16"]
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert again.returncode == 2
    assert again.stderr.strip() == (f"error: {tmp_path} already holds an export (metadata.json); "
                                    f"choose another directory or pass --force")


def test_missing_or_foreign_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^dataset.path=.*: no metadata.json there; write one with "
                                          r"python -m bench.data.export <dataset> "):
        open_dataset(from_dict({"dataset": {"name": "arrayrecord", "path": str(tmp_path)}}).dataset)
    with pytest.raises(ConfigError, match=r"^dataset.path is required for dataset=arrayrecord"):
        from_dict({"dataset": {"name": "arrayrecord"}})
    with pytest.raises(ConfigError, match=r"^dataset.augment=cifar needs dataset.loader=stream"):
        from_dict({"dataset": {"name": "arrayrecord", "path": "x", "augment": "cifar"}})
    with pytest.raises(ConfigError, match=r"^dataset.loader=memory: dataset=imagenet2012 does not fit"):
        from_dict({"dataset": {"name": "imagenet2012", "loader": "memory"}})


def test_memory_fit_error_is_one_line():
    with pytest.raises(ConfigError) as err:
        require_fits_in_memory("big", 3 * 2**30, "1000 examples of 3 MiB", {"host": 4 * 2**30})
    assert str(err.value) == ("dataset=big does not fit in memory: 3.0 GiB (1000 examples of 3 MiB) and "
                              "the host has 4.0 GiB free (at most half of it is used for data); use "
                              "dataset.loader=stream")
    require_fits_in_memory("small", 2**30, "", {"host": 4 * 2**30, "device": 2 * 2**30})


def test_load_in_memory_refuses_a_dataset_too_large(exported):
    _, directory = exported
    with pytest.raises(ConfigError, match=r"^dataset=synthetic does not fit in memory: .*; use dataset.loader=stream"):
        load_in_memory(exported_stream(str(directory)), available={"host": 1000})


def _plan() -> BatchPlan:
    # two replicas, a batch-size stage change inside epoch 1 (exact offsets), drop-last
    return BatchPlan([3, 11], 300, [(0, 40), (1.5, 80)], budget=(4, "epochs"))


@pytest.mark.parametrize("local", [LocalSlice(0, 4, 4), LocalSlice(0, 2, 4), LocalSlice(3, 4, 4)])
def test_streamed_batches_are_the_plans_rows_of_this_process(exported, local):
    data, directory = exported
    plan = _plan()
    stream = TrainStream(exported_stream(str(directory)), plan, local, StreamOptions(threads=3, prefetch=2))
    seen = 0
    for start, count, b in plan.segments(0, plan.total_steps):
        for first in range(start, start + count, 7):
            n = min(7, start + count - first)
            x, y = stream.take(first, n)
            lo, hi = local.rows(b)
            idx = plan.indices(first, n)[:, :, lo:hi]
            np.testing.assert_array_equal(x, data.x_train[idx])
            np.testing.assert_array_equal(y, data.y_train[idx])
            seen += n
    assert seen == plan.total_steps and len(plan.sizes()) == 2
    stream.close()


def test_iterator_state_resumes_at_the_saved_step(exported):
    _, directory = exported
    plan, data = _plan(), exported_stream(str(directory))
    a = TrainStream(data, plan, LocalSlice(0, 1, 1))
    a.take(0, 5)
    state = a.get_state()
    assert json.loads(state)["step"] == 5
    reference = a.take(5, 4)
    b = TrainStream(data, plan, LocalSlice(1, 2, 2))   # another process layout: the step is what counts
    b.set_state(state)
    assert b.next_step == 5
    x, _ = b.take(5, 4)
    np.testing.assert_array_equal(x, reference[0][:, :, x.shape[2]:])
    a.close(), b.close()


def test_eval_chunks_cover_the_split_once(exported):
    data, directory = exported
    idx, mask = eval_indices(70, 32, 2)
    parts = [list(eval_chunks(exported_stream(str(directory)), "test", idx, mask, LocalSlice(p, p + 1, 2)))
             for p in range(2)]
    x = np.concatenate([np.concatenate([a[0], b[0]]) for a, b in zip(*parts)])
    m = np.concatenate([np.concatenate([a[2], b[2]]) for a, b in zip(*parts)])
    np.testing.assert_array_equal(x[m > 0], data.x_test)


# ----------------------------------------------------------------------------- augmentation


def test_pad_crop_flip_is_a_window_of_the_padded_image():
    image = np.arange(6 * 5 * 2, dtype=np.float32).reshape(6, 5, 2) + 1
    padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
    windows = {(t, l, f) for t in range(5) for l in range(5) for f in (0, 1)}
    for index in range(20):
        out = pad_crop_flip(image, example_rng(0, 0, index), padding=2)
        assert out.shape == image.shape
        crops = [padded[t:t + 6, l:l + 5] for t, l, _ in windows]
        flips = [f for _, _, f in windows]
        assert any(np.array_equal(out, c[:, ::-1] if f else c) for c, f in zip(crops, flips))


def test_augmentation_is_a_function_of_seed_epoch_and_example():
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    aug = Augment("imagenet", image_size=16)
    one = aug.train(image, example_rng(1, 2, 3))
    assert one.shape == (16, 16, 3) and one.dtype == np.uint8
    np.testing.assert_array_equal(one, aug.train(image, example_rng(1, 2, 3)))
    others = [aug.train(image, example_rng(*key)) for key in ((1, 3, 3), (2, 2, 3), (1, 2, 4))]
    assert all(not np.array_equal(one, o) for o in others)


def test_random_resized_crop_and_center_crop_shapes():
    image = np.full((30, 50, 3), 7, np.uint8)
    assert random_resized_crop(image, example_rng(0, 0, 0), 12).shape == (12, 12, 3)
    ramp = np.tile(np.arange(64, dtype=np.uint8)[None, :, None], (32, 1, 3))
    crop = center_crop(ramp, 14, fraction=0.875)   # shorter side 16, then the central 14
    assert crop.shape == (14, 14, 3)
    assert abs(float(crop[:, :, 0].mean()) - 31.5) < 1.0   # centered horizontally


def test_streamed_training_batches_are_augmented_per_example(exported):
    """The same example in two batch positions / process slices gets the same augmentation."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 8, 8, 3)).astype(np.float32)
    from bench.data.base import ArrayDataset
    data = ArrayDataset("img", images, np.arange(12, dtype=np.int32) % 3, images[:4],
                        np.zeros(4, np.int32), 3)
    directory = exported[1].parent / "images"
    export(data, directory)
    stream = exported_stream(str(directory), Augment("cifar", padding=2))
    x1, _ = stream.examples("train", [5, 2], seed=9, epoch=1)
    x2, _ = stream.examples("train", [2, 7, 5], seed=9, epoch=1)
    np.testing.assert_array_equal(x1[0], x2[2])
    np.testing.assert_array_equal(x1[1], x2[0])
    plain, _ = stream.examples("train", [5, 2])   # no seed: evaluation, no augmentation
    np.testing.assert_array_equal(plain, images[[5, 2]])


# ----------------------------------------------------------------------------- TFDS as it is


def test_imagenet2012_streams_from_tfds_under_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=24):
        cfg = from_dict({"dataset": {"name": "imagenet2012", "image_size": 16}}).dataset
        data = open_dataset(cfg)
        assert (data.num_train, data.num_test, data.num_classes) == (24, 24, 1000)
        assert data.input_shape == (16, 16, 3)
        x, y = data.examples("train", [0, 5, 9], seed=0, epoch=0)
        assert x.shape == (3, 16, 16, 3) and x.dtype == np.float32 and y.dtype == np.int32
        ev, _ = data.examples("test", [1, 2])
        assert ev.shape == (2, 16, 16, 3)
        # normalized with ImageNet's per-channel mean and std
        raw = np.asarray(data.train.read([0])[0][0], np.float32) / 255
        assert np.isfinite(x).all() and abs(x.mean()) < 3 and raw.max() <= 1
    assert DATASETS.get("imagenet2012")().loader == "stream"


def test_iterator_position_is_saved_in_the_orbax_checkpoint(exported, tmp_path):
    import jax.numpy as jnp

    from bench.core.checkpoint import Checkpointer, seal

    _, directory = exported
    plan, data = _plan(), exported_stream(str(directory))
    stream = TrainStream(data, plan, LocalSlice(0, 1, 1))
    stream.take(0, 6)
    with Checkpointer(tmp_path / "ck", every_steps=None) as ckpt:
        ckpt.save(6, {"w": jnp.ones(3)}, {"step": 6}, force=True, data=stream)
    saved = tmp_path / "ck" / "6" / "data" / "process_0-of-1.json"
    assert json.loads(saved.read_text())["step"] == 6
    # a run saved on 2 processes restores on 1 from process 0's file (the step is the position)
    saved.rename(saved.with_name("process_0-of-2.json"))
    seal(tmp_path / "ck" / "6")  # as that run would have sealed it (the checksums cover file names)
    fresh = TrainStream(data, plan, LocalSlice(0, 1, 1))
    with Checkpointer(tmp_path / "ck", every_steps=None) as ckpt:
        state, extra = ckpt.restore(6, {"w": jnp.zeros(3)}, data=fresh)
    assert extra["step"] == 6 and fresh.next_step == 6 and float(state["w"].sum()) == 3.0
    np.testing.assert_array_equal(fresh.take(6, 2)[0], stream.take(6, 2)[0])


def test_grain_worker_processes_give_the_same_batches(exported):
    """mp_prefetch: the dataset pickled to a spawned worker reads the same rows in order."""
    data, directory = exported
    plan = _plan()
    stream = TrainStream(exported_stream(str(directory)), plan, LocalSlice(1, 2, 2),
                         StreamOptions(threads=1, prefetch=2, workers=2))
    x, y = stream.take(3, 5)
    idx = plan.indices(3, 5)[:, :, 20:40]
    np.testing.assert_array_equal(x, data.x_train[idx])
    np.testing.assert_array_equal(y, data.y_train[idx])
    stream.close()


def test_language_model_tokens_export_compactly_and_stream(tmp_path):
    cfg = from_dict({"dataset": {"name": "markov", "context": 32, "markov_train": 40, "markov_test": 8}})
    data = load_dataset(cfg.dataset)
    meta = export(data, tmp_path)
    assert meta["features"]["x"] == {"shape": [32], "dtype": "int32", "stored": "uint8"}
    assert meta["provenance"] == json.loads(json.dumps(data.provenance))
    stream = exported_stream(str(tmp_path))
    assert stream.tokens_per_example == 32 and stream.checksum() == data.checksum()
    x, y = stream.examples("train", [3, 17])
    assert x.dtype == np.int32
    np.testing.assert_array_equal(x, data.x_train[[3, 17]])
    np.testing.assert_array_equal(y, data.y_train[[3, 17]])


def test_export_refuses_a_streamed_only_dataset(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.data.export", "imagenet2012", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: dataset=imagenet2012 is streamed from its prepared TFDS "
                                   "files as they are; it is not loaded into memory (nor exported)")
