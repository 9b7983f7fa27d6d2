"""Critic-free estimators (rlhf_dist/algo/estimators.py) against independent references.

The references below are plain Python loops over groups, rows and valid tokens on Python floats
(float64), with statistics.stdev for the sample standard deviation and explicit sums for returns.
They never call rlhf_dist.algo. Conventions:
- rows [g*G, (g+1)*G) are the G responses to prompt g;
- grpo: (r_i - mean) / (stdev + eps); grpo_mean: r_i - mean; rloo: r_i - mean of the others;
  a group with all scores equal (or G = 1) has advantage exactly 0 and no signal;
- right-padded responses, row b valid on its first n_b tokens, last valid token L = n_b - 1;
- k1 = logp - ref, k2 = (logp - ref)^2 / 2, k3 = exp(ref - logp) - 1 - (ref - logp);
- REINFORCE++: reward-to-go of (-beta * kl_t, plus the score at L), whitened over all valid tokens
  with the unbiased variance and eps 1e-8 inside the square root;
- every padded output position exactly 0.
Garbage (NaN, +-inf, +-1e9) sits at the padded positions of every (B, T) input.
"""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
import torch

from rlhf_dist.algo.estimators import (
    CriticFreeTargets,
    critic_free_targets,
    group_advantages,
    kl_penalty_loss,
    outcome_token_advantages,
    reinforce_pp_advantages,
    returns_to_go,
)

TOL = 1e-5  # fp32 implementation vs float64 reference (absolute and relative)
EPS = 1e-6  # group_advantages' default
WHITEN_EPS = 1e-8
GARBAGE = (float("nan"), 1e9, -1e9, float("inf"), -float("inf"))
METHODS = ["grpo", "grpo_mean", "rloo"]
KL_ESTIMATORS = ["k1", "k2", "k3"]
SHAPES = [(1, 5, 6), (2, 4, 9), (3, 3, 5), (4, 3, 12), (8, 2, 7)]  # (G, groups, T)


# ----------------------------------------------------------------------------- batch helpers


def make_scores(gen: torch.Generator, n_groups: int, G: int, kind: str) -> torch.Tensor:
    """(B,) scores; group 0 always all-equal (0.1, not exactly representable)."""
    B = n_groups * G
    if kind == "binary":
        score = torch.randint(0, 2, (B,), generator=gen).float()
    else:
        score = 2.0 * torch.randn(B, generator=gen)
    score[:G] = 0.1
    return score


def make_batch(seed: int, G: int, n_groups: int, T: int, score_kind: str = "gauss"):
    """Random right-padded batch of n_groups * G rows with lengths 1..T (one full row, one of length 1)."""
    gen = torch.Generator().manual_seed(seed)
    B = n_groups * G
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[0] = T
    lengths[-1] = 1
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    logp = -3.0 * torch.rand(B, T, generator=gen) - 0.01
    ref = logp + 0.5 * torch.randn(B, T, generator=gen)
    score = make_scores(gen, n_groups, G, score_kind)
    has_eos = torch.rand(B, generator=gen) < 0.6
    has_eos[:G] = True  # the all-equal group 0 stays all-equal after the EOS penalty
    if B > G:
        has_eos[G] = False  # at least one response without EOS
    return dict(score=score, logp=logp, ref=ref, mask=mask, has_eos=has_eos, lengths=lengths.tolist(), gen=gen)


