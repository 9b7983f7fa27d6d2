"""`rlhf-dist eval` with real vLLM sampling on tiny models: eval.json's shape, and each number
recomputed here independently (plain HF forward passes on unpadded sequences, per-sequence
cross-entropy, brute-force loops over pairs) from what eval_samples.jsonl records."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rlhf_dist import cli
from tests.conftest import hf_reward_fn

PROMPTS, NEW_TOKENS, TEMPERATURE, PRETRAIN_TEXTS, PRETRAIN_MAX_LEN = 16, 12, 0.7, 12, 256
Z95 = 1.959963984540054


@pytest.fixture(scope="module")
def noisy_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with every weight perturbed: a policy that differs from the baseline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("noisy_lm")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def evaluated(ppo_models, noisy_dir, tmp_path_factory):
    sft_dir, rm_dir, data_dir = ppo_models
    out = tmp_path_factory.mktemp("eval")
    rc = cli.main(["eval", "--out", str(out), f"data={data_dir}", f"reward_model={rm_dir}", f"models.sft={sft_dir}",
                   f"models.noisy={noisy_dir}", f"prompts={PROMPTS}", f"max_new_tokens={NEW_TOKENS}",
                   f"temperature={TEMPERATURE}", f"pretrain_texts={PRETRAIN_TEXTS}", f"pretrain_max_len={PRETRAIN_MAX_LEN}",
                   "micro_batch_size=5"])  # micro-batches that do not divide the counts
    assert rc == 0
    report = json.loads((out / "eval.json").read_text())
    rows = [json.loads(line) for line in (out / "eval_samples.jsonl").read_text().splitlines()]
    return {"report": report, "rows": rows, "sft": sft_dir, "noisy": noisy_dir, "rm": rm_dir, "data": Path(data_dir)}


def rows_of(ev, name):
    rows = [r for r in ev["rows"] if r["model"] == name]
    assert [r["index"] for r in rows] == list(range(PROMPTS))
    return rows


@pytest.mark.slow
def test_eval_json_shape(evaluated):
    report = evaluated["report"]
    assert list(report["models"]) == ["sft", "noisy"] and report["baseline"] == "sft" and report["prompts"] == PROMPTS
    for name, m in report["models"].items():
        for key in ("gold_score", "proxy_score", "kl_to_sft", "pretrain_nll", "response_len", "win_rate_vs_sft"):
            assert isinstance(m[key], float), (name, key, m[key])
        lo, hi = m["win_rate_ci95"]
        assert 0.0 <= lo <= m["win_rate_vs_sft"] <= hi <= 1.0
        assert 1 <= m["response_len"] <= NEW_TOKENS
    # Both are shares of the held-out pairs with half credit for ties: recount the pairs from the raw
    # file; each value times 2 * pairs is a whole number (the values are recomputed pair by pair below).
    heldout = [json.loads(line) for line in (evaluated["data"] / "comparisons_heldout.jsonl").read_text().splitlines()]
    pairs = sum(len(c["responses"]) * (len(c["responses"]) - 1) // 2 for c in heldout)
    assert report["rm_pairs"] == pairs > 0
    for key in ("rm_accuracy", "labeler_agreement"):
        halves = 2 * pairs * report[key]
        assert isinstance(report[key], float) and abs(halves - round(halves)) < 1e-4, (key, report[key], pairs)
    assert report["config"]["models"] == {"sft": evaluated["sft"], "noisy": evaluated["noisy"]}
    assert len(evaluated["rows"]) == 2 * PROMPTS


@pytest.mark.slow
def test_gold_and_response_len_match_the_recorded_samples(evaluated):
    from rlhf_dist.data import load_prompts
    from rlhf_dist.tasks.base import DEFAULT_TASK, load_task

    task = load_task(DEFAULT_TASK)
    prompts = load_prompts(evaluated["data"] / "eval_prompts.jsonl")[:PROMPTS]
    for name, m in evaluated["report"]["models"].items():
        rows = rows_of(evaluated, name)
        assert [r["prompt"] for r in rows] == prompts
        gold = [task.gold_score(r["prompt"], r["response"]) for r in rows]
        assert [r["gold"] for r in rows] == pytest.approx(gold, abs=1e-12)
        assert m["gold_score"] == pytest.approx(sum(gold) / PROMPTS, abs=1e-12)
        assert m["response_len"] == pytest.approx(sum(len(r["response_ids"]) for r in rows) / PROMPTS)


def _hf_response_logprob_sum(model, prompt_ids, response_ids, temperature):
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    P = len(prompt_ids)
    logp = torch.log_softmax(logits[P - 1 : -1] / temperature, dim=-1)
    return logp.gather(1, torch.tensor(response_ids).unsqueeze(1)).sum().item()


@pytest.mark.slow
def test_kl_equals_an_independent_hf_computation(evaluated):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(evaluated["sft"], dtype=torch.float32).eval()
    noisy = AutoModelForCausalLM.from_pretrained(evaluated["noisy"], dtype=torch.float32).eval()
    models = evaluated["report"]["models"]
    # The baseline against itself: vLLM's log-probs vs HF's of the same weights, ~1e-5.
    assert abs(models["sft"]["kl_to_sft"]) < 1e-4
    assert max(abs(r["kl_to_sft"]) for r in rows_of(evaluated, "sft")) < 1e-4
    kls = []
    for r in rows_of(evaluated, "noisy"):
        kl = (_hf_response_logprob_sum(noisy, r["prompt_ids"], r["response_ids"], TEMPERATURE)
              - _hf_response_logprob_sum(base, r["prompt_ids"], r["response_ids"], TEMPERATURE))
        assert r["kl_to_sft"] == pytest.approx(kl, abs=1e-4)
        kls.append(kl)
    assert models["noisy"]["kl_to_sft"] == pytest.approx(sum(kls) / PROMPTS, abs=1e-4)
    assert models["noisy"]["kl_to_sft"] > 0.1


@pytest.mark.slow
def test_pretrain_nll_equals_a_per_sequence_cross_entropy_loop(evaluated):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf_dist.data import load_texts

    texts = load_texts(evaluated["data"] / "pretrain_heldout.jsonl")[:PRETRAIN_TEXTS]
    tok = AutoTokenizer.from_pretrained(evaluated["sft"])
    for name in ("sft", "noisy"):
        model = AutoModelForCausalLM.from_pretrained(evaluated[name], dtype=torch.float32).eval()
        total, tokens = 0.0, 0
        for text in texts:
            ids = tok(text).input_ids + [tok.eos_token_id]
            assert len(ids) <= PRETRAIN_MAX_LEN  # one window per text: no chunking to reproduce
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0]
            total += F.cross_entropy(logits[:-1].double(), torch.tensor(ids[1:]), reduction="sum").item()
            tokens += len(ids) - 1
        assert evaluated["report"]["models"][name]["pretrain_nll"] == pytest.approx(total / tokens, abs=1e-5)


@pytest.mark.slow
def test_win_rate_and_its_interval_from_the_recorded_outcomes(evaluated):
    models = evaluated["report"]["models"]
    base_rows, rows = rows_of(evaluated, "sft"), rows_of(evaluated, "noisy")
    outcomes = [r["win_vs_sft"] for r in rows]
    for r, b, o in zip(rows, base_rows, outcomes):
        assert o in (0.0, 0.5, 1.0)
        gap = r["gold"] - b["gold"]
        if abs(gap) <= 1e-9:
            assert o == 0.5 and r["win_prob_vs_sft"] == 0.5  # a gold tie counts half
        else:  # the labeler's Bradley-Terry probability at T = 0.1
            assert r["win_prob_vs_sft"] == pytest.approx(1 / (1 + math.exp(-gap / 0.1)))
    mean = sum(outcomes) / len(outcomes)
    half = Z95 * statistics.stdev(outcomes) / math.sqrt(len(outcomes))
    m = models["noisy"]
    assert m["win_rate_vs_sft"] == pytest.approx(mean, abs=1e-12)
    assert m["win_rate_ci95"] == pytest.approx([max(0.0, mean - half), min(1.0, mean + half)], abs=1e-12)
    # The baseline against itself: 0.5 by definition, with a fair coin's interval on n prompts.
    s = models["sft"]
    assert s["win_rate_vs_sft"] == 0.5 and s["win_rate_by_definition"] is True
    assert s["win_rate_ci95"] == pytest.approx([0.5 - Z95 * 0.5 / math.sqrt(PROMPTS), 0.5 + Z95 * 0.5 / math.sqrt(PROMPTS)])
    assert all(r["win_vs_sft"] is None for r in base_rows)


def test_mean_ci95_against_the_textbook_formula():
    from rlhf_dist.evaluation.metrics import mean_ci95

    xs = [1.0, 0.5, 0.0, 1.0, 1.0, 0.5, 0.0, 1.0, 1.0, 1.0]
    mean, lo, hi = mean_ci95(xs)
    half = Z95 * statistics.stdev(xs) / math.sqrt(len(xs))
    assert (mean, lo, hi) == pytest.approx((0.7, 0.7 - half, 0.7 + half))
    assert mean_ci95([1.0] * 9 + [0.5])[2] == 1.0  # clipped at 1
    assert mean_ci95([1.0]) == (1.0, 0.0, 1.0)  # one outcome: no information on the spread


@pytest.mark.slow
def test_proxy_scores_equal_the_rm_on_each_unpadded_sample(evaluated):
    reward = hf_reward_fn(evaluated["rm"])
    for name, m in evaluated["report"]["models"].items():
        rows = rows_of(evaluated, name)
        for r in rows:
            assert r["proxy"] == pytest.approx(reward(r["prompt_ids"] + r["response_ids"]), abs=1e-4)
        assert m["proxy_score"] == pytest.approx(sum(r["proxy"] for r in rows) / PROMPTS, abs=1e-9)


@pytest.mark.slow
def test_rm_accuracy_and_labeler_agreement_by_brute_force_over_pairs(evaluated):
    from transformers import AutoTokenizer

    from rlhf_dist.data import load_comparisons
    from rlhf_dist.tasks.base import DEFAULT_TASK, load_task

    tok = AutoTokenizer.from_pretrained(evaluated["rm"])
    task = load_task(DEFAULT_TASK)
    reward = hf_reward_fn(evaluated["rm"])
    correct = agree = pairs = 0.0
    for c in load_comparisons(evaluated["data"] / "comparisons_heldout.jsonl"):
        prompt_ids = tok(c.prompt + "\n").input_ids
        scores = [reward(prompt_ids + tok(r, add_special_tokens=False).input_ids + [tok.eos_token_id]) for r in c.responses]
        gold = [task.gold_score(c.prompt, r) for r in c.responses]
        for a in range(len(c.ranking)):
            for b in range(a + 1, len(c.ranking)):
                win, lose = c.ranking[a], c.ranking[b]
                pairs += 1
                correct += 1.0 if scores[win] > scores[lose] else 0.5 if scores[win] == scores[lose] else 0.0
                agree += 1.0 if gold[win] > gold[lose] else 0.5 if gold[win] == gold[lose] else 0.0
    report = evaluated["report"]
    assert report["rm_pairs"] == pairs
    assert report["rm_accuracy"] == pytest.approx(correct / pairs, abs=1e-6)
    assert report["labeler_agreement"] == pytest.approx(agree / pairs, abs=1e-12)


def test_missing_model_folder_is_a_one_line_error_and_writes_nothing(ppo_models, tmp_path, capsys):
    sft_dir, rm_dir, data_dir = ppo_models
    out = tmp_path / "eval"
    rc = cli.main(["eval", "--out", str(out), f"data={data_dir}", f"models.sft={sft_dir}", f"models.ppo={tmp_path / 'nope'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "models.ppo=" in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_unknown_baseline_names_the_key(ppo_models, tmp_path, capsys):
    sft_dir, _, data_dir = ppo_models
    rc = cli.main(["eval", "--out", str(tmp_path / "eval"), f"data={data_dir}", f"models.sft={sft_dir}", "baseline=ppo"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "baseline='ppo'" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "eval").exists()


def test_accuracy_by_part_on_a_hand_worked_example():
    from rlhf_dist.evaluation.metrics import accuracy_by_part, seen_alone

    right = {"total": 1.0, "correct": 1.0, "helpful": 1.0, "rude": 0.0}
    wrong = {"total": 0.2, "correct": 0.0, "helpful": 0.2, "rude": 0.0}
    right_rude = {"total": 0.5, "correct": 1.0, "helpful": 1.0, "rude": 1.0}
    tie = {"total": 0.5, "correct": 0.0, "helpful": 0.6, "rude": 0.0}
    # Pairs (gold order; the scorer): right > wrong, scored 0 < 1: missed. right > right_rude, scored
    # 0 = 0: half. right_rude > wrong, scored 0 < 1: missed. The last prompt's pair ties in gold: left out.
    got = accuracy_by_part([[right, wrong, right_rude], [right_rude, tie]], [[0.0, 1.0, 0.0], [5.0, 0.0]])
    assert got["correct"] == {"pairs": 2, "accuracy": 0.0, "only_pairs": 1, "only_accuracy": 0.0, "moves_with": ["helpful"]}
    assert got["helpful"] == {"pairs": 2, "accuracy": 0.0, "only_pairs": 1, "only_accuracy": 0.0, "moves_with": ["correct"]}
    assert got["rude"] == {"pairs": 2, "accuracy": 0.25, "only_pairs": 1, "only_accuracy": 0.5, "moves_with": []}
    assert seen_alone(got, min_pairs=1) == {"correct": 0.0, "helpful": 0.0, "rude": 0.5} and seen_alone(got) == {}
    # A scorer that is the gold total itself agrees everywhere.
    exact = accuracy_by_part([[right, wrong, right_rude]], [[1.0, 0.2, 0.5]])
    assert all(v["accuracy"] == 1.0 and v["only_accuracy"] == 1.0 for v in exact.values())


@pytest.mark.slow
def test_gold_parts_per_model_and_rm_accuracy_by_part_by_brute_force(evaluated):
    from transformers import AutoTokenizer

    from rlhf_dist.data import load_comparisons
    from rlhf_dist.tasks.base import DEFAULT_TASK, load_task

    task = load_task(DEFAULT_TASK)
    for name, m in evaluated["report"]["models"].items():
        rows = rows_of(evaluated, name)
        for key, mean in m["gold_parts"].items():
            assert mean == pytest.approx(statistics.fmean(task.gold_parts(r["prompt"], r["response"])[key] for r in rows), abs=1e-12)
        assert m["gold_parts"]["total"] == pytest.approx(m["gold_score"], abs=1e-12)
    tok = AutoTokenizer.from_pretrained(evaluated["rm"])
    reward = hf_reward_fn(evaluated["rm"])
    hits: dict[str, list[float]] = {}
    close: dict[str, int] = {}  # pairs scored within 1e-4 (batched vs single forward may order them either way)
    for c in load_comparisons(evaluated["data"] / "comparisons_heldout.jsonl"):
        prompt_ids = tok(c.prompt + "\n").input_ids
        scores = [reward(prompt_ids + tok(r, add_special_tokens=False).input_ids + [tok.eos_token_id]) for r in c.responses]
        parts = [task.gold_parts(c.prompt, r) for r in c.responses]
        for a in range(len(parts)):
            for b in range(len(parts)):
                if parts[a]["total"] > parts[b]["total"]:  # every pair once, better one first
                    credit = 1.0 if scores[a] > scores[b] else 0.0 if scores[a] < scores[b] else 0.5
                    for k in parts[a]:
                        if k != "total" and parts[a][k] != parts[b][k]:
                            hits.setdefault(k, []).append(credit)
                            close[k] = close.get(k, 0) + (abs(scores[a] - scores[b]) < 1e-4)
    by_part = evaluated["report"]["rm_accuracy_by_part"]
    assert sorted(by_part) == sorted(hits)
    for k, credits in hits.items():
        assert by_part[k]["pairs"] == len(credits)
        assert by_part[k]["accuracy"] == pytest.approx(statistics.fmean(credits), abs=(close.get(k, 0) + 1e-9) / len(credits))
