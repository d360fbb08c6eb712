"""Bad input stops before compile with one `error:` line naming the key (bench.preflight).

Each class of bad input is one parametrized test over its cases, run through the command line's
own pre-flight (:func:`bench.hydra_conf.preflight`, which composes exactly as
``python -m bench.train`` and validates with the data's metadata and the output paths) in
process; a few end-to-end cases check the exit code, the single line and that nothing is
written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.config import ConfigError, from_hydra
from bench.data import load_dataset
from bench.data.base import ArrayDataset
from bench.data.export import export
from bench.data.token_files import metadata_path, token_file_splits, write_token_file
from bench.hydra_conf import compose, preflight
from conftest import REPO

QUICK = ["dataset=synthetic", "dataset.synthetic_train=256", "dataset.synthetic_test=128",
         "model=mlp", "model.hidden=[16]", "budget=20steps", "eval.every_steps=10", "logger=none",
         "progress=false", "compile_cache_dir=null"]


def refused(overrides: list[str], match: str) -> str:
    """The pre-flight's error for ``overrides``: one line, matching ``match``."""
    err = preflight(overrides, multirun=False)
    assert err is not None, f"accepted: {overrides}"
    assert "\n" not in err and "Traceback" not in err
    assert match.lower() in err.lower(), err
    return err


# ------------------------------------------------------------------------------ data files


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Token files and exported directories, good and broken in every way the checks know."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    out = {"root": root}
    out["tokens"] = write_token_file(root / "good.bin", rng.integers(0, 50, 5000), 50)
    out["short"] = write_token_file(root / "short.bin", rng.integers(0, 50, 100), 50)
    bad = root / "bad"
    bad.mkdir()
    for name, data in (("empty.bin", b""), ("odd.bin", b"\x01\x00\x02")):
        (bad / name).write_bytes(data)
        metadata_path(bad / name).write_text(json.dumps({"dtype": "uint16", "vocab_size": 50}))
    short_by_one = write_token_file(bad / "cut.bin", rng.integers(0, 50, 400), 50)
    short_by_one.write_bytes(short_by_one.read_bytes()[:-2])
    (bad / "junk.npy").write_bytes(b"not numpy at all")
    metadata_path(bad / "junk.npy").write_text(json.dumps({"vocab_size": 50}))
    (bad / "tokens.txt").write_text("hello")
    metadata_path(bad / "tokens.txt").write_text(json.dumps({"vocab_size": 50}))
    (bad / "nometa.bin").write_bytes(b"\x01\x00" * 100)
    for name, meta in (("notjson.bin", "{oops"), ("novocab.bin", '{"dtype": "uint16"}'),
                       ("bpt.bin", '{"dtype": "uint16", "vocab_size": 50, "bytes_per_token": -1}'),
                       ("bigvocab.bin", '{"dtype": "uint16", "vocab_size": 70000}')):
        (bad / name).write_bytes(b"\x01\x00" * 100)
        metadata_path(bad / name).write_text(meta)
    # token ids beyond the vocabulary its metadata states
    over = write_token_file(root / "over.bin", rng.integers(0, 300, 3000), 300)
    meta = json.loads(metadata_path(over).read_text())
    metadata_path(over).write_text(json.dumps({**meta, "vocab_size": 100}))
    out["over"] = over

    x = rng.normal(size=(40, 6)).astype(np.float32)
    data = ArrayDataset("tiny", x[:30], np.arange(30) % 3, x[30:], np.arange(10) % 3, 3)
    for name in ("ar", "ar_labels", "ar_escape", "ar_missing", "ar_trunc", "ar_count", "ar_shape",
                 "ar_format"):
        export(data, root / name, shards=2)
    _edit_meta(root / "ar_labels", lambda m: {**m, "num_classes": 2})
    _edit_meta(root / "ar_escape", lambda m: _set_shards(m, ["../../../../etc/passwd"]))
    (root / "ar_missing" / "train-00001-of-00002.array_record").unlink()
    shard = root / "ar_trunc" / "train-00000-of-00002.array_record"
    shard.write_bytes(shard.read_bytes()[:-40])
    _edit_meta(root / "ar_count", lambda m: {**m, "splits": {**m["splits"], "train": {
        **m["splits"]["train"], "num_examples": 31}}})
    _edit_meta(root / "ar_shape", lambda m: {**m, "features": {**m["features"], "x": {
        **m["features"]["x"], "shape": [7]}}})
    _edit_meta(root / "ar_format", lambda m: {**m, "format": "something-else"})
    (root / "empty_dir").mkdir()
    return out


