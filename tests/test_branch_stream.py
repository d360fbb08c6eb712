"""A streamed branch continues the data position: branching a streamed parent with a changed
batch size gives the record of the same branch of the same parent in memory (whose data order
tests/test_branch.py checks against a hand-walked permutation stream)."""

from __future__ import annotations

import numpy as np

from bench.config import from_dict
from bench.core.loop import run
from bench.data import load_dataset
from bench.data.export import export
from conftest import small_config
from multiprocess import eval_table

SYNTH = {"name": "synthetic", "synthetic_train": 512, "synthetic_test": 256, "input_dim": 16}
COMMON = {"model": {"name": "mlp", "hidden": [32], "batch_norm": True}, "budget": "30steps"}


def test_streamed_branch_equals_the_in_memory_branch(tmp_path):
    export(load_dataset(from_dict({"dataset": SYNTH}).dataset), tmp_path / "ar", shards=2)
    stream = {"name": "arrayrecord", "path": str(tmp_path / "ar"), "loader": "stream", "threads": 2}
    records = {}
    for name, dataset in (("memory", SYNTH), ("stream", stream)):
        parent = tmp_path / f"{name}-parent"
        run(small_config(dataset=dataset, checkpoint={"every_steps": 10, "max_to_keep": 5}, **COMMON), parent)
        # 10 steps of 64 = 640 examples: epoch 1 at offset 128; at B = 128, step 5
        records[name] = run(small_config(dataset=dataset, init_from=str(parent), init_from_step=10, batch_size=128,
                                         **COMMON), tmp_path / f"{name}-branch")
    memory, streamed = records["memory"][0], records["stream"][0]
    assert memory["history"][0]["step"] == 5 and memory["parent"]["examples"] == 640
    a, b = eval_table(memory), eval_table(streamed)
    assert a.shape == b.shape and len(a) >= 3
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)  # as streamed vs in memory (observed: equal)
