"""Configuration: one owner per default, every key typed and ranged, every message one line."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import yaml

from bench.job_plan import job_plan
from bench.config import GROUPS, Config, ConfigError, from_dict, validate
from bench.rules.plan import parse_budget
from bench.hydra_conf import CONF_DIR, compose, compose_config, group_options, preflight
from bench.rules.lr_scaling import SCALING_RULES
from bench.schema import to_dict
from conftest import small_config


@pytest.mark.parametrize("rule, expected", [("none", 0.1), ("sqrt", 0.2), ("linear", 0.4)])
def test_lr_scaling_rules(rule, expected):
    # B = 4 x base: none keeps the LR, sqrt doubles it, linear quadruples it.
    assert SCALING_RULES.create(rule, base_batch_size=128).peak_lr(0.1, 512) == pytest.approx(expected)


def test_lr_scaling_below_base_batch():
    assert SCALING_RULES.create("linear").peak_lr(0.1, 32) == pytest.approx(0.025)
    assert SCALING_RULES.create("sqrt").peak_lr(0.1, 32) == pytest.approx(0.05)


def test_budget_units_and_plan_steps():
    assert parse_budget("3000steps") == (3000, "steps")
    assert parse_budget("2.5epochs") == (2.5, "epochs")
    cfg = small_config(batch_size=100, budget="3epochs", dataset={"synthetic_train": 1050})
    assert job_plan(cfg, 1050).total_steps == 30  # 10 steps/epoch (drop last), 3 epochs
    assert job_plan(small_config(batch_size=100, budget="1000examples"), 1050).total_steps == 10


# ----------------------------------------------------------------------- one owner per default

def test_command_line_default_is_the_python_default():
    """conf/ adds nothing to the Python defaults: from_dict({}) is `python -m bench.train`."""
    assert compose_config([]) == from_dict({}) == Config()
    cfg = Config()
    assert (cfg.dataset.name, cfg.model.name, cfg.optimizer.name, cfg.batch_size) == (
        "mnist1d", "cnn", "momentum", 128)
    # the default CNN is Greydanus' MNIST-1D CNN (3 strided convs, linear head)
    assert (cfg.model.channels, cfg.model.conv_stride, cfg.model.hidden) == ((32, 32, 32), 2, ())


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_option_has_one_yaml_and_every_yaml_one_option(group):
    registry = GROUPS[group]
    options = group_options(group)
    for name in registry.names:  # each registered option is selectable
        assert name in options, f"conf/{group}/{name}.yaml missing"
    for name in options:         # each YAML starts from a registered option's defaults
        text = yaml.safe_load((CONF_DIR / group / f"{name}.yaml").read_text())
        (schema, self_) = text["defaults"]
        assert self_ == "_self_" and schema.startswith(f"/_schema/{group}/")
        assert schema.removeprefix(f"/_schema/{group}/").removesuffix("@_here_") in registry.names


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_option_yaml_holds_only_differences(group):
    """No YAML restates a default (the Python section owns it)."""
    for name in group_options(group):
        text = yaml.safe_load((CONF_DIR / group / f"{name}.yaml").read_text())
        base = text["defaults"][0].removeprefix(f"/_schema/{group}/").removesuffix("@_here_")
        defaults = GROUPS[group].defaults_of(base)
        for key, value in text.items():
            if key != "defaults":
                assert key in defaults and value != defaults[key], (group, name, key)


def test_composed_options_equal_their_registered_sections():
    """Composing ``group=option`` gives the registered defaults plus the option YAML's keys."""
    needs = {"increase": ["schedule=step"], "tokens": ["dataset.path=tokens.bin"],
             "arrayrecord": ["dataset.path=exported"], "sde": ["optimizer=adam"],
             "timescale": ["optimizer=adamw"], "seesaw": ["schedule=cosine"]}
    for group, registry in GROUPS.items():
        for name in registry.names:
            cfg = compose_config([f"{group}={name}", *needs.get(name, [])])
            own = yaml.safe_load((CONF_DIR / group / f"{name}.yaml").read_text())
            expected = {**to_dict(registry.create(name)),
                        **{k: v for k, v in own.items() if k != "defaults"}}
            if "data_dir" in own:  # ${oc.env:TFDS_DATA_DIR,null}
                expected["data_dir"] = getattr(cfg, group).data_dir
            for override in needs.get(name, []):
                key, value = override.split("=")
                if key.startswith(f"{group}."):
                    expected[key.split(".", 1)[1]] = value
            assert to_dict(getattr(cfg, group)) == expected, (group, name)


# ----------------------------------------------------------------------- types and ranges

