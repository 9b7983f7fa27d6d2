"""The config system: YAML + key=value overrides into typed dataclasses, unknown keys rejected."""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import pytest

from rlhf_dist.config import (
    ConfigError,
    check_declarations,
    derive,
    describe_fields,
    load_config,
    parse_cli,
    save_config,
)


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


# --- choices, ranges, finiteness, strict strings, derive, declaration checks -------------------------


@dataclass
class Rollout:
    weight_transport: Literal["auto", "object_store", "broadcast"] = field(
        default="auto", metadata={"help": "how weights reach the samplers"}
    )
    backend: Optional[Literal["vllm", "hf"]] = None
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature", "gt": 0})
    top_p: float = field(default=1.0, metadata={"gt": 0, "le": 1})


@dataclass
class Algo:
    lam: float = field(default=0.95, metadata={"help": "GAE lambda", "ge": 0, "le": 1})
    epochs: int = field(default=1, metadata={"ge": 1})
    kl_coef: float = 0.02
    scale: float = field(default=1.0, metadata={"finite": False})
    milestones: list[int] = field(default_factory=lambda: [10, 20], metadata={"ge": 0})
    coefs: list[float] = field(default_factory=list, metadata={"ge": 0, "lt": 1})
    mode: Union[Literal["adaptive"], float] = field(default="adaptive", metadata={"ge": 0})

    def __post_init__(self):
        if self.epochs > 100:
            raise ValueError("epochs must be <= 100 (post_init)")


@dataclass
class Run:
    out: str = "runs/x"
    name: str = "run"
    rollout: Rollout = field(default_factory=Rollout)
    algo: Algo = field(default_factory=Algo)
    models: dict[str, str] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def _error(overrides=(), path=None, cls=Run) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(cls, path, list(overrides))
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_literal_choices_from_override_and_yaml(tmp_path):
    cfg = load_config(Run, None, ["rollout.weight_transport=broadcast", "rollout.backend=hf"])
    assert cfg.rollout.weight_transport == "broadcast" and cfg.rollout.backend == "hf"
    assert _error(["rollout.weight_transport=foo"]) == (
        "override 'rollout.weight_transport=foo': 'rollout.weight_transport': "
        "expected one of auto, object_store, broadcast, got 'foo'"
    )
    path = tmp_path / "c.yaml"
    path.write_text("out: runs/y\nrollout:\n  temperature: 0.5\n  weight_transport: nccl\n")
    assert _error(path=path) == (
        f"{path}:4: 'rollout.weight_transport': expected one of auto, object_store, broadcast, got 'nccl'"
    )


