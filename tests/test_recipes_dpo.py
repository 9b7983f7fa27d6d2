"""`rlhf-dist dpo` (Rafailov et al. 2023, eq. 7) through the real learner group (Ray + DeepSpeed,
CPU, gloo) on tiny local models, against a plain single-process PyTorch loop: the same data order
and optimizer settings, each response's log-prob from its own unpadded forward, the loss from
loops over prompts and pairs."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

EXE = str(Path(sys.executable).with_name("rlhf-dist"))
SUFFIX = " (--debug or RLHF_DIST_DEBUG=1 shows the traceback)"
BATCH, EPOCHS, BETA = 8, 4, 0.5  # 8 training prompts, one batch per epoch: 4 steps on the same prompts
WORDS = ["red", "blue", "green", "cat", "dog", "box", "one", "two", "three", "the", "a", "big"]


def write_preferences(path: Path, n: int, seed: int) -> None:
    """A toy preference set in both comparison forms the rm stage reads: chosen/rejected pairs and
    K-way rankings (K = 3, 4), best first by a rule (fewer words is better)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
        k = 2 if i % 3 == 0 else rng.choice([3, 4])
        lengths = rng.sample(range(1, 9), k)
        responses = [" ".join(rng.choice(WORDS) for _ in range(n_words)) for n_words in lengths]
        ranking = sorted(range(k), key=lambda j: lengths[j])
        if k == 2:
            rows.append({"prompt": prompt, "chosen": responses[ranking[0]], "rejected": responses[ranking[1]]})
        else:
            rows.append({"prompt": prompt, "responses": responses, "ranking": ranking})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def prefs(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefs")
    write_preferences(root / "train.jsonl", BATCH, seed=0)
    write_preferences(root / "held.jsonl", 5, seed=1)
    return root


def tokenized(model_dir, path):
    from rlhf_dist.data import load_comparisons, tokenize_comparisons
    from rlhf_dist.models import load_tokenizer

    items, stats = tokenize_comparisons(load_comparisons(path), load_tokenizer(model_dir), 128, None, "middle")
    assert stats["kept"] == stats["total"]
    return items


def seq_logp(model, prompt_ids, response_ids):
    """log pi(response | prompt) from one unpadded forward: the sum of the response tokens'
    log-softmax, EOS included, temperature 1."""
    ids = torch.tensor([list(prompt_ids) + list(response_ids)])
    logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(response_ids).unsqueeze(1)).sum()


def hf_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)


def plain_loss(model, items, ref_logps, beta):
    """Mean over prompts of the mean over ordered pairs (better, worse) of -log sigmoid(r_b - r_w)."""
    per_prompt = []
    for it, ref in zip(items, ref_logps):
        r = [beta * (seq_logp(model, it.prompt_ids, y) - q) for y, q in zip(it.response_ids, ref)]
        terms = [-torch.nn.functional.logsigmoid(r[i] - r[j]) for i in range(len(r)) for j in range(len(r))
                 if it.ranks[i] < it.ranks[j]]
        per_prompt.append(torch.stack(terms).mean())
    return torch.stack(per_prompt).mean()


