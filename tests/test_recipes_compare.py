"""`rlhf-dist compare` (rlhf_dist/recipes/compare.py, rlhf_dist/evaluation/method_comparison.py):

- the assembly of the comparison (rows, cells, markdown, console table) and its statistics
  (throughput, the paired correctness difference and its standard error) against hand-computed values;
- configs/compare.yaml: every method is a valid PPO run and every method trains on the same
  number of responses;
- bad input is one line and exit status 2, nothing written;
- one tiny real run of the command (ppo and grpo, 2 iterations, a 1-step DPO, 8 eval prompts) on
  the `ppo_models` fixture: the files exist and the table has a row per method with finite numbers
  (about 2-3 minutes).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_dist.evaluation.method_comparison import (
    COLUMNS,
    cells,
    console_rows,
    correctness_findings,
    correctness_summary,
    markdown,
    method_row,
    notes,
    paired_difference,
    responses_per_second,
)

REPO = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).with_name("rlhf-dist"))


def _eval_model(win, lo, hi, prob, gold, correct, kl, nll, path="m"):
    """An entry of eval.json's models, as evaluate_models writes it (baseline sft)."""
    return {"path": path, "gold_score": gold, "gold_score_sem": 0.01, "proxy_score": 0.0, "kl_to_sft": kl,
            "pretrain_nll": nll, "response_len": 5.0, "eos_rate": 1.0, "win_rate_vs_sft": win,
            "win_rate_ci95": [lo, hi], "win_prob_vs_sft": prob, "win_rate_by_definition": False,
            "gold_parts": {"total": gold, "correct": correct}}


# ---------------------------------------------------------------- statistics


def test_paired_difference_by_hand():
    # d = [1, 0, 0, 1]: mean 0.5; sample sd sqrt(4 * 0.25 / 3) = sqrt(1/3); SE = sd / 2 = 0.288675
    f = paired_difference([1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0])
    assert f["a"] == 0.75 and f["b"] == 0.25 and f["n"] == 4
    assert f["diff"] == pytest.approx(0.5)
    assert f["se"] == pytest.approx(math.sqrt(1 / 3) / 2)
    assert f["z"] == pytest.approx(0.5 / (math.sqrt(1 / 3) / 2))  # 1.732 < 1.96
    assert f["beyond_noise"] is False


def test_paired_difference_beyond_the_noise_and_degenerate_cases():
    # 9 of 10 prompts gain 1, one loses 1: d mean 0.8, sd sqrt((9 * 0.04 + 3.24) / 9) = sqrt(0.4), SE 0.2, z 4
    a, b = [1.0] * 9 + [0.0], [0.0] * 9 + [1.0]
    f = paired_difference(a, b)
    assert f["diff"] == pytest.approx(0.8) and f["se"] == pytest.approx(0.2) and f["z"] == pytest.approx(4.0)
    assert f["beyond_noise"] is True
    same = paired_difference([0.5, 1.0], [0.5, 1.0])
    assert same["diff"] == 0 and same["se"] == 0 and same["z"] == 0.0 and not same["beyond_noise"]
    shift = paired_difference([1.0, 1.0], [0.0, 0.0])  # every prompt gains exactly 1: no spread at all
    assert shift["se"] == 0 and math.isinf(shift["z"]) and shift["beyond_noise"]
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference([1.0], [1.0, 0.0])


def test_responses_per_second_from_iteration_times():
    records = [{"step": 0, "eval/gold": 0.3},  # an evaluation record has no iteration time
               {"step": 1, "time/iteration_s": 0.5}, {"step": 2, "time/iteration_s": 1.5}]
    assert responses_per_second(records, 32) == pytest.approx(2 * 32 / 2.0)
    assert responses_per_second([{"step": 0}], 32) is None


# ---------------------------------------------------------------- assembly