def _edit_meta(directory: Path, change) -> None:
    path = directory / "metadata.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _set_shards(meta: dict, names: list[str]) -> dict:
    return {**meta, "splits": {**meta["splits"], "train": {**meta["splits"]["train"], "shards": names}}}


TOKEN_FILE_CASES = {  # file under files["root"] / "bad" -> what the line says
    "missing.bin": "no such token file", "empty.bin": "empty", "odd.bin": "whole number",
    "cut.bin": "truncated", "junk.npy": "not a readable .npy", "tokens.txt": "must end in .bin or .npy",
    "nometa.bin": "missing metadata", "notjson.bin": "not json", "novocab.bin": "vocab_size",
    "bpt.bin": "bytes_per_token", "bigvocab.bin": "cannot hold",
}


@pytest.mark.parametrize("name", sorted(TOKEN_FILE_CASES))
def test_token_files_refused(files, name):
    err = refused(["dataset=tokens", f"dataset.path={files['root'] / 'bad' / name}",
                   "model=transformer"], TOKEN_FILE_CASES[name])
    assert err.startswith("dataset.path=")


ARRAYRECORD_CASES = {
    "nowhere": "no such directory", "empty_dir": "no metadata.json", "ar_format": "not a batch-bench",
    "ar_escape": "inside the dataset directory", "ar_missing": "is missing",
    "ar_trunc": "shard train-00000-of-00002.array_record", "ar_count": "the metadata says 31", "ar_shape": "bytes",
}


@pytest.mark.parametrize("name", sorted(ARRAYRECORD_CASES))
def test_arrayrecord_dirs_refused(files, name):
    refused(["dataset=arrayrecord", f"dataset.path={files['root'] / name}", "model=mlp"],
            ARRAYRECORD_CASES[name])


def test_good_files_pass_and_describe_matches_the_loaded_data(files):
    from bench.data.base import data_info
    for overrides in (["dataset=tokens", f"dataset.path={files['tokens']}", "dataset.context=16",
                       "model=transformer", "batch_size=8"],
                      ["dataset=arrayrecord", f"dataset.path={files['root'] / 'ar'}", "model=mlp",
                       "batch_size=10"]):
        assert preflight([*overrides, "logger=none"], multirun=False) is None
        cfg = from_hydra(compose(overrides)).dataset
        assert cfg.describe() == data_info(load_dataset(cfg))


def test_cheap_builtin_descriptions_match_their_data():
    """The metadata-only descriptions of built-in datasets state what loading returns."""
    from bench.data.base import data_info
    for overrides in (["dataset=digits"], ["dataset=synthetic"], ["dataset=pydoc"],
                      ["dataset=markov", "dataset.markov_train=64", "dataset.markov_test=16"]):
        cfg = from_hydra(compose(overrides)).dataset
        assert cfg.describe() == data_info(load_dataset(cfg)), overrides


def test_mnist1d_description_matches_its_data():
    from bench.data import DATASETS
    from bench.data.base import data_info
    cfg = DATASETS.create("mnist1d")
    assert cfg.describe() == data_info(load_dataset(cfg))


# ------------------------------------------------------------------ ranges and own writer


