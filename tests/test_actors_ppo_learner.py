"""The PPO learner group on real Ray + DeepSpeed (CPU, gloo), against a plain PyTorch reference.

`PPOLearnerGroup` splits each minibatch of trajectories (an Arrow table) across ranks and
micro-batches, and each rank back-propagates the clipped PPO surrogate through the policy engine
and the clipped value loss through the critic engine, both normalised by the minibatch's global
token count. Whatever the split, one optimizer step must equal one step of the full-minibatch
token mean. Checked here:

1. Equivalence across ranks and ZeRO stages: 1 rank ZeRO-2 (accumulation 4), 2 ranks ZeRO-2
   (accumulation 2) and 2 ranks ZeRO-3 (accumulation 1, hidden 256 so that ZeRO-3 really
   partitions the MLP weights) run 3 `ppo_step`s on the same 16-trajectory table, and each must
   match the reference: per-step token-mean policy and value losses, token counts, the number of
   clipped tokens, the mean entropy, the pre-clipping global gradient norms of policy and critic,
   and the saved HF weights of both networks after the 3 steps.
2. The reference is written here from the formulas, in one process, without DeepSpeed, the
   library's losses, log-probs or padding (only the model loaders and `lr_multiplier`, tested
   elsewhere, are shared): every trajectory is forwarded alone and unpadded
   (so the learner's left/right padding and position ids are checked too), log pi_T from
   logits / T with the causal shift (column P + t - 1 predicts response token t), V_t read at
   column P + t - 1 of the critic, ratio = exp(logp - old), loss_t = max(-A rho, -A clip(rho)),
   0.5 max((V - R)^2, (clip(V, Vold +- e) - R)^2), token means over all valid tokens of the
   minibatch, AdamW + the LR schedule + `clip_grad_norm_`, one optimizer step per minibatch.
   Why the gradient norms: AdamW and norm clipping are both (nearly) invariant to a constant
   scale of the gradient, so a wrong loss normaliser (say a factor of 2, or `vf_coef` dropped)
   would barely move the weights; the reported pre-clipping norm is proportional to it.
3. On-policy first step (ppo-details): `forward_old` gives the reference's log-probs, values and
   entropy; with those as `old_logprobs`/`values`, the first step's ratio is 1 (`ratio_dev_max`
   < 1e-5, no clipped token), since dropout is off and old log-probs are recomputed.
4. PPO-ptx: with `ptx_coef = g` and pretraining sequences (`collate_lm` semantics: predict token
   k + 1 from the prefix up to k, len - 1 loss tokens per sequence) split over 2 ranks x 2
   micro-batches, the update equals the reference's for ppo_loss + g * (ptx NLL sum / global ptx
   token count) (NLL at temperature 1).
5. The entropy bonus (`entropy_coef`) against the same reference (it once had no gradient).

Steps 2 and 3 use old log-probs/values from before step 1 and step 3 revisits rows of step 1,
so their ratios and values have moved: the clipped branches of both losses are taken (asserted
on the reference, so that the comparison covers them).
"""

from __future__ import annotations

import dataclasses

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch

from rlhf_dist.models.tiny import toy_corpus

ray = pytest.importorskip("ray")
pytest.importorskip("deepspeed")

N_ROWS, MINIBATCH = 16, 8
# Step 1: rows 0-7 (on-policy), step 2: rows 8-15, step 3: rows of both halves in a new order
# (every minibatch is `table.take(rows)`, as in the PPO recipe).
STEP_ROWS = [list(range(0, 8)), list(range(8, 16)), [3, 12, 0, 9, 15, 6, 1, 10]]
TEMPERATURE = 0.7

# fp32 on CPU: the learner's padded batches and the reference's unpadded rows differ only in
# summation order (~1e-7 relative), far below the effect of any real bug.
LOSS_TOL = dict(rel=1e-5, abs=1e-6)
NORM_TOL = dict(rel=2e-5)  # norms over 1.5M fp32 gradients summed in different orders: measured <= 2.1e-6
# Weights after 3 AdamW steps: measured differences are <= 7e-7, a few float32 ulps of the O(1)
# norm weights (rounding of the update itself); an AdamW update is lr * m / (sqrt(v) + eps), so a
# gradient error dg moves a weight by at most lr * dg / eps (~5e-8 here). A wrong update direction
# (e.g. micro-batches weighted by their own token count) moves weights by O(lr) = 1e-4..5e-4.
WEIGHT_ATOL = 5e-6


