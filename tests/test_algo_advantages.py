"""ppo_targets, explained_variance and RunningMoments (rlhf_dist/algo/advantages.py) against
independent references.

The references below are plain Python loops over rows and valid tokens in float64 (math.fsum
where sums matter). They never call rlhf_dist.algo. Conventions (ppo-details 21-29):
- responses are right-padded; row b has a valid prefix of length n_b, last valid token L = n_b - 1;
- k1 = logp - ref, k2 = (logp - ref)^2 / 2, k3 = exp(ref - logp) - 1 - (ref - logp);
- r_t = -beta * kl_t, plus the score (minus the missing-EOS penalty where has_eos is False) at L;
- optional reward whitening with the unbiased (Bessel) variance, mean kept;
- GAE with V = 0 after L: delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1};
- returns = raw A + V; advantage whitening over all valid tokens of the batch with the unbiased
  variance and eps 1e-8 inside the square root; every padded position exactly 0.
Garbage (NaN, +-inf, +-1e9) sits at the padded positions of every (B, T) input.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from rlhf_dist.algo.advantages import PPOTargets, RunningMoments, explained_variance, ppo_targets

TOL = 1e-5  # fp32 implementation vs float64 reference (absolute and relative)
EPS = 1e-8
GARBAGE = (float("nan"), 1e9, -1e9, float("inf"), -float("inf"))
GAMMA_LAM = [(1.0, 0.95), (0.99, 0.95), (1.0, 1.0), (0.9, 0.5), (1.0, 0.0), (0.5, 1.0)]
ESTIMATORS = ["k1", "k2", "k3"]
FIELDS_BT = ("rewards", "advantages", "returns", "kl")


# ----------------------------------------------------------------------------- batch helpers


def make_batch(seed: int, B: int = 8, T: int = 12):
    """Random right-padded batch: row 0 full length, rows 1 and 3 of length 1, the rest random."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[0], lengths[1], lengths[3] = T, 1, 1
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    old = -3.0 * torch.rand(B, T, generator=gen) - 0.01  # log-probs of sampled tokens
    ref = old + 0.5 * torch.randn(B, T, generator=gen)
    values = 2.0 * torch.randn(B, T, generator=gen)
    score = 2.0 * torch.randn(B, generator=gen)
    has_eos = torch.rand(B, generator=gen) < 0.5
    has_eos[0], has_eos[1], has_eos[2] = False, True, False  # both kinds always present
    return dict(score=score, old=old, ref=ref, values=values, mask=mask, has_eos=has_eos,
                lengths=lengths.tolist(), gen=gen)