def test_token_ids_beyond_vocabulary_refused_at_load(files):
    cfg = from_hydra(compose(["dataset=tokens", f"dataset.path={files['over']}",
                              "dataset.context=16"])).dataset
    with pytest.raises(ConfigError, match=r"token ids span \[0, 29\d\].*vocab_size is 100"):
        load_dataset(cfg)


def test_labels_beyond_num_classes_refused_at_load(files):
    cfg = from_hydra(compose(["dataset=arrayrecord",
                              f"dataset.path={files['root'] / 'ar_labels'}"])).dataset
    with pytest.raises(ConfigError, match=r"labels span \[0, 2\].*num_classes is 2"):
        load_dataset(cfg)


def test_own_writer_without_bytes_per_token_reads_as_one_byte(files):
    """write_token_file's metadata has no bytes_per_token: bits per byte use 1, not float(None)."""
    _, _, provenance = token_file_splits(files["tokens"], 16)
    assert "bytes_per_token" not in provenance
    data = load_dataset(from_hydra(compose(["dataset=tokens", f"dataset.path={files['tokens']}",
                                            "dataset.context=16"])).dataset)
    assert data.bytes_per_token == 1.0
    stated = ArrayDataset("t", data.x_train, data.y_train, data.x_test, data.y_test, 50,
                          provenance={"bytes_per_token": None})
    assert stated.bytes_per_token == 1.0


# ------------------------------------------------------------------------ data-dependent

DATA_CASES = [
    (["model=resnet"], "model=resnet needs images"),
    (["model=resnet50"], "model=resnet50 needs images"),
    (["dataset=pydoc", "model=cnn"], "model=cnn cannot take token sequences"),
    (["dataset=pydoc", "model=mlp"], "model=mlp cannot take token sequences"),
    (["model=transformer"], "model=transformer needs token sequences"),
    (["dataset=synthetic", "model=cnn"], "model=cnn needs [L, C] sequences"),
    (["dataset=pydoc", "model=transformer", "dataset.context=300000"], "dataset.context=300000"),
    (["dataset=markov", "dataset.order=6", "dataset.alphabet_size=64"], "transition entries"),
    (["dataset=markov", "dataset.concentration=1e-6"], "may never mix"),
    (["dataset.num_train=1000000"], "dataset.num_train=1000000 is larger than the training set"),
    (["eval.train_examples=100000"], "eval.train_examples=100000 is larger"),
    (["metrics.hessian=true", "metrics.noise_small_batch=1000"], "metrics.noise_small_batch=1000"),
    (["dataset=synthetic", "dataset.input_dim=2", "dataset.num_classes=2", "model=mlp",
      "model.hidden=[2]", "metrics.hessian=true", "metrics.top_k=12", "metrics.lanczos_iters=12"],
     "metrics.top_k=12 is not below the model's parameter count (12)"),
]


@pytest.mark.parametrize("overrides,match", DATA_CASES, ids=[" ".join(o) for o, _ in DATA_CASES])
def test_data_dependent_refused(overrides, match):
    refused(overrides, match)


@pytest.mark.parametrize("dataset", ["cifar10", "mnist", "lm1b"])
def test_tfds_not_prepared_refused(dataset, tmp_path):
    model = "model=transformer" if dataset == "lm1b" else "model=cnn"
    refused([f"dataset={dataset}", f"dataset.data_dir={tmp_path}", model], "is not prepared")


def test_augment_on_sequences_refused(files):
    refused(["dataset=arrayrecord", f"dataset.path={files['root'] / 'ar'}", "model=mlp",
             "batch_size=10", "dataset.loader=stream", "dataset.augment=cifar"],
            "dataset.augment=cifar crops and flips images")


# ----------------------------------------------------------------------------------- paths


