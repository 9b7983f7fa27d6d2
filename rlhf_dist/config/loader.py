"""One config system: typed dataclasses, YAML files, `key=value` overrides, unknown keys rejected.

    cfg = load_config(PPOConfig, "configs/tiny.yaml", ["learner.num_ranks=2", "seed=3"])
    run = derive(cfg, out="runs/x", ppo={"kl_coef": 0.0})      # a new config, checked the same way

Nested dataclasses map to nested YAML mappings and to dotted override keys. Every value is checked
against its field's declaration; an error is one line (ConfigError) naming its origin (`file.yaml:LINE`,
`override 'k=v'` or `derive`) and the dotted key. What a field declares:

  type     int, float, str, bool, X | None, Union, list[X], dict, dict[K, V] (items checked), or a config
           dataclass (a section). Only int -> float converts (and YAML 1.1's string "3e-4" -> float); a str
           field takes no number or boolean: "'name': expected a string, got 3 (quote it: name='3')".
  choices  typing.Literal["auto", "broadcast"], also inside Optional/Union/list:
           "'rollout.weight_transport': expected one of auto, broadcast, got 'foo'".
  range    metadata "ge", "gt", "le", "lt" (numbers) bound an int/float field after conversion: the value,
           each list item, each dict value: "'ppo.lam'=5.0: must be <= 1".
  finite   a float must be finite (not YAML .nan/.inf, override nan/inf) unless metadata "finite": False.
  help     metadata "help": shown by `--help`, followed by the choices and range ("GAE lambda; in [0, 1]").
  overrides_of  metadata "overrides_of": a config class. The field (list[str], or a dict of them) holds `key=value`
           overrides of that class, which a composing command applies (`with_overrides`): each is checked at load
           time against the class's keys, types, choices and ranges, and an error names this file and line:
           "compare.yaml:23: 'methods.grpo[1]': 'ppo.advantag': unknown key ...".

    lam: float = field(default=0.95, metadata={"help": "GAE lambda", "ge": 0, "le": 1})
    weight_transport: Literal["auto", "broadcast"] = field(default="auto", metadata={"help": "..."})

META_KEYS lists the metadata keys (config/fields.py `param()` writes them). A subclass that redeclares a
field inherits the metadata keys it does not set. Defaults are not checked at runtime: a test calls
`check_declarations(cls)` (defaults outside their type/choices/range, unknown metadata keys, misplaced ranges).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import operator
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

T = TypeVar("T")
Where = Callable[[str], str]  # dotted key -> where its value came from: "c.yaml:12", "override 'a=1'", "derive"

META_KEYS = frozenset({"help", "ge", "gt", "le", "lt", "finite", "overrides_of"})
_BOUNDS = {"ge": (">=", operator.ge), "gt": (">", operator.gt), "le": ("<=", operator.le), "lt": ("<", operator.lt)}


class ConfigError(ValueError):
    """A bad config file or override; the message is one line naming the file/line or override and the key."""


class _OutOfRange(ConfigError):
    """The value has the field's type but breaks its range or finiteness: a Union tries no other type."""


def _line_numbers(text: str) -> dict[str, int]:
    """Dotted key -> 1-based line number, for error messages."""
    lines: dict[str, int] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = f"{prefix}{key_node.value}"
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key + ".")
        elif isinstance(node, yaml.SequenceNode) and prefix:  # list items: "key[i]"
            for i, item in enumerate(node.value):
                lines[f"{prefix[:-1]}[{i}]"] = item.start_mark.line + 1

    walk(yaml.compose(text), "")
    return lines


