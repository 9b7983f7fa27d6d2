"""The config system: YAML + key=value overrides into typed dataclasses, unknown keys rejected."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from rlhf_dist.config import ConfigError, load_config, parse_cli, save_config


@dataclass
class Optim:
    lr: float = 1e-3
    warmup: int = 10
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])


@dataclass
class Cfg:
    seed: int = 0
    name: str = "run"
    beta_target: float | None = None
    whiten: bool = True
    optim: Optim = field(default_factory=Optim)

    def __post_init__(self):
        if self.seed < 0:
            raise ValueError("seed must be >= 0")


def test_defaults_file_and_overrides_compose(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\noptim:\n  lr: 3e-4\n  warmup: 5\n")
    cfg = load_config(Cfg, path, ["optim.warmup=7", "beta_target=6", "whiten=false", "optim.betas=[0.8, 0.9]"])
    assert cfg == Cfg(seed=3, beta_target=6.0, whiten=False, optim=Optim(lr=3e-4, warmup=7, betas=[0.8, 0.9]))
    assert isinstance(cfg.optim.lr, float) and isinstance(cfg.beta_target, float)


def test_unknown_key_in_file_names_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\noptim:\n  lr: 0.1\n  warmpu: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, path)
    msg = str(e.value)
    assert f"{path}:4" in msg and "optim.warmpu" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("sed=1", "unknown key 'sed'"),
        ("seed=abc", "'seed': expected int"),
        ("seed=1.5", "'seed': expected int"),
        ("whiten=3", "'whiten': expected bool"),
        ("optim=3", "'optim' is a section"),
        ("optim.lr=fast", "'optim.lr': expected float"),
        ("noequals", "expected key=value"),
        ("seed=-1", "seed must be >= 0"),
    ],
)
def test_bad_overrides_give_one_line_errors(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, None, [override])
    assert fragment in str(e.value) and "\n" not in str(e.value)
    if fragment != "seed must be >= 0":
        assert override.split("=")[0] in str(e.value)


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\noptim: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_config(Cfg, bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(Cfg, tmp_path / "nope.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(Cfg, None, ["seed=9", "optim.lr=0.5", "name=x"])
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(Cfg, tmp_path / "resolved.yaml") == cfg


def test_parse_cli_out_shorthand_and_config(tmp_path):
    @dataclass
    class WithOut:
        out: str = "runs/x"
        seed: int = 0

    path = tmp_path / "c.yaml"
    path.write_text("seed: 4\n")
    cfg = parse_cli(WithOut, ["--config", str(path), "--out", "runs/y", "seed=5"], "prog", "doc")
    assert cfg == WithOut(out="runs/y", seed=5)


def test_subclass_section_defaults_survive_a_nested_override():
    @dataclass
    class Tuned(Cfg):
        optim: Optim = field(default_factory=lambda: Optim(lr=0.5, warmup=99))

    cfg = load_config(Tuned, None, ["optim.warmup=3"])
    assert cfg.optim == Optim(lr=0.5, warmup=3), "overriding one key must keep the subclass's other defaults"
    from rlhf_dist.config import describe_fields

    assert ("optim.lr", 0.5, "") in describe_fields(Tuned)
