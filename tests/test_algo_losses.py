"""PPO policy/value losses, the LM loss, and loss aggregation over micro-batches and DP ranks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rlhf_dist.algo.logprobs import logprobs_from_logits
from rlhf_dist.algo.losses import aggregate_loss, global_normalizer, lm_loss, policy_loss, value_loss
from tests.conftest import with_garbage


def padded_mask(lengths, T):
    return torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


# --------------------------------------------------------------------------- policy loss


def test_policy_loss_four_quadrants_hand_numbers():
    eps = 0.2
    A = torch.tensor([[2.0, 2.0, -2.0, -2.0, 2.0, -1.0]])
    ratio = torch.tensor([[1.5, 0.5, 1.5, 0.5, 1.1, 0.9]])
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -1.5, -0.7]])
    logp = (old + torch.log(ratio)).requires_grad_(True)
    mask = torch.ones_like(A, dtype=torch.bool)
    loss, stats = policy_loss(logp, old, A, mask, clip_eps=eps)
    # A>0, rho>1+eps: max(-3, -2.4) = -2.4 (clipped)   | A>0, rho<1-eps: max(-1, -1.6) = -1
    # A<0, rho>1+eps: max(3, 2.4) = 3                   | A<0, rho<1-eps: max(1, 1.6) = 1.6 (clipped)
    # inside the range: -A * rho
    torch.testing.assert_close(loss.detach(), torch.tensor([[-2.4, -1.0, 3.0, 1.6, -2.2, 0.9]]), rtol=1e-6, atol=1e-6)
    assert float(stats["clipfrac"]) == pytest.approx(2 / 6, abs=1e-7)
    loss.sum().backward()
    # d(-A rho)/dlogp = -A rho where the unclipped branch is active, exactly 0 where clipping is active
    expected_grad = torch.tensor([[0.0, -1.0, 3.0, 0.0, -2.2, 0.9]])
    torch.testing.assert_close(logp.grad, expected_grad, rtol=1e-6, atol=1e-6)
    assert logp.grad[0, 0] == 0.0 and logp.grad[0, 3] == 0.0
    assert torch.all(logp.grad[0, [1, 2, 4, 5]] != 0.0)
    r = ratio[0].double()
    exp_kl = float(((r - 1) - torch.log(r)).mean())
    assert float(stats["approx_kl"]) == pytest.approx(exp_kl, rel=1e-5)
    assert float(stats["ratio_mean"]) == pytest.approx(float(r.mean()), rel=1e-5)
    assert float(stats["ratio_max"]) == pytest.approx(1.5, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_policy_loss_gradient_zero_exactly_when_clipped(seed):
    gen = torch.Generator().manual_seed(seed)
    n = 400
    old = -3.0 * torch.rand(1, n, generator=gen)
    log_ratio = 0.6 * torch.randn(1, n, generator=gen)
    A = torch.randn(1, n, generator=gen)
    logp = (old + log_ratio).requires_grad_(True)
    eps = 0.2
    loss, _ = policy_loss(logp, old, A, torch.ones(1, n, dtype=torch.bool), clip_eps=eps)
    loss.sum().backward()
    ratio = torch.exp(log_ratio.double())
    a = A.double()
    clipped = ((a > 0) & (ratio > 1 + eps)) | ((a < 0) & (ratio < 1 - eps))
    assert clipped.sum() > 20 and (~clipped).sum() > 20
    assert torch.all(logp.grad[clipped] == 0.0)
    assert torch.all(logp.grad[~clipped & (a != 0)] != 0.0)
    # unclipped: gradient of -A * rho wrt logp is -A * rho
    torch.testing.assert_close(logp.grad[~clipped].double(), (-a * ratio)[~clipped], rtol=1e-5, atol=1e-6)


def naive_policy(logp, old, A, lengths, eps, eps_high):
    B, T = logp.shape
    loss = torch.zeros(B, T, dtype=torch.float64)
    n_clip, kls, ratios = 0, [], []
    for b in range(B):
        for t in range(lengths[b]):
            lr = float(logp[b, t]) - float(old[b, t])
            rho = math.exp(lr)
            a = float(A[b, t])
            unc = -a * rho
            clp = -a * min(max(rho, 1 - eps), 1 + eps_high)
            loss[b, t] = max(unc, clp)
            n_clip += clp > unc
            kls.append((rho - 1) - lr)
            ratios.append(rho)
    n = len(kls)
    return loss, n_clip / n, math.fsum(kls) / n, math.fsum(ratios) / n, max(ratios)


@pytest.mark.parametrize("eps_high", [None, 0.28])
@pytest.mark.parametrize("seed", [0, 1])
def test_policy_loss_random_padded_batch_vs_loop(seed, eps_high):
    gen = torch.Generator().manual_seed(seed)
    B, T = 6, 10
    lengths = torch.randint(1, T + 1, (B,), generator=gen).tolist()
    lengths[0] = T
    mask = padded_mask(lengths, T)
    old = -4.0 * torch.rand(B, T, generator=gen)
    logp = old + 0.4 * torch.randn(B, T, generator=gen)
    A = torch.randn(B, T, generator=gen)
    # garbage at the pads must not reach any statistic
    logp_g, old_g, A_g = (with_garbage(x, mask, gen) for x in (logp, old, A))
    loss, stats = policy_loss(logp_g, old_g, A_g, mask, clip_eps=0.2, clip_eps_high=eps_high)
    e_loss, e_cf, e_kl, e_rm, e_rmax = naive_policy(logp, old, A, lengths, 0.2, 0.2 if eps_high is None else eps_high)
    torch.testing.assert_close(loss[mask].double(), e_loss[mask], rtol=1e-5, atol=1e-5)
    assert float(stats["clipfrac"]) == pytest.approx(e_cf, abs=1e-6)
    assert 0 < e_cf < 1
    assert float(stats["approx_kl"]) == pytest.approx(e_kl, rel=1e-4, abs=1e-6)
    assert float(stats["ratio_mean"]) == pytest.approx(e_rm, rel=1e-5)
    assert float(stats["ratio_max"]) == pytest.approx(e_rmax, rel=1e-5)
    # aggregated forward value ignores the garbage too
    agg = aggregate_loss(loss, mask)
    assert float(agg) == pytest.approx(float(e_loss[mask].mean()), rel=1e-5, abs=1e-6)


def test_policy_loss_ratio_one():
    gen = torch.Generator().manual_seed(3)
    logp = -3.0 * torch.rand(4, 6, generator=gen)
    A = torch.randn(4, 6, generator=gen)
    mask = padded_mask([6, 3, 1, 5], 6)
    loss, stats = policy_loss(logp, logp.clone(), A, mask)
    assert float(stats["clipfrac"]) == 0.0
    assert float(stats["approx_kl"]) == 0.0
    assert float(stats["ratio_mean"]) == 1.0 and float(stats["ratio_max"]) == 1.0
    torch.testing.assert_close(loss[mask], -A[mask])
    assert torch.all(loss[~mask] == 0), "padded positions are zeroed before the loss"


def test_policy_loss_asymmetric_clip_high():
    eps, eps_high = 0.2, 0.28
    A = torch.tensor([[1.0, 1.0, -1.0, -1.0, 1.0]])
    ratio = torch.tensor([[1.25, 1.3, 0.75, 1.3, 0.7]])
    old = torch.zeros(1, 5)
    logp = torch.log(ratio).requires_grad_(True)
    loss, stats = policy_loss(logp, old, A, torch.ones(1, 5, dtype=torch.bool), clip_eps=eps, clip_eps_high=eps_high)
    # 1.25 < 1 + 0.28: not clipped (would be with symmetric eps); 1.3 > 1.28: clipped at 1.28;
    # the low side still clips at 1 - 0.2 = 0.8 (A < 0, rho = 0.75 -> 0.8)
    torch.testing.assert_close(loss.detach(), torch.tensor([[-1.25, -1.28, 0.8, 1.3, -0.7]]), rtol=1e-6, atol=1e-6)
    assert float(stats["clipfrac"]) == pytest.approx(2 / 5)
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.25, 0.0, 0.0, 1.3, -0.7]]), rtol=1e-6, atol=1e-6)
    # symmetric eps clips the first token
    sym, sym_stats = policy_loss(logp.detach(), old, A, torch.ones(1, 5, dtype=torch.bool), clip_eps=eps)
    assert float(sym[0, 0]) == pytest.approx(-1.2) and float(sym_stats["clipfrac"]) == pytest.approx(3 / 5)


def test_policy_loss_gradient_zero_at_padded_positions():
    gen = torch.Generator().manual_seed(4)
    mask = padded_mask([5, 2, 4], 5)
    old = torch.where(mask, -2.0 * torch.rand(3, 5, generator=gen), 50.0 * torch.randn(3, 5, generator=gen))
    A = torch.where(mask, torch.randn(3, 5, generator=gen), 1e3 * torch.randn(3, 5, generator=gen))
    logp = (-2.0 * torch.rand(3, 5, generator=gen)).requires_grad_(True)
    loss, _ = policy_loss(logp, old, A, mask)
    aggregate_loss(loss, mask).backward()
    assert torch.all(logp.grad[~mask] == 0.0)
    assert torch.isfinite(logp.grad).all()


def test_policy_loss_gradient_nan_safe_at_padded_positions():
    """NaN/inf garbage at the pads of old_logp / advantages (e.g. engine logprobs left unfilled) must not
    turn the gradient into NaN: the aggregated loss masks the pads in the forward pass, and the
    backward pass must not multiply 0 by NaN there either."""
    gen = torch.Generator().manual_seed(5)
    mask = padded_mask([5, 2, 4], 5)
    old = with_garbage(-2.0 * torch.rand(3, 5, generator=gen), mask, gen)
    A = with_garbage(torch.randn(3, 5, generator=gen), mask, gen)
    logp = (-2.0 * torch.rand(3, 5, generator=gen)).requires_grad_(True)
    loss, _ = policy_loss(logp, old, A, mask)
    aggregate_loss(loss, mask).backward()
    assert torch.isfinite(logp.grad).all(), logp.grad
    assert torch.all(logp.grad[~mask] == 0.0)


# --------------------------------------------------------------------------- value loss


def test_value_loss_hand_numbers():
    eps = 0.2
    V = torch.tensor([[1.0, 1.0, 0.6, -1.0]])
    V_old = torch.tensor([[0.5, 0.5, 0.5, 0.0]])
    R = torch.tensor([[0.0, 2.0, 2.0, -3.0]])
    # clip(V) = [0.7, 0.7, 0.6, -0.2]
    # unclipped (V-R)^2 = [1, 1, 1.96, 4]; clipped = [0.49, 1.69, 1.96, 7.84]
    values = V.clone().requires_grad_(True)
    mask = torch.ones_like(V, dtype=torch.bool)
    loss, stats = value_loss(values, V_old, R, mask, clip_eps=eps)
    torch.testing.assert_close(loss.detach(), torch.tensor([[0.5, 0.845, 0.98, 3.92]]), rtol=1e-6, atol=1e-6)
    assert float(stats["vf_clipfrac"]) == pytest.approx(0.5)
    loss.sum().backward()
    # unclipped branch: d/dV 0.5 (V-R)^2 = V - R; clipped branch with a saturated clamp: 0
    torch.testing.assert_close(values.grad, torch.tensor([[1.0, 0.0, -1.4, 0.0]]), rtol=1e-6, atol=1e-6)


def test_value_loss_no_clip():
    V = torch.tensor([[1.0, 1.0, -1.0]])
    V_old = torch.tensor([[0.5, 0.5, 0.0]])
    R = torch.tensor([[0.0, 2.0, -3.0]])
    loss, stats = value_loss(V, V_old, R, torch.ones(1, 3, dtype=torch.bool), clip_eps=None)
    torch.testing.assert_close(loss, torch.tensor([[0.5, 0.5, 2.0]]))
    assert float(stats["vf_clipfrac"]) == 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_value_loss_random_padded_batch_vs_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    B, T, eps = 5, 8, 0.2
    lengths = torch.randint(1, T + 1, (B,), generator=gen).tolist()
    mask = padded_mask(lengths, T)
    V_old = torch.randn(B, T, generator=gen)
    V = V_old + 0.4 * torch.randn(B, T, generator=gen)
    R = V_old + torch.randn(B, T, generator=gen)
    loss, stats = value_loss(with_garbage(V, mask, gen), with_garbage(V_old, mask, gen), with_garbage(R, mask, gen), mask, eps)
    n_clip, n = 0, 0
    for b in range(B):
        for t in range(lengths[b]):
            v, vo, r = float(V[b, t]), float(V_old[b, t]), float(R[b, t])
            vc = vo + min(max(v - vo, -eps), eps)
            unc, clp = (v - r) ** 2, (vc - r) ** 2
            assert float(loss[b, t]) == pytest.approx(0.5 * max(unc, clp), rel=1e-5, abs=1e-6)
            n_clip += clp > unc
            n += 1
    assert float(stats["vf_clipfrac"]) == pytest.approx(n_clip / n, abs=1e-6)
    assert 0 < n_clip < n


def test_value_clipfrac_zero_when_no_token_leaves_the_clip_range():
    """V and V_old differ by more than 2x but |V - V_old| < eps everywhere: nothing is clipped.

    The old statistic compared (V_old + (V - V_old) - R)^2 with (V - R)^2 and counted the 1-ulp
    rounding of V_old + (V - V_old) as clipping (86 of these 16384 tokens).
    """
    gen = torch.Generator().manual_seed(0)
    B, T, eps = 64, 256, 0.2
    V_old = 0.01 + 0.05 * torch.rand(B, T, generator=gen)
    V = V_old * (2.5 + torch.rand(B, T, generator=gen))
    R = torch.randn(B, T, generator=gen)
    assert ((V - V_old).abs() < eps).all() and (V > 2 * V_old).all()
    loss, stats = value_loss(V, V_old, R, torch.ones(B, T, dtype=torch.bool), clip_eps=eps)
    assert float(stats["vf_clipfrac"]) == 0.0
    torch.testing.assert_close(loss, 0.5 * (V - R) ** 2)  # the loss is the unclipped one (to rounding)


def test_value_clipfrac_closed_form_count():
    """vf_clipfrac counts tokens where the clip bound (|V - V_old| > eps, strictly) AND the clipped
    branch is the larger one (so the token gets no value gradient); padding never counts."""
    eps = 0.25
    #                     inside inside above above below edge  inside | padding (garbage, far out)
    V_old = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 0.5, 0.01, 0.0, 0.0]])
    V = torch.tensor([[0.125, -0.125, 1.0, 1.0, -1.0, 0.75, 0.05, 9.0, -9.0]])
    R = torch.tensor([[5.0, -5.0, 2.0, 0.0, -3.0, -4.0, 0.1, 9.0, -9.0]])
    mask = torch.tensor([[True] * 7 + [False] * 2])
    # clip(V) = [0.125, -0.125, 0.25, 0.25, 0.75, 0.75, 0.05]
    # token 2: (0.25 - 2)^2 = 3.0625 > (1 - 2)^2 = 1      -> counted
    # token 3: (0.25 - 0)^2 = 0.0625 < (1 - 0)^2 = 1      -> clip bound, unclipped branch used: not counted
    # token 4: (0.75 + 3)^2 = 14.0625 > (-1 + 3)^2 = 4    -> counted
    # tokens 0, 1 inside the range, token 5 exactly on its edge (|V - V_old| == eps): not counted
    # token 6 inside (|0.05 - 0.01| < eps), but in fp32 0.01 + (0.05 - 0.01) is 0.05 - 1 ulp, which is
    #   farther from R = 0.1: the old statistic counted it
    loss, stats = value_loss(V, V_old, R, mask, clip_eps=eps)
    assert round(float(stats["vf_clipfrac"]) * 7, 4) == 2
    exp = 0.5 * torch.tensor([23.765625, 23.765625, 3.0625, 1.0, 14.0625, 22.5625, 0.0025])
    torch.testing.assert_close(loss[mask], exp, rtol=1e-6, atol=0)


def test_value_loss_gradient_nan_safe_at_padded_positions():
    gen = torch.Generator().manual_seed(6)
    mask = padded_mask([4, 1, 3], 4)
    V_old = with_garbage(torch.randn(3, 4, generator=gen), mask, gen)
    R = with_garbage(torch.randn(3, 4, generator=gen), mask, gen)
    V = torch.randn(3, 4, generator=gen).requires_grad_(True)
    loss, stats = value_loss(V, V_old, R, mask, clip_eps=0.2)
    assert torch.isfinite(stats["vf_clipfrac"])
    aggregate_loss(loss, mask).backward()
    assert torch.isfinite(V.grad).all(), V.grad
    assert torch.all(V.grad[~mask] == 0.0)


# --------------------------------------------------------------------------- LM loss


def test_lm_loss_equals_naive_nll_and_ignores_pads():
    gen = torch.Generator().manual_seed(0)
    B, T, V = 3, 6, 9
    lengths = [6, 2, 4]
    mask = padded_mask(lengths, T)
    logits = 2.0 * torch.randn(B, T, V, generator=gen)
    labels = torch.randint(0, V, (B, T), generator=gen)
    logits_g = torch.where(mask.unsqueeze(-1), logits, torch.full_like(logits, float("nan")))
    nll = lm_loss(logits_g, labels, mask)
    assert nll.dtype == torch.float32
    assert torch.all(nll[~mask] == 0.0)
    for b in range(B):
        for t in range(lengths[b]):
            row = [float(v) for v in logits[b, t]]
            m = max(row)
            lse = m + math.log(math.fsum(math.exp(v - m) for v in row))
            assert float(nll[b, t]) == pytest.approx(lse - row[int(labels[b, t])], rel=1e-5, abs=1e-5)
    # aggregated = cross-entropy with the pads ignored
    ce = F.cross_entropy(logits.double().reshape(-1, V), torch.where(mask, labels, -100).reshape(-1), ignore_index=-100)
    assert float(aggregate_loss(nll, mask)) == pytest.approx(float(ce), rel=1e-5)
    # pad labels do not matter
    other = torch.where(mask, labels, (labels + 3) % V)
    assert torch.equal(lm_loss(logits_g, other, mask), nll)


# --------------------------------------------------------------------------- aggregation


def test_aggregate_loss_hand_numbers():
    loss = torch.tensor([[1.0, 2.0, 3.0, float("nan")], [4.0, float("nan"), 1e30, float("inf")]])
    mask = padded_mask([3, 1], 4)
    assert float(aggregate_loss(loss, mask)) == pytest.approx(10 / 4)
    assert float(aggregate_loss(loss, mask, "token_mean", normalizer=5.0)) == pytest.approx(2.0)
    assert float(aggregate_loss(loss, mask, "seq_mean_token_mean")) == pytest.approx((2.0 + 4.0) / 2)
    assert float(aggregate_loss(loss, mask, "seq_mean_token_mean", normalizer=4.0)) == pytest.approx(6.0 / 4)
    with pytest.raises(ValueError):
        aggregate_loss(loss, mask, "sum")
    assert global_normalizer(100) == 100
    assert global_normalizer(100, dp_size=2) == 50
    assert global_normalizer(100, dp_size=2, engine_grad_divisor=4) == 12.5


class _TinyPolicy:
    """Per-token PPO loss of a linear 'LM' with weights W: a real autograd graph to differentiate."""

    def __init__(self, seed=0, B=8, T=9, D=4, V=7):
        gen = torch.Generator().manual_seed(seed)
        self.W = (0.5 * torch.randn(D, V, generator=gen)).requires_grad_(True)
        self.X = torch.randn(B, T, D, generator=gen)
        self.tokens = torch.randint(0, V, (B, T), generator=gen)
        with torch.no_grad():
            lp = logprobs_from_logits(self.X @ self.W, self.tokens)
        self.old = lp + 0.3 * torch.randn(B, T, generator=gen)
        self.adv = torch.randn(B, T, generator=gen)
        # very different lengths so that micro-batch means are visibly wrong
        self.lengths = [9, 1, 2, 9, 3, 8, 1, 6]
        self.mask = padded_mask(self.lengths, T)

    def token_loss(self, rows):
        logp = logprobs_from_logits(self.X[rows] @ self.W, self.tokens[rows])
        loss, _ = policy_loss(logp, self.old[rows], self.adv[rows], self.mask[rows])
        return loss

    def grad(self, scalar):
        self.W.grad = None
        scalar.backward()
        return self.W.grad.clone()


RANKS = [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]  # 2 ranks x 2 micro-batches of rows


def _dp_accumulate(model, mb_loss, engine_divisor=1):
    """Each rank sums its micro-batch gradients (each loss divided by the engine divisor); all-reduce averages."""
    per_rank = []
    for micro_batches in RANKS:
        model.W.grad = None
        for rows in micro_batches:
            (mb_loss(rows) / engine_divisor).backward()
        per_rank.append(model.W.grad.clone())
    return torch.stack(per_rank).mean(0)


@pytest.mark.parametrize("engine_divisor", [1, 2])  # 1: plain DDP; 2: DeepSpeed divides by grad-accum steps
def test_token_mean_accumulated_gradient_equals_full_batch(engine_divisor):
    model = _TinyPolicy()
    all_rows = list(range(8))
    full = model.token_loss(all_rows)
    g_full = model.grad(full[model.mask].mean())  # reference: plain mean over valid tokens
    n_tokens = int(model.mask.sum())
    norm = global_normalizer(n_tokens, dp_size=2, engine_grad_divisor=engine_divisor)

    def mb_loss(rows):
        return aggregate_loss(model.token_loss(rows), model.mask[rows], "token_mean", normalizer=norm)

    g = _dp_accumulate(model, mb_loss, engine_divisor)
    torch.testing.assert_close(g, g_full, rtol=1e-6, atol=1e-6)

    # a naive per-micro-batch token mean gives a different gradient (so this test can fail)
    def naive(rows):
        return aggregate_loss(model.token_loss(rows), model.mask[rows], "token_mean")

    g_naive = _dp_accumulate(model, naive, engine_divisor=2)  # mean over micro-batches and ranks
    assert (g_naive - g_full).abs().max() > 1e-3


@pytest.mark.parametrize("engine_divisor", [1, 2])
def test_seq_mean_token_mean_accumulated_gradient_equals_full_batch(engine_divisor):
    model = _TinyPolicy(seed=1)
    full = model.token_loss(list(range(8)))
    seq_means = torch.stack([full[b, :n].mean() for b, n in enumerate(model.lengths)])
    g_full = model.grad(seq_means.mean())
    norm = global_normalizer(8, dp_size=2, engine_grad_divisor=engine_divisor)

    def mb_loss(rows):
        return aggregate_loss(model.token_loss(rows), model.mask[rows], "seq_mean_token_mean", normalizer=norm)

    g = _dp_accumulate(model, mb_loss, engine_divisor)
    torch.testing.assert_close(g, g_full, rtol=1e-6, atol=1e-6)
    # and it really differs from the token mean
    full = model.token_loss(list(range(8)))
    g_tok = model.grad(full[model.mask].mean())
    assert (g_tok - g_full).abs().max() > 1e-3


def test_default_normalizer_is_the_local_count():
    model = _TinyPolicy(seed=2)
    rows = [1, 2, 4]
    with torch.no_grad():
        loss = model.token_loss(rows)
    m = model.mask[rows]
    assert float(aggregate_loss(loss, m)) == pytest.approx(float(loss[m].mean()), rel=1e-6)
    per_seq = [float(loss[i, : model.lengths[r]].mean()) for i, r in enumerate(rows)]
    assert float(aggregate_loss(loss, m, "seq_mean_token_mean")) == pytest.approx(sum(per_seq) / 3, rel=1e-6)