def test_literal_inside_optional_and_union(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rollout:\n  backend: null\nalgo:\n  mode: 0.5\n")
    cfg = load_config(Run, path)
    assert cfg.rollout.backend is None and cfg.algo.mode == 0.5
    assert _error(["rollout.backend=tf"]) == "override 'rollout.backend=tf': 'rollout.backend': expected one of vllm, hf, got 'tf'"
    assert "'algo.mode': expected one of adaptive or float, got 'fixed'" in _error(["algo.mode=fixed"])
    # a range error inside a Union is reported as such, not as "expected ..."
    assert "'algo.mode'=-1.0: must be >= 0" in _error(["algo.mode=-1"])


def test_ranges_from_override_and_yaml(tmp_path):
    assert _error(["algo.lam=5"]) == "override 'algo.lam=5': 'algo.lam'=5.0: must be <= 1"
    assert _error(["rollout.temperature=0"]) == "override 'rollout.temperature=0': 'rollout.temperature'=0.0: must be > 0"
    assert _error(["algo.epochs=0"]) == "override 'algo.epochs=0': 'algo.epochs'=0: must be >= 1"
    path = tmp_path / "c.yaml"
    path.write_text("algo:\n  epochs: 2\n  lam: -0.5\n")
    assert _error(path=path) == f"{path}:3: 'algo.lam'=-0.5: must be >= 0"
    cfg = load_config(Run, None, ["algo.lam=0", "algo.lam=1", "rollout.top_p=1"])  # inclusive bounds
    assert cfg.algo.lam == 1.0 and cfg.rollout.top_p == 1.0


def test_range_applies_to_each_list_item(tmp_path):
    assert load_config(Run, None, ["algo.milestones=[0, 5]"]).algo.milestones == [0, 5]
    assert _error(["algo.milestones=[1, -2]"]) == "override 'algo.milestones=[1, -2]': 'algo.milestones[1]'=-2: must be >= 0"
    assert "'algo.coefs[0]'=1.0: must be < 1" in _error(["algo.coefs=[1]"])
    path = tmp_path / "c.yaml"
    path.write_text("algo:\n  coefs:\n    - 0.5\n    - 1.5\n")
    assert _error(path=path) == f"{path}:4: 'algo.coefs[1]'=1.5: must be < 1"  # the item's own line


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", ".nan", ".inf", "NaN"])
def test_non_finite_floats_are_rejected_from_overrides(raw):
    assert _error([f"algo.kl_coef={raw}"]).startswith(f"override 'algo.kl_coef={raw}': 'algo.kl_coef'=")
    assert _error([f"algo.kl_coef={raw}"]).endswith(": must be a finite number")


def test_non_finite_floats_are_rejected_from_yaml_unless_allowed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("algo:\n  kl_coef: .nan\n")
    assert _error(path=path) == f"{path}:2: 'algo.kl_coef'=nan: must be a finite number"
    path.write_text("algo:\n  scale: .nan\n")  # metadata finite=False
    assert math.isnan(load_config(Run, path).algo.scale)
    assert load_config(Run, None, ["algo.scale=-inf"]).algo.scale == -math.inf


def test_str_fields_take_no_numbers_or_booleans(tmp_path):
    assert _error(["name=3"]) == "override 'name=3': 'name': expected a string, got 3 (quote it: name='3')"
    assert "'name': expected a string, got True" in _error(["name=true"])
    assert load_config(Run, None, ["name='3'"]).name == "3"
    path = tmp_path / "c.yaml"
    path.write_text("out: runs/z\nname: 1.5\n")
    assert _error(path=path) == f"{path}:2: 'name': expected a string, got 1.5 (quote it: name='1.5')"


def test_parametrised_dict_items_are_checked_and_plain_dicts_are_not(tmp_path):
    cfg = load_config(Run, None, ["models.sft=/m/sft", "models.ppo=/m/ppo", "extra.a=3"])
    assert cfg.models == {"sft": "/m/sft", "ppo": "/m/ppo"} and cfg.extra == {"a": 3}
    assert _error(["models.sft=/m/sft", "models.ppo=7"]) == (
        "override 'models.ppo=7': 'models.ppo': expected a string, got 7 (quote it: models.ppo='7')"
    )
    path = tmp_path / "c.yaml"
    path.write_text("models:\n  sft: /m/sft\n  rm: 12\n")
    assert _error(path=path) == f"{path}:3: 'models.rm': expected a string, got 12 (quote it: models.rm='12')"
    assert "'models': expected a mapping" in _error(["models=3"])


def test_help_shows_choices_and_ranges(capsys):
    rows = {key: help for key, _, help in describe_fields(Run)}
    assert rows["rollout.weight_transport"] == "how weights reach the samplers; one of auto, object_store, broadcast"
    assert rows["rollout.backend"] == "one of vllm, hf"
    assert rows["rollout.temperature"] == "sampling temperature; > 0"
    assert rows["rollout.top_p"] == "in (0, 1]"
    assert rows["algo.lam"] == "GAE lambda; in [0, 1]"
    assert rows["algo.epochs"] == ">= 1" and rows["algo.coefs"] == "in [0, 1)" and rows["algo.kl_coef"] == ""
    with pytest.raises(SystemExit):
        parse_cli(Run, ["--help"], "prog", "doc")
    out = capsys.readouterr().out
    assert "one of auto, object_store, broadcast" in out and "GAE lambda; in [0, 1]" in out


def test_subclass_redeclaring_a_default_keeps_range_and_help():
    @dataclass
    class TightAlgo(Algo):
        lam: float = 0.9

    assert ("lam", 0.9, "GAE lambda; in [0, 1]") in describe_fields(TightAlgo)
    with pytest.raises(ConfigError, match="'lam'=2.0: must be <= 1"):
        load_config(TightAlgo, None, ["lam=2"])


def test_derive_changes_fields_and_nested_sections_from_dicts():
    base = load_config(Run, None, ["algo.milestones=[1, 2]"])
    snapshot = dataclasses.asdict(base)
    new = derive(base, out="runs/kl0", algo={"kl_coef": 0.0, "lam": 1}, rollout={"temperature": 0.7})
    assert type(new) is Run and new is not base
    assert new.out == "runs/kl0" and new.algo.kl_coef == 0.0 and new.rollout.temperature == 0.7
    assert new.algo.lam == 1.0 and isinstance(new.algo.lam, float)  # converted like a YAML value
    assert new.algo.milestones == [1, 2] and new.rollout.weight_transport == "auto"  # untouched fields kept
    assert dataclasses.asdict(base) == snapshot, "derive must not modify the original"
    new.algo.milestones.append(3)
    assert base.algo.milestones == [1, 2], "the new config must not share mutable values with the original"


def test_derive_with_section_instances():
    base = Run()
    algo = Algo(lam=0.5, milestones=[4])
    new = derive(base, algo=algo)
    assert new.algo == algo and new.algo is not algo and base.algo == Algo()
    algo.milestones.append(5)
    assert new.algo.milestones == [4]
    # an instance is checked like any other value, even one built around its own checks
    bad = Algo()
    bad.lam = 7.0
    with pytest.raises(ConfigError) as e:
        derive(base, algo=bad)
    assert str(e.value) == "derive: 'algo.lam'=7.0: must be <= 1"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"algo": {"lam": 5}}, "derive: 'algo.lam'=5.0: must be <= 1"),
        ({"rollout": {"weight_transport": "foo"}},
         "derive: 'rollout.weight_transport': expected one of auto, object_store, broadcast, got 'foo'"),
        ({"algo": {"kl_coef": float("nan")}}, "derive: 'algo.kl_coef'=nan: must be a finite number"),
        ({"algo": {"milestones": [1, -1]}}, "derive: 'algo.milestones[1]'=-1: must be >= 0"),
        ({"name": 3}, "derive: 'name': expected a string, got 3 (quote it: name='3')"),
        ({"models": {"sft": 3}}, "derive: 'models.sft': expected a string, got 3 (quote it: models.sft='3')"),
        ({"algo": {"lamda": 0.9}}, "derive: unknown key 'algo.lamda' (known at this level: "),
        ({"algo": 3}, "derive: 'algo' is a section; expected a mapping or a Algo, got 3"),
        ({"algo": {"epochs": 101}}, "derive: 'algo': epochs must be <= 100 (post_init)"),
    ],
)
def test_derive_errors_name_derive_and_the_key(changes, message):
    base = Run()
    with pytest.raises(ConfigError) as e:
        derive(base, **changes)
    assert str(e.value).startswith(message)
    assert base == Run()


