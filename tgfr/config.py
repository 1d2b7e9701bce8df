"""Run configurations: typed, nested dataclasses, read through one loader by every command.

A command that trains (``tgfr train`` and ``tgfr demo``, ``tgfr xmodal train``, ``tgfr study``)
describes its run with a dataclass whose fields are settings or nested dataclasses. A config is

1. the class's defaults, changed by a preset or a YAML file: both are mappings of changes, and
   either may name the preset it starts from with the key ``preset`` (so a preset is its base
   preset plus its own changes); a nested mapping may name a preset of its own class the same way;
2. changed again by ``key=value`` overrides (nested keys with dots, values parsed as YAML:
   ``3`` is an int, ``[4, 6]`` a list, ``null`` None).

Each field declares what it accepts where it is declared (:func:`setting`): a closed set of
values, a range, or both; for a list, the declaration holds for every item. A rule between
fields lives in the class's ``validate()`` method. The whole config is checked before it is
returned, so a bad value stops a command before any work. Every mistake is a
:class:`ConfigError`, a ``ValueError`` whose one-line message names the key, what it accepts
and what was given.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints  # noqa: UP035

import yaml

from .atomic import write_text

T = TypeVar("T")
PRESET_KEY = "preset"
_FLOAT_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class ConfigError(ValueError):
    """A config key, value or file that cannot be used; ``key`` is the dotted key it concerns."""

    def __init__(self, detail: str, key: str | None = None):
        self.detail, self.key = detail, key
        super().__init__(f"config key {key!r} {detail}" if key else detail)

    def under(self, prefix: str) -> ConfigError:
        """The same error for a config nested under ``prefix`` (``"align."``)."""
        return ConfigError(self.detail, prefix + self.key) if self.key and prefix else self


def setting(default, *, choices: Iterable | None = None, also: tuple[str, Callable[[Any], bool]] | None = None,
            ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None):
    """A dataclass field with its allowed values: one of ``choices`` (or, with ``also = (description,
    test)``, any value passing ``test``) and within the bounds ``ge``/``gt``/``le``/``lt``. For a list
    or tuple field these hold for every item. A mutable default is copied for every instance."""
    metadata = {"choices": tuple(choices) if choices is not None else None, "also": also,
                "bounds": {op: bound for op, bound in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt))
                           if bound is not None}}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# ---------------------------------------------------------------- what a field accepts


def allowed_values(f: dataclasses.Field) -> str | None:
    """The closed set a field's values (or items) come from, in words; None for an open field."""
    choices, also = f.metadata.get("choices"), f.metadata.get("also")
    if choices is None:
        return None
    names = [repr(c) for c in choices] + ([also[0]] if also else [])
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def allowed_range(f: dataclasses.Field) -> str | None:
    """A field's bounds in words (``> 0``, ``in [0, 1)``); None when it has none."""
    bounds = f.metadata.get("bounds") or {}
    low = ("[", bounds["ge"]) if "ge" in bounds else ("(", bounds["gt"]) if "gt" in bounds else None
    high = ("]", bounds["le"]) if "le" in bounds else (")", bounds["lt"]) if "lt" in bounds else None
    if low and high:
        return f"in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {low[1]:g}"
    if high:
        return f"{'<=' if high[0] == ']' else '<'} {high[1]:g}"
    return None


def _in_range(value, bounds: dict) -> bool:
    return not (("ge" in bounds and value < bounds["ge"]) or ("gt" in bounds and value <= bounds["gt"])
                or ("le" in bounds and value > bounds["le"]) or ("lt" in bounds and value >= bounds["lt"]))