def _rows():
    sft = method_row("sft", _eval_model(0.5, 0.456, 0.544, 0.5, 0.40, 0.50, 0.0, 1.60, "sft"), "sft", None,
                     [1.0, 0.0, 1.0, 0.0])
    ppo = method_row("ppo", _eval_model(0.80, 0.77, 0.83, 0.81, 0.60, 0.50, 6.93, 1.57), "sft",
                     {"kind": "ppo", "reward_source": "rm", "advantage": "gae", "overrides": [], "wall_s": 61.25,
                      "peak_memory_mb": [690.06, 701.5], "responses_per_s": 60.04, "responses": 1280},
                     [1.0, 0.0, 0.0, 1.0])
    good = method_row("ppo_correct", _eval_model(0.70, 0.66, 0.74, 0.72, 0.55, 1.0, 3.1, 1.58), "sft",
                      {"kind": "ppo", "reward_source": "fn", "advantage": "gae", "overrides": ["reward_source=fn"],
                       "wall_s": 50.0, "peak_memory_mb": [650.0], "responses_per_s": 70.0, "responses": 1280},
                      [1.0, 1.0, 1.0, 1.0])
    dpo = method_row("dpo", _eval_model(0.6, 0.55, 0.65, 0.61, 0.45, 0.25, 1.5, None), "sft",
                     {"kind": "dpo", "reward_source": None, "wall_s": 100.0, "peak_memory_mb": None,
                      "responses_per_s": None}, [0.0, 0.0, 1.0, 0.0])
    return [sft, ppo, good, dpo]


def test_method_row_takes_the_eval_numbers_and_the_training_cost():
    sft, ppo, _, dpo = _rows()
    assert sft["kind"] == "baseline" and sft["train_wall_s"] is None and sft["correct"] == 0.5
    assert sft["correct_sem"] == pytest.approx(math.sqrt(1 / 3) / 2)  # [1, 0, 1, 0]: sd sqrt(1/3), n 4
    assert ppo["win_rate"] == 0.80 and ppo["win_rate_ci95"] == [0.77, 0.83] and ppo["win_prob"] == 0.81
    assert ppo["kl_to_sft"] == 6.93 and ppo["pretrain_nll"] == 1.57 and ppo["gold"] == 0.60
    assert ppo["peak_memory_mb"] == [690.06, 701.5] and ppo["responses_per_s"] == 60.04
    assert dpo["pretrain_nll"] is None and dpo["peak_memory_mb"] is None


def test_cells_format_every_column_and_write_na():
    sft, ppo, _, dpo = _rows()
    assert cells(ppo) == ["ppo", "0.800 [0.770, 0.830]", "0.810", "0.600", "0.500", "6.93", "1.570", "61.2",
                          "690 / 702", "60.0"]
    assert cells(sft)[0] == "sft (baseline)" and cells(sft)[-3:] == ["n/a", "n/a", "n/a"]
    assert cells(dpo)[6:] == ["n/a", "100.0", "n/a", "n/a"]
    assert all(len(cells(r)) == len(COLUMNS) for r in _rows())


def test_correctness_findings_set_the_verifiable_reward_against_the_rm_and_sft():
    rows = _rows()
    correct = {r["method"]: c for r, c in zip(rows, ([1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0], [1.0] * 4,
                                                    [0.0, 0.0, 1.0, 0.0]))}
    found = correctness_findings(rows, correct, "sft", "ppo")
    assert [(f["method"], f["against"]) for f in found] == [("ppo_correct", "ppo"), ("ppo_correct", "sft"), ("ppo", "sft")]
    vs_ppo, vs_sft, rm_vs_sft = found
    # ppo_correct - ppo: d = [0, 1, 1, 0], mean 0.5, SE sqrt(1/3) / 2
    assert vs_ppo["diff"] == pytest.approx(0.5) and vs_ppo["se"] == pytest.approx(math.sqrt(1 / 3) / 2)
    assert vs_sft["diff"] == pytest.approx(0.5)
    assert rm_vs_sft["diff"] == 0.0  # the RM-trained policy: [1, 0, 0, 1] against [1, 0, 1, 0]
    line = correctness_summary(found)
    assert "ppo_correct 1.000 vs ppo 0.500: +0.500 (SE 0.289 over 4 paired prompts, 1.7 SE: within the noise)" in line
    # without a verifiable method there is nothing to compare, and the line says so
    assert correctness_findings(rows[:2], correct, "sft", "ppo") == []
    assert "No method" in correctness_summary([])
    # a missing RM counterpart: only the comparison with SFT
    assert [(f["method"], f["against"]) for f in correctness_findings(rows, correct, "sft", "nope")] == [("ppo_correct", "sft")]