def test_derive_reruns_post_init_at_the_root():
    with pytest.raises(ConfigError, match=r"^derive: seed must be >= 0$"):
        derive(Cfg(), seed=-1)
    assert derive(Cfg(), optim={"lr": 0.1}) == Cfg(optim=Optim(lr=0.1))


@dataclass
class Section:
    lam: float = field(default=1.5, metadata={"ge": 0, "le": 1})
    betas: list[float] = field(default_factory=lambda: [0.9, -1.0], metadata={"ge": 0})


@dataclass
class Bad:
    """Declaration mistakes that check_declarations must find (module level: get_type_hints needs it)."""

    temperature: float = field(default=0.0, metadata={"gt": 0})
    transport: Literal["auto", "broadcast"] = "nccl"  # type: ignore[assignment]
    name: str = field(default="x", metadata={"ge": 0})
    steps: int = field(default=1, metadata={"maximum": 10, "le": "10"})
    section: Section = field(default_factory=Section)


def test_check_declarations_finds_bad_defaults_and_metadata():
    assert check_declarations(Run) == [] and check_declarations(Cfg) == []

    problems = check_declarations(Bad)
    assert "Bad default: 'temperature'=0.0: must be > 0" in problems
    assert "Bad default: 'transport': expected one of auto, broadcast, got 'nccl'" in problems
    assert "Bad: 'name': metadata ge on a field of type str (ranges are for numbers)" in problems
    assert "Bad: 'steps': unknown metadata key(s) ['maximum']" in problems
    assert "Bad: 'steps': metadata le='10' is not a number" in problems
    assert "Bad default: 'section.lam'=1.5: must be <= 1" in problems
    assert "Bad default: 'section.betas[1]'=-1.0: must be >= 0" in problems
    assert len(problems) == 7


