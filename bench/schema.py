"""Typed configuration: each key's default, type and range stated once, checked generically.

A configuration section is a frozen dataclass whose fields are declared with :func:`param`
(default, range, allowed values, help, whether it affects results). :func:`build` turns a plain
nested dict (what Hydra composes) into those dataclasses, refusing unknown keys, wrong types
and out-of-range values with one-line :class:`ConfigError` messages, before anything compiles.

A config *group* (dataset, model, optimizer, ...) is a :class:`Registry`: ``{name: section
class}``, each class carrying its own defaults and its builder (``load()``, ``build()``,
``transform()``, ...). The ``name`` key of a group picks the class; keys of other options are
errors that say which option has them. The registries' names and defaults also feed Hydra
(``bench.hydra_conf``), so nothing is written twice.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, Mapping, TypeVar


class ConfigError(ValueError):
    """A bad configuration value; the message is one line, meant for the user."""


def param(default: Any, *, ge: float | None = None, gt: float | None = None,
          le: float | None = None, lt: float | None = None,
          choices: Iterable[str] | Callable[[], Iterable[str]] | None = None,
          help: str = "", results: bool = True) -> Any:
    """A config key: its default, allowed range (numbers, or each element of a list) or choices,
    one line of help, and whether it can change results (``results=False`` keys, such as where
    logs go, are left out of the config hash)."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "help": help,
            "results": results}
    return field(default=default, metadata=meta)


def section(cls: type, help: str = "", results: bool = True) -> Any:
    """A nested section of fixed type (e.g. ``eval``)."""
    return field(default_factory=cls, metadata={"section": cls, "help": help, "results": results})


T = TypeVar("T")