def plain_dpo(init, ref, train, held, optim):
    """Single process, no Ray or DeepSpeed: AdamW, LambdaLR, global-norm clipping, the stage's
    data order (`minibatches(n, batch, seed, epoch)`). -> (train losses, final eval loss, step-0
    eval loss, final model)."""
    from rlhf_dist.algo import lr_multiplier
    from rlhf_dist.data import minibatches

    ref_model = hf_model(ref).eval()
    with torch.no_grad():
        ref_train = [[seq_logp(ref_model, it.prompt_ids, y).item() for y in it.response_ids] for it in train]
        ref_held = [[seq_logp(ref_model, it.prompt_ids, y).item() for y in it.response_ids] for it in held]
    model = hf_model(init).train()
    steps = EPOCHS * (len(train) // BATCH)
    opt = torch.optim.AdamW(model.parameters(), lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                            weight_decay=optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_multiplier(s, steps, optim.warmup_steps, optim.schedule, optim.min_lr_ratio))
    with torch.no_grad():
        eval0 = plain_loss(model, held, ref_held, BETA).item()
    losses = []
    for epoch in range(EPOCHS):
        for batch in minibatches(len(train), BATCH, 0, epoch):
            loss = plain_loss(model, [train[i] for i in batch], [ref_train[i] for i in batch], BETA)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
            opt.step()
            sched.step()
            losses.append(loss.item())
    with torch.no_grad():
        final = plain_loss(model, held, ref_held, BETA).item()
    return losses, final, eval0, model.eval()


def stage(out, init, prefs, optim, num_ranks, zero_stage, micro, ref=""):
    from rlhf_dist.config.learner import LearnerConfig
    from rlhf_dist.config.stages import DPOConfig
    from rlhf_dist.recipes.stages import dpo

    cfg = DPOConfig(out=str(out), init=str(init), ref=str(ref), train_file=str(prefs / "train.jsonl"),
                    eval_file=str(prefs / "held.jsonl"), beta=BETA, batch_size=BATCH, epochs=float(EPOCHS),
                    log_every=1, eval_every=0, optim=optim,
                    learner=LearnerConfig(num_ranks=num_ranks, zero_stage=zero_stage, micro_batch_size=micro))
    summary = dpo(cfg)
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    train = [r["train/loss"] for r in rows if "train/loss" in r]
    evals = [r for r in rows if "eval/loss" in r]
    return summary, train, evals, rows


@pytest.fixture(scope="module")
def optim():
    from rlhf_dist.config.learner import OptimConfig

    return OptimConfig(lr=3e-3, schedule="cosine", warmup_steps=1, min_lr_ratio=0.1, grad_clip=0.5)


def test_reference_log_probs_on_two_ranks_are_those_of_an_independent_hf_forward(ray_local, tiny_model_dir, prefs):
    from rlhf_dist.actors.learner_group import ReferenceRanks
    from rlhf_dist.config.learner import LearnerConfig
    from rlhf_dist.models import load_tokenizer

    items = tokenized(tiny_model_dir, prefs / "train.jsonl") + tokenized(tiny_model_dir, prefs / "held.jsonl")
    ranks = ReferenceRanks(LearnerConfig(num_ranks=2, micro_batch_size=3))
    try:
        got = ranks.sequence_logprobs(tiny_model_dir, items, load_tokenizer(tiny_model_dir).pad_token_id)
    finally:
        ranks.shutdown()
    model = hf_model(tiny_model_dir).eval()
    assert [len(lp) for lp in got] == [len(it.response_ids) for it in items]
    with torch.no_grad():
        for it, lps in zip(items, got):
            want = [seq_logp(model, it.prompt_ids, y).item() for y in it.response_ids]
            assert list(lps) == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_one_and_two_ranks_zero0_zero2_match_plain_pytorch_and_the_loss_falls(ray_local, tiny_model_dir, prefs, optim, tmp_path):
    train, held = tokenized(tiny_model_dir, prefs / "train.jsonl"), tokenized(tiny_model_dir, prefs / "held.jsonl")
    ref_losses, ref_final, ref_eval0, _ = plain_dpo(tiny_model_dir, tiny_model_dir, train, held, optim)
    assert ref_losses[0] == pytest.approx(math.log(2), abs=1e-6)  # step 1: policy = reference
    assert ref_losses[-1] < ref_losses[0] - 0.1, ref_losses
    assert all(b < a for a, b in zip(ref_losses, ref_losses[1:])), ref_losses
    runs = {
        "1 rank ZeRO-0 (accum 4)": stage(tmp_path / "r1", tiny_model_dir, prefs, optim, 1, 0, micro=2),
        "2 ranks ZeRO-2 (accum 2)": stage(tmp_path / "r2", tiny_model_dir, prefs, optim, 2, 2, micro=2),
    }
    for name, (summary, losses, evals, rows) in runs.items():
        assert losses == pytest.approx(ref_losses, rel=1e-5, abs=1e-5), f"{name}: {losses} vs {ref_losses}"
        assert [e["step"] for e in evals] == [0, EPOCHS]
        assert evals[0]["eval/loss"] == pytest.approx(ref_eval0, abs=1e-5) == math.log(2)
        assert evals[0]["eval/accuracy"] == pytest.approx(0.5, abs=0.1)
        assert evals[-1]["eval/loss"] == pytest.approx(ref_final, rel=1e-5, abs=1e-5), name
        train_rows = [r for r in rows if "train/loss" in r]
        assert train_rows[-1]["train/accuracy"] > 0.5 and train_rows[-1]["train/margin"] > 0
        assert summary["steps"] == EPOCHS and summary["ref"] == str(tiny_model_dir) and summary["beta"] == BETA
        assert summary["eval/loss"] == evals[-1]["eval/loss"]
    out = tmp_path / "r2"
    assert json.loads((out / "summary.json").read_text())["eval/margin"] == runs["2 ranks ZeRO-2 (accum 2)"][0]["eval/margin"]
    assert (out / "config.yaml").is_file() and list((out / "tb").glob("events.out.tfevents.*"))


def test_zero3_with_a_separate_reference_matches_plain_pytorch_and_saves_a_transformers_model(
        ray_local, zero3_model_dir, tiny_model_dir, prefs, optim, tmp_path):
    """init (hidden 256: ZeRO-3 really partitions it) against a different frozen ref (hidden 128, the
    same tokenizer); the saved folder holds the trained policy."""
    from rlhf_dist.models import load_tokenizer

    train, held = tokenized(zero3_model_dir, prefs / "train.jsonl"), tokenized(zero3_model_dir, prefs / "held.jsonl")
    ref_losses, ref_final, ref_eval0, ref_model = plain_dpo(zero3_model_dir, tiny_model_dir, train, held, optim)
    assert abs(ref_eval0 - math.log(2)) > 1e-2  # the reference really differs from init
    summary, losses, evals, _ = stage(tmp_path / "z3", zero3_model_dir, prefs, optim, 2, 3, micro=4, ref=tiny_model_dir)
    assert losses == pytest.approx(ref_losses, rel=1e-5, abs=1e-5)
    assert [e["eval/loss"] for e in evals] == pytest.approx([ref_eval0, ref_final], rel=1e-5, abs=1e-5)
    assert summary["ref"] == str(tiny_model_dir)
    saved_dir = tmp_path / "z3" / "model"
    saved = hf_model(saved_dir).eval()
    assert load_tokenizer(saved_dir).get_vocab() == load_tokenizer(zero3_model_dir).get_vocab()
    with torch.no_grad():
        for it in train[:3]:
            for y in it.response_ids:
                assert seq_logp(saved, it.prompt_ids, y).item() == pytest.approx(
                    seq_logp(ref_model, it.prompt_ids, y).item(), abs=1e-4)


BAD = [
    (["beta=0"], "override 'beta=0': 'beta'=0.0: must be > 0"),
    (["beta=-0.1"], "override 'beta=-0.1': 'beta'=-0.1: must be > 0"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[a[0] for a, _ in BAD])
def test_a_bad_beta_is_one_exact_line_and_writes_nothing(args, message, tmp_path):
    out = tmp_path / "out"
    res = subprocess.run([EXE, "dpo", "--out", str(out), *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.splitlines() == [f"rlhf-dist dpo: error: {message}{SUFFIX}"]
    assert not out.exists()


def test_missing_data_folder_and_ref_are_one_line_naming_them(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    cases = [
        ([f"data={tmp_path / 'nowhere'}", f"init={tiny_model_dir}"],
         f"data={tmp_path / 'nowhere'}: no such folder (a task-data folder with comparisons.jsonl)"),
        ([f"data={tmp_path}", f"init={tiny_model_dir}", f"ref={tmp_path / 'noref'}"],
         f"ref={tmp_path / 'noref'}: no such model folder (models load from local paths only)"),
    ]
    for args, message in cases:
        res = subprocess.run([EXE, "dpo", "--out", str(out), *args], capture_output=True, text=True, timeout=120)
        assert res.returncode == 2
        assert res.stderr.splitlines() == [f"rlhf-dist dpo: error: {message}{SUFFIX}"]
        assert not out.exists()