def _optims():
    from rlhf_dist.config.learner import OptimConfig

    # Different settings for the two networks, so that swapping them is caught.
    policy = OptimConfig(lr=5e-4, weight_decay=0.01, betas=[0.9, 0.95], eps=1e-5, schedule="cosine",
                         warmup_steps=1, min_lr_ratio=0.1, grad_clip=5.0)
    critic = OptimConfig(lr=1e-4, weight_decay=0.0, betas=[0.8, 0.99], eps=1e-6, schedule="linear",
                         warmup_steps=0, min_lr_ratio=0.2, grad_clip=40.0)
    return policy, critic


def _loss_cfg(ptx_coef: float = 0.0, entropy_coef: float = 0.0):
    from rlhf_dist.engines.ppo import PPOLossConfig

    return PPOLossConfig(temperature=TEMPERATURE, clip_eps=0.2, value_clip=0.05, vf_coef=0.5, ptx_coef=ptx_coef,
                         entropy_coef=entropy_coef)


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def models(zero3_model_dir, tmp_path_factory):
    """(policy_dir, critic_dir). The policy is the hidden-256 model (ZeRO-3 really partitions its
    MLP weights across ranks); the critic is its backbone with a fresh scalar head (a stand-in for
    the reward model)."""
    from rlhf_dist.models import init_scalar_from_causal_lm, load_tokenizer

    policy_dir = zero3_model_dir
    critic_dir = tmp_path_factory.mktemp("ppo_learner_models") / "critic"
    init_scalar_from_causal_lm(policy_dir, seed=1).save_pretrained(critic_dir)
    load_tokenizer(policy_dir).save_pretrained(critic_dir)
    return str(policy_dir), str(critic_dir)


@pytest.fixture(scope="module")
def trajectories(models):
    """16 random trajectories: prompts of 2-10 tokens (BOS first), responses of 1-8 tokens, about
    half ending in EOS (one is EOS alone); fixed advantages and returns per token."""
    from rlhf_dist.buffer import rollouts_to_batch
    from rlhf_dist.models import load_tokenizer

    tok = load_tokenizer(models[0])
    specials = {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}
    words = np.array([i for i in range(len(tok)) if i not in specials])
    rng = np.random.default_rng(0)
    rollouts = []
    for i in range(N_ROWS):
        prompt = [tok.bos_token_id] + rng.choice(words, rng.integers(1, 10)).tolist()
        response = rng.choice(words, rng.integers(1, 9)).tolist()
        if i == 5:
            response = [tok.eos_token_id]
        elif i % 2 == 0:
            response[-1] = tok.eos_token_id
        rollouts.append(SimpleNamespace(prompt_ids=prompt, response_ids=response, logprobs=[0.0] * len(response),
                                        finished_with_eos=response[-1] == tok.eos_token_id))
    batch = rollouts_to_batch(rollouts, prompt_id=list(range(N_ROWS)), policy_version=0, worker_id=0)
    table = pa.Table.from_batches([batch])
    lengths = [len(r.response_ids) for r in rollouts]
    advantages = [rng.normal(0.0, 1.0, n).astype(np.float32) for n in lengths]
    returns = [rng.normal(0.0, 0.5, n).astype(np.float32) for n in lengths]
    return SimpleNamespace(table=table, rows=rollouts, advantages=advantages, returns=returns, pad_id=tok.pad_token_id)


@pytest.fixture(scope="module")
def ptx_seqs(models):
    """Pretraining sequences of 2-12 tokens (different lengths, so per-micro-batch token counts
    differ and a per-micro-batch mean would be caught): two sets of 8."""
    from rlhf_dist.models import load_tokenizer

    tok = load_tokenizer(models[0])
    rng = np.random.default_rng(1)
    texts = toy_corpus(16, seed=5)
    return [[tok(t).input_ids[: int(rng.integers(2, 13))] for t in texts[k * 8 : (k + 1) * 8]] for k in range(2)]


# ---------------------------------------------------------------------------------------------
# The independent reference: one process, plain PyTorch, one unpadded trajectory at a time