def poison(x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x at valid positions, garbage (NaN, +-inf, +-1e9) at every padded position."""
    pick = torch.randint(0, len(GARBAGE), x.shape, generator=gen)
    return torch.where(mask, x, torch.tensor(GARBAGE, dtype=x.dtype)[pick])


def poisoned_inputs(batch):
    gen, mask = batch["gen"], batch["mask"]
    return dict(score=batch["score"], old_logprobs=poison(batch["old"], mask, gen),
                ref_logprobs=poison(batch["ref"], mask, gen), values=poison(batch["values"], mask, gen),
                mask=mask, has_eos=batch["has_eos"])


def clean_inputs(batch):
    return dict(score=batch["score"], old_logprobs=batch["old"], ref_logprobs=batch["ref"],
                values=batch["values"], mask=batch["mask"], has_eos=batch["has_eos"])


# ----------------------------------------------------------------------------- the reference


def ref_kl(lp: float, rf: float, kind: str) -> float:
    if kind == "k1":
        return lp - rf
    if kind == "k2":
        return 0.5 * (lp - rf) ** 2
    if kind == "k3":
        return math.exp(rf - lp) - 1.0 - (rf - lp)
    raise AssertionError(kind)


def whiten_lists(rows: list[list[float]], shift_mean: bool, ddof: int = 1) -> list[list[float]]:
    flat = [v for row in rows for v in row]
    mu = math.fsum(flat) / len(flat)
    var = math.fsum((v - mu) ** 2 for v in flat) / (len(flat) - ddof)
    scale = 1.0 / math.sqrt(var + EPS)
    return [[(v - mu) * scale + (0.0 if shift_mean else mu) for v in row] for row in rows]


def reference(batch, beta, kl_estimator="k1", gamma=1.0, lam=0.95, missing_eos_penalty=None,
              whiten_rewards=False, whiten_advantages=True, ddof=1, score_offset=0, bootstrap_past_L=False):
    """Float64 PPO targets by hand. ddof / score_offset / bootstrap_past_L build *wrong* variants
    (biased variance, score one token early, V_{L+1} not zeroed) used to show the tolerance bites."""
    B, T = batch["mask"].shape
    lengths = batch["lengths"]
    kl_rows, rew_rows, scores = [], [], []
    for b in range(B):
        n = lengths[b]
        kl = [ref_kl(float(batch["old"][b, t]), float(batch["ref"][b, t]), kl_estimator) for t in range(n)]
        s = float(batch["score"][b])
        if missing_eos_penalty is not None and not bool(batch["has_eos"][b]):
            s -= missing_eos_penalty
        r = [-beta * k for k in kl]
        r[max(n - 1 - score_offset, 0)] += s
        kl_rows.append(kl)
        rew_rows.append(r)
        scores.append(s)
    if whiten_rewards:
        rew_rows = whiten_lists(rew_rows, shift_mean=False, ddof=ddof)
    adv_rows, ret_rows = [], []
    for b in range(B):
        n = lengths[b]
        v = [float(batch["values"][b, t]) for t in range(n)]
        v_next_after_L = float(batch["values"][b, n]) if (bootstrap_past_L and n < T) else 0.0
        adv = [0.0] * n
        nxt = 0.0
        for t in reversed(range(n)):
            v_next = v[t + 1] if t + 1 < n else v_next_after_L
            delta = rew_rows[b][t] + gamma * v_next - v[t]
            nxt = delta + gamma * lam * nxt
            adv[t] = nxt
        adv_rows.append(adv)
        ret_rows.append([a + x for a, x in zip(adv, v)])
    if whiten_advantages:
        adv_rows = whiten_lists(adv_rows, shift_mean=True, ddof=ddof)

    def pad(rows):
        out = torch.zeros(B, T, dtype=torch.float64)
        for b, row in enumerate(rows):
            for t, x in enumerate(row):
                out[b, t] = x
        return out

    return dict(rewards=pad(rew_rows), advantages=pad(adv_rows), returns=pad(ret_rows), kl=pad(kl_rows),
                kl_sum=torch.tensor([math.fsum(k) for k in kl_rows], dtype=torch.float64),
                score=torch.tensor(scores, dtype=torch.float64))


def assert_matches(out: PPOTargets, expected: dict, mask: torch.Tensor):
    for name, exp in expected.items():
        got = getattr(out, name)
        assert got.dtype == torch.float32, name
        assert got.shape == exp.shape, name
        assert torch.isfinite(got).all(), f"{name} has non-finite entries: garbage leaked"
        torch.testing.assert_close(got.double(), exp, rtol=TOL, atol=TOL, msg=lambda m: f"{name}: {m}")
        if name in FIELDS_BT:
            assert (got[~mask] == 0).all(), f"{name} is not exactly 0 at padded positions"


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


# ----------------------------------------------------------------------------- ppo_targets


@pytest.mark.parametrize(
    "seed,gamma,lam,kl_estimator,penalty,whiten_rewards,whiten_advantages",
    [(i, g, l, k, p, wr, wa) for i, ((g, l), k, p, wr, wa) in
     enumerate(itertools.product(GAMMA_LAM, ESTIMATORS, [None, 1.5], [False, True], [False, True]))],
)
def test_ppo_targets_match_reference_with_garbage_in_pads(seed, gamma, lam, kl_estimator, penalty, whiten_rewards,
                                                          whiten_advantages):
    batch = make_batch(seed)
    kwargs = dict(beta=0.05, kl_estimator=kl_estimator, gamma=gamma, lam=lam, missing_eos_penalty=penalty,
                  whiten_rewards=whiten_rewards, whiten_advantages=whiten_advantages)
    out = ppo_targets(**poisoned_inputs(batch), **kwargs)
    assert_matches(out, reference(batch, **kwargs), batch["mask"])
    # Tail invariance, bitwise: garbage in the pads changes nothing at all.
    clean = ppo_targets(**clean_inputs(batch), **kwargs)
    for name in FIELDS_BT + ("kl_sum", "score"):
        assert torch.equal(getattr(out, name), getattr(clean, name)), name


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("B,T", [(1, 5), (3, 1), (5, 20)])
def test_ppo_targets_other_shapes(seed, B, T):
    batch = make_batch(100 + seed, B=max(B, 4), T=T)
    # cut to B rows (keeps the forced full-length and length-1 rows first)
    batch = {k: (v[:B] if isinstance(v, (torch.Tensor, list)) else v) for k, v in batch.items()}
    if B == 1:
        batch["lengths"][0] = T  # whitening needs >= 2 valid tokens in the batch
    if T == 1:
        kwargs = dict(beta=0.1, kl_estimator="k3", gamma=0.97, lam=0.9, missing_eos_penalty=0.5,
                      whiten_rewards=True, whiten_advantages=True)
    else:
        kwargs = dict(beta=0.1, kl_estimator="k1", gamma=1.0, lam=0.95, missing_eos_penalty=None,
                      whiten_rewards=False, whiten_advantages=True)
    out = ppo_targets(**poisoned_inputs(batch), **kwargs)
    assert_matches(out, reference(batch, **kwargs), batch["mask"])


@pytest.mark.parametrize("mask_dtype", [torch.long, torch.float32])
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.float64])
def test_ppo_targets_mask_and_input_dtypes(mask_dtype, in_dtype):
    batch = make_batch(7)
    inputs = poisoned_inputs(batch)
    for k in ("score", "old_logprobs", "ref_logprobs", "values"):
        inputs[k] = inputs[k].to(in_dtype)
    inputs["mask"] = inputs["mask"].to(mask_dtype)
    inputs["has_eos"] = inputs["has_eos"].long()
    kwargs = dict(beta=0.05, kl_estimator="k3", gamma=1.0, lam=0.95, missing_eos_penalty=2.0,
                  whiten_rewards=False, whiten_advantages=True)
    out = ppo_targets(**inputs, **kwargs)
    assert_matches(out, reference(batch, **kwargs), batch["mask"])


def test_ppo_targets_does_not_mutate_inputs():
    batch = make_batch(8)
    inputs = poisoned_inputs(batch)
    before = {k: v.clone() for k, v in inputs.items()}
    ppo_targets(**inputs, beta=0.05, kl_estimator="k2", missing_eos_penalty=1.0, whiten_rewards=True)
    for k, v in inputs.items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_lam_zero_gives_td_error(seed, gamma):
    batch = make_batch(200 + seed)
    out = ppo_targets(**poisoned_inputs(batch), beta=0.05, gamma=gamma, lam=0.0, whiten_advantages=False)
    exp = torch.zeros_like(out.advantages, dtype=torch.float64)
    for b, n in enumerate(batch["lengths"]):
        for t in range(n):
            v_next = float(batch["values"][b, t + 1]) if t + 1 < n else 0.0
            exp[b, t] = float(out.rewards[b, t]) + gamma * v_next - float(batch["values"][b, t])
    torch.testing.assert_close(out.advantages.double(), exp, rtol=TOL, atol=TOL)
    # returns = A + V = r_t + gamma * V_{t+1}: the one-step TD target
    torch.testing.assert_close(out.returns.double(), exp + torch.where(batch["mask"], batch["values"], 0).double(),
                               rtol=TOL, atol=TOL)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kl_estimator", ESTIMATORS)
def test_gamma_lam_one_returns_are_reward_to_go(seed, kl_estimator):
    batch = make_batch(300 + seed)
    out = ppo_targets(**poisoned_inputs(batch), beta=0.1, kl_estimator=kl_estimator, gamma=1.0, lam=1.0,
                      missing_eos_penalty=1.0, whiten_advantages=True)
    exp = reference(batch, beta=0.1, kl_estimator=kl_estimator, gamma=1.0, lam=1.0, missing_eos_penalty=1.0)
    for b, n in enumerate(batch["lengths"]):
        row_sum = math.fsum(float(out.rewards[b, t]) for t in range(n))
        assert float(out.returns[b, 0]) == pytest.approx(row_sum, rel=TOL, abs=TOL)
        assert float(out.returns[b, 0]) == pytest.approx(float(exp["rewards"][b].sum()), rel=TOL, abs=TOL)
        # and sum_t r_t = score - beta * sum_t kl_t (ppo-details 21)
        assert row_sum == pytest.approx(float(exp["score"][b]) - 0.1 * float(exp["kl_sum"][b]), rel=TOL, abs=TOL)
        for t in range(n):
            to_go = math.fsum(float(out.rewards[b, k]) for k in range(t, n))
            assert float(out.returns[b, t]) == pytest.approx(to_go, rel=TOL, abs=TOL)


@pytest.mark.parametrize("gamma,lam", GAMMA_LAM)
def test_last_token_is_terminal(gamma, lam):
    """A_L = r_L - V_L (no bootstrap past L), whatever gamma, lam and the garbage after L."""
    batch = make_batch(400)
    out = ppo_targets(**poisoned_inputs(batch), beta=0.05, gamma=gamma, lam=lam, whiten_advantages=False)
    for b, n in enumerate(batch["lengths"]):
        L = n - 1
        assert float(out.advantages[b, L]) == pytest.approx(
            float(out.rewards[b, L]) - float(batch["values"][b, L]), rel=TOL, abs=TOL)
        assert float(out.returns[b, L]) == pytest.approx(float(out.rewards[b, L]), rel=TOL, abs=TOL)


@pytest.mark.parametrize("kl_estimator", ESTIMATORS)
def test_beta_zero_rewards_are_score_at_last_token_only(kl_estimator):
    batch = make_batch(500)
    out = ppo_targets(**poisoned_inputs(batch), beta=0.0, kl_estimator=kl_estimator, missing_eos_penalty=None,
                      whiten_advantages=False)
    exp = torch.zeros(out.rewards.shape, dtype=torch.float64)
    for b, n in enumerate(batch["lengths"]):
        exp[b, n - 1] = float(batch["score"][b])
    assert torch.equal(out.rewards.double(), exp)  # exact: -0 * kl + score
    # the KL is still reported
    exp_kl = reference(batch, beta=0.0, kl_estimator=kl_estimator)
    torch.testing.assert_close(out.kl.double(), exp_kl["kl"], rtol=TOL, atol=TOL)
    assert (out.kl[batch["mask"]] != 0).any()


@pytest.mark.parametrize("kl_estimator", ESTIMATORS)
def test_kl_sum_is_row_sum_of_token_kl(kl_estimator):
    batch = make_batch(600)
    out = ppo_targets(**poisoned_inputs(batch), beta=0.05, kl_estimator=kl_estimator)
    assert out.kl_sum.shape == (len(batch["lengths"]),)
    for b, n in enumerate(batch["lengths"]):
        row = math.fsum(float(out.kl[b, t]) for t in range(out.kl.shape[1]))
        assert float(out.kl_sum[b]) == pytest.approx(row, rel=TOL, abs=TOL)
        by_hand = math.fsum(ref_kl(float(batch["old"][b, t]), float(batch["ref"][b, t]), kl_estimator)
                            for t in range(n))
        assert float(out.kl_sum[b]) == pytest.approx(by_hand, rel=TOL, abs=TOL)
    if kl_estimator in ("k2", "k3"):
        assert (out.kl >= 0).all()


def test_kl_estimators_zero_when_policies_agree():
    batch = make_batch(601)
    batch["ref"] = batch["old"].clone()
    for kind in ESTIMATORS:
        out = ppo_targets(**poisoned_inputs(batch), beta=0.3, kl_estimator=kind, whiten_advantages=False)
        assert torch.equal(out.kl, torch.zeros_like(out.kl)), kind
        assert torch.equal(out.kl_sum, torch.zeros_like(out.kl_sum)), kind


def test_unknown_kl_estimator_raises():
    batch = make_batch(602)
    with pytest.raises(ValueError):
        ppo_targets(**clean_inputs(batch), beta=0.05, kl_estimator="k4")


def test_missing_eos_penalty():
    batch = make_batch(700)
    has_eos = batch["has_eos"]
    assert has_eos.any() and (~has_eos).any()
    inputs = poisoned_inputs(batch)
    none = ppo_targets(**inputs, beta=0.05, missing_eos_penalty=None, whiten_advantages=False)
    pen = ppo_targets(**inputs, beta=0.05, missing_eos_penalty=1.25, whiten_advantages=False)
    zero = ppo_targets(**inputs, beta=0.05, missing_eos_penalty=0.0, whiten_advantages=False)
    assert torch.equal(none.score, batch["score"])
    assert torch.equal(zero.score, batch["score"])
    for b, n in enumerate(batch["lengths"]):
        s = float(batch["score"][b])
        expect = s if bool(has_eos[b]) else s - 1.25
        assert float(pen.score[b]) == pytest.approx(expect, abs=1e-6)
        # only the last valid token's reward moves, by exactly the penalty
        diff = (pen.rewards[b] - none.rewards[b]).double()
        assert float(diff[n - 1]) == pytest.approx(0.0 if bool(has_eos[b]) else -1.25, abs=1e-6)
        assert torch.equal(diff[: n - 1], torch.zeros(n - 1, dtype=torch.float64))
        assert torch.equal(diff[n:], torch.zeros(diff.shape[0] - n, dtype=torch.float64))


@pytest.mark.parametrize("seed", range(3))
def test_advantage_whitening_properties(seed):
    batch = make_batch(800 + seed)
    mask = batch["mask"]
    raw = ppo_targets(**poisoned_inputs(batch), beta=0.05, whiten_advantages=False)
    w = ppo_targets(**poisoned_inputs(batch), beta=0.05, whiten_advantages=True)
    a = [float(x) for x in w.advantages[mask]]
    mu = math.fsum(a) / len(a)
    assert abs(mu) < 1e-6
    assert math.fsum((x - mu) ** 2 for x in a) / (len(a) - 1) == pytest.approx(1.0, abs=1e-5)  # unbiased var = 1
    assert (w.advantages[~mask] == 0).all()
    # returns use the raw advantages: advantage whitening must not touch them
    assert torch.equal(w.returns, raw.returns)
    torch.testing.assert_close(raw.returns.double(),
                               (raw.advantages + torch.where(mask, batch["values"], 0)).double(), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("seed", range(3))
def test_reward_whitening_keeps_mean_and_scales_to_unit_variance(seed):
    batch = make_batch(900 + seed)
    mask = batch["mask"]
    raw = ppo_targets(**poisoned_inputs(batch), beta=0.05, whiten_rewards=False, whiten_advantages=False)
    w = ppo_targets(**poisoned_inputs(batch), beta=0.05, whiten_rewards=True, whiten_advantages=False)
    r_raw = [float(x) for x in raw.rewards[mask]]
    r_w = [float(x) for x in w.rewards[mask]]
    mu_raw, mu_w = math.fsum(r_raw) / len(r_raw), math.fsum(r_w) / len(r_w)
    assert mu_w == pytest.approx(mu_raw, abs=TOL)
    assert math.fsum((x - mu_w) ** 2 for x in r_w) / (len(r_w) - 1) == pytest.approx(1.0, abs=1e-5)
    assert (w.rewards[~mask] == 0).all()
    # the KL and score outputs are not whitened
    assert torch.equal(w.kl, raw.kl) and torch.equal(w.kl_sum, raw.kl_sum) and torch.equal(w.score, raw.score)


def test_tolerance_detects_biased_variance_and_off_by_one():
    """The 1e-5 tolerance is tight enough: the wrong variants are far away, the right one is close."""
    batch = make_batch(1000)
    kwargs = dict(beta=0.05, kl_estimator="k1", gamma=1.0, lam=0.95, missing_eos_penalty=1.0)
    out_adv = ppo_targets(**poisoned_inputs(batch), **kwargs, whiten_rewards=False, whiten_advantages=True)
    good = reference(batch, **kwargs, whiten_rewards=False, whiten_advantages=True)
    biased = reference(batch, **kwargs, whiten_rewards=False, whiten_advantages=True, ddof=0)
    assert max_diff(good["advantages"], biased["advantages"]) > 100 * TOL
    assert max_diff(out_adv.advantages, good["advantages"]) < TOL
    assert max_diff(out_adv.advantages, biased["advantages"]) > 10 * TOL

    out_rw = ppo_targets(**poisoned_inputs(batch), **kwargs, whiten_rewards=True, whiten_advantages=False)
    good = reference(batch, **kwargs, whiten_rewards=True, whiten_advantages=False)
    biased = reference(batch, **kwargs, whiten_rewards=True, whiten_advantages=False, ddof=0)
    assert max_diff(good["rewards"], biased["rewards"]) > 100 * TOL
    assert max_diff(out_rw.rewards, good["rewards"]) < TOL
    assert max_diff(out_rw.rewards, biased["rewards"]) > 10 * TOL

    out = ppo_targets(**clean_inputs(batch), **kwargs, whiten_rewards=False, whiten_advantages=False)
    good = reference(batch, **kwargs, whiten_rewards=False, whiten_advantages=False)
    early = reference(batch, **kwargs, whiten_rewards=False, whiten_advantages=False, score_offset=1)
    boot = reference(batch, **kwargs, whiten_rewards=False, whiten_advantages=False, bootstrap_past_L=True)
    for wrong, fields in ((early, ("rewards", "advantages", "returns")), (boot, ("advantages", "returns"))):
        for name in fields:
            assert max_diff(getattr(out, name), good[name]) < TOL, name
            assert max_diff(getattr(out, name), wrong[name]) > 100 * TOL, name


# ----------------------------------------------------------------------------- RunningMoments


def stream_batches(seed: int):
    rng = np.random.default_rng(seed)
    specs = [(1, 0.0, 1.0), (4, 3.0, 0.5), (17, -2.0, 2.0), (2, 10.0, 0.1), ((5, 7), 1.0, 3.0), (1, 4.0, 1.0),
             (64, 0.5, 1.0)]
    for size, loc, scale in specs:
        yield torch.tensor(rng.normal(loc, scale, size=size), dtype=torch.float32)


@pytest.mark.parametrize("seed", range(3))
def test_running_moments_match_numpy_population_stats(seed):
    rm = RunningMoments()
    seen: list[np.ndarray] = []
    for x in stream_batches(seed):
        rm.update(x)
        seen.append(x.double().numpy().reshape(-1))
        allv = np.concatenate(seen)
        assert rm.count == allv.size
        assert rm.mean == pytest.approx(float(np.mean(allv)), rel=1e-9, abs=1e-12)
        assert rm.std == pytest.approx(float(np.std(allv, ddof=0)), rel=1e-9, abs=1e-12)
    # the tolerance would catch a sample (ddof=1) standard deviation
    assert abs(rm.std - float(np.std(allv, ddof=1))) > TOL


def test_running_moments_edge_cases():
    rm = RunningMoments()
    assert rm.std == 0.0
    rm.update(torch.tensor([]))
    assert rm.count == 0 and rm.mean == 0.0 and rm.std == 0.0
    rm.update(torch.tensor([3.5]))
    assert rm.count == 1 and rm.mean == 3.5 and rm.std == 0.0
    rm.update(torch.zeros(0, 4))  # empty again: no change
    assert rm.count == 1 and rm.mean == 3.5
    rm.update(torch.tensor([[1.5]]))
    assert rm.count == 2 and rm.mean == pytest.approx(2.5) and rm.std == pytest.approx(1.0)


def test_running_moments_large_offset_is_stable():
    rng = np.random.default_rng(11)
    rm, seen = RunningMoments(), []
    for size in (3, 50, 7, 200):
        x = torch.tensor(1e6 + rng.normal(0.0, 1.0, size=size), dtype=torch.float64)
        rm.update(x)
        seen.append(x.numpy())
    allv = np.concatenate(seen)
    assert rm.mean == pytest.approx(float(np.mean(allv)), rel=1e-12)
    assert rm.std == pytest.approx(float(np.std(allv)), rel=1e-6)


def test_running_moments_normalize_with_and_without_clip():
    rm = RunningMoments()
    seen = []
    for x in stream_batches(5):
        rm.update(x)
        seen.append(x.double().numpy().reshape(-1))
    allv = np.concatenate(seen)
    mu, sd = float(np.mean(allv)), float(np.std(allv, ddof=0))
    x = torch.tensor(np.random.default_rng(6).normal(mu, 3 * sd, size=(4, 9)), dtype=torch.float32)
    expected = (x.double().numpy() - mu) / (sd + EPS)

    out = rm.normalize(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=TOL, atol=TOL)

    clip = 1.5
    assert (np.abs(expected) > clip).any() and (np.abs(expected) < clip).any()
    out_c = rm.normalize(x, clip=clip)
    np.testing.assert_allclose(out_c.double().numpy(), np.clip(expected, -clip, clip), rtol=TOL, atol=TOL)
    assert float(out_c.abs().max()) == pytest.approx(clip)  # clipped after normalisation, exactly at the bound
    inside = np.abs(expected) < clip - 1e-3
    assert torch.equal(out_c[torch.from_numpy(inside)], out[torch.from_numpy(inside)])
    # a biased (ddof=1) std would give values off by more than the tolerance
    wrong = (x.double().numpy() - mu) / (float(np.std(allv, ddof=1)) + EPS)
    assert np.abs(out.double().numpy() - wrong).max() > TOL


# ----------------------------------------------------------------------------- explained_variance


def numpy_explained_variance(values, returns, mask) -> float:
    m = mask.bool().numpy()
    r = returns.double().numpy()[m]
    v = values.double().numpy()[m]
    return 1.0 - float(np.var(r - v)) / float(np.var(r))


@pytest.mark.parametrize("seed", range(4))
def test_explained_variance_matches_numpy(seed):
    batch = make_batch(1100 + seed)
    gen, mask = batch["gen"], batch["mask"]
    returns = 2.0 * torch.randn(mask.shape, generator=gen) + 1.0
    values = returns + (0.3 + seed) * torch.randn(mask.shape, generator=gen)
    expected = numpy_explained_variance(values, returns, mask)
    ev = explained_variance(poison(values, mask, gen), poison(returns, mask, gen), mask)
    assert isinstance(ev, float)
    assert ev == pytest.approx(expected, rel=TOL, abs=TOL)
    assert ev == explained_variance(values, returns, mask)  # garbage in the pads changes nothing


def test_explained_variance_special_values():
    batch = make_batch(1200)
    gen, mask = batch["gen"], batch["mask"]
    returns = 2.0 * torch.randn(mask.shape, generator=gen)
    assert explained_variance(poison(returns, mask, gen), returns, mask) == pytest.approx(1.0, abs=1e-6)
    assert explained_variance(torch.full(mask.shape, 0.7), returns, mask) == pytest.approx(0.0, abs=1e-5)
    worse = returns + 3.0 * torch.randn(mask.shape, generator=gen)
    assert explained_variance(worse, returns, mask) < 0


@pytest.mark.parametrize("const", [0.0, 2.5, -4.0, 1024.0])
def test_explained_variance_nan_when_returns_have_zero_variance(const):
    batch = make_batch(1300)
    gen, mask = batch["gen"], batch["mask"]
    returns = poison(torch.full(mask.shape, const), mask, gen)
    values = poison(torch.randn(mask.shape, generator=gen), mask, gen)
    assert math.isnan(explained_variance(values, returns, mask))


def test_explained_variance_nan_with_a_single_valid_token():
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[1, 0] = True
    returns = torch.full((3, 4), float("nan"))
    returns[1, 0] = 0.1
    values = torch.full((3, 4), 1e9)
    values[1, 0] = -0.3
    assert math.isnan(explained_variance(values, returns, mask))


def test_explained_variance_nan_for_constant_not_exactly_representable_returns():
    """Regression: fp32 round-off in the mean of a constant like 0.1 once left Var ~ 1e-16 (-> -1e16)."""
    mask = torch.ones(1, 7, dtype=torch.bool)
    returns = torch.full((1, 7), 0.1)
    values = torch.randn(1, 7, generator=torch.Generator().manual_seed(0))
    assert math.isnan(explained_variance(values, returns, mask))
