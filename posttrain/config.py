"""Typed configs: nested dataclasses loaded from YAML with `key=value` overrides.

Every stage declares its config as a dataclass whose fields carry a default and a `doc` in their
metadata. Unknown keys, wrong types and bad values are errors that name the key and list the valid
ones, so a typo can never be silently ignored.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def field(default: Any = dataclasses.MISSING, doc: str = "", **kw):
    """A dataclass field with documentation; mutable defaults become factories."""
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        value = default
        return dataclasses.field(default_factory=lambda: copy.deepcopy(value), metadata={"doc": doc}, **kw)
    return dataclasses.field(default=default, metadata={"doc": doc}, **kw)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type or raise a ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} does not match {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""] if value else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if value.replace(".", "", 1).lstrip("-").isdigit() else int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    fields = _fields(cls)
    hints = _hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'. Valid keys"
            f"{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing required config key '{prefix}{missing[0]}'")
    obj = cls(**kwargs)
    if not prefix:
        _validate_tree(obj)
    return obj


def _validate_tree(obj) -> None:
    """Run every section's `validate()`, defaults included, innermost first."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _validate_tree(value)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def _parse_scalar(text: str) -> Any:
    # YAML parsing gives the user numbers, booleans, null and [lists] on the command line.
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str], cls) -> dict:
    """Apply `a.b=value` overrides to a raw dict, checking each key path against the schema."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node, node_cls = data, cls
        for i, part in enumerate(parts):
            fields = _fields(node_cls) if dataclasses.is_dataclass(node_cls) else None
            path = ".".join(parts[: i + 1])
            if fields is not None and part not in fields:
                raise ConfigError(f"unknown config key '{path}'. Valid keys: {', '.join(sorted(fields))}")
            if i == len(parts) - 1:
                node[part] = _parse_scalar(raw)
            else:
                sub_cls = _hints(node_cls)[part] if fields is not None else None
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"'{path}' is not a section; cannot set '{key}'")
                node_cls = sub_cls
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    data = apply_overrides(data, overrides or [], cls)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}{e}") from None


def dump_config(cfg, path: str | Path) -> str:
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    Path(path).write_text(text)
    return text


def describe(cls, prefix: str = "") -> list[str]:
    """One line per key with type, default and documentation (for `--help-config`)."""
    lines = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.append(f"{prefix}{f.name}:  ({tp.__name__}) {f.metadata.get('doc', '')}")
            lines += describe(tp, prefix + f.name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "<required>")
        lines.append(f"{prefix}{f.name} = {default!r}  ({_type_name(tp)}) {f.metadata.get('doc', '')}")
    return lines


HELP_FLAGS = ("-h", "--help", "--help-config")


def _key_type(cls, key: str) -> Any:
    """The annotated type at a dotted key path, or raise a ConfigError listing the valid keys."""
    node: Any = cls
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(node):
            return Any  # below a mapping field (e.g. data.gsm8k): any name
        fields = _fields(node)
        if part not in fields:
            where = ".".join(parts[:i])
            valid = ", ".join("--" + k.replace("_", "-") for k in sorted(fields))
            raise ConfigError(f"unknown flag --{key.replace('_', '-')}; valid{' under ' + where if where else ''}: "
                              f"{valid}")
        node = _hints(node)[part]
    return node


def _is_bool(tp: Any) -> bool:
    return tp is bool or (typing.get_origin(tp) in (typing.Union, types.UnionType)
                          and bool in typing.get_args(tp) and len(typing.get_args(tp)) <= 2)


def parse_argv(argv: list[str], cls, aliases: dict[str, str] | None = None
               ) -> tuple[str | None, list[str], bool]:
    """`[config.yaml] [key=value ...] [--key value | --key=value ...]` -> (path, overrides, help?).

    Every `--flag` is the config key of the same name, dashes for underscores and dots for
    sections (`--max-new-tokens 64`, `--train.lr=1e-4`); a bool key takes no value (`--overwrite`,
    `--no-progress`); a mapping key takes `NAME=VALUE` (`--data gsm8k=path.jsonl`). `aliases`
    maps extra flag names to keys. Flags and `key=value` mix freely; later ones win.
    """
    aliases = aliases or {}
    path, overrides, i = None, [], 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in HELP_FLAGS:
            return path, overrides, True
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            negated = name.startswith("no-") and not eq
            key = aliases.get(name) or name.replace("-", "_")
            if negated and name not in aliases:
                bare = name[3:].replace("-", "_")
                try:
                    negatable = _is_bool(_key_type(cls, bare))
                except ConfigError:
                    negatable = False
                if negatable:
                    overrides.append(f"{bare}=false")
                    continue
            tp = _key_type(cls, key)
            if _is_bool(tp) and not eq:
                overrides.append(f"{key}=true")
                continue
            if not eq:
                if i >= len(argv) or argv[i] in HELP_FLAGS:
                    raise ConfigError(f"flag --{name} needs a value")
                value, i = argv[i], i + 1
            if typing.get_origin(tp) is dict:
                sub, sep, item = value.partition("=")
                if not sep or not sub:
                    raise ConfigError(f"--{name} takes NAME=VALUE, got {value!r}")
                overrides.append(f"{key}.{sub}={item}")
            else:
                overrides.append(f"{key}={value}")
        elif "=" in arg:
            overrides.append(arg)
        elif path is None:
            path = arg
        else:
            raise ConfigError(f"unexpected argument {arg!r}: give one config file, key=value overrides or --flags")
    return path, overrides, False