def test_markdown_and_console_table_have_a_row_per_model():
    rows = _rows()
    result = {"rows": rows, "prompts": 4, "eval_temperature": 0.5, "baseline": "sft",
              "correctness": correctness_findings(rows, {"sft": [0.0, 1.0], "ppo": [0.0, 1.0], "ppo_correct": [1.0, 1.0]},
                                                  "sft", "ppo")}
    md = markdown(result)
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert table[0] == "| " + " | ".join(COLUMNS) + " |" and len(table) == 2 + len(rows)
    assert "| ppo | 0.800 [0.770, 0.830] | 0.810 | 0.600 | 0.500 | 6.93 | 1.570 | 61.2 | 690 / 702 | 60.0 |" in md
    assert "Verifiable reward and correctness: ppo_correct" in md
    assert all(f"- {n}" in md for n in notes(rows))
    assert any("peak memory n/a for dpo" in n for n in notes(rows))
    printed = console_rows(result)
    assert [k for k, _ in printed] == ["method", "sft (baseline)", "ppo", "ppo_correct", "dpo"]
    assert len({len(v) for _, v in printed}) == 1  # aligned columns


# ---------------------------------------------------------------- the config file


def test_compare_yaml_methods_are_valid_runs_with_equal_responses():
    from rlhf_dist.config import load_config
    from rlhf_dist.config.compare import CompareConfig
    from rlhf_dist.recipes.compare import dpo_run_config, ppo_base_config, ppo_run_config

    cfg = load_config(CompareConfig, REPO / "configs" / "compare.yaml", [f"ppo_config={REPO / 'configs' / 'tiny.yaml'}"])
    assert set(cfg.methods) == {"ppo", "grpo", "rloo", "reinforce_pp", "grpo_kl_loss", "ppo_overlap", "ppo_correct",
                                "grpo_correct"} and cfg.dpo
    inputs = {"sft": "s", "reward_model": "r", "data": "d", "rankings": "k"}
    base = ppo_base_config(cfg, inputs)
    runs = {name: ppo_run_config(cfg, name, base) for name in cfg.methods}
    seen = {name: r.iterations * r.prompts_per_iteration * r.rollout.samples_per_prompt for name, r in runs.items()}
    assert set(seen.values()) == {40 * 32}, seen
    assert runs["grpo"].ppo.advantage == "grpo" and runs["grpo_kl_loss"].ppo.kl_penalty == "loss"
    assert runs["ppo_correct"].reward_source == "fn" and runs["ppo_correct"].reward_model == "r"
    assert runs["ppo_overlap"].rollout.overlap and runs["rloo"].ppo.advantage == "rloo"
    assert all(r.out == str(Path(cfg.out) / n) and r.overwrite and r.eval_prompts == 0 for n, r in runs.items())
    assert dpo_run_config(cfg, inputs).init == "s" and dpo_run_config(cfg, inputs).data == "k"


def test_env_trains_every_ppo_method_in_it_and_evaluates_with_its_limits():
    """compare env=: every PPO method's run gets env= (a method's own env= wins) and the evaluation
    runs episodes in it with the PPO base config's rollout limits."""
    from rlhf_dist.config import load_config
    from rlhf_dist.config.compare import CompareConfig
    from rlhf_dist.recipes.compare import eval_episode_settings, ppo_base_config, ppo_run_config

    cfg = load_config(CompareConfig, REPO / "configs" / "compare.yaml",
                      [f"ppo_config={REPO / 'configs' / 'tiny.yaml'}", "env=rlhf_dist.tasks.instruct:ToolEnv",
                       "ppo_overrides=[rollout.max_turns=3]", "methods.other=[env=examples/feedback_env.py:Revise]"])
    base = ppo_base_config(cfg, {"sft": "s", "reward_model": "r", "data": "d", "rankings": "k"})
    runs = {name: ppo_run_config(cfg, name, base) for name in cfg.methods}
    assert {n: r.env for n, r in runs.items() if n != "other"} == {n: cfg.env for n in cfg.methods if n != "other"}
    assert runs["other"].env == "examples/feedback_env.py:Revise" and runs["grpo"].episodes
    assert eval_episode_settings(cfg, base) == {"env": cfg.env, "max_turns": 3, "max_episode_tokens": 128,
                                                "env_timeout_s": 30.0, "env_workers": 2}
    plain = load_config(CompareConfig, REPO / "configs" / "compare.yaml", [f"ppo_config={REPO / 'configs' / 'tiny.yaml'}"])
    assert eval_episode_settings(plain, base) == {} and not ppo_base_config(plain, {"sft": "s", "reward_model": "r",
                                                                                   "data": "d", "rankings": "k"}).episodes