def _row_forward(policy, critic, prompt, response):
    """(log pi_T of the response tokens, entropy of pi_T at those positions, V_t), each (T,)."""
    ids = torch.tensor([list(prompt) + list(response)])
    P, T = len(prompt), len(response)
    # Column P + t - 1 predicts response token t; V_t is the critic at the state before y_t.
    logits = policy(input_ids=ids).logits[0, P - 1 : P + T - 1].float() / TEMPERATURE
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all[torch.arange(T), torch.tensor(response)]
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    values = critic(ids, torch.ones_like(ids))[0, P - 1 : P + T - 1].float()
    return logp, entropy, values


def _ptx_nll_sum(policy, seqs):
    """Sum over sequences of the NLL of tokens 1.. given their prefixes (temperature 1); count."""
    total, count = 0.0, 0
    for s in seqs:
        logits = policy(input_ids=torch.tensor([list(s)])).logits[0, :-1].float()
        logp = torch.log_softmax(logits, dim=-1)[torch.arange(len(s) - 1), torch.tensor(s[1:])]
        total = total - logp.sum()
        count += len(s) - 1
    return total, count


def reference_run(models, data, step_rows, loss_cfg, ptx_batches=None):
    """-> (old (logp, entropy, values) per row, per-step stats, final policy, final critic).

    Runs on one torch thread: its many tiny per-row ops gain nothing from two, and on a busy
    2-core machine two OpenMP threads made it 50-200x slower (0.4 s vs 20-90 s, measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _reference_run(models, data, step_rows, loss_cfg, ptx_batches)
    finally:
        torch.set_num_threads(threads)


def _reference_run(models, data, step_rows, loss_cfg, ptx_batches):
    from rlhf_dist.algo import lr_multiplier
    from rlhf_dist.models import load_causal_lm, load_scalar_model

    policy_optim, critic_optim = _optims()
    policy = load_causal_lm(models[0]).train()
    critic = load_scalar_model(models[1]).train()

    def make(model, o):
        opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                weight_decay=o.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_multiplier(s, len(step_rows), o.warmup_steps, o.schedule, o.min_lr_ratio))
        return opt, sched

    (p_opt, p_sched), (c_opt, c_sched) = make(policy, policy_optim), make(critic, critic_optim)
    with torch.no_grad():
        old = [_row_forward(policy, critic, r.prompt_ids, r.response_ids) for r in data.rows]
    eps, ve = loss_cfg.clip_eps, loss_cfg.value_clip
    stats = []
    for step, idx in enumerate(step_rows):
        n_tokens = sum(len(data.rows[i].response_ids) for i in idx)
        pg_sum = vf_sum = ent_sum = torch.zeros(())
        clipped, vf_clipped, ratio_dev = 0, 0, 0.0
        for i in idx:
            r = data.rows[i]
            logp, entropy, v = _row_forward(policy, critic, r.prompt_ids, r.response_ids)
            old_logp, _, old_v = old[i]
            A, R = torch.from_numpy(data.advantages[i]), torch.from_numpy(data.returns[i])
            ratio = torch.exp(logp - old_logp)
            unclipped, clip_branch = -A * ratio, -A * torch.clamp(ratio, 1 - eps, 1 + eps)
            pg_sum = pg_sum + torch.maximum(unclipped, clip_branch).sum()
            v_clip = old_v + torch.clamp(v - old_v, -ve, ve)
            vf_sum = vf_sum + 0.5 * torch.maximum((v - R) ** 2, (v_clip - R) ** 2).sum()
            ent_sum = ent_sum + entropy.sum()
            clipped += int((clip_branch > unclipped).sum())
            vf_clipped += int((((v_clip - R) ** 2 > (v - R) ** 2) & ((v - old_v).abs() > ve)).sum())  # the clip bound
            ratio_dev = max(ratio_dev, (ratio.detach() - 1).abs().max().item())
        pg_loss, vf_loss = pg_sum / n_tokens, vf_sum / n_tokens
        s = {"tokens": n_tokens, "pg_loss": pg_loss.item(), "vf_loss": vf_loss.item(),
             "entropy": ent_sum.item() / n_tokens, "clipped": clipped, "vf_clipped": vf_clipped, "ratio_dev": ratio_dev}
        policy_objective = pg_loss - loss_cfg.entropy_coef * ent_sum / n_tokens  # entropy bonus (token mean)
        if ptx_batches is not None:
            nll_sum, ptx_tokens = _ptx_nll_sum(policy, ptx_batches[step])
            policy_objective = policy_objective + loss_cfg.ptx_coef * nll_sum / ptx_tokens
            s.update(ptx_nll=nll_sum.item() / ptx_tokens, ptx_tokens=ptx_tokens)
        if ptx_batches is not None or loss_cfg.entropy_coef:
            # How much the extra terms matter: the norm of the PPO gradient alone (must differ).
            grads = torch.autograd.grad(pg_loss, list(policy.parameters()), retain_graph=True, allow_unused=True)
            s["pg_only_grad_norm"] = torch.cat([g.flatten() for g in grads if g is not None]).norm().item()
        p_opt.zero_grad()
        c_opt.zero_grad()
        policy_objective.backward()
        (loss_cfg.vf_coef * vf_loss).backward()
        s["policy_grad_norm"] = torch.nn.utils.clip_grad_norm_(policy.parameters(), policy_optim.grad_clip).item()
        s["critic_grad_norm"] = torch.nn.utils.clip_grad_norm_(critic.parameters(), critic_optim.grad_clip).item()
        p_opt.step()
        c_opt.step()
        p_sched.step()
        c_sched.step()
        stats.append(s)
    return old, stats, policy.eval(), critic.eval()


# ---------------------------------------------------------------------------------------------
# The system under test


def group_run(models, data, out_dir, num_ranks, zero_stage, micro, step_rows, loss_cfg, ptx_batches=None, **learner):
    """forward_old on the table, the table completed with its output, `ppo_step`s, save. `learner`:
    further LearnerConfig fields (dtype, attn_implementation)."""
    from rlhf_dist.actors.learner_group import ModelSpec
    from rlhf_dist.actors.ppo_learner import PPOLearnerGroup
    from rlhf_dist.buffer import add_columns
    from rlhf_dist.config.learner import LearnerConfig

    policy_optim, critic_optim = _optims()
    cfg = LearnerConfig(num_ranks=num_ranks, zero_stage=zero_stage, micro_batch_size=micro, cpus_per_rank=1, **learner)
    group = PPOLearnerGroup(ModelSpec(models[0], "causal_lm", 0), ModelSpec(models[1], "scalar", 0), cfg,
                            policy_optim, critic_optim, MINIBATCH, len(step_rows), data.pad_id, loss_cfg)
    try:
        old = group.forward_old(data.table)
        table = add_columns(data.table, old_logprobs=old[0], values=old[1], advantages=data.advantages,
                            returns=data.returns)
        steps = [group.ppo_step(table.take(idx), None if ptx_batches is None else ptx_batches[k])
                 for k, idx in enumerate(step_rows)]
        group.save(out_dir / "policy", out_dir / "critic", models[0])
    finally:
        group.shutdown()
    return old, steps


def _max_weight_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)


def _check_steps(name, steps, ref_stats):
    for k, (got, ref) in enumerate(zip(steps, ref_stats, strict=True)):
        where = f"{name}, step {k + 1}"
        assert got["tokens"] == ref["tokens"], where
        assert got["pg_loss_sum"] / got["tokens"] == pytest.approx(ref["pg_loss"], **LOSS_TOL), where
        assert got["vf_loss_sum"] / got["tokens"] == pytest.approx(ref["vf_loss"], **LOSS_TOL), where
        assert got["entropy_sum"] / got["tokens"] == pytest.approx(ref["entropy"], **LOSS_TOL), where
        # Token counts (sums of per-micro-batch fractions x tokens): no ratio sits within 1e-6 of a clip edge.
        assert got["clipfrac_sum"] == pytest.approx(ref["clipped"], abs=1e-3), where
        assert got["vf_clipfrac_sum"] == pytest.approx(ref["vf_clipped"], abs=1e-3), where
        assert got["policy_grad_norm_max"] == pytest.approx(ref["policy_grad_norm"], **NORM_TOL), where
        assert got["critic_grad_norm_max"] == pytest.approx(ref["critic_grad_norm"], **NORM_TOL), where


# ---------------------------------------------------------------------------------------------
# Tests


def test_ppo_steps_match_reference_on_one_and_two_ranks_zero2_zero3(ray_local, models, trajectories, tmp_path):
    from rlhf_dist.models import load_causal_lm, load_scalar_model

    data, loss_cfg = trajectories, _loss_cfg()
    old_ref, ref_stats, ref_policy, ref_critic = reference_run(models, data, STEP_ROWS, loss_cfg)

    # The reference exercises what it is compared on: both clipped branches are taken (steps 2
    # and 3 are off-policy), not on every token, and the first step is exactly on-policy.
    assert ref_stats[0]["clipped"] == 0 and ref_stats[0]["ratio_dev"] < 1e-6
    assert 0 < sum(s["clipped"] for s in ref_stats) < sum(s["tokens"] for s in ref_stats), ref_stats
    assert 0 < sum(s["vf_clipped"] for s in ref_stats) < sum(s["tokens"] for s in ref_stats), ref_stats
    # Norm clipping is taken and skipped at least once for each network, so both paths are covered.
    for key, optim in (("policy_grad_norm", _optims()[0]), ("critic_grad_norm", _optims()[1])):
        norms = [s[key] for s in ref_stats]
        assert min(norms) < optim.grad_clip < max(norms), (key, norms)

    # The weight comparison is not vacuous: the reference's 3 updates move weights by far more
    # than the tolerance (a wrong update direction shows as a difference of order lr).
    moved = (_max_weight_diff(load_causal_lm(models[0]), ref_policy),
             _max_weight_diff(load_scalar_model(models[1]), ref_critic))
    assert min(moved) > 30 * WEIGHT_ATOL, moved

    ref_old = [torch.cat([o[k] for o in old_ref]).numpy() for k in range(3)]  # logp, entropy, values: flat
    configs = {
        "1 rank ZeRO-2 (micro 2, accum 4)": (1, 2, 2, 0),
        "2 ranks ZeRO-2 (micro 2, accum 2)": (2, 2, 2, 0),
        "2 ranks ZeRO-3 (micro 4, accum 1)": (2, 3, 4, 0),
        # each micro-batch forwarded in length-sorted groups of <= 30 padded tokens (1-2 rows each)
        "2 ranks ZeRO-2 (micro 4, accum 1, forward_max_tokens 30)": (2, 2, 4, 30),
    }
    for i, (name, (ranks, stage, micro, budget)) in enumerate(configs.items()):
        out = tmp_path / f"run{i}"
        (logp, values, entropy), steps = group_run(models, data, out, ranks, stage, micro, STEP_ROWS,
                                                   dataclasses.replace(loss_cfg, forward_max_tokens=budget))

        # forward_old: the reference policy's log-probs at T, its entropy, the critic's values,
        # in row order (a row-order or shift bug moves these by O(1)).
        for got, want, what in ((logp, ref_old[0], "old log-probs"), (entropy, ref_old[1], "entropy"),
                                (values, ref_old[2], "values")):
            assert [len(x) for x in got.to_pylist()] == [len(r.response_ids) for r in data.rows], (name, what)
            np.testing.assert_allclose(got.flatten().to_numpy(), want, rtol=1e-5, atol=1e-5, err_msg=f"{name}: {what}")

        # The first step is on-policy: ratio 1, nothing clipped.
        assert steps[0]["ratio_dev_max"] < 1e-5, (name, steps[0])
        assert steps[0]["clipfrac_sum"] == 0, (name, steps[0])

        _check_steps(name, steps, ref_stats)

        # The HF folders written from the engines (ZeRO-3: gathered from shards) hold the weights
        # of the reference after 3 steps, for both networks.
        policy_diff = _max_weight_diff(load_causal_lm(out / "policy"), ref_policy)
        critic_diff = _max_weight_diff(load_scalar_model(out / "critic"), ref_critic)
        assert policy_diff < WEIGHT_ATOL and critic_diff < WEIGHT_ATOL, (name, policy_diff, critic_diff)


def test_ppo_ptx_step_matches_reference(ray_local, models, trajectories, ptx_seqs, tmp_path):
    """2 ranks x 2 micro-batches, 8 ptx sequences per minibatch (2 per micro-batch), gamma = 2."""
    from rlhf_dist.models import load_causal_lm

    data, loss_cfg = trajectories, _loss_cfg(ptx_coef=2.0)
    step_rows = STEP_ROWS[:2]
    _, ref_stats, ref_policy, _ = reference_run(models, data, step_rows, loss_cfg, ptx_batches=ptx_seqs)
    for s in ref_stats:  # the ptx term changes the policy gradient substantially
        assert abs(s["policy_grad_norm"] - s["pg_only_grad_norm"]) > 0.1 * s["policy_grad_norm"], s

    _, steps = group_run(models, data, tmp_path, 2, 2, 2, step_rows, loss_cfg, ptx_batches=ptx_seqs)
    _check_steps("ptx, 2 ranks ZeRO-2", steps, ref_stats)
    for got, ref in zip(steps, ref_stats, strict=True):
        assert got["ptx_tokens"] == ref["ptx_tokens"]
        assert got["ptx_nll_sum"] / got["ptx_tokens"] == pytest.approx(ref["ptx_nll"], **LOSS_TOL)
    diff = _max_weight_diff(load_causal_lm(tmp_path / "policy"), ref_policy)
    assert diff < WEIGHT_ATOL, diff


def test_entropy_bonus_reaches_the_policy_gradient(ray_local, models, trajectories, tmp_path):
    """PPOLossConfig(entropy_coef=c): loss = ppo_loss - c * (entropy token mean); 1 rank, 1 step.
    An entropy computed under no_grad would make the bonus a constant: the gradient norm catches it."""
    from rlhf_dist.models import load_causal_lm

    data, loss_cfg = trajectories, _loss_cfg(entropy_coef=1.0)
    step_rows = STEP_ROWS[:1]
    _, ref_stats, ref_policy, _ = reference_run(models, data, step_rows, loss_cfg)
    # Near-uniform random-init policy: the entropy gradient is small, but it moves the gradient
    # norm by far more than NORM_TOL (so a dropped bonus is caught).
    s = ref_stats[0]
    assert abs(s["policy_grad_norm"] - s["pg_only_grad_norm"]) > 50 * NORM_TOL["rel"] * s["policy_grad_norm"], s

    _, steps = group_run(models, data, tmp_path, 1, 2, 4, step_rows, loss_cfg)
    _check_steps("entropy bonus, 1 rank ZeRO-2", steps, ref_stats)
    diff = _max_weight_diff(load_causal_lm(tmp_path / "policy"), ref_policy)
    assert diff < WEIGHT_ATOL, diff


@pytest.mark.parametrize("ranks,stage,budget", [(1, 2, 0), (2, 3, 0), (1, 2, 64)])
def test_reused_forward_step_matches_reference(ray_local, models, trajectories, tmp_path, ranks, stage, budget):
    """One epoch of one minibatch, one micro-batch per rank: `forward_old(keep=True)` and
    `ppo_step(reuse_forward=True)` (the update backpropagates through the kept forwards) equal the
    reference's single step over all rows, and the old log-probs/values its forward; `budget`: the
    kept forwards are length-sorted groups of <= 64 padded tokens (PPOLossConfig.forward_max_tokens)."""
    from rlhf_dist.actors.learner_group import ModelSpec
    from rlhf_dist.actors.ppo_learner import PPOLearnerGroup
    from rlhf_dist.buffer import add_columns
    from rlhf_dist.config.learner import LearnerConfig
    from rlhf_dist.models import load_causal_lm, load_scalar_model

    data, loss_cfg = trajectories, _loss_cfg(entropy_coef=0.5)
    step_rows = [list(range(N_ROWS))]
    old_ref, ref_stats, ref_policy, ref_critic = reference_run(models, data, step_rows, loss_cfg)
    loss_cfg = dataclasses.replace(loss_cfg, forward_max_tokens=budget)
    policy_optim, critic_optim = _optims()
    cfg = LearnerConfig(num_ranks=ranks, zero_stage=stage, micro_batch_size=N_ROWS // ranks, cpus_per_rank=1)
    group = PPOLearnerGroup(ModelSpec(models[0], "causal_lm", 0), ModelSpec(models[1], "scalar", 0), cfg,
                            policy_optim, critic_optim, N_ROWS, 1, data.pad_id, loss_cfg)
    try:
        assert group.can_reuse_forward(N_ROWS, epochs=1) and not group.can_reuse_forward(N_ROWS, epochs=2)
        logp, values, _ = group.forward_old(data.table, keep=True)
        table = add_columns(data.table, old_logprobs=logp, values=values, advantages=data.advantages,
                            returns=data.returns)
        step = group.ppo_step(table, None, reuse_forward=True)
        with pytest.raises(Exception, match="forward_old\\(keep=True\\)"):  # the kept graphs are used once
            group.ppo_step(table, None, reuse_forward=True)
        group.save(tmp_path / "policy", tmp_path / "critic", models[0])
    finally:
        group.shutdown()
    np.testing.assert_allclose(logp.flatten().to_numpy(), torch.cat([o[0] for o in old_ref]).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(values.flatten().to_numpy(), torch.cat([o[2] for o in old_ref]).numpy(), rtol=1e-5, atol=1e-5)
    assert step["ratio_dev_max"] == 0.0  # the ratio's numerator and denominator are the same forward
    _check_steps(f"reused forward, {ranks} rank(s) ZeRO-{stage}", [step], ref_stats)
    assert _max_weight_diff(load_causal_lm(tmp_path / "policy"), ref_policy) < WEIGHT_ATOL
    assert _max_weight_diff(load_scalar_model(tmp_path / "critic"), ref_critic) < WEIGHT_ATOL


def test_critic_free_step_with_kl_loss_matches_reference(ray_local, models, trajectories, tmp_path):
    """A critic-free estimator's learner (no critic engine at all) with GRPO's KL loss term:
    loss = token mean of the clipped surrogate + beta * token mean of k3(logp, ref_logp), against
    the formulas on unpadded rows; 2 ranks ZeRO-2, 2 steps (the second off-policy)."""
    from rlhf_dist.actors.learner_group import ModelSpec
    from rlhf_dist.actors.ppo_learner import PPOLearnerGroup
    from rlhf_dist.algo import lr_multiplier
    from rlhf_dist.buffer import add_columns
    from rlhf_dist.config.learner import LearnerConfig
    from rlhf_dist.engines.ppo import PPOLossConfig
    from rlhf_dist.models import load_causal_lm, load_scalar_model

    data, beta, step_rows = trajectories, 0.3, STEP_ROWS[:2]
    loss_cfg = PPOLossConfig(temperature=TEMPERATURE, clip_eps=0.2, kl_loss_coef=beta, critic=False)
    rng = np.random.default_rng(3)
    ref_lp = [rng.normal(-3.0, 1.0, len(r.response_ids)).astype(np.float32) for r in data.rows]

    # the reference: plain PyTorch, one unpadded row at a time
    policy_optim, _ = _optims()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many tiny per-row ops (see reference_run)
    policy, critic = load_causal_lm(models[0]).train(), load_scalar_model(models[1])
    opt = torch.optim.AdamW(policy.parameters(), lr=policy_optim.lr, betas=tuple(policy_optim.betas), eps=policy_optim.eps,
                            weight_decay=policy_optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, len(step_rows), policy_optim.warmup_steps,
                                                                           policy_optim.schedule, policy_optim.min_lr_ratio))
    with torch.no_grad():
        old = [_row_forward(policy, critic, r.prompt_ids, r.response_ids)[0] for r in data.rows]
    ref_stats = []
    for idx in step_rows:
        n = sum(len(data.rows[i].response_ids) for i in idx)
        pg = kl = torch.zeros(())
        for i in idx:
            r = data.rows[i]
            logp = _row_forward(policy, critic, r.prompt_ids, r.response_ids)[0]
            A, d = torch.from_numpy(data.advantages[i]), torch.from_numpy(ref_lp[i]) - logp
            ratio = torch.exp(logp - old[i])
            pg = pg + torch.maximum(-A * ratio, -A * torch.clamp(ratio, 0.8, 1.2)).sum()
            kl = kl + (torch.exp(d) - d - 1).sum()
        opt.zero_grad()
        (pg / n + beta * kl / n).backward()
        norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), policy_optim.grad_clip).item()
        opt.step()
        sched.step()
        ref_stats.append({"pg": pg.item() / n, "kl": kl.item() / n, "norm": norm})
    torch.set_num_threads(threads)

    cfg = LearnerConfig(num_ranks=2, zero_stage=2, micro_batch_size=2, cpus_per_rank=1)
    group = PPOLearnerGroup(ModelSpec(models[0], "causal_lm", 0), None, cfg, policy_optim, _optims()[1], MINIBATCH,
                            len(step_rows), data.pad_id, loss_cfg)
    try:
        assert group.info[0]["critic_params"] == 0
        logp, values, _ = group.forward_old(data.table)
        assert values is None
        table = add_columns(data.table, old_logprobs=logp, advantages=data.advantages, ref_logprobs=ref_lp)
        steps = [group.ppo_step(table.take(idx), None) for idx in step_rows]
        group.save(tmp_path / "policy", tmp_path / "critic", models[0])
    finally:
        group.shutdown()
    assert not (tmp_path / "critic").exists()
    for got, ref in zip(steps, ref_stats, strict=True):
        assert "vf_loss_sum" not in got
        assert got["pg_loss_sum"] / got["tokens"] == pytest.approx(ref["pg"], **LOSS_TOL)
        assert got["kl_loss_sum"] / got["tokens"] == pytest.approx(ref["kl"], **LOSS_TOL)
        assert got["policy_grad_norm_max"] == pytest.approx(ref["norm"], **NORM_TOL)
    assert ref_stats[1]["kl"] > 0.1  # the KL term is not negligible in the gradient
    assert _max_weight_diff(load_causal_lm(tmp_path / "policy"), policy.eval()) < WEIGHT_ATOL


def test_eager_attention_steps_match_reference(ray_local, models, trajectories, tmp_path):
    """`learner.attn_implementation=eager` (what bf16 on CPU uses): the same three steps as the
    sdpa learner against the same fp32 reference and tolerances, with each micro-batch forwarded in
    length-sorted groups, so left-padded prompts and right-padded responses meet the eager mask."""
    from rlhf_dist.models import load_causal_lm, load_scalar_model

    data, loss_cfg = trajectories, dataclasses.replace(_loss_cfg(), forward_max_tokens=30)
    old_ref, ref_stats, ref_policy, ref_critic = reference_run(models, data, STEP_ROWS, loss_cfg)
    (logp, values, entropy), steps = group_run(models, data, tmp_path, 1, 2, 4, STEP_ROWS, loss_cfg,
                                               attn_implementation="eager")
    for got, k in ((logp, 0), (entropy, 1), (values, 2)):
        np.testing.assert_allclose(got.flatten().to_numpy(), torch.cat([o[k] for o in old_ref]).numpy(), rtol=1e-5, atol=1e-5)
    _check_steps("eager attention, 1 rank ZeRO-2", steps, ref_stats)
    assert _max_weight_diff(load_causal_lm(tmp_path / "policy"), ref_policy) < WEIGHT_ATOL
    assert _max_weight_diff(load_scalar_model(tmp_path / "critic"), ref_critic) < WEIGHT_ATOL


def test_bf16_learner_on_cpu_follows_the_fp32_reference(ray_local, models, trajectories, tmp_path):
    """`learner.dtype=bf16` on CPU (eager attention by default): the old log-probs, values and the
    losses of three steps follow the fp32 reference within bf16 rounding, and do differ from it by
    more than fp32 rounding (so the forwards did run in bf16). The first step stays exactly on-policy."""
    data, loss_cfg = trajectories, _loss_cfg()
    old_ref, ref_stats, _, _ = reference_run(models, data, STEP_ROWS, loss_cfg)
    (logp, values, _), steps = group_run(models, data, tmp_path, 1, 2, 4, STEP_ROWS, loss_cfg, dtype="bf16")
    # Measured: log-probs (about -6) differ by 0.003 on average, 0.008 at most; values by 0.007 and
    # 0.024 (bf16 keeps 8 significant bits). A masking or shift bug moves them by O(1).
    for got, k, what, mean_tol, max_tol in ((logp, 0, "log-probs", 1e-2, 0.05), (values, 2, "values", 2e-2, 0.1)):
        diff = np.abs(got.flatten().to_numpy() - torch.cat([o[k] for o in old_ref]).numpy())
        assert 1e-4 < diff.mean() < mean_tol and diff.max() < max_tol, (what, diff.mean(), diff.max())
    assert steps[0]["ratio_dev_max"] < 1e-5 and steps[0]["clipfrac_sum"] == 0, steps[0]
    # Measured: policy losses within 1.1e-3, value losses within 1.5%, gradient norms within 0.3%
    # (policy) and 5% (critic); a wrong normaliser or a dropped term is a factor, not a percent.
    for k, (got, ref) in enumerate(zip(steps, ref_stats, strict=True)):
        assert got["tokens"] == ref["tokens"]
        assert got["pg_loss_sum"] / got["tokens"] == pytest.approx(ref["pg_loss"], abs=5e-3), k
        assert got["vf_loss_sum"] / got["tokens"] == pytest.approx(ref["vf_loss"], rel=3e-2), k
        assert got["policy_grad_norm_max"] == pytest.approx(ref["policy_grad_norm"], rel=2e-2), k
        assert got["critic_grad_norm_max"] == pytest.approx(ref["critic_grad_norm"], rel=0.1), k