def test_paths_refused(tmp_path, files):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.py").write_text("x")
    rec_dir = tmp_path / "rec"
    (rec_dir / "record_r0.json").mkdir(parents=True)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "checkpoints").write_text("x")
    cases = [
        ([f"output_dir={a_file}"], "exists and is not a directory"),
        (["output_dir=/dev/null"], "exists and is not a directory"),
        ([f"output_dir={a_file}/sub"], "is not a directory"),
        (["output_dir=/proc/batch-bench-run"], "is not writable"),
        ([f"output_dir={foreign}"], "holds files no run writes (notes.py)"),
        ([f"output_dir={rec_dir}"], "record_r0.json is a directory"),
        ([f"output_dir={ckpt}"], "checkpoints is a file"),
        ([f"compile_cache_dir={a_file}"], "compile_cache_dir="),
        (["compile_cache_dir=/proc/batch-bench-cache"], "is not writable"),
        (["logger=wandb", "logger.project=a/b"], "is not a W&B project name"),
        (["logger=wandb", "logger.project=what?"], "is not a W&B project name"),
    ]
    for overrides, match in cases:
        refused([*QUICK, *overrides], match)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.py"]  # nothing written


# --------------------------------------------------------------------------------- numbers

NUMBER_CASES = [
    (["seed=-1"], "seed=-1 must be an integer in [0, 9223372036854775807]"),
    (["seed=9223372036854775808"], "must be an integer in [0, 9223372036854775807]"),
    (["replicas.seeds=[-5]"], "replicas.seeds[0]=-5"),
    (["budget=0.0001epochs"], "less than one training step"),
    (["budget=0.5steps"], "budget='0.5steps' must be a positive number"),
    (["budget=10examples"], "less than one training step"),
    (["eval.every_steps_at={0:5}"], "batch size 0"),
    (["eval.every_steps_at={-4:5}"], "batch size -4"),
    (["eval.every_steps_at={64:5}"], "none of its batch sizes (64) is one the run trains at (128)"),
    (["schedule=step", "schedule.decay_epochs=[30,20]"], "must be increasing epochs > 0"),
    (["schedule=step", "schedule.decay_epochs=[0,10]"], "must be increasing epochs > 0"),
    (["batch_schedule=warmup", "batch_schedule.warmup_epochs=5", "budget=2epochs"],
     "is not shorter than training"),
    (["steps_per_call=100000"], "steps_per_call=100000 must be an integer in [1, 1000]"),
    (["model.kernel_size=100"], "model.kernel_size=100 is larger than the input of conv 1"),
    (["model.conv_stride=64"], "model.conv_stride=64 is larger"),
    (["model.pool_size=30"], "model.pool_size=30 is larger than the input of pool 1"),
    (["model.channels=[]"], "model.channels=[] builds a CNN without convolutions"),
    (["metrics.hessian=true", "metrics.sharpness_eps=[]"], "metrics.sharpness_eps=[]"),
    (["logger=none", "logger.mode=online"], "logger.mode=online has no effect with logger=none"),
    (["optimizer.lr=1e-320"], "below float32's smallest normal number"),
    (["replicas.lr=[0.1,1e-40]"], "replicas.lr[1]=1e-40"),
]


@pytest.mark.parametrize("overrides,match", NUMBER_CASES, ids=[" ".join(o) for o, _ in NUMBER_CASES])
def test_numbers_refused(overrides, match):
    refused(overrides, match)


# ------------------------------------------------------------------ keys that do nothing

NO_EFFECT_CASES = [
    (["metrics.every=100"], "metrics.every=100 has no effect without metrics.hessian=true"),
    (["metrics.dense_every=10"], "metrics.dense_every=10 has no effect"),
    (["metrics.hessian=true", "metrics.dense_every=10"], "needs metrics.dense_until"),
    (["metrics.hessian=true", "metrics.dense_until=100"], "metrics.dense_until=100 has no effect"),
    (["model.ghost_batch_size=16"], "model.ghost_batch_size=16 has no effect without BatchNorm"),
    (["model=mlp", "model.ghost_batch_size=16"], "without BatchNorm"),
]


