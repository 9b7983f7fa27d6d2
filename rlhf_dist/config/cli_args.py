"""The command line of every command: `[--config FILE] [--out DIR] [key=value ...]` parsed into a
typed config (rlhf_dist/config/loader.py), and `--help` listing every key with its default, help,
choices and range."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

from rlhf_dist.config.loader import ConfigError, _field_default, _meta, _num, _type_name, load_config

T = TypeVar("T")


def describe_fields(cls, prefix: str = "", instance=None) -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) for every leaf field; help is field metadata["help"] followed by the
    field's choices and range, e.g. "GAE lambda; in [0, 1]", "one of auto, broadcast", "> 0".

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
            meta = _meta(cls, f.name)
            text = [meta.get("help", ""), _choices_text(hints[f.name]), _range_text(meta)]
            rows.append((f"{prefix}{f.name}", default, "; ".join(t for t in text if t)))
    return rows


def _choices_text(tp: Any) -> str:
    """'one of a, b' for a Literal field (also inside Optional/Union/list), else ''."""
    if typing.get_origin(tp) is typing.Literal:
        return _type_name(tp)
    return next((t for t in map(_choices_text, typing.get_args(tp)) if t), "")


def _range_text(meta: typing.Mapping) -> str:
    """'in [0, 1]', 'in (0, 1]', '> 0', '<= 1' from metadata ge/gt/le/lt, else ''."""
    low = ("[", ">=", meta["ge"]) if "ge" in meta else ("(", ">", meta["gt"]) if "gt" in meta else None
    high = ("]", "<=", meta["le"]) if "le" in meta else (")", "<", meta["lt"]) if "lt" in meta else None
    if low and high:
        return f"in {low[0]}{_num(low[2])}, {_num(high[2])}{high[0]}"
    bound = low or high
    return f"{bound[1]} {_num(bound[2])}" if bound else ""


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
    cfg = load_config(cls, ns.config, overrides)
    if getattr(cfg, "out", ""):
        check_out_folder(cfg.out)
    return cfg


def check_out_folder(out: str) -> None:
    """Refuse an `out` folder that cannot be made or written, before a command starts anything: an
    existing file (or a file where a parent folder should be), or a nearest existing folder that is
    not writable. ConfigError naming the key and the path at fault."""
    import os
    from pathlib import Path

    path = Path(out).expanduser()
    for p in [path, *path.parents]:
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"out={out}: {p} is a file, not a folder")
            if not os.access(p, os.W_OK | os.X_OK):
                raise ConfigError(f"out={out}: {p} is not writable")
            return
