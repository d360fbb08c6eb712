"""Paper presets (conf/experiment/): each composes into a valid Config, names its source and
states launch / runtime / expected result, and encodes the published settings."""

from __future__ import annotations

import re

import pytest

from bench.config import from_hydra, validate
from bench.job_plan import job_plan
from bench.hydra_conf import compose
from conftest import REPO

EXPERIMENTS = REPO / "conf" / "experiment"
PRESETS = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))
PAPER = ["keskar_f1", "keskar_c1", "keskar_c2", "keskar_c3", "keskar_c4", "goyal_linear",
         "hoffer_regime", "shallue_steps_to_result", "cohen_eos", "cohen_aeos"]
OFFLINE = ["keskar_offline", "goyal_offline", "shallue_offline", "eos_offline", "lm_offline",
           "eos_offline_cohen", "aeos_offline"]
TRAIN_SIZE = {"mnist": 60000, "cifar10": 50000, "cifar100": 50000}


@pytest.fixture(scope="module")
def preset():
    """``preset(name, *overrides) -> (Config, sweeper params dict)``."""
    def load(name: str, *overrides: str):
        ov = [f"+experiment={name}", *overrides]
        composed = compose(ov, return_hydra_config=True)
        params = composed.hydra.sweeper.params
        return validate(from_hydra(composed)), dict(params or {})
    return load


def sweep_values(params: dict, key: str) -> list[float]:
    return [float(v) for v in str(params[key]).split(",")]


def test_all_required_presets_exist():
    assert set(PAPER + OFFLINE) <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_names_its_source_and_documents_itself(preset, name):
    cfg, _ = preset(name)
    assert cfg.name == name
    assert cfg.source and len(cfg.source) > 20 and re.search(r"(19|20)\d\d", cfg.source)
    text = (EXPERIMENTS / f"{name}.yaml").read_text()
    assert text.splitlines()[0] == "# @package _global_"
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    for field in ("Source:", "Launch:", "Runtime:", "Expected:"):
        assert f"# {field}" in header, f"{name}: header lacks {field}"
    assert f"python -m bench.train +experiment={name}" in header


@pytest.mark.parametrize("name", [p for p in PAPER])
def test_paper_presets_use_tfds_data(preset, name):
    cfg, _ = preset(name)
    assert cfg.dataset.name in TRAIN_SIZE
    assert "dataset.data_dir" in (EXPERIMENTS / f"{name}.yaml").read_text()


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_presets_need_no_download(preset, name):
    cfg, _ = preset(name)
    assert cfg.dataset.name in ("mnist1d", "digits", "synthetic", "pydoc", "markov")
    assert cfg.logger.name == "none" and cfg.logger.mode == "disabled"


@pytest.mark.parametrize("name,dataset,lb", [
    ("keskar_f1", "mnist", 6000), ("keskar_c1", "cifar10", 5000), ("keskar_c2", "cifar10", 5000),
    ("keskar_c3", "cifar100", 5000), ("keskar_c4", "cifar100", 5000)])
def test_keskar_sb_256_lb_ten_percent_adam(preset, name, dataset, lb):
    cfg, params = preset(name)
    assert cfg.dataset.name == dataset
    assert lb == TRAIN_SIZE[dataset] // 10
    assert cfg.batch_size == 256                                   # SB
    assert sweep_values(params, "batch_size") == [256, lb]         # -m runs SB and LB
    lb_cfg, _ = preset(name, f"batch_size={lb}")                    # the documented LB override
    assert lb_cfg.batch_size == lb
    assert cfg.optimizer.name == "adam" and cfg.scaling.name == "none"
    assert len(cfg.replicas.seeds) == 5                            # 5 runs
    assert cfg.save_params                                         # Figure 3 interpolation
    m = cfg.metrics
    assert m.hessian and m.sharpness and tuple(m.sharpness_eps) == (1e-3, 5e-4)
    assert m.sharpness_iters == 10 and m.sharpness_subspace_dim == 100


def test_keskar_architectures(preset):
    f1, _ = preset("keskar_f1")
    assert f1.model.name == "mlp" and f1.model.hidden == (512,) * 5 and f1.model.batch_norm
    for name in ("keskar_c1", "keskar_c3"):
        m = preset(name)[0].model
        assert (m.name, m.channels, m.kernel_size, m.conv_stride, m.pool_size, m.pool_stride) == (
            "cnn", (64, 64), 5, 1, 3, 2)
        assert m.hidden == (384, 192) and m.batch_norm and m.dropout == 0.5
    for name in ("keskar_c2", "keskar_c4"):
        m = preset(name)[0].model
        assert m.name == "cnn" and len(m.channels) >= 4 and m.batch_norm
        assert "APPROXIMATION" in (EXPERIMENTS / f"{name}.yaml").read_text()
        assert "APPROXIMATED" in preset(name)[0].source


def test_goyal_linear_rule_warmup_and_decay(preset):
    cfg, params = preset("goyal_linear")
    assert cfg.model.name == "resnet"
    assert cfg.optimizer.name == "momentum" and cfg.optimizer.momentum == 0.9
    assert cfg.scaling.name == "linear" and cfg.scaling.base_batch_size == 256
    assert cfg.optimizer.lr == 0.1
    assert cfg.scaling.peak_lr(cfg.optimizer.lr, 8192) == pytest.approx(0.1 * 8192 / 256)
    s = cfg.schedule
    assert (s.name, s.warmup_epochs, s.warmup_from, s.decay_epochs, s.decay_factor) == (
        "step", 5, "base", (30, 60, 80), 0.1)
    assert cfg.budget == "90epochs"
    bs = sweep_values(params, "batch_size")
    assert 256 in bs and max(bs) >= 8192
    # the documented comparison: other rules keep base_batch_size 256
    sq, _ = preset("goyal_linear", "scaling=sqrt")
    assert sq.scaling.name == "sqrt" and sq.scaling.base_batch_size == 256