def _check_declared(f: dataclasses.Field, value, key: str) -> None:
    """``value`` against the field's declaration (every item of a list or tuple)."""
    several = isinstance(value, (list, tuple))
    items = list(value) if several else [value]
    shown = items if several else value  # as written in YAML
    choices, also, bounds = f.metadata.get("choices"), f.metadata.get("also"), f.metadata.get("bounds")
    if choices is not None:
        bad = [v for v in items if v not in choices and not (also and also[1](v))]
        if bad:
            what = "hold values among" if several else "be one of"
            raise ConfigError(f"must {what} {allowed_values(f)}; got {shown!r}", key)
    if bounds:
        bad = [v for v in items if v is not None and not _in_range(v, bounds)]
        if bad:
            what = "hold values" if several else "be"
            raise ConfigError(f"must {what} {allowed_range(f)}; got {shown!r}", key)


def _type_name(expected) -> str:
    origin = get_origin(expected) or expected
    return "list" if origin is tuple else getattr(origin, "__name__", str(origin))  # YAML has lists, no tuples


def _convert(value, expected, key: str):
    """``value`` as the annotated type ``expected``, or a ConfigError naming the key."""
    if get_origin(expected) in (Union, types.UnionType):  # X | None
        options = [t for t in get_args(expected) if t is not type(None)]
        if value is None:
            return None
        expected = options[0]
    origin = get_origin(expected) or expected
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"must be list; got {value!r}", key)
        args = get_args(expected)
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise ConfigError(f"must be a list of {len(args)} values; got {value!r}", key)
        item_types = args[:1] * len(value) if origin is list or (args and args[-1] is Ellipsis) else args
        converted = [_convert(v, t, key) for v, t in zip(value, item_types)] if args else list(value)
        return origin(converted)
    if origin is float and isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 2e-3 as a string
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"must be a finite number; got {value!r}", key)
    if not isinstance(value, origin) or (isinstance(value, bool) and origin in (int, float)):
        raise ConfigError(f"must be {_type_name(expected)}; got {value!r}", key)
    return value


# ---------------------------------------------------------------- dicts <-> configs


def dump(config) -> dict:
    """A config as nested plain dicts and lists (what ``config.yaml`` and checkpoints hold)."""

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def _nested_class(f: dataclasses.Field, hints: dict):
    kind = hints[f.name]
    return kind if dataclasses.is_dataclass(kind) else None


def _build(cls, values: dict, where: str):
    """An instance of ``cls`` from a full nested dict, checking every type and declaration."""
    hints = get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in values:
        if key not in known:
            raise ConfigError(f"unknown config key {where + key!r}; known keys here: {', '.join(known)}")
    kwargs = {}
    for name, f in known.items():
        if name not in values:
            continue
        value, key = values[name], where + name
        nested = _nested_class(f, hints)
        if nested is not None:
            if not isinstance(value, dict):
                raise ConfigError(f"must be a mapping; got {value!r}", key)
            kwargs[name] = _build(nested, value, key + ".")
            continue
        value = _convert(value, hints[name], key)
        _check_declared(f, value, key)
        kwargs[name] = value
    return cls(**kwargs)


