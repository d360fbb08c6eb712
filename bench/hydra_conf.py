"""Hydra's view of the config: the schema registered in the ConfigStore, composition, and
one-line errors for what Hydra itself refuses.

The defaults of every key live in Python (bench.config and the registered option sections).
:func:`register_schema` stores them in Hydra's ConfigStore: ``_schema/<group>/<option>`` per
option and ``_schema_root`` for the root keys plus the default option of every group. The YAML
under ``conf/`` only selects and documents: ``conf/config.yaml`` starts from ``_schema_root``,
``conf/<group>/<option>.yaml`` from its ``_schema`` node plus the keys where it differs.

:func:`compose` is the one place configs are composed outside ``python -m bench.train``
(tests, profile, reproductions); :func:`preflight` composes a command line before Hydra runs it
and turns Hydra's composition errors into one ``error:`` line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from bench.config import GROUPS, NOT_SETTINGS, Config, ConfigError, from_hydra, validate
from bench.schema import to_dict

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
SCHEMA_GROUP = "_schema"
ROOT_NODE = "_schema_root"


def register_schema() -> None:
    """Store every option's defaults and the root defaults in Hydra's ConfigStore, and the
    resolver of ``hydra.run.dir`` (idempotent)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("bench_run_dir", run_dir, replace=True)

    store = ConfigStore.instance()
    for key, registry in GROUPS.items():
        for name in registry.names:
            store.store(group=f"{SCHEMA_GROUP}/{key}", name=name, node=registry.defaults_of(name))
    root = {k: v for k, v in to_dict(Config()).items() if k not in GROUPS}
    defaults: list[Any] = [{key: registry.default} for key, registry in GROUPS.items()]
    store.store(name=ROOT_NODE, node={"defaults": [*defaults, "_self_"], **root})


def run_dir(output_dir: str | None, default: str) -> str:
    """Hydra's run directory: ``output_dir`` when set, so nothing is written elsewhere."""
    return str(output_dir) if output_dir else default


def compose(overrides: Sequence[str] = (), *, return_hydra_config: bool = False) -> Any:
    """``conf/config.yaml`` with command-line overrides, exactly as ``python -m bench.train``."""
    from hydra import compose as hydra_compose, initialize_config_dir

    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides),
                             return_hydra_config=return_hydra_config)


def compose_config(overrides: Sequence[str] = (), *, num_devices: int = 1) -> Config:
    """The validated Config of a command line (raises ConfigError with one line)."""
    try:
        cfg = compose(overrides)
    except Exception as err:  # Hydra's composition errors: unknown keys, options, syntax
        if type(err).__module__.startswith(("hydra", "omegaconf")):
            raise ConfigError(explain(err, overrides)) from None
        raise
    return validate(from_hydra(cfg), num_devices=num_devices)


def group_options(group: str) -> list[str]:
    """The selectable options of a config group (its YAML files)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def explain(err: Exception, overrides: Sequence[str]) -> str:
    """One line saying what is wrong with a command line that Hydra could not compose."""
    text = str(err)
    if m := re.search(r"Could not override '([^']+)'", text):
        return _explain_key(m.group(1), overrides)
    if m := re.search(r"Could not find '([^']+)/([^'/]+)'", text):
        group, name = m.groups()
        if (CONF_DIR / group).is_dir():
            return f"unknown {group} {name!r}; valid: {', '.join(group_options(group))}"
    if m := re.search(r"Could not load '([^']+)'", text):
        return f"could not load {m.group(1)!r}"
    return " ".join(line.strip() for line in text.splitlines() if line.strip()).split(
        " Config search path")[0]


def _explain_key(key: str, overrides: Sequence[str]) -> str:
    """Unknown key: a setting of another option of its group, or not a key at all."""
    rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
    head, _, leaf = key.rpartition(".")
    if head in GROUPS:
        registry = GROUPS[head]
        try:
            chosen = compose(rest).get(head, {}).get("name", registry.default)
        except Exception:  # noqa: BLE001 -- another bad override; name the default choice
            chosen = registry.default
        owners = [n for n in registry.options_with(leaf) if n != chosen]
        if owners:
            return (f"{key} has no effect with {head}={chosen}: it is a setting of "
                    f"{head}={'|'.join(owners)}; remove it or choose that {head}")
        allowed = sorted({f for f in to_dict(registry.create(chosen))})
        return f"unknown key {key}; allowed under '{head}' ({head}={chosen}): {', '.join(allowed)}"
    sections = to_dict(Config())
    if head and isinstance(sections.get(head), dict):
        return f"unknown key {key}; allowed under '{head}': {', '.join(sorted(sections[head]))}"
    allowed = sorted(k for k in sections) + [k for k in NOT_SETTINGS if k != "hydra"]
    return f"unknown key {key}; allowed at the top level: {', '.join(sorted(allowed))}"


def sweep_jobs(overrides: Sequence[str]) -> list[list[str]]:
    """The override list of every job of a multirun command line (Hydra's basic sweeper rule)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def preflight(overrides: Sequence[str], *, multirun: bool) -> str | None:
    """The error line of a command line Hydra cannot compose (None if every job composes).

    A single run is also validated (types, ranges, rules between keys); in a multirun each job
    validates itself and records a failure, so one bad job does not stop the sweep.
    """
    try:
        jobs = sweep_jobs(overrides) if multirun else [list(overrides)]
    except Exception as err:  # noqa: BLE001 -- override syntax errors
        return explain(err, overrides)
    for job in jobs:
        try:
            cfg = compose(job)
            if not multirun:  # with the data's metadata and the output paths
                validate(from_hydra(cfg), run=True)
        except ConfigError as err:
            return str(err)
        except Exception as err:  # noqa: BLE001 -- Hydra/OmegaConf composition errors
            if not type(err).__module__.startswith(("hydra", "omegaconf")):
                raise
            where = f" (job {' '.join(job)})" if multirun and len(jobs) > 1 else ""
            return explain(err, job) + where
    return None