def _check(value: Any, tp: Any, meta: typing.Mapping, key: str, where: Where) -> Any:
    """Return `value` converted to type `tp` where lossless (int -> float) and checked against the field's
    choices and `meta` (range, finite); else raise ConfigError naming where(key) and `key`."""

    def fail(message: str) -> ConfigError:
        return ConfigError(f"{where(key)}: '{key}': {message}")

    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own message (e.g. its choices)
            return _check(value, options[0], meta, key, where)
        for arg in options:
            try:
                return _check(value, arg, meta, key, where)
            except _OutOfRange:
                raise
            except ConfigError:
                continue
        raise fail(f"expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if any(value == c and type(value) is type(c) for c in typing.get_args(tp)):
            return value
        raise fail(f"expected {_type_name(tp)}, got {value!r}")
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise fail(f"expected a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_check(v, item, meta, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise fail(f"expected a mapping, got {value!r}")
        key_tp, value_tp = typing.get_args(tp) or (Any, Any)
        return {_check(k, key_tp, {}, f"{key}.{k}", where): _check(v, value_tp, meta, f"{key}.{k}", where)
                for k, v in value.items()}
    if tp is str and "overrides_of" in meta and isinstance(value, str):
        _check_override(value, meta["overrides_of"], key, where)
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return _in_range(value, meta, key, where)
    elif tp is float:
        number = _to_float(value)
        if number is not None:
            return _in_range(number, meta, key, where)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            raise fail(f"expected a string, got {value!r} (YAML reads yes/no/on/off/true/false as booleans; quote it)")
        if isinstance(value, (int, float)):
            raise fail(f"expected a string, got {value!r} (quote it: {key}='{value}')")
    else:
        raise fail(f"unsupported field type {tp!r}")
    raise fail(f"expected {_type_name(tp)}, got {value!r}")


def _check_override(item: str, cls: type, key: str, where: Where) -> None:
    """`item` ('a.b=value') is a valid override of config class `cls`: a known dotted key, a value of
    its type, choices and range; else ConfigError naming where(key), `key` and the override's key."""
    try:
        nested, _ = parse_overrides([item])
    except ConfigError as e:
        raise ConfigError(f"{where(key)}: '{key}': {str(e).removeprefix(f'override {item!r}: ')} ({item!r})") from None
    inner: Where = lambda _k: f"{where(key)}: '{key}'"  # noqa: E731

    def walk(klass: type, data: dict, prefix: str) -> None:
        hints = typing.get_type_hints(klass)
        fields = {f.name for f in dataclasses.fields(klass)}
        for k, v in data.items():
            dotted = f"{prefix}{k}"
            if k not in fields:
                raise ConfigError(f"{inner(dotted)}: unknown key '{dotted}' of {cls.__name__} "
                                  f"(known at this level: {', '.join(sorted(fields))})")
            if dataclasses.is_dataclass(hints[k]):
                if not isinstance(v, dict):
                    raise ConfigError(f"{inner(dotted)}: '{dotted}' is a section; expected a mapping, got {v!r}")
                walk(hints[k], v, dotted + ".")
            else:
                _check(v, hints[k], _meta(klass, k), dotted, inner)

    walk(cls, nested, "")


def _to_float(value: Any) -> float | None:
    try:  # also a string: YAML 1.1 reads "3e-4" (no dot) as one, and overrides "nan"/"inf"
        return None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _in_range(number, meta: typing.Mapping, key: str, where: Where):
    """`number` if it is finite (unless meta["finite"] is False) and within meta's ge/gt/le/lt bounds."""
    if isinstance(number, float) and not math.isfinite(number) and meta.get("finite", True):
        raise _OutOfRange(f"{where(key)}: '{key}'={number!r}: must be a finite number")
    for bound, (sign, holds) in _BOUNDS.items():
        if bound in meta and not holds(number, meta[bound]):
            raise _OutOfRange(f"{where(key)}: '{key}'={number!r}: must be {sign} {_num(meta[bound])}")
    return number


def _num(x) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(str(c) for c in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _meta(cls, name: str) -> dict:
    """A field's metadata, merged over the class's bases (a redeclaration that only changes the default
    keeps the base's help and range)."""
    meta: dict = {}
    for klass in reversed(cls.__mro__):
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None:
            meta.update(f.metadata)
    return meta


def _construct(make: Callable, kwargs: dict, prefix: str, where: Where):
    """make(**kwargs), turning a __post_init__ validation error into a ConfigError."""
    try:
        return make(**kwargs)
    except (TypeError, ValueError) as e:
        section = prefix.rstrip(".")
        raise ConfigError(f"{where(section or '<root>')}: " + (f"'{section}': " if section else "") + str(e)) from None


def _build(cls: type[T], data: dict, prefix: str, where: Where) -> T:
    """Instantiate dataclass `cls` from a nested dict, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{where(dotted)}: unknown key '{dotted}' (known at this level: {known})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{where(dotted)}: '{dotted}' is a section; expected a mapping, got {value!r}")
            # Start from this class's default for the section (a subclass may set its own), so
            # overriding one nested key keeps the other defaults.
            default = _field_default(fields[key])
            base = dataclasses.asdict(default) if dataclasses.is_dataclass(default) else {}
            kwargs[key] = _build(tp, _merge(base, value), dotted + ".", where)
        else:
            kwargs[key] = _check(value, tp, _meta(cls, key), dotted, where)
    return _construct(cls, kwargs, prefix, where)


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


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                values: dict | None = None) -> T:
    """Defaults of `cls`, updated by the YAML file at `path` (if any), then by `values` (a nested
    dict of typed values that a composing command sets: `{"out": ..., "ppo": {"kl_coef": 0.0}}`),
    then by `overrides` (the user's `key=value` strings, which win)."""
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
    set_by_command = set(_dotted_keys(values or {}))

    def where_of(dotted: str) -> str:
        key = dotted.split("[")[0]  # a list item: its own line, else the list's
        if key in origin:
            return origin[key]
        if key in set_by_command:
            return f"{cls.__name__} (set by the command)"
        for k in (dotted, key):
            if path is not None and k in lines:
                return f"{path}:{lines[k]}"
        return str(path) if path is not None else "config"

    return _build(cls, _merge(_merge(data, values or {}), extra), "", where_of)


def _dotted_keys(d: dict, prefix: str = ""):
    for k, v in d.items():
        yield prefix + k
        if isinstance(v, dict):
            yield from _dotted_keys(v, prefix + k + ".")


def derive(cfg: T, **changes: Any) -> T:
    """A NEW config of `cfg`'s class with `changes` applied; `cfg` itself is not modified.

        derive(ppo_cfg, out="runs/x", ppo={"kl_coef": 0.0}, rollout={"temperature": 0.7})

    A section is given as a dict of its changes or as an instance of its class. Every changed value gets
    the checks of a YAML/override value (errors name "derive" and the dotted key), and `__post_init__`
    runs again on the new config and on every rebuilt section.
    """
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"derive: expected a config instance, got {cfg!r}")
    return _derive(copy.deepcopy(cfg), changes, "", _AT_DERIVE)


def with_overrides(cfg: T, overrides: list[str], origin: str) -> T:
    """A NEW config: `cfg` with the user's `key=value` strings applied on top (they win over the values
    a composing command set). `origin` names where they came from in errors ("methods.grpo")."""
    nested, where = parse_overrides(overrides)
    every = ("override " if len(overrides) == 1 else "overrides ") + ", ".join(repr(o) for o in overrides)
    try:
        return _derive(copy.deepcopy(cfg), nested, "", lambda key: f"{origin}: {where.get(key, every)}")
    except ConfigError as e:
        raise ConfigError(str(e) if str(e).startswith(origin) else f"{origin}: {e}") from None


_AT_DERIVE: Where = lambda _key: "derive"  # noqa: E731


def _derive(cfg, changes: dict, prefix: str, where: Where):
    hints = typing.get_type_hints(type(cfg))
    fields = {f.name for f in dataclasses.fields(cfg) if f.init}
    kwargs = {}
    for key, value in changes.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"{where(dotted)}: unknown key '{dotted}' (known at this level: {', '.join(sorted(fields))})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if isinstance(value, tp):  # a whole section: rebuilt field by field, so it is checked too
                base = copy.deepcopy(value)
                value = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init}
            elif isinstance(value, dict):
                base = getattr(cfg, key)
                base = base if dataclasses.is_dataclass(base) else tp()
            else:
                raise ConfigError(f"{where(dotted)}: '{dotted}' is a section; "
                                  f"expected a mapping or a {tp.__name__}, got {value!r}")
            kwargs[key] = _derive(base, value, dotted + ".", where)
        else:
            kwargs[key] = _check(value, tp, _meta(type(cfg), key), dotted, where)
    return _construct(lambda **kw: dataclasses.replace(cfg, **kw), kwargs, prefix, where)


def check_declarations(cls: type) -> list[str]:
    """Declaration mistakes of config class `cls`, one line each, for a test: a default (sections: their
    default instances) failing its field's type/choices/range, a metadata key not in META_KEYS, a bound
    that is not a number or is on a field without numbers. (`cls()` is not called: __post_init__ may
    require values such as out=.)"""
    return _declaration_problems(cls, "", None, cls.__name__)


def _declaration_problems(cls: type, prefix: str, instance, owner: str) -> list[str]:
    problems = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, tp, meta = f"{prefix}{f.name}", hints[f.name], _meta(cls, f.name)
        default = getattr(instance, f.name) if instance is not None else _field_default(f)
        if dataclasses.is_dataclass(tp):
            section = default if dataclasses.is_dataclass(default) else None
            problems += _declaration_problems(tp, key + ".", section, owner)
            continue
        mistakes = [f"unknown metadata key(s) {sorted(set(meta) - META_KEYS)}"] if set(meta) - META_KEYS else []
        for bound in (b for b in _BOUNDS if b in meta):
            if isinstance(meta[bound], bool) or not isinstance(meta[bound], (int, float)):
                mistakes.append(f"metadata {bound}={meta[bound]!r} is not a number")
            elif not _holds_numbers(tp):
                mistakes.append(f"metadata {bound} on a field of type {_type_name(tp)} (ranges are for numbers)")
        problems += [f"{owner}: '{key}': {m}" for m in mistakes]
        if not mistakes and (instance is not None or f.default is not dataclasses.MISSING
                             or f.default_factory is not dataclasses.MISSING):  # type: ignore[misc]
            try:
                _check(default, tp, meta, key, lambda _key: f"{owner} default")
            except ConfigError as e:
                problems.append(str(e))
    return problems


def _holds_numbers(tp: Any) -> bool:
    return tp in (int, float) or (typing.get_origin(tp) is not typing.Literal
                                  and any(_holds_numbers(a) for a in typing.get_args(tp)))


def config_to_dict(cfg) -> dict:
    """A plain nested dict (for YAML/JSON dumps and logging)."""
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str | Path) -> None:
    """Write the resolved config as YAML (the run folder keeps what actually ran)."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