def _scalar_fields(cls, prefix=""):
    """(dotted key, type, metadata) of every scalar key under ``cls`` (recursing into sections)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "section" in f.metadata:
            yield from _scalar_fields(f.metadata["section"], f"{prefix}{f.name}.")
        elif "registry" not in f.metadata:
            yield f"{prefix}{f.name}", hints[f.name], f.metadata


def _root_and_option_fields():
    yield from ((key, tp, meta, ()) for key, tp, meta in _scalar_fields(Config))
    for group, registry in GROUPS.items():
        for name in registry.names:
            for key, tp, meta in _scalar_fields(registry.get(name), f"{group}."):
                if key != f"{group}.name":
                    yield key, tp, meta, (f"{group}={name}",)


FIELDS = list(_root_and_option_fields())


def _base(tp):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    origin = typing.get_origin(tp)
    if origin is tuple:
        return "list", args[0]
    if origin is dict:
        return "dict", args[1]
    if args:
        return _base(args[0])
    return "scalar", tp


def test_every_key_has_a_type_and_numbers_a_range():
    unranged = [key for key, tp, meta, _ in FIELDS if _base(tp)[1] in (int, float)
                and all(meta.get(b) is None for b in ("ge", "gt", "le", "lt"))
                and key not in ("seed", "replicas.seeds", "dataset.seed")]
    assert unranged == []


def _nested(key: str, value, select: tuple[str, ...]) -> dict:
    """{'a': {'b': value}} for key 'a.b', with the group option of ``select`` chosen."""
    out: dict = {}
    for choice in select:
        group, name = choice.split("=")
        out[group] = {"name": name}
    node = out
    *path, leaf = key.split(".")
    for part in path:
        node = node.setdefault(part, {})
    node[leaf] = value
    return out


@pytest.mark.parametrize("key, tp, meta, select", FIELDS, ids=[f"{f[3][0] + ':' if f[3] else ''}{f[0]}"
                                                              for f in FIELDS])
def test_wrong_type_and_out_of_range_values_are_one_line_errors(key, tp, meta, select):
    """The whole class: for every key, a value of the wrong type, each bound crossed, and a
    value outside the choices are refused with one line naming the key."""
    kind, elem = _base(tp)
    wrong = {int: "abc", float: "abc", bool: "maybe", str: ["x"]}[elem]
    bad = [wrong if kind == "scalar" else [wrong] if kind == "list" else {8: wrong}]
    if kind == "list" and elem in (int, float):
        bad.append(7)  # a scalar where a list is expected
    for bound, delta in (("ge", -1), ("gt", 0), ("le", 1), ("lt", 0)):
        if meta.get(bound) is not None and elem in (int, float):
            v = elem(meta[bound] + delta) if elem is int else meta[bound] + delta
            bad.append(v if kind == "scalar" else [v] if kind == "list" else {8: v})
    if meta.get("choices") is not None:
        bad.append("not_a_choice")
    for value in bad:
        with pytest.raises(ConfigError) as err:
            validate(from_dict(_nested(key, value, select)))
        message = str(err.value)
        assert "\n" not in message and message.startswith(key), (value, message)


@pytest.mark.parametrize("override, message", [
    ("seed=abc", "seed='abc' must be an integer"),
    ("replicas.seeds=[a]", "replicas.seeds[0]='a' must be an integer"),
    ("model.hidden=[0]", "model.hidden[0]=0 must be an integer >= 1"),
    ("checkpoint.every_steps=-3", "checkpoint.every_steps=-3 must be an integer >= 1"),
    ("metrics.hessian=maybe", "metrics.hessian='maybe' must be true or false"),
    ("optimizer.momentum=1.5", "optimizer.momentum=1.5 must be in [0, 1)"),
    ("metrics.top_k=0", "metrics.top_k=0 must be an integer >= 1"),
    ("model.depth=20", "model.depth has no effect with model=cnn: it is a setting of model=resnet;"
                       " remove it or choose that model"),
    ("batch_size=0", "batch_size=0 must be an integer >= 1"),
    ("optimizer.lr=0", "optimizer.lr=0.0 must be > 0"),
    ("optimizer.lr=nan", "optimizer.lr=nan must be a finite number > 0"),
    ("replicas.lr=[0.1,-0.1]", "replicas.lr[1]=-0.1 must be > 0"),
    ("replicas.seeds=[]", "replicas.seeds is an empty list; give at least one value or null"),
    ("dataset=imagenet", "unknown dataset 'imagenet'; valid: " + ", ".join(group_options("dataset"))),
    ("model=vit", "unknown model 'vit'; valid: " + ", ".join(group_options("model"))),
    ("optimizer=rmsprop", "unknown optimizer 'rmsprop'; valid: " + ", ".join(group_options("optimizer"))),
    ("scaling=cubic", "unknown scaling 'cubic'; valid: " + ", ".join(group_options("scaling"))),
    ("budget=10hours", "budget='10hours' must be a positive number followed by a unit"),
    ("accumulate=3", "accumulate=3 must divide batch_size=128"),
    ("batchsize=3", "unknown key batchsize; allowed at the top level: accumulate, batch_schedule"),
    ("optimizer.learning_rate=0.1", "unknown key optimizer.learning_rate; allowed under 'optimizer' "
                                    "(optimizer=momentum): lr, momentum, name, nesterov, weight_decay"),
    ("optimizer.b2=0.95", "optimizer.b2 has no effect with optimizer=momentum: it is a setting of "
                          "optimizer=adam|adamw|lamb"),
    ("metrics.top_k=40", "metrics.top_k=40 must be <= metrics.lanczos_iters=30"),
    ("metrics.preconditioned=true", "metrics.preconditioned=true measures Adam's preconditioned "
                                    "sharpness; use optimizer=adam|adamw (got optimizer=momentum)"),
    ("metrics.batch_sharpness_batches=-1", "metrics.batch_sharpness_batches=-1 must be an integer >= 0"),
    ("schedule.warmup_steps=5 schedule.warmup_epochs=1", "set schedule.warmup_steps or "
                                                         "schedule.warmup_epochs, not both"),
])
def test_bad_values_are_one_line_errors(override, message):
    got = preflight(override.split(" "), multirun=False)
    assert got is not None and got.startswith(message), got
    assert "\n" not in got


def test_valid_values_pass_and_keep_their_types():
    cfg = compose_config(["optimizer=adam", "optimizer.b2=0.95", "optimizer.lr=1",
                          "eval.every_steps_at={8: 80, 16: 50}", "replicas.lr=[1,0.5]"])
    assert cfg.optimizer.b2 == 0.95 and cfg.optimizer.lr == 1.0 and isinstance(cfg.optimizer.lr, float)
    assert cfg.eval.every_steps_at == {8: 80, 16: 50} and cfg.eval.cadence(16) == 50
    assert cfg.eval.cadence(128) == 100 and cfg.replicas.lr == (1.0, 0.5)
    assert preflight(["optimizer=adam", "optimizer.b2=0.95"], multirun=False) is None


def test_batch_not_divisible_by_devices():
    with pytest.raises(ConfigError, match=r"batch_size=66 \(microbatch 66\) is not divisible by the "
                                          r"number of devices \(4\); use a multiple of 4"):
        validate(small_config(batch_size=66), num_devices=4)


def test_data_dependent_checks_come_from_the_plan():
    with pytest.raises(ConfigError, match=r"batch_size=600 is larger than the training set \(512 "
                                          r"examples\); the largest allowed is 512 \(full batch\)"):
        job_plan(small_config(batch_size=600), 512)
    with pytest.raises(ConfigError, match=r"warmup \(50 steps\) is longer than training \(40 steps\)"):
        job_plan(small_config(budget="40steps", schedule={"name": "constant", "warmup_steps": 50}), 512)
    cfg = small_config(budget="2epochs", schedule={"name": "constant", "warmup_epochs": 3})
    with pytest.raises(ConfigError, match=r"warmup \(24 steps\) is longer than training \(16 steps\)"):
        job_plan(cfg, 512)


def test_multirun_preflight_names_the_bad_job():
    assert preflight(["batch_size=32,64", "model=mlp,cnn"], multirun=True) is None
    got = preflight(["model=mlp,vit"], multirun=True)
    assert got == f"unknown model 'vit'; valid: {', '.join(group_options('model'))} (job model=vit)"


def test_hydra_composition_of_every_group_option():
    for overrides in ([], ["dataset=digits", "model=mlp", "optimizer=adam", "schedule=cosine",
                           "scaling=linear", "batch_size=1024"],
                      ["model=resnet", "dataset=cifar10", "optimizer=lars"],
                      ["optimizer=lamb", "scaling=sqrt"], ["schedule=goyal_warmup", "logger=none"],
                      ["optimizer=sgd", "schedule=step"]):
        cfg = compose_config(overrides)
        for o in overrides:
            group, value = o.split("=")
            if group in GROUPS:
                assert getattr(cfg, group).name == value or (group, value) == ("schedule", "goyal_warmup")
    assert compose([]).logger.mode == "offline"