@pytest.mark.parametrize("overrides,match", NO_EFFECT_CASES, ids=[" ".join(o) for o, _ in NO_EFFECT_CASES])
def test_keys_without_effect_refused(overrides, match):
    refused(overrides, match)


# ------------------------------------------------------------------------- combinations


def test_mse_on_language_model_refused():
    refused(["dataset=pydoc", "model=transformer", "loss=mse"], "loss=mse")


def test_replicas_with_batch_warmup_follow_the_schedule():
    """K replicas with a batch-size warmup: each replica's steps are its own seed's run alone
    (same batch sizes, its own example order), so the combination is honoured, not refused."""
    cfg = from_hydra(compose(["replicas.seeds=[3,4]", "batch_schedule=warmup",
                              "batch_schedule.start_batch_size=32", "batch_schedule.warmup_epochs=1",
                              "budget=3epochs"]))
    from bench.job_plan import job_plan
    together = job_plan(cfg, 4000)
    assert len(set(together.sizes())) > 1
    for k, seed in enumerate((3, 4)):
        alone = job_plan(cfg, 4000, seeds=[seed])
        assert alone.total_steps == together.total_steps
        for t in range(together.total_steps):
            assert together.batch_size(t) == alone.batch_size(t)
            np.testing.assert_array_equal(together.indices(t, 1)[0, k], alone.indices(t, 1)[0, 0])


def test_good_defaults_and_presets_pass():
    """The default job and every preset that needs no unprepared data pass the pre-flight."""
    assert preflight(["logger=none"], multirun=False) is None
    from bench.hydra_conf import group_options
    for preset in group_options("experiment"):
        err = preflight([f"+experiment={preset}"], multirun=False)
        unprepared = err is not None and any(
            s in err for s in ("is not prepared", "path is required", "no such token file",
                               "no such directory"))
        assert err is None or unprepared, (preset, err)


# ------------------------------------------------------------------------------ end to end


def _train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "bench.train", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


@pytest.mark.parametrize("bad", [["model=resnet"], ["dataset.num_train=1000000"],
                                 ["metrics.every=100"]])
def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path, bad):
    out = tmp_path / "out"
    proc = _train(*QUICK[:-1], *(["dataset=mnist1d", "model=cnn"] if bad[0] != "metrics.every=100"
                                 else []), *bad, f"output_dir={out}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []  # no output_dir, no outputs/ in the current directory


def test_cli_token_file_of_own_writer_trains_and_hydra_writes_under_output_dir(tmp_path, files):
    """A write_token_file file without bytes_per_token trains to a record (no TypeError), and
    Hydra's files go to output_dir, not to outputs/ in the current directory."""
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    cwd.mkdir()
    proc = _train("dataset=tokens", f"dataset.path={files['tokens']}", "dataset.context=16",
                  "model=transformer", "model.d_model=16", "model.num_layers=1",
                  "model.num_heads=1", "batch_size=8", "budget=2steps", "eval.every_steps=2",
                  "steps_per_call=2", "eval.batch_size=64", "eval.train_examples=64",
                  "logger=none", "progress=false", "compile_cache_dir=null", f"output_dir={out}",
                  cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "record_r0.json").read_text())
    assert record["status"] == "finished"
    assert list(cwd.iterdir()) == []
    assert (out / ".hydra").is_dir()


def test_cli_token_ids_beyond_vocabulary_exit_2(tmp_path, files):
    proc = _train("dataset=tokens", f"dataset.path={files['over']}", "dataset.context=16",
                  "model=transformer", "batch_size=8", "budget=4steps", "logger=none",
                  "progress=false", "compile_cache_dir=null", f"output_dir={tmp_path / 'out'}",
                  cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: dataset=tokens") and "vocab_size is 100" in lines[-1]
    assert not (tmp_path / "out" / "record_r0.json").exists()
