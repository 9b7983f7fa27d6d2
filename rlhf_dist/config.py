"""One config system: typed dataclasses, YAML files, `key=value` overrides, unknown keys rejected.

    cfg = load_config(PPOConfig, "configs/tiny.yaml", ["learner.num_ranks=2", "seed=3"])

Nested dataclasses map to nested YAML mappings and to dotted override keys. Values are checked
against the field types (int, float, str, bool, Optional[...], list[...], dict) and errors name the
file and line, or the override, and the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad config file or override; the message is one line naming the file/line or override and the key."""


def _line_numbers(text: str) -> dict[str, int]:
    """Dotted key -> 1-based line number, for error messages."""
    lines: dict[str, int] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = f"{prefix}{key_node.value}"
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key + ".")

    walk(yaml.compose(text), "")
    return lines


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Return `value` converted to type `tp` where lossless (int -> float), else raise ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check_type(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. seed-like names written as numbers
    else:
        raise ConfigError(f"{where}: unsupported field type {tp!r}")
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _build(cls: type[T], data: dict, prefix: str, where_of) -> T:
    """Instantiate dataclass `cls` from a nested dict, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{where_of(dotted)}: unknown key '{dotted}' (known at this level: {known})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{where_of(dotted)}: '{dotted}' is a section; expected a mapping, got {value!r}")
            # Start from this class's default for the section (a subclass may set its own), so
            # overriding one nested key keeps the other defaults.
            default = _field_default(fields[key])
            base = dataclasses.asdict(default) if dataclasses.is_dataclass(default) else {}
            kwargs[key] = _build(tp, _merge(base, value), dotted + ".", where_of)
        else:
            kwargs[key] = _check_type(value, tp, f"{where_of(dotted)}: '{dotted}'")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # __post_init__ validation
        raise ConfigError(f"{where_of(prefix.rstrip('.') or '<root>')}: {e}") from None


def _field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def parse_overrides(overrides: list[str]) -> tuple[dict, dict[str, str]]:
    """['a.b=1', 'c=x'] -> ({'a': {'b': 1}, 'c': 'x'}, {dotted key: the override text})."""
    nested: dict = {}
    origin: dict[str, str] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}': empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = value
        for i in range(len(parts)):
            origin.setdefault(".".join(parts[: i + 1]), f"override '{item}'")
    return nested, origin


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of `cls`, updated by the YAML file at `path` (if any), then by `overrides`."""
    data: dict = {}
    lines: dict[str, int] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        text = path.read_text()
        try:
            data = yaml.safe_load(text) or {}
            lines = _line_numbers(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    extra, origin = parse_overrides(overrides or [])

    def where_of(dotted: str) -> str:
        if dotted in origin:
            return origin[dotted]
        if path is not None and dotted in lines:
            return f"{path}:{lines[dotted]}"
        return str(path) if path is not None else "config"

    return _build(cls, _merge(data, extra), "", where_of)


def config_to_dict(cfg) -> dict:
    """A plain nested dict (for YAML/JSON dumps and logging)."""
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str | Path) -> None:
    """Write the resolved config as YAML (the run folder keeps what actually ran)."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def describe_fields(cls, prefix: str = "", instance=None) -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) for every leaf field; help comes from field metadata["help"].

    Defaults are read from `instance` when given (a section's default instance, which a subclass
    may set with its own values), else from the field declarations.
    """
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = getattr(instance, f.name) if instance is not None else _field_default(f)
        if dataclasses.is_dataclass(hints[f.name]):
            section = default if dataclasses.is_dataclass(default) else None
            rows += describe_fields(hints[f.name], f"{prefix}{f.name}.", section)
        else:
            rows.append((f"{prefix}{f.name}", default, _help(cls, f.name)))
    return rows


def _help(cls, name: str) -> str:
    """A field's help, inherited from a base class when a subclass only changes the default."""
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and f.metadata.get("help"):
            return f.metadata["help"]
    return ""


def parse_cli(cls: type[T], argv: list[str], prog: str, description: str) -> T:
    """Parse `[--config FILE] [--out DIR] [key=value ...]` into a `cls` config; `--help` lists the keys.

    `--out DIR` is shorthand for `out=DIR` when the config has an `out` field.
    """
    import argparse

    keys = describe_fields(cls)
    epilog = "keys (key=value overrides):\n" + "\n".join(
        f"  {k + '=' + repr(d):<36} {h}" for k, d, h in keys
    )
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML config file")
    if any(k == "out" for k, _, _ in keys):
        parser.add_argument("--out", help="output folder (same as out=DIR)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    ns = parser.parse_args(argv)
    overrides = list(ns.overrides)
    if getattr(ns, "out", None):
        overrides.append(f"out={ns.out}")
    return load_config(cls, ns.config, overrides)
