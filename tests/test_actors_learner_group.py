"""The DeepSpeed learner group on real Ray + DeepSpeed (CPU, gloo), against a plain PyTorch loop.

With the same data and global batch, 1 rank, 2 ranks under ZeRO-2 and 2 ranks under ZeRO-3 must
follow the same loss curve as an independent single-process PyTorch reference (AdamW, the same
schedule, global-norm clipping, token-mean loss over the whole batch).
"""

from __future__ import annotations

import random

import pytest
import torch

from rlhf_dist.models.tiny import toy_corpus

ray = pytest.importorskip("ray")

GLOBAL_BATCH, STEPS = 8, 3


@pytest.fixture(scope="module")
def sft_items(zero3_model_dir):
    from rlhf_dist.models import load_tokenizer

    tok = load_tokenizer(zero3_model_dir)
    rng = random.Random(0)
    texts = toy_corpus(200, seed=3)
    items = []
    for i in range(GLOBAL_BATCH * STEPS):
        prompt = tok(texts[i]).input_ids[: rng.randint(2, 12)]
        response = tok(texts[i + 100], add_special_tokens=False).input_ids[: rng.randint(1, 10)] + [tok.eos_token_id]
        items.append((prompt, response))
    return tok.pad_token_id, items


def reference_losses(model_dir, items, pad_id, optim):
    """Single process, no DeepSpeed: full-batch token-mean SFT loss, AdamW, LambdaLR, clipping."""
    from rlhf_dist.algo import lm_loss, lr_multiplier
    from rlhf_dist.models import load_causal_lm, pad_prompt_response
    from rlhf_dist.models.forward import response_logits

    model = load_causal_lm(model_dir).train()
    opt = torch.optim.AdamW(model.parameters(), lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, STEPS, optim.warmup_steps, optim.schedule, optim.min_lr_ratio))
    losses = []
    for step in range(STEPS):
        chunk = items[step * GLOBAL_BATCH : (step + 1) * GLOBAL_BATCH]
        batch = pad_prompt_response([p for p, _ in chunk], [r for _, r in chunk], pad_id)
        nll = lm_loss(response_logits(model, batch), batch.response_ids, batch.response_mask)
        loss = nll[batch.response_mask].sum() / batch.response_mask.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses, model


def group_losses(model_dir, items, pad_id, optim, num_ranks, zero_stage, micro, save_to=None):
    from rlhf_dist.actors.learner_group import LearnerGroup, ModelSpec
    from rlhf_dist.config.learner import LearnerConfig

    cfg = LearnerConfig(num_ranks=num_ranks, zero_stage=zero_stage, micro_batch_size=micro)
    group = LearnerGroup(ModelSpec(str(model_dir)), cfg, optim, GLOBAL_BATCH, STEPS, pad_id)
    try:
        losses = []
        for step in range(STEPS):
            m = group.train_step("sft", items[step * GLOBAL_BATCH : (step + 1) * GLOBAL_BATCH])
            losses.append(m["nll_sum"] / m["tokens"])
        ev = group.evaluate("sft", items[:7])  # 7 items: uneven shards, padding micro-batches under ZeRO-3
        if save_to is not None:
            group.save_model(save_to, tokenizer_path=model_dir)
        return losses, ev["nll_sum"] / ev["tokens"]
    finally:
        group.shutdown()