def poison(x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x at valid positions, garbage (NaN, +-inf, +-1e9) at every padded position."""
    pick = torch.randint(0, len(GARBAGE), x.shape, generator=gen)
    return torch.where(mask, x, torch.tensor(GARBAGE, dtype=x.dtype)[pick])


def pad(rows: list[list[float]], T: int) -> torch.Tensor:
    out = torch.zeros(len(rows), T, dtype=torch.float64)
    for b, row in enumerate(rows):
        for t, x in enumerate(row):
            out[b, t] = x
    return out


def assert_close_bt(got: torch.Tensor, expected: torch.Tensor, mask: torch.Tensor, name: str = "output"):
    assert got.dtype == torch.float32, name
    assert got.shape == expected.shape, name
    assert torch.isfinite(got).all(), f"{name} has non-finite entries: garbage leaked"
    torch.testing.assert_close(got.double(), expected, rtol=TOL, atol=TOL, msg=lambda m: f"{name}: {m}")
    assert (got[~mask] == 0).all(), f"{name} is not exactly 0 at padded positions"


# ----------------------------------------------------------------------------- the references


def ref_group(scores: list[float], G: int, method: str, eps: float = EPS, pop_std: bool = False):
    """(advantages, no_signal) by hand; pop_std builds the *wrong* population-std variant."""
    adv, no_signal = [], []
    for g in range(len(scores) // G):
        grp = scores[g * G:(g + 1) * G]
        flat = G == 1 or all(x == grp[0] for x in grp)
        no_signal.append(flat)
        for i, r in enumerate(grp):
            if flat:
                adv.append(0.0)
                continue
            mean = math.fsum(grp) / G
            if method == "grpo":
                std = statistics.pstdev(grp) if pop_std else statistics.stdev(grp)
                adv.append((r - mean) / (std + eps))
            elif method == "grpo_mean":
                adv.append(r - mean)
            elif method == "rloo":
                others = [x for j, x in enumerate(grp) if j != i]
                adv.append(r - math.fsum(others) / len(others))
            else:
                raise AssertionError(method)
    return adv, no_signal


def ref_kl(lp: float, rf: float, kind: str) -> float:
    if kind == "k1":
        return lp - rf
    if kind == "k2":
        return 0.5 * (lp - rf) ** 2
    if kind == "k3":
        return math.exp(rf - lp) - 1.0 - (rf - lp)
    raise AssertionError(kind)


def ref_to_go(row: list[float], gamma: float) -> list[float]:
    n = len(row)
    return [math.fsum(gamma ** (s - t) * row[s] for s in range(t, n)) for t in range(n)]


def ref_whiten(rows: list[list[float]]) -> list[list[float]]:
    flat = [v for row in rows for v in row]
    mu = math.fsum(flat) / len(flat)
    var = math.fsum((v - mu) ** 2 for v in flat) / (len(flat) - 1)
    scale = 1.0 / math.sqrt(var + WHITEN_EPS)
    return [[(v - mu) * scale for v in row] for row in rows]


def ref_targets(batch, estimator, G, beta, kl_in_reward, kl_estimator, gamma, penalty):
    B, T = batch["mask"].shape
    lengths = batch["lengths"]
    kl_rows, scores = [], []
    for b in range(B):
        kl_rows.append([ref_kl(float(batch["logp"][b, t]), float(batch["ref"][b, t]), kl_estimator)
                        for t in range(lengths[b])])
        s = float(batch["score"][b])
        if penalty is not None and not bool(batch["has_eos"][b]):
            s -= penalty
        scores.append(s)
    if estimator == "reinforce_pp":
        rew_rows = []
        for b in range(B):
            r = [-beta * k if kl_in_reward else 0.0 for k in kl_rows[b]]
            r[-1] += scores[b]
            rew_rows.append(r)
        adv_rows = ref_whiten([ref_to_go(r, gamma) for r in rew_rows])
        share = 0.0
    else:
        seq_adv, no_signal = ref_group(scores, G, estimator)
        adv_rows = []
        for b in range(B):
            kl_part = ref_to_go([-beta * k for k in kl_rows[b]], gamma) if kl_in_reward else [0.0] * lengths[b]
            adv_rows.append([seq_adv[b] + x for x in kl_part])
        share = sum(no_signal) / len(no_signal)
    return dict(advantages=pad(adv_rows, T), kl=pad(kl_rows, T),
                kl_sum=torch.tensor([math.fsum(k) for k in kl_rows], dtype=torch.float64),
                score=torch.tensor(scores, dtype=torch.float64), no_signal_share=share)


# ----------------------------------------------------------------------------- group_advantages


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("G,n_groups,T", SHAPES)
@pytest.mark.parametrize("kind", ["gauss", "binary"])
def test_group_advantages_match_reference(method, G, n_groups, T, kind):
    gen = torch.Generator().manual_seed(17 * G + n_groups)
    score = make_scores(gen, n_groups, G, kind)
    adv, no_signal = group_advantages(score, G, method)
    exp_adv, exp_flat = ref_group([float(x) for x in score], G, method)
    assert adv.dtype == torch.float32 and adv.shape == (n_groups * G,)
    assert no_signal.dtype == torch.bool and no_signal.tolist() == exp_flat
    torch.testing.assert_close(adv.double(), torch.tensor(exp_adv, dtype=torch.float64), rtol=TOL, atol=TOL)
    # a no-signal group is exactly 0, not round-off close to it
    flat_rows = torch.tensor(exp_flat).repeat_interleave(G)
    assert (adv[flat_rows] == 0).all()
    assert exp_flat[0]  # group 0 is the forced all-equal group


@pytest.mark.parametrize("G", [2, 4, 8])
def test_grpo_uses_the_sample_std(G):
    """The tolerance would catch the population (ddof=0) standard deviation."""
    score = torch.randn(3 * G, generator=torch.Generator().manual_seed(G))
    adv, _ = group_advantages(score, G, "grpo")
    wrong, _ = ref_group([float(x) for x in score], G, "grpo", pop_std=True)
    assert (adv.double() - torch.tensor(wrong, dtype=torch.float64)).abs().max() > 10 * TOL


def test_group_advantages_small_cases_by_hand():
    score = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    adv, flat = group_advantages(score, 4, "rloo")
    assert adv.tolist() == pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0, 0.0])
    assert flat.tolist() == [False, True]
    adv, _ = group_advantages(score, 4, "grpo_mean")
    assert adv.tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25, 0.0, 0.0, 0.0, 0.0])
    adv, _ = group_advantages(torch.tensor([1.0, 0.0]), 2, "grpo", eps=0.0)
    assert adv.tolist() == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2)])  # stdev([1, 0]) = sqrt(1/2)


@pytest.mark.parametrize("method", METHODS)
def test_group_of_one_has_no_signal(method):
    score = torch.tensor([3.0, -1.0, 0.5])
    adv, flat = group_advantages(score, 1, method)
    assert torch.equal(adv, torch.zeros(3))
    assert flat.tolist() == [True, True, True]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("value", [0.1, -7.3, 1e-3, 0.0])
def test_all_equal_group_is_exactly_zero(method, value):
    score = torch.tensor([value] * 3 + [1.0, 2.0, 4.0])
    adv, flat = group_advantages(score, 3, method)
    assert flat.tolist() == [True, False]
    assert torch.equal(adv[:3], torch.zeros(3))
    assert (adv[3:] != 0).all()


@pytest.mark.parametrize("B,G", [(5, 2), (6, 4), (3, 0)])
def test_group_advantages_bad_group_size(B, G):
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(B), G, "grpo")


def test_group_advantages_unknown_method():
    with pytest.raises(ValueError, match="grpo_mean"):
        group_advantages(torch.zeros(4), 2, "ppo")


# ----------------------------------------------------------------------------- returns_to_go


@pytest.mark.parametrize("gamma", [1.0, 0.9])
@pytest.mark.parametrize("G,n_groups,T", SHAPES)
def test_returns_to_go_match_reference(gamma, G, n_groups, T):
    batch = make_batch(31 + T, G, n_groups, T)
    gen, mask = batch["gen"], batch["mask"]
    rewards = torch.randn(mask.shape, generator=gen)
    out = returns_to_go(poison(rewards, mask, gen), mask, gamma)
    rows = [ref_to_go([float(rewards[b, t]) for t in range(n)], gamma) for b, n in enumerate(batch["lengths"])]
    assert_close_bt(out, pad(rows, T), mask)
    # garbage in the pads changes nothing at all
    assert torch.equal(out, returns_to_go(rewards, mask, gamma))


def test_returns_to_go_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 4.0, float("nan")], [3.0, 1e9, -1e9, float("inf")]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    out = returns_to_go(rewards, mask, gamma=0.5)
    assert out.tolist() == [[1.0 + 1.0 + 1.0, 2.0 + 2.0, 4.0, 0.0], [3.0, 0.0, 0.0, 0.0]]


# ----------------------------------------------------------------------------- reinforce_pp_advantages


@pytest.mark.parametrize("gamma", [1.0, 0.9])
@pytest.mark.parametrize("G,n_groups,T", SHAPES)
def test_reinforce_pp_advantages_match_reference(gamma, G, n_groups, T):
    batch = make_batch(47 + T, G, n_groups, T)
    gen, mask = batch["gen"], batch["mask"]
    rewards = torch.randn(mask.shape, generator=gen)
    out = reinforce_pp_advantages(poison(rewards, mask, gen), mask, gamma)
    rows = [ref_to_go([float(rewards[b, t]) for t in range(n)], gamma) for b, n in enumerate(batch["lengths"])]
    assert_close_bt(out, pad(ref_whiten(rows), T), mask)


# ----------------------------------------------------------------------------- outcome_token_advantages


@pytest.mark.parametrize("gamma", [1.0, 0.9])
@pytest.mark.parametrize("beta", [0.0, 0.1])
@pytest.mark.parametrize("with_kl", [False, True])
def test_outcome_token_advantages_match_reference(gamma, beta, with_kl):
    batch = make_batch(61, 4, 3, 10)
    gen, mask = batch["gen"], batch["mask"]
    seq_adv = torch.randn(mask.shape[0], generator=gen)
    kl = torch.randn(mask.shape, generator=gen)
    out = outcome_token_advantages(seq_adv, mask, poison(kl, mask, gen) if with_kl else None, beta, gamma)
    rows = []
    for b, n in enumerate(batch["lengths"]):
        kl_part = (ref_to_go([-beta * float(kl[b, t]) for t in range(n)], gamma) if with_kl and beta > 0
                   else [0.0] * n)
        rows.append([float(seq_adv[b]) + x for x in kl_part])
    assert_close_bt(out, pad(rows, 10), mask)


# ----------------------------------------------------------------------------- kl_penalty_loss


@pytest.mark.parametrize("G,n_groups,T", SHAPES)
def test_kl_penalty_loss_value_and_gradient(G, n_groups, T):
    batch = make_batch(73 + T, G, n_groups, T)
    gen, mask = batch["gen"], batch["mask"]
    weights = torch.rand(mask.shape, generator=gen) + 0.5  # distinct upstream gradient per token
    logp = poison(batch["logp"], mask, gen).requires_grad_(True)
    ref = poison(batch["ref"], mask, gen)
    loss = kl_penalty_loss(logp, ref, mask)
    (loss * weights).sum().backward()
    val_rows, grad_rows = [], []
    for b, n in enumerate(batch["lengths"]):
        lp = [float(batch["logp"][b, t]) for t in range(n)]
        rf = [float(batch["ref"][b, t]) for t in range(n)]
        val_rows.append([math.exp(r - x) - (r - x) - 1.0 for x, r in zip(lp, rf)])
        grad_rows.append([float(weights[b, t]) * (1.0 - math.exp(rf[t] - lp[t])) for t in range(n)])
    assert_close_bt(loss.detach(), pad(val_rows, T), mask, "k3 loss")
    assert_close_bt(logp.grad, pad(grad_rows, T), mask, "d k3 / d logp")


def test_kl_penalty_loss_zero_when_policies_agree():
    logp = torch.tensor([[-0.5, -2.0, float("nan")]], requires_grad=True)
    loss = kl_penalty_loss(logp, logp.detach().clone(), torch.tensor([[1, 1, 0]]))
    loss.sum().backward()
    assert torch.equal(loss.detach(), torch.zeros(1, 3))
    assert torch.equal(logp.grad, torch.zeros(1, 3))


# ----------------------------------------------------------------------------- critic_free_targets

CASES = list(itertools.product(METHODS + ["reinforce_pp"], KL_ESTIMATORS, [True, False], [None, 1.0]))


@pytest.mark.parametrize("i,estimator,kl_estimator,kl_in_reward,penalty",
                         [(i, *case) for i, case in enumerate(CASES)])
def test_critic_free_targets_match_reference(i, estimator, kl_estimator, kl_in_reward, penalty):
    G, n_groups, T = SHAPES[i % len(SHAPES)]
    gamma = (1.0, 0.9)[i % 2]
    batch = make_batch(1000 + i, G, n_groups, T, score_kind=("gauss", "binary")[(i // 2) % 2])
    kwargs = dict(estimator=estimator, group_size=G, beta=0.1, kl_in_reward=kl_in_reward,
                  kl_estimator=kl_estimator, gamma=gamma, missing_eos_penalty=penalty)
    gen, mask = batch["gen"], batch["mask"]
    out = critic_free_targets(batch["score"], poison(batch["logp"], mask, gen), poison(batch["ref"], mask, gen),
                              mask, batch["has_eos"], **kwargs)
    exp = ref_targets(batch, estimator, G, 0.1, kl_in_reward, kl_estimator, gamma, penalty)
    assert isinstance(out, CriticFreeTargets)
    assert_close_bt(out.advantages, exp["advantages"], mask, "advantages")
    assert_close_bt(out.kl, exp["kl"], mask, "kl")
    for name in ("kl_sum", "score"):
        got = getattr(out, name)
        assert got.dtype == torch.float32 and got.shape == (mask.shape[0],), name
        torch.testing.assert_close(got.double(), exp[name], rtol=TOL, atol=TOL, msg=lambda m: f"{name}: {m}")
    assert isinstance(out.no_signal_share, float)
    assert out.no_signal_share == pytest.approx(exp["no_signal_share"], abs=1e-7)
    if estimator != "reinforce_pp":
        assert out.no_signal_share > 0  # group 0 is all-equal
        # the all-equal group's advantages are exactly 0 when nothing else is added to them
        if not kl_in_reward:
            assert (out.advantages[:G] == 0).all()
    # garbage in the pads changes nothing at all
    clean = critic_free_targets(batch["score"], batch["logp"], batch["ref"], mask, batch["has_eos"], **kwargs)
    for name in ("advantages", "kl", "kl_sum", "score"):
        assert torch.equal(getattr(out, name), getattr(clean, name)), name


@pytest.mark.parametrize("estimator", METHODS + ["reinforce_pp"])
def test_kl_in_reward_changes_the_advantages(estimator):
    """With kl_in_reward=False the KL must not reach the advantages; with True it must."""
    batch = make_batch(2000, 4, 3, 8)
    args = (batch["score"], batch["logp"], batch["ref"], batch["mask"], batch["has_eos"], estimator, 4)
    off = critic_free_targets(*args, beta=0.5, kl_in_reward=False)
    on = critic_free_targets(*args, beta=0.5, kl_in_reward=True)
    no_kl = critic_free_targets(*args, beta=0.0, kl_in_reward=True)
    assert torch.equal(off.advantages, no_kl.advantages)
    assert (on.advantages - off.advantages).abs().max() > 10 * TOL


def test_critic_free_targets_bad_batch_and_estimator():
    batch = make_batch(3000, 2, 3, 5)
    args = (batch["score"], batch["logp"], batch["ref"], batch["mask"], batch["has_eos"])
    with pytest.raises(ValueError, match="divisible"):
        critic_free_targets(*args, estimator="grpo", group_size=4, beta=0.1)
    with pytest.raises(ValueError, match="reinforce_pp"):
        critic_free_targets(*args, estimator="ppo", group_size=2, beta=0.1)


def test_reinforce_pp_batch_of_equal_returns_is_exactly_zero():
    """Every row scores 0.3 and the KL is 0: the returns are all equal, so there is nothing to
    learn; whitening would divide round-off by a zero std."""
    mask = torch.arange(7) < torch.tensor([[7], [3], [5], [1]])
    rewards = torch.where(mask & (torch.arange(7) == (mask.sum(1, keepdim=True) - 1)), 0.3, 0.0)
    from rlhf_dist.algo.estimators import reinforce_pp_advantages

    assert float(reinforce_pp_advantages(rewards.float(), mask, gamma=1.0).abs().max()) == 0.0
    assert float(reinforce_pp_advantages((rewards + 0.1 * mask).float(), mask).abs().max()) > 0.5  # unequal: whitened


def test_group_statistics_in_fp64_keep_scores_a_few_fp32_units_apart():
    """Scores 1 + k * eps32: the fp64 reference of GRPO's (s - mean) / (std + 1e-6) is far from the
    fp32 round-off an fp32 mean and std give (the eps of 1e-6 dominates, the ranking must hold)."""
    from rlhf_dist.algo.estimators import group_advantages

    eps = torch.finfo(torch.float32).eps
    score = torch.tensor([1.0, 1.0 + eps, 1.0 + 2 * eps, 1.0 + 3 * eps], dtype=torch.float32)
    adv, _ = group_advantages(score, 4, "grpo")
    s = [1.0, 1.0 + eps, 1.0 + 2 * eps, 1.0 + 3 * eps]
    mean = sum(s) / 4
    std = (sum((x - mean) ** 2 for x in s) / 3) ** 0.5
    want = [(x - mean) / (std + 1e-6) for x in s]
    assert adv.dtype == torch.float32
    assert adv.tolist() == pytest.approx(want, rel=1e-5)