def _project_config_classes() -> list[type]:
    import rlhf_dist.config as package

    classes = []
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        module = importlib.import_module(info.name)
        classes += [v for v in vars(module).values()
                    if isinstance(v, type) and dataclasses.is_dataclass(v) and v.__module__ == module.__name__]
    return classes


def test_project_config_classes_declare_valid_defaults():
    """Every config class in rlhf_dist.config: defaults inside their declared choices and ranges, known
    metadata keys (a default that breaks its own range is a programming error, not checked at runtime)."""
    classes = _project_config_classes()
    if not classes:
        pytest.skip("no config classes in rlhf_dist.config yet")
    problems = [p for cls in classes for p in check_declarations(cls)]
    assert problems == []


@dataclass
class Pipeline:
    """A composing command's config: `key=value` overrides of another config class, checked at load."""

    run_overrides: list[str] = field(default_factory=list, metadata={"overrides_of": Cfg})
    methods: dict[str, list[str]] = field(default_factory=dict, metadata={"overrides_of": Cfg})


@pytest.mark.parametrize("text, line, message", [
    ("run_overrides:\n  - seed=1\n  - optim.lrr=2\n", 3,
     "'run_overrides[1]': unknown key 'optim.lrr' of Cfg (known at this level: betas, lr, warmup)"),
    ("methods:\n  a: []\n  b:\n    - whiten=maybe\n", 4, "'methods.b[0]': 'whiten': expected bool, got 'maybe'"),
    ("methods:\n  b: [seed=1, optim=3]\n", 2, "'methods.b[1]': 'optim' is a section; expected a mapping, got 3"),
    ("run_overrides: [seed]\n", 1, "'run_overrides[0]': expected key=value ('seed')"),
])
def test_overrides_of_another_config_are_checked_at_load_with_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(Pipeline, path)
    assert str(e.value) == f"{path}:{line}: {message}"


def test_valid_overrides_of_another_config_load_and_apply_over_typed_values():
    from rlhf_dist.config import with_overrides

    p = load_config(Pipeline, None, ["run_overrides=[optim.lr=0.5, seed=4]"])
    assert p.run_overrides == ["optim.lr=0.5", "seed=4"]
    base = derive(Cfg(), seed=2, name="by-the-command")
    run = with_overrides(base, p.run_overrides, "run_overrides")
    assert (run.seed, run.name, run.optim.lr, run.optim.warmup) == (4, "by-the-command", 0.5, 10)
    assert base.seed == 2  # a new config
    with pytest.raises(ConfigError, match=r"^methods.b: override 'seed=-1': seed must be >= 0$"):
        with_overrides(base, ["seed=-1"], "methods.b")  # __post_init__ runs on the result
