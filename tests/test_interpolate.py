"""bench.tools.interpolate: Keskar Figure 3 curves between two saved solutions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import small_config

ALPHAS = [-1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0]
BN_MLP = {"name": "mlp", "hidden": [32, 32], "batch_norm": True}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny runs with saved params (SB = 32, LB = 128), BatchNorm so stats matter; 2 seeds."""
    from bench.core.loop import run

    out = {}
    for name, b in (("sb", 32), ("lb", 128)):
        d = tmp_path_factory.mktemp(name)
        cfg = small_config(model=BN_MLP, batch_size=b, budget="30steps", save_params=True,
                           optimizer={"name": "adam", "lr": 0.01}, replicas={"seeds": [0, 1]})
        records = run(cfg, d)
        out[name] = (d, records)
    return out


@pytest.fixture(scope="module")
def curve(two_runs):
    from bench.tools.interpolate import interpolation_curve

    (sb_dir, _), (lb_dir, _) = two_runs["sb"], two_runs["lb"]
    return interpolation_curve(sb_dir / "record_r1.json", lb_dir / "record_r0.json", ALPHAS, alpha_chunk=3)


def test_curve_has_the_requested_alphas_and_columns(curve):
    assert list(curve.columns) == ["alpha", "train_loss", "train_accuracy", "test_loss", "test_accuracy"]
    assert curve["alpha"].tolist() == ALPHAS
    assert np.isfinite(curve[["train_loss", "test_loss"]].to_numpy()).all()
    assert curve[["train_accuracy", "test_accuracy"]].apply(lambda c: c.between(0, 1)).all().all()


def test_endpoints_reproduce_the_records_final_metrics(two_runs, curve):
    (_, sb_recs), (_, lb_recs) = two_runs["sb"], two_runs["lb"]
    row = curve.set_index("alpha")
    for alpha, record in ((0.0, sb_recs[1]), (1.0, lb_recs[0])):
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            assert row.loc[alpha, key] == pytest.approx(record["final"][key], rel=1e-5, abs=1e-6), (alpha, key)
    # the two solutions are different points (else the test would prove nothing)
    assert row.loc[0.0, "train_loss"] != pytest.approx(row.loc[1.0, "train_loss"], rel=1e-3)


def test_interpolated_tree_is_exact_at_the_ends_and_clips_variances(two_runs):
    import jax

    from bench.config import from_dict
    from bench.data import load_dataset
    from bench.tools.interpolate import interpolate_trees, load_params, template_tree

    (sb_dir, sb_recs), (lb_dir, _) = two_runs["sb"], two_runs["lb"]
    cfg = from_dict(sb_recs[0]["config"])
    data = load_dataset(cfg.dataset)
    _, template = template_tree(cfg, data.input_shape, data.num_classes)
    sb = load_params(sb_dir / "params_r0.npz", template)
    lb = load_params(lb_dir / "params_r0.npz", template)
    mixed = interpolate_trees(sb, lb, np.array([0.0, 1.0, -40.0, 40.0]))
    flat_mixed = jax.tree_util.tree_flatten_with_path(mixed)[0]
    flat_sb, flat_lb = jax.tree.leaves(sb), jax.tree.leaves(lb)
    assert len(flat_mixed) == len(flat_sb) > 0
    variances = 0
    for (path, m), s, l in zip(flat_mixed, flat_sb, flat_lb):
        np.testing.assert_array_equal(m[0], s)
        np.testing.assert_array_equal(m[1], l)
        if "'var'" in jax.tree_util.keystr(path):
            variances += 1
            assert (m >= 0).all()
    assert variances == 2   # two BatchNorm layers, their running variances interpolated too


def test_incompatible_or_paramless_records_are_refused(two_runs, tmp_path):
    import json

    from bench.tools.interpolate import interpolation_curve
    from bench.core.loop import run

    (sb_dir, _), _ = two_runs["sb"], two_runs["lb"]
    other = tmp_path / "other"
    run(small_config(model={"name": "mlp", "hidden": [8]}, budget="5steps", save_params=True), other)
    with pytest.raises(ValueError, match="model"):
        interpolation_curve(sb_dir / "record_r0.json", other / "record_r0.json", [0.0])
    rec = json.loads((other / "record_r0.json").read_text())
    rec["artifacts"] = {}
    (other / "record_r0.json").write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="save_params"):
        interpolation_curve(other / "record_r0.json", other / "record_r0.json", [0.0])


def test_cli_writes_the_csv_analysis_figures_reads(two_runs, tmp_path):
    from analysis.figures import INTERPOLATION_COLUMNS, interpolation_figure
    from bench.tools.interpolate import main

    (sb_dir, _), (lb_dir, _) = two_runs["sb"], two_runs["lb"]
    out = tmp_path / "interpolation.csv"
    assert main([str(sb_dir / "record_r0.json"), str(lb_dir / "record_r0.json"),
                 "--alphas", "-1", "2", "4", "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert tuple(df.columns) == INTERPOLATION_COLUMNS
    assert df["alpha"].tolist() == [-1.0, 0.0, 1.0, 2.0]
    interpolation_figure(df)  # the figure accepts it


def test_recomputed_batchnorm_statistics(two_runs):
    """bn_stats='recompute': at the ends, the statistics of the solution on the training batch;
    the curve differs from the interpolated-statistics one but keeps the alphas; finite."""
    from bench.tools.interpolate import interpolation_curve

    (sb_dir, _), (lb_dir, _) = two_runs["sb"], two_runs["lb"]
    args = (sb_dir / "record_r0.json", lb_dir / "record_r0.json", [-1.0, 0.0, 1.0, 2.0])
    rec = interpolation_curve(*args, bn_stats="recompute", recompute_passes=60)
    interp = interpolation_curve(*args)
    assert rec["alpha"].tolist() == [-1.0, 0.0, 1.0, 2.0] and rec.attrs["bn_stats"] == "recompute"
    assert np.isfinite(rec[["train_loss", "test_loss"]].to_numpy()).all()
    assert not np.allclose(rec["train_loss"], interp["train_loss"])
    with pytest.raises(ValueError, match="bn_stats"):
        interpolation_curve(*args, bn_stats="nope")