# ---------------------------------------------------------------- bad input


def _cli(*args, timeout=180):
    return subprocess.run([EXE, "compare", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.mark.parametrize("args, message", [
    (["from_run=no/such/run"], "from_run=no/such/run: no such folder"),
    (["methods.ppo=[]", "only=[grpo]"], "only: grpo"),
    (["methods.eval=[]"], "methods.eval"),
    (["methods={}", "dpo=false"], "nothing to compare"),
])
def test_bad_settings_are_one_line_and_exit_2(args, message, tmp_path):
    out = tmp_path / "cmp"
    res = _cli("--out", str(out), *args)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert not out.exists()


def test_unknown_method_key_and_missing_run_folders_are_one_line(ppo_models, tmp_path):
    sft, rm, data = ppo_models
    out = tmp_path / "cmp"
    given = [f"sft={sft}", f"reward_model={rm}", f"data={data}", "dpo=false", f"ppo_config={REPO / 'configs' / 'tiny.yaml'}"]
    res = _cli("--out", str(out), *given, "methods.grpo=[ppo.advantage=grpo,ppo.no_such_key=1]")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "methods.grpo" in res.stderr and "ppo.no_such_key" in res.stderr
    run = tmp_path / "half_run"
    (run / "sft").mkdir(parents=True)
    res = _cli("--out", str(out), f"from_run={run}")
    assert res.returncode == 2 and "no sft/model" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    res = _cli(*given, f"rankings={data}", "out=" + str(Path(data).parent), "methods={data: []}")  # out/data is the data
    assert res.returncode == 2 and "overwrites" in res.stderr, res.stderr
    assert not out.exists()


# ---------------------------------------------------------------- a tiny real run


@pytest.mark.slow
def test_tiny_comparison_runs_end_to_end(ppo_models, tmp_path):
    pytest.importorskip("vllm")
    sft, rm, data = ppo_models
    config = tmp_path / "compare.yaml"
    config.write_text(f"""
sft: {sft}
reward_model: {rm}
data: {data}
ppo_config: {REPO / 'configs' / 'tiny.yaml'}
iterations: 2
ppo_overrides: [prompts_per_iteration=8, ppo.minibatch_size=8, ppo.epochs=1, learner.micro_batch_size=4]
methods:
  ppo: []
  grpo: [ppo.advantage=grpo, rollout.samples_per_prompt=4, prompts_per_iteration=2]
dpo: true
dpo_overrides: [batch_size=16, learner.micro_batch_size=4]
cpus: 1
eval_prompts: 8
max_new_tokens: 12
""")
    out = tmp_path / "cmp"
    res = _cli("--config", str(config), "--out", str(out), timeout=420)
    assert res.returncode == 0, res.stderr[-3000:]
    for stage in ("1/5 ppo:", "2/5 grpo:", "3/5 dpo:", "4/5 evaluation", "5/5 compare.json"):
        assert stage in res.stdout
    for name in ("compare.json", "compare.md", "compare.png", "eval/eval.json", "eval/eval_samples.jsonl",
                 "ppo/model/config.json", "grpo/model/config.json", "dpo/model/config.json"):
        assert (out / name).is_file(), name
    result = json.loads((out / "compare.json").read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["sft", "ppo", "grpo", "dpo"]
    for name in ("ppo", "grpo", "dpo"):
        r = rows[name]
        for key in ("win_rate", "win_prob", "gold", "correct", "kl_to_sft", "pretrain_nll", "train_wall_s"):
            assert isinstance(r[key], float) and math.isfinite(r[key]), (name, key, r[key])
        assert r["win_rate_ci95"][0] <= r["win_rate"] <= r["win_rate_ci95"][1]
    for name in ("ppo", "grpo"):
        assert rows[name]["responses"] == 16 and rows[name]["responses_per_s"] > 0
    for name in ("ppo", "grpo", "dpo"):  # every learner group reports its ranks' peak memory
        assert len(rows[name]["peak_memory_mb"]) == 1 and rows[name]["peak_memory_mb"][0] > 0
    assert rows["ppo"]["advantage"] == "gae" and rows["grpo"]["advantage"] == "grpo"
    md = (out / "compare.md").read_text()
    assert len([line for line in md.splitlines() if line.startswith("| ")]) == 1 + 4  # header + sft + 3 methods
    assert "No method here was trained on a verifiable reward" in md
    assert (out / "compare.png").stat().st_size > 1000
