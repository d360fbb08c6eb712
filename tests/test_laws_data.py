"""Published data as baselines, on constructed sources: the one-time converters (a git clone with
the authors' file layout), the SHA-checked loader, the overlays, and the CLI on constructed records."""

from __future__ import annotations

import collections
import io
import json
import lzma
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.laws import published_data as pdata
from analysis.laws.landscape import cell_optima
from laws_factory import grid_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import _provenance  # noqa: E402
import convert_porian  # noqa: E402
import convert_zhang  # noqa: E402


def _git_repo(path: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-qm", "x"]):
        subprocess.run(["git", "-C", str(path), *cmd], check=True, env={**env, "PATH": "/usr/bin:/bin"})
    return path


@pytest.fixture
def roots(tmp_path, monkeypatch):
    out, src = tmp_path / "shared", tmp_path / "sources"
    monkeypatch.setattr(_provenance, "OUT_ROOT", out)
    monkeypatch.setattr(_provenance, "SOURCE_ROOT", src)
    return out, src


def test_zhang_converter_reads_the_notebook_literal_and_loader_checks_sha(tmp_path, roots):
    out, src = roots
    results = {"85M": [46000, 23000, 13282, 7000, 3840, 2528, 1917, 1600, 1600]}
    nb = {"cells": [{"cell_type": "code", "source": ["goal_losses = {'85M': 3.42}\n"]},
                    {"cell_type": "code", "source": [f"results = {results!r}\n", "from scipy.optimize import fsolve\n"]}]}
    clone = _git_repo(tmp_path / "zhang", {"plots/chinchilla.ipynb": json.dumps(nb).encode(),
                                           "LICENSE": b"MIT License X\n\nPermission is hereby granted\n"})
    convert_zhang.convert(clone)
    t = pdata.load_csv("zhang2024", "steps_to_target.csv", data_root=out, source_root=src)
    assert t["steps_to_target"].tolist() == results["85M"] and t["batch_size"].tolist() == [2 ** i for i in range(6, 15)]
    assert (t["target_loss"] == 3.42).all() and (out / "zhang2024" / "LICENSE").read_text().startswith("MIT")
    prov = pdata.provenance("zhang2024", src)
    assert prov["repo"] == "github.com/hlzhang109/critical-batch-size" and len(prov["commit"]) == 40
    (out / "zhang2024" / "steps_to_target.csv").write_text("model,batch_size,steps_to_target\nx,1,2\n")
    with pytest.raises(pdata.PublishedDataError, match="SHA-256"):
        pdata.load_csv("zhang2024", "steps_to_target.csv", data_root=out, source_root=src)
    with pytest.raises(pdata.PublishedDataError, match="convert_porian.py"):
        pdata.load_csv("porian2024", "optimal.csv", data_root=out, source_root=src)


def _summary_pickle() -> bytes:
    pairs = pd.DataFrame({"flops": [1e17, 2e17], "n": [3e7, 4e7], "t": [5e8, 8e8], "loss": [4.0, 3.9],
                          "n_star_std": [0.1, 0.1], "t_star_std": [0.1, 0.1], "loss_star_std": [1e-3, 1e-3]})
    data = pd.DataFrame({"flops": [1e17, 2e17], "orig_n": [pd.Series([1e7, 3e7]), pd.Series([2e7, 4e7])],
                         "orig_t": [pd.Series([1.6e9, 5.5e8]), pd.Series([1.6e9, 8e8])],
                         "orig_loss": [pd.Series([4.2, 4.0]), pd.Series([4.0, 3.9])]})
    summary = pd.DataFrame([{"dataset": "rw", "hparams": "tuned", "warmup": "short", "decay": "const",
                             "param_count": "standard", "val": "val", "optimal_pairs": pairs, "data": data}])
    summary = summary.astype(object)  # as the authors' pickles: object columns (no pyarrow strings)
    return lzma.compress(pickle.dumps(summary))


def test_porian_converter_writes_optima_and_isoflop_points(tmp_path, roots):
    out, src = roots
    blob = _summary_pickle()
    clone = _git_repo(tmp_path / "porian", {**{f: blob for f in convert_porian.FILES}, "LICENSE": b"MIT\n"})
    convert_porian.convert(clone)
    opt = pdata.load_csv("porian2024", "optimal.csv", data_root=out, source_root=src)
    iso = pdata.load_csv("porian2024", "isoflop.csv", data_root=out, source_root=src)
    assert len(opt) == 2 * len(convert_porian.FILES) and set(opt["n_opt"]) == {3e7, 4e7}
    assert len(iso) == 4 * len(convert_porian.FILES) and set(iso["loss"]) == {4.2, 4.0, 3.9}
    assert pdata.provenance("porian2024", src)["sources"]["data/summary_df.pickle.xz"]["bytes"] == len(blob)


def test_porian_unpickler_refuses_classes_outside_pandas_and_numpy():
    evil = pickle.dumps(collections.OrderedDict(a=1))
    with pytest.raises(pickle.UnpicklingError, match="refused collections.OrderedDict"):
        convert_porian._DataOnly(io.BytesIO(evil)).load()


def test_normalized_steps_against_a_direct_computation():
    t = pd.DataFrame({"model": ["a"] * 3 + ["b"] * 3, "batch_size": [64, 128, 256] * 2,
                      "steps_to_target": [1000, 520, 300, 900, 450, 225]})
    n = pdata.normalized_steps(t)
    assert n.loc[n["model"] == "a", "relative_steps"].tolist() == [1.0, 0.52, 0.3]
    assert n.loc[n["model"] == "b", "relative_steps"].tolist() == [1.0, 0.5, 0.25]
    assert n["perfect"].tolist() == [1.0, 0.5, 0.25] * 2


def test_overlay_figures_build_on_constructed_data():
    theirs = pd.DataFrame({"model": ["85M"] * 3, "batch_size": [64, 128, 256], "steps_to_target": [46000, 23000, 13282]})
    ours = pd.DataFrame({"model": ["N=1e5"] * 3, "batch_size": [4, 8, 16], "steps_to_target": [800, 420, 260]})
    fig = pdata.steps_overlay_figure(ours, theirs)
    assert len(fig.axes[0].lines) == 4
    cells, _ = cell_optima(grid_table(seeds=(0,), sigma=0.0), n_boot=20)
    laws = [{"id": "x/b", "source": "x", "target": "b_opt", "coefficient": None, "exponents": {"tokens": 0.5},
             "confidence": "medium"}]
    fig = pdata.b_opt_overlay_figure(cells, laws)
    line = fig.axes[0].lines[-1]
    # the law with the true exponent and its constant refitted lies on the true optima
    np.testing.assert_allclose(line.get_ydata(), 0.5 * np.asarray(line.get_xdata()) ** 0.5, rtol=1e-3)


def test_fitted_cbs_solves_the_authors_equation():
    """S(B) = a + b / B exactly: the CBS solves S(B) = 1.2 S(B_ref) B_ref / B (checked by brentq)
    and equals the authors' closed form b / (5a) + 1.2 * 256 at B_ref = 256."""
    from scipy.optimize import brentq

    from analysis.laws.critical import fitted_cbs

    a, b = 1500.0, 3.0e6
    bs = 2.0 ** np.arange(6, 15)
    out = fitted_cbs(bs, a + b / bs, reference_batch=256)
    assert np.isclose(out["a"], a, rtol=1e-6) and np.isclose(out["b"], b, rtol=1e-6)
    s = lambda x: a + b / x  # noqa: E731
    root = brentq(lambda x: s(x) - 1.2 * s(256) * 256 / x, 256, 1e6)
    assert np.isclose(out["cbs"], root, rtol=1e-6) and np.isclose(out["cbs"], b / (5 * a) + 1.2 * 256, rtol=1e-6)
    # the reference matters: from B_ref = 64 the same curve gives a smaller CBS
    assert fitted_cbs(bs, s(bs), reference_batch=64)["cbs"] < out["cbs"] - 150


@pytest.mark.skipif(not (pdata.DATA_ROOT / "zhang2024" / "steps_to_target.csv").is_file(),
                    reason="Zhang et al.'s data not converted here (scripts/convert_zhang.py)")
def test_fitted_cbs_on_zhangs_data_grows_with_model_size():
    from analysis.laws.critical import fitted_cbs

    t = pdata.load_csv("zhang2024", "steps_to_target.csv")
    cbs = [fitted_cbs(g["batch_size"], g["steps_to_target"], reference_batch=256)["cbs"]
           for _, g in t.groupby("model", sort=False)]
    n = t.groupby("model", sort=False)["num_params"].first().to_numpy()
    assert np.all(np.diff(cbs) > 0)
    assert 0.4 < np.polyfit(np.log(n), np.log(cbs), 1)[0] < 0.55  # the authors' fit: 0.468