def test_hoffer_sqrt_ghost_bn_and_regime_adaptation(preset):
    cfg, _ = preset("hoffer_regime")
    assert cfg.scaling.name == "sqrt" and cfg.scaling.base_batch_size == 128
    assert cfg.scaling.peak_lr(cfg.optimizer.lr, 4096) == pytest.approx(0.1 * (4096 / 128) ** 0.5)
    assert cfg.model.ghost_batch_size == 128
    n = TRAIN_SIZE[cfg.dataset.name]
    # regime adaptation: the same number of updates at every B, i.e. epochs x B / 128
    base = job_plan(preset("hoffer_regime", "batch_size=128")[0], n).steps_per_epoch
    for b in (128, 512, 4096):
        plan = job_plan(preset("hoffer_regime", f"batch_size={b}")[0], n)
        assert plan.total_steps == 64000
        assert plan.total_steps / plan.steps_per_epoch == pytest.approx(64000 / base * b / 128, rel=0.02)
    # the header's decay table puts the /10 boundaries at steps 32k and 48k for every B
    text = (EXPERIMENTS / "hoffer_regime.yaml").read_text()
    table = re.findall(r"B = (\d+): \[([\d.]+), ([\d.]+)\]", text)
    assert len(table) >= 5
    for b, e1, e2 in table:
        spe = n // int(b)
        assert round(float(e1) * spe) == 32000 and round(float(e2) * spe) == 48000
    plan = job_plan(cfg, n)
    assert [plan.step_at_epoch(e) for e in cfg.schedule.decay_epochs] == [32000, 48000]


def test_shallue_tunes_lr_per_batch_size_to_a_target(preset):
    cfg, params = preset("shallue_steps_to_result")
    assert cfg.dataset.name == "mnist"
    assert cfg.target.test_accuracy == 0.99                       # goal: 0.01 test error
    assert cfg.scaling.name == "none"                             # the same LR grid at every B
    assert len(cfg.replicas.lr) >= 6
    lrs = sorted(cfg.replicas.lr)
    assert lrs[-1] / lrs[0] >= 50                                 # a wide log grid
    bs = sweep_values(params, "batch_size")
    assert bs == sorted(bs) and len(bs) >= 8 and bs[-1] / bs[0] >= 256


def test_cohen_full_batch_gd_with_sharpness_tracking(preset):
    cfg, _ = preset("cohen_eos")
    assert cfg.batch_size == cfg.dataset.num_train == 5000
    assert cfg.optimizer.name == "sgd" and cfg.schedule.name == "constant"
    assert cfg.metrics.hessian and cfg.metrics.every and cfg.metrics.subset_size >= 5000


def test_cohen_presets_use_their_fc_tanh_square_loss_setup(preset):
    for name in ("cohen_eos", "eos_offline_cohen", "cohen_aeos", "aeos_offline"):
        cfg, _ = preset(name)
        assert (cfg.loss, cfg.model.activation, cfg.model.hidden) == ("mse", "tanh", (200, 200)), name
        assert cfg.batch_size == cfg.dataset.num_train and cfg.metrics.hessian, name
        assert cfg.metrics.preconditioned == (cfg.optimizer.name == "adam"), name


def test_offline_keskar_mirrors_the_paper_setup(preset):
    cfg, params = preset("keskar_offline")
    bs = sweep_values(params, "batch_size")
    assert cfg.batch_size == bs[0] and bs[-1] == 400               # LB = 10% of 4,000
    assert cfg.optimizer.name == "adam" and cfg.model.batch_norm and cfg.save_params
    assert len(cfg.replicas.seeds) == 5 and cfg.metrics.hessian and cfg.metrics.sharpness


def test_goyal_imagenet_is_the_papers_recipe(preset):
    cfg, params = preset("goyal_imagenet")
    assert (cfg.dataset.name, cfg.dataset.loader, cfg.dataset.augment, cfg.dataset.image_size) == (
        "imagenet2012", "stream", "imagenet", 224)
    assert cfg.model.name == "resnet50" and cfg.model.zero_init_residual
    assert cfg.model.ghost_batch_size == 32 and cfg.model.stages == (3, 4, 6, 3)
    assert cfg.optimizer.name == "momentum" and cfg.optimizer.momentum == 0.9
    assert cfg.optimizer.weight_decay == 1e-4 and cfg.optimizer.lr == 0.1
    assert cfg.scaling.name == "linear" and cfg.scaling.base_batch_size == 256
    assert cfg.scaling.peak_lr(cfg.optimizer.lr, 8192) == pytest.approx(3.2)
    s = cfg.schedule
    assert (s.warmup_epochs, s.warmup_from, s.decay_epochs, s.decay_factor) == (5, "base", (30, 60, 80), 0.1)
    assert cfg.budget == "90epochs"
    assert sweep_values(params, "batch_size") == [256, 512, 1024, 2048, 4096, 8192]
    n = 1_281_167  # ImageNet train images: evaluation every 10 epochs at every B of the sweep
    for b in sweep_values(params, "batch_size"):
        assert cfg.eval.cadence(int(b)) == 10 * (n // int(b))
    text = (EXPERIMENTS / "goyal_imagenet.yaml").read_text()
    assert "23.60 +- 0.12 %" in text and "23.74 +- 0.09 %" in text and "hydra/launcher=slurm_multinode" in text
