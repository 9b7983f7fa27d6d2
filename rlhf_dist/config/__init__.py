"""Typed configs: the loader (YAML + `key=value` overrides, checked types, choices and ranges) and
the config classes of every command. The lowest layer: it imports only the standard library and
PyYAML, so every other layer may use it."""

from rlhf_dist.config.cli_args import describe_fields, parse_cli
from rlhf_dist.config.loader import (
    META_KEYS,
    ConfigError,
    check_declarations,
    config_to_dict,
    derive,
    load_config,
    parse_overrides,
    save_config,
    with_overrides,
)

__all__ = [
    "META_KEYS", "ConfigError", "check_declarations", "config_to_dict", "derive", "describe_fields",
    "load_config", "parse_cli", "parse_overrides", "save_config", "with_overrides",
]