def _validate(config, where: str = "") -> None:
    """Every ``validate()`` of the config, nested configs first; errors name the full key."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            _validate(value, f"{where}{f.name}.")
    if hasattr(config, "validate"):
        try:
            config.validate()
        except ConfigError as error:
            raise error.under(where) from None


def _check_fields(config, where: str) -> None:
    hints = get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, key = getattr(config, f.name), where + f.name
        if dataclasses.is_dataclass(value):
            _check_fields(value, key + ".")
        else:
            _check_declared(f, _convert(value, hints[f.name], key), key)


def check(config) -> None:
    """Check a config built in code (not read by :func:`load`) as the loader does: every field's
    type and declaration, then every ``validate()``."""
    _check_fields(config, "")
    _validate(config)


def _presets(cls) -> dict[str, dict]:
    return getattr(cls, "presets", None) or {}


def _preset_values(cls, name, where: str, seen=()) -> dict:
    """The full nested dict of preset ``name`` of ``cls`` (its base preset's, changed by its own)."""
    presets = _presets(cls)
    if not isinstance(name, str) or name not in presets:
        raise ConfigError(f"must name a preset of {', '.join(map(repr, presets)) or 'nothing'}; got {name!r}",
                          where + PRESET_KEY)
    if name in seen:
        raise ConfigError(f"names presets in a circle: {' -> '.join([*seen, name])}", where + PRESET_KEY)
    return _apply(cls, dump(cls()), presets[name], where, (*seen, name))


def _apply(cls, values: dict, changes: dict, where: str = "", seen=()) -> dict:
    """``values`` (a full nested dict of ``cls``) changed by the mapping ``changes``; a ``preset`` key
    of ``changes`` replaces ``values`` by that preset first. Unknown keys are errors."""
    if not isinstance(changes, dict):
        raise ConfigError(f"must be a mapping; got {changes!r}", where.rstrip(".") or None)
    if PRESET_KEY in changes:
        values = _preset_values(cls, changes[PRESET_KEY], where, seen)
    else:
        values = copy.deepcopy(values)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key, value in changes.items():
        if key == PRESET_KEY:
            continue
        if key not in fields:
            raise ConfigError(f"unknown config key {where + key!r}; known keys here: {', '.join(fields)}")
        nested = _nested_class(fields[key], hints)
        if nested is not None and isinstance(value, dict):
            values[key] = _apply(nested, values[key], value, f"{where}{key}.")
        else:
            values[key] = copy.deepcopy(value)
    return values


def from_dict(cls: type[T], values: dict) -> T:
    """A checked ``cls`` from a (possibly partial) nested dict: the defaults changed by ``values``."""
    config = _build(cls, _apply(cls, dump(cls()), values), "")
    _validate(config)
    return config


def parse_override(text: str) -> dict:
    """``"a.b=3"`` -> ``{"a": {"b": 3}}``, the value parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"an override must look like key=value (nested keys with dots); got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"is not valid YAML in {text!r}: {' '.join(str(error).split())}", key.strip()) from None
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def read_yaml(path) -> dict:
    """The mapping a YAML config file holds; an empty file is an error, not the defaults."""
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file (a YAML config is)") from None
    except OSError as error:
        raise ConfigError(f"cannot read the config file {path}: {error.strerror}") from None
    if loaded is None:  # an empty file would silently stand for the defaults
        raise ConfigError(f"{path} is empty: a config file names its preset and the keys it changes "
                          "(e.g. 'preset: demo')")
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(loaded).__name__}")
    return loaded


def load(cls: type[T], source: str | Path | dict | None = None, overrides: Iterable[str] = ()) -> T:
    """A checked config of ``cls``: its defaults, changed by ``source`` (a preset of ``cls.presets``,
    the path of a YAML file or a mapping; None: the defaults), then by the ``key=value`` ``overrides``."""
    if isinstance(source, dict):
        changes = source
    elif source is None:
        changes = {}
    elif str(source) in _presets(cls):
        changes = {PRESET_KEY: str(source)}
    elif Path(source).is_file():
        changes = read_yaml(source)
    else:
        names = ", ".join(_presets(cls))
        raise ConfigError(f"the config must be a preset ({names}) or a YAML file; got {str(source)!r}")
    values = _apply(cls, dump(cls()), changes)
    for text in overrides:
        values = _apply(cls, values, parse_override(text))
    return from_dict(cls, values)


def save(config, path) -> Path:
    """Write ``config`` (or its :func:`dump`) as YAML, atomically: the file :func:`load` reads back into
    the same config."""
    values = config if isinstance(config, dict) else dump(config)
    return write_text(path, yaml.safe_dump(values, sort_keys=False))


def merge(*changes: dict) -> dict:
    """Mappings of changes merged into one, key by key at every depth; a later one wins."""
    merged: dict = {}
    for mapping in changes:
        for key, value in mapping.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = merge(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
    return merged


def differences(a: dict, b: dict, where: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested dicts (keys of either)."""
    keys = []
    for key in [*a, *(k for k in b if k not in a)]:
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            keys += differences(left, right, f"{where}{key}.")
        elif left != right:
            keys.append(where + key)
    return keys
