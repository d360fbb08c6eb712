"""Data: loaders, epoch permutations, drop-last and full-batch semantics, TFDS under mock_data."""

from __future__ import annotations

import numpy as np
import pytest

from bench.data import load_dataset
from bench.data import DATASETS
from bench.rules.plan import BatchPlan, epoch_permutation
from bench.core.job import eval_indices


def test_drop_last_each_epoch_sees_disjoint_full_batches():
    n, b = 100, 32
    idx = BatchPlan([7], n, b).indices(0, 6)  # 3 steps per epoch (4 examples dropped), 2 epochs
    assert idx.shape == (6, 1, 32)
    for epoch in range(2):
        seen = idx[3 * epoch: 3 * epoch + 3, 0].ravel()
        assert len(np.unique(seen)) == 96  # disjoint, every step exactly B examples
        perm = epoch_permutation(7, epoch, n)
        np.testing.assert_array_equal(seen, perm[:96])
    assert not np.array_equal(idx[:3], idx[3:])  # a new permutation each epoch


def test_full_batch_is_the_whole_set_every_step():
    idx = BatchPlan([0], 50, 50).indices(0, 3)
    for t in range(3):
        np.testing.assert_array_equal(np.sort(idx[t, 0]), np.arange(50))


def test_batch_size_one():
    idx = BatchPlan([0], 5, 1).indices(0, 10)
    assert idx.shape == (10, 1, 1)
    np.testing.assert_array_equal(np.sort(idx[:5, 0, 0]), np.arange(5))


def test_replica_order_depends_only_on_its_seed():
    alone = BatchPlan([3], 64, 16).indices(5, 4)
    grouped = BatchPlan([1, 3, 2], 64, 16).indices(5, 4)
    np.testing.assert_array_equal(alone[:, 0], grouped[:, 1])


def test_eval_indices_cover_every_example_once():
    idx, mask = eval_indices(1003, 250, num_devices=4)
    assert idx.shape[1] % 4 == 0
    np.testing.assert_array_equal(np.sort(idx[mask > 0]), np.arange(1003))


@pytest.mark.parametrize("name, n_train, n_test, shape", [
    ("mnist1d", 4000, 1000, (40, 1)),   # the package's default split
    ("digits", 1437, 360, (8, 8, 1)),
    ("synthetic", 4096, 1024, (32,)),
])
def test_offline_loaders(name, n_train, n_test, shape):
    data = load_dataset(DATASETS.create(name))
    assert (data.num_train, data.num_test, data.input_shape) == (n_train, n_test, shape)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    assert set(np.unique(data.y_train)) == set(range(10))


def test_mnist1d_is_deterministic_and_standardized():
    a, b = load_dataset(DATASETS.create("mnist1d")), load_dataset(DATASETS.create("mnist1d"))
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert abs(float(a.x_train.mean())) < 1e-4 and abs(float(a.x_train.std()) - 1) < 1e-3


@pytest.mark.parametrize("name, shape, classes", [("cifar10", (32, 32, 3), 10), ("mnist", (28, 28, 1), 10),
                                                   ("cifar100", (32, 32, 3), 100)])
def test_tfds_loader_under_mock_data(name, shape, classes):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=48):
        data = load_dataset(DATASETS.create(name))
    assert data.num_train == 48 and data.num_test == 48
    assert data.input_shape == shape and data.num_classes == classes
    assert data.y_train.min() >= 0 and data.y_train.max() < classes
    # standardized per channel with training statistics
    np.testing.assert_allclose(data.x_train.mean(axis=(0, 1, 2)), 0, atol=1e-4)