class Registry(Generic[T]):
    """Options of one config group: ``{name: section class}``, with the default option."""

    def __init__(self, group: str, default: str):
        self.group, self.default = group, default
        self._classes: dict[str, type] = {}

    def register(self, *names: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: register a section class under one or more option names."""
        def add(cls: type[T]) -> type[T]:
            for name in names:
                if name in self._classes:
                    raise ValueError(f"{self.group} option {name!r} registered twice")
                self._classes[name] = cls
            return cls
        return add

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._classes)

    def get(self, name: Any) -> type[T]:
        if name not in self._classes:
            raise ConfigError(f"unknown {self.group} {name!r}; valid: {', '.join(self._classes)}")
        return self._classes[name]

    def create(self, name: str | None = None, **values: Any) -> T:
        """The section of option ``name`` (default option when None), defaults + ``values``."""
        name = self.default if name is None else name
        return self.get(name)(name=name, **values)  # type: ignore[call-arg]

    def options_with(self, key: str) -> list[str]:
        """Options whose section has ``key`` (for "this key belongs to another option" errors)."""
        return [n for n, cls in self._classes.items() if key in {f.name for f in dataclasses.fields(cls)}]

    def defaults_of(self, name: str) -> dict[str, Any]:
        """The plain-dict defaults of option ``name`` (what Hydra composes from)."""
        return to_dict(self.create(name))


def group(registry: Registry, help: str = "", results: bool = True) -> Any:
    """A config group field: its section class is chosen by the ``name`` key."""
    return field(default_factory=registry.create,
                 metadata={"registry": registry, "help": help, "results": results})


# ------------------------------------------------------------------------- dict -> sections


def build(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """A section of ``cls`` from a plain dict: unknown keys, types and ranges checked."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where.rstrip('.') or 'config'}: expected a group of settings, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(_unknown_message(unknown, fields, where))
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        f = fields[name]
        key = where + name
        if "registry" in f.metadata:
            values[name] = build_option(f.metadata["registry"], value, key + ".")
        elif "section" in f.metadata:
            values[name] = build(f.metadata["section"], value, key + ".")
        else:
            values[name] = check_value(key, value, hints[name], f.metadata)
    out = cls(**values)
    if hasattr(out, "check"):  # rules that relate keys of one section (e.g. ResNet depth 6n+2)
        out.check(where)
    return out


def build_option(registry: Registry, data: Any, where: str) -> Any:
    """The option section named by ``data['name']`` (the group's default when absent)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where.rstrip('.')}: expected a group of settings, got {data!r}")
    name = data.get("name", registry.default)
    cls = registry.get(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in sorted(set(data) - fields):
        owners = registry.options_with(key)
        if owners:
            raise ConfigError(
                f"{where}{key} has no effect with {registry.group}={name}: it is a setting of "
                f"{registry.group}={'|'.join(owners)}; remove it or choose that {registry.group}")
    return build(cls, {**data, "name": name}, where)


def _unknown_message(unknown: list[str], fields: Mapping[str, Any], where: str) -> str:
    keys = ", ".join(where + k for k in unknown)
    return (f"unknown key{'s' if len(unknown) > 1 else ''} {keys}; allowed under "
            f"'{where.rstrip('.') or 'top level'}': {', '.join(sorted(fields))}")


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


_PLURAL = {int: "integers", float: "numbers", bool: "true/false values", str: "strings"}


def _num(x: float) -> str:
    """A bound as written: integers exactly (2**63 - 1, not 9.22337e+18)."""
    return str(x) if isinstance(x, int) else f"{x:g}"


def _range_text(meta: Mapping[str, Any]) -> str:
    lo = ("[", meta["ge"]) if meta.get("ge") is not None else ("(", meta.get("gt"))
    hi = ("]", meta["le"]) if meta.get("le") is not None else (")", meta.get("lt"))
    if lo[1] is not None and hi[1] is not None:
        return f"in {lo[0]}{_num(lo[1])}, {_num(hi[1])}{hi[0]}"
    if lo[1] is not None:
        return f"{'>=' if lo[0] == '[' else '>'} {_num(lo[1])}"
    if hi[1] is not None:
        return f"{'<=' if hi[0] == ']' else '<'} {_num(hi[1])}"
    return ""


def _in_range(x: float, meta: Mapping[str, Any]) -> bool:
    return not ((meta.get("ge") is not None and not x >= meta["ge"])
                or (meta.get("gt") is not None and not x > meta["gt"])
                or (meta.get("le") is not None and not x <= meta["le"])
                or (meta.get("lt") is not None and not x < meta["lt"]))


def _scalar(key: str, value: Any, tp: Any, meta: Mapping[str, Any]) -> Any:
    """One int/float/bool/str value, converted (int -> float) and checked against ``meta``."""
    ok = ((tp is bool and isinstance(value, bool))
          or (tp is int and isinstance(value, int) and not isinstance(value, bool))
          or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
          or (tp is str and isinstance(value, str)))
    rng = _range_text(meta)
    if not ok:
        what = _type_name(tp) + (f" {rng}" if rng and tp in (int, float) else "")
        raise ConfigError(f"{key}={value!r} must be {what}")
    if tp is float:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value!r} must be a finite number" + (f" {rng}" if rng else ""))
    if tp in (int, float) and not _in_range(value, meta):
        raise ConfigError(f"{key}={value!r} must be {'an integer ' if tp is int else ''}{rng}")
    choices = meta.get("choices")
    if choices is not None:
        allowed = tuple(choices() if callable(choices) else choices)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not allowed; valid: {', '.join(allowed)}")
    return value


def check_value(key: str, value: Any, tp: Any, meta: Mapping[str, Any]) -> Any:
    """``value`` converted to annotation ``tp`` (scalars, ``X | None``, ``tuple[X, ...]``,
    ``dict[int, int]``), every element checked against the key's range/choices."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return check_value(key, value, inner, meta)
    if origin is tuple:
        elem = args[0]
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
            raise ConfigError(f"{key}={value!r} must be a list of {_PLURAL[elem]}")
        return tuple(_scalar(f"{key}[{i}]", v, elem, meta) for i, v in enumerate(value))
    if origin is dict:
        ktp, vtp = args
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}={value!r} must be a mapping like {{8: 80, 16: 50}}")
        out = {}
        for k, v in value.items():
            k = int(k) if ktp is int and isinstance(k, str) and k.lstrip("-").isdigit() else k
            out[_scalar(f"{key} key", k, ktp, {})] = _scalar(f"{key}[{k}]", v, vtp, meta)
        return out
    return _scalar(key, value, tp, meta)


# ------------------------------------------------------------------------- sections -> dicts


def to_dict(cfg: Any) -> dict[str, Any]:
    """A section as a plain dict of JSON/YAML types (tuples become lists)."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(cfg)


def result_view(cfg: Any) -> dict[str, Any]:
    """``to_dict(cfg)`` without the keys declared ``results=False`` (for the config hash)."""
    out = {}
    for f in dataclasses.fields(cfg):
        if not f.metadata.get("results", True):
            continue
        v = getattr(cfg, f.name)
        out[f.name] = result_view(v) if dataclasses.is_dataclass(v) else to_dict(v) if isinstance(
            v, (tuple, list, dict)) else v
    return out


def frozen(cls: type[T]) -> type[T]:
    """``dataclass(frozen=True)``: every config section is immutable."""
    return dataclass(frozen=True)(cls)
