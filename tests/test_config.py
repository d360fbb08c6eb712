"""Configuration: LR scaling values, budgets, and every validation message."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from bench.config import (ConfigError, ScalingConfig, from_dict, from_hydra, parse_budget,
                          scaled_lr, total_steps, validate, validate_with_data, warmup_steps)
from conftest import REPO, small_config


@pytest.mark.parametrize("rule, expected", [("none", 0.1), ("sqrt", 0.2), ("linear", 0.4)])
def test_lr_scaling_rules(rule, expected):
    # B = 4 x base: none keeps the LR, sqrt doubles it, linear quadruples it.
    assert scaled_lr(0.1, 512, ScalingConfig(rule=rule, base_batch_size=128)) == pytest.approx(expected)


def test_lr_scaling_below_base_batch():
    assert scaled_lr(0.1, 32, ScalingConfig(rule="linear", base_batch_size=128)) == pytest.approx(0.025)
    assert scaled_lr(0.1, 32, ScalingConfig(rule="sqrt", base_batch_size=128)) == pytest.approx(0.05)


def test_budget_units():
    assert parse_budget("3000steps") == (3000, "steps")
    assert parse_budget("2.5epochs") == (2.5, "epochs")
    cfg = small_config(batch_size=100, budget="3epochs", dataset={"synthetic_train": 1050})
    assert total_steps(cfg, 1050) == 30  # 10 steps/epoch (drop last), 3 epochs
    cfg = small_config(batch_size=100, budget="1000examples")
    assert total_steps(cfg, 1050) == 10


@pytest.mark.parametrize("override, message", [
    ({"batch_size": 0}, "batch_size=0 must be an integer >= 1"),
    ({"optimizer": {"lr": 0.0}}, "learning rate 0.0 must be a finite number > 0"),
    ({"optimizer": {"lr": -1.0}}, "learning rate -1.0 must be a finite number > 0"),
    ({"replicas": {"lr": [0.1, -0.1]}}, "learning rate -0.1 must be a finite number > 0"),
    ({"dataset": {"name": "imagenet"}},
     "unknown dataset 'imagenet'; valid: mnist1d, digits, synthetic, mnist, fashion_mnist, cifar10, cifar100"),
    ({"model": {"name": "vit"}}, "unknown model 'vit'; valid: mlp, cnn, resnet"),
    ({"optimizer": {"name": "rmsprop"}},
     "unknown optimizer 'rmsprop'; valid: sgd, momentum, adam, adamw, lars, lamb"),
    ({"scaling": {"rule": "cubic"}}, "unknown scaling rule 'cubic'; valid: none, sqrt, linear"),
    ({"budget": "10 hours"}, "budget='10 hours' must be a positive number followed by a unit"),
    ({"accumulate": 3}, "accumulate=3 must be >= 1 and divide batch_size=64"),
])
def test_static_validation_messages(override, message):
    with pytest.raises(ConfigError) as err:
        validate(small_config(**override))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_batch_not_divisible_by_devices():
    with pytest.raises(ConfigError, match=r"batch_size=66 \(microbatch 66\) is not divisible by the "
                                          r"number of devices \(4\); use a multiple of 4"):
        validate(small_config(batch_size=66), num_devices=4)


def test_batch_larger_than_training_set():
    cfg = small_config(batch_size=600)
    with pytest.raises(ConfigError, match=r"batch_size=600 is larger than the training set \(512 "
                                          r"examples\); the largest allowed is 512 \(full batch\)"):
        validate_with_data(cfg, 512)


def test_warmup_longer_than_training():
    cfg = small_config(budget="40steps", schedule={"name": "constant", "warmup_steps": 50})
    with pytest.raises(ConfigError, match=r"warmup \(50 steps\) is longer than training \(40 steps\)"):
        validate_with_data(cfg, 512)
    cfg = small_config(budget="2epochs", schedule={"name": "constant", "warmup_epochs": 3})
    assert warmup_steps(cfg, 512) == 24
    with pytest.raises(ConfigError, match="longer than training"):
        validate_with_data(cfg, 512)


def test_unknown_key_is_an_error():
    with pytest.raises(ConfigError, match="unknown key optimizer.learning_rate; allowed under 'optimizer'"):
        from_dict({"optimizer": {"learning_rate": 0.1}})
    with pytest.raises(ConfigError, match="unknown key batchsize"):
        from_dict({"batchsize": 3})


def test_hydra_composition_matches_schema():
    """Every composable group option builds a valid Config (no key unknown to the schema)."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        for overrides in (
            [], ["dataset=digits", "model=mlp", "optimizer=adam", "schedule=cosine", "scaling=linear",
                 "batch_size=1024"],
            ["model=resnet", "dataset=cifar10", "optimizer=lars"], ["optimizer=lamb", "scaling=sqrt"],
            ["schedule=goyal_warmup", "logger=none"], ["optimizer=sgd", "schedule=step"],
        ):
            cfg = validate(from_hydra(compose(config_name="config", overrides=overrides)))
            for o in overrides:
                group, value = o.split("=")
                if group == "batch_size":
                    assert cfg.batch_size == int(value)
        default = from_hydra(compose(config_name="config"))
        assert (default.dataset.name, default.model.name, default.optimizer.name, default.batch_size) == (
            "mnist1d", "cnn", "momentum", 128)
        assert default.logger.mode == "offline"