def test_one_and_two_ranks_zero2_zero3_match_plain_pytorch(ray_local, zero3_model_dir, sft_items, tmp_path):
    from rlhf_dist.config.learner import OptimConfig
    from rlhf_dist.models import load_causal_lm, pad_prompt_response
    from rlhf_dist.models.forward import response_logprobs

    pad_id, items = sft_items
    optim = OptimConfig(lr=3e-3, schedule="cosine", warmup_steps=1, min_lr_ratio=0.1, grad_clip=0.5)
    ref, ref_model = reference_losses(zero3_model_dir, items, pad_id, optim)
    assert ref[-1] < ref[0], f"reference loss did not fall: {ref}"
    runs = {
        "1 rank ZeRO-2 (accum 4)": group_losses(zero3_model_dir, items, pad_id, optim, 1, 2, micro=2),
        "2 ranks ZeRO-2 (accum 2)": group_losses(zero3_model_dir, items, pad_id, optim, 2, 2, micro=2),
        "2 ranks ZeRO-3 (accum 1)": group_losses(zero3_model_dir, items, pad_id, optim, 2, 3, micro=4, save_to=tmp_path / "z3"),
    }
    for name, (losses, _) in runs.items():
        assert losses == pytest.approx(ref, rel=1e-5, abs=1e-5), f"{name}: {losses} vs reference {ref}"
    evals = [ev for _, ev in runs.values()]
    assert max(evals) - min(evals) < 1e-5, evals

    # The HF folder saved from ZeRO-3 shards holds the trained weights: same log-probs as the reference model.
    saved = load_causal_lm(tmp_path / "z3")
    batch = pad_prompt_response([p for p, _ in items[:4]], [r for _, r in items[:4]], pad_id)
    with torch.no_grad():
        a = response_logprobs(saved, batch)[batch.response_mask]
        b = response_logprobs(ref_model.eval(), batch)[batch.response_mask]
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_reward_model_objective_on_two_ranks(ray_local, zero3_model_dir):
    """The ranking loss trains through the group: pairwise accuracy on the training prompts rises."""
    from rlhf_dist.actors.learner_group import LearnerGroup, ModelSpec
    from rlhf_dist.data import TokenizedComparison
    from rlhf_dist.config.learner import LearnerConfig, OptimConfig
    from rlhf_dist.models import load_tokenizer

    tok = load_tokenizer(zero3_model_dir)
    rng = random.Random(1)
    # A learnable preference: responses containing "red" beat the others.
    items = []
    for _ in range(16):
        k = rng.randint(2, 4)
        words = [rng.choice(["red cat", "blue dog", "green box", "one two"]) for _ in range(k)]
        words[0] = "red cat"
        words[1:] = [w if w != "red cat" else "blue dog" for w in words[1:]]
        order = list(range(k))
        rng.shuffle(order)
        responses = [tok(words[i], add_special_tokens=False).input_ids + [tok.eos_token_id] for i in order]
        ranks = [0 if order[j] == 0 else 1 for j in range(k)]  # "red" first, the rest tied
        items.append(TokenizedComparison(tok("pick").input_ids, responses, ranks))
    cfg = LearnerConfig(num_ranks=2, zero_stage=2, micro_batch_size=2)
    group = LearnerGroup(ModelSpec(str(zero3_model_dir), kind="scalar_from_lm"), cfg, OptimConfig(lr=3e-3, schedule="constant"), 16, 20, tok.pad_token_id)
    try:
        before = group.evaluate("rm", items)
        for _ in range(20):
            group.train_step("rm", items)
        after = group.evaluate("rm", items)
    finally:
        group.shutdown()
    pairs = sum(len(it.ranks) - 1 for it in items)  # strict pairs: the winner against each other response
    assert before["pairs"] == after["pairs"] == pairs
    assert after["correct_pairs"] / pairs > 0.95 > before["correct_pairs"] / pairs


def test_inexact_batch_split_is_an_error():
    from rlhf_dist.engines.deepspeed_engine import grad_accum_steps

    assert grad_accum_steps(32, 4, 2) == 4
    with pytest.raises(ValueError, match="not divisible"):
        grad_accum_steps(30, 4, 2)


@pytest.mark.parametrize("dtype,attn,device,want", [
    ("bf16", "auto", "cpu", "eager"),   # torch's CPU flash-attention backward is slow in bf16
    ("fp32", "auto", "cpu", None),      # the model's own (sdpa)
    ("bf16", "auto", "cuda", None),
    ("bf16", "sdpa", "cpu", "sdpa"),    # an explicit choice wins
    ("fp32", "eager", "cuda", "eager"),
])
def test_attention_kernel_of_the_trained_models(dtype, attn, device, want):
    from rlhf_dist.config.learner import LearnerConfig
    from rlhf_dist.engines.deepspeed_engine import attention_kernel

    assert attention_kernel(LearnerConfig(dtype=dtype, attn_implementation=attn), torch.device(device)) == want


def test_each_rank_keeps_its_shard_and_sorts_it_into_micro_batches_of_similar_length():
    """Sorting changes only which items share a micro-batch (the loss is normalised by the global
    token count, so the gradient is the same: the test above checks that against PyTorch), and
    each micro-batch then pads to the length of similar items."""
    from types import SimpleNamespace

    from rlhf_dist.actors.learner_group import LearnerGroup
    from rlhf_dist.data import shard

    rng = random.Random(0)
    items = [[0] * rng.randint(3, 60) for _ in range(64)]
    group = SimpleNamespace(cfg=SimpleNamespace(num_ranks=2, micro_batch_size=8))
    plain, grouped = LearnerGroup._split(group, items), LearnerGroup._split(group, items, len)
    padded = lambda split: sum(max(map(len, mb)) * len(mb) for rank in split for mb in rank)  # noqa: E731
    for r in range(2):
        assert sorted(map(len, sum(grouped[r], []))) == sorted(map(len, shard(items, r, 2)))
        assert [len(mb) for mb in grouped[r]] == [8] * 4
        lengths = [len(x) for mb in grouped[r] for x in mb]
        assert lengths == sorted(lengths, reverse=True)
    assert padded(grouped) < 0.75 * padded(plain)
