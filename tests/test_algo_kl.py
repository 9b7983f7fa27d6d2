"""KL estimators (hand values, naive math, Monte Carlo against the closed form) and KL controllers."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_dist.algo.kl import AdaptiveKLController, FixedKLController, kl_estimate, make_kl_controller


def naive_k(logp: float, ref_logp: float, kind: str) -> float:
    log_r = ref_logp - logp  # log pi_ref(y) - log pi(y)
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r**2
    return (math.exp(log_r) - 1.0) - log_r


def test_kl_estimate_hand_values():
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-2.0, -1.0, -0.5]])
    # log r = ref - logp = [-1, 1, 0]
    torch.testing.assert_close(kl_estimate(logp, ref, "k1"), torch.tensor([[1.0, -1.0, 0.0]]))
    torch.testing.assert_close(kl_estimate(logp, ref, "k2"), torch.tensor([[0.5, 0.5, 0.0]]))
    k3 = kl_estimate(logp, ref, "k3")
    torch.testing.assert_close(k3, torch.tensor([[math.exp(-1.0), math.e - 2.0, 0.0]]), rtol=1e-6, atol=1e-7)
    # default is k1
    torch.testing.assert_close(kl_estimate(logp, ref), kl_estimate(logp, ref, "k1"))


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_estimate_matches_naive_on_random_batch(kind):
    gen = torch.Generator().manual_seed(0)
    logp = -3.0 * torch.rand(4, 7, generator=gen)
    ref = -3.0 * torch.rand(4, 7, generator=gen)
    out = kl_estimate(logp, ref, kind)
    assert out.shape == logp.shape and out.dtype == torch.float32
    exp = torch.tensor([[naive_k(float(a), float(b), kind) for a, b in zip(r1, r2)] for r1, r2 in zip(logp, ref)])
    torch.testing.assert_close(out, exp, rtol=1e-5, atol=1e-6)
    # bf16 inputs are upcast
    out_bf = kl_estimate(logp.bfloat16(), ref.bfloat16(), kind)
    assert out_bf.dtype == torch.float32
    torch.testing.assert_close(out_bf, kl_estimate(logp.bfloat16().float(), ref.bfloat16().float(), kind))


def test_kl_estimate_unknown_kind_raises():
    with pytest.raises(ValueError):
        kl_estimate(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_estimate_zero_when_policies_equal(kind):
    gen = torch.Generator().manual_seed(1)
    logp = -5.0 * torch.rand(3, 6, generator=gen)
    assert torch.all(kl_estimate(logp, logp.clone(), kind) == 0.0)


def test_k3_nonnegative_and_precise_when_close():
    gen = torch.Generator().manual_seed(2)
    logp = -4.0 * torch.rand(2000, generator=gen).view(40, 50)
    ref = logp + 3.0 * torch.randn(40, 50, generator=gen)
    assert torch.all(kl_estimate(logp, ref, "k3") >= 0)
    assert torch.all(kl_estimate(logp, ref, "k2") >= 0)
    # tiny differences: k3 ~ (log r)^2 / 2, no cancellation to a negative number or 0
    d = 1e-3
    k3 = float(kl_estimate(torch.tensor([[0.0]]), torch.tensor([[d]]), "k3"))
    assert k3 == pytest.approx(math.expm1(d) - d, rel=1e-2)


def _categorical(gen, n=10, spread=1.0):
    return torch.softmax(spread * torch.randn(n, generator=gen, dtype=torch.float64), dim=0)


def _mc_stats(pi, ref, gen, N=200_000):
    y = torch.multinomial(pi, N, replacement=True, generator=gen)
    logp = torch.log(pi)[y].float().view(400, N // 400)
    ref_logp = torch.log(ref)[y].float().view(400, N // 400)
    stats = {}
    for kind in ("k1", "k2", "k3"):
        k = kl_estimate(logp, ref_logp, kind).double().flatten()
        stats[kind] = (float(k.mean()), float(k.std()), float(k.std()) / math.sqrt(N))
    return stats, logp, ref_logp


def _kl(p, q):
    return math.fsum(float(a) * math.log(float(a) / float(b)) for a, b in zip(p, q))


def test_monte_carlo_close_policies():
    """pi and ref close (KL ~ 0.05): k1, k3 unbiased within 4 SE, k3 >= 0, sd(k3) < sd(k1)."""
    gen = torch.Generator().manual_seed(1234)
    pi = _categorical(gen)
    ref = torch.softmax(torch.log(pi) + 0.35 * torch.randn(10, generator=gen, dtype=torch.float64), dim=0)
    true_kl = _kl(pi, ref)
    stats, logp, ref_logp = _mc_stats(pi, ref, gen)
    for kind in ("k1", "k3"):
        mean, _, se = stats[kind]
        assert abs(mean - true_kl) < 4 * se, (kind, mean, true_kl, se)
    assert stats["k3"][1] < stats["k1"][1]
    assert torch.all(kl_estimate(logp, ref_logp, "k3") >= 0)
    assert stats["k2"][0] > 0


def test_monte_carlo_direction_is_kl_pi_to_ref():
    """An asymmetric pair: the estimators target KL(pi || ref), not KL(ref || pi); k2 is biased."""
    gen = torch.Generator().manual_seed(99)
    pi = _categorical(gen, spread=1.5)
    ref = torch.softmax(0.5 * torch.log(pi), dim=0)  # a flatter reference
    true_kl, reverse_kl = _kl(pi, ref), _kl(ref, pi)
    stats, _, _ = _mc_stats(pi, ref, gen)
    for kind in ("k1", "k3"):
        mean, _, se = stats[kind]
        assert abs(mean - true_kl) < 4 * se, (kind, mean, true_kl, se)
        assert abs(mean - reverse_kl) > 10 * se, (kind, mean, reverse_kl, se)
    mean2, _, se2 = stats["k2"]
    assert abs(mean2 - true_kl) > 10 * se2  # k2 is biased


def test_fixed_controller_is_noop():
    c = FixedKLController(0.02)
    for kl in (0.0, 5.0, 1e6):
        c.update(kl, 512)
    assert c.beta == 0.02


def test_adaptive_controller_hand_numbers():
    # OpenAI 2019: beta 0.15, target 6, horizon 10000; batches of 512 episodes
    cases = [
        (6.0, 0.15),  # on target: unchanged
        (6.6, 0.15 * (1 + 0.1 * 512 / 10000)),  # +10%
        (5.4, 0.15 * (1 - 0.1 * 512 / 10000)),  # -10%
        (9.0, 0.15 * (1 + 0.2 * 512 / 10000)),  # +50% clipped to +20%
        (100.0, 0.15 * (1 + 0.2 * 512 / 10000)),
        (0.0, 0.15 * (1 - 0.2 * 512 / 10000)),  # -100% clipped to -20%
        (3.0, 0.15 * (1 - 0.2 * 512 / 10000)),  # -50% clipped to -20%
    ]
    for kl, expected in cases:
        c = AdaptiveKLController(0.15, 6.0, 10000)
        c.update(kl, 512)
        assert c.beta == pytest.approx(expected, rel=1e-12, abs=0), kl


def test_adaptive_controller_compounds_and_uses_n_steps():
    c = AdaptiveKLController(beta=1.0, target=2.0, horizon=100)
    c.update(3.0, 10)  # error +0.5 -> +0.2; factor 1 + 0.2 * 0.1 = 1.02
    assert c.beta == pytest.approx(1.02)
    c.update(1.9, 50)  # error -0.05; factor 1 - 0.05 * 0.5 = 0.975
    assert c.beta == pytest.approx(1.02 * 0.975)
    c.update(0.0, 100)  # error -1 -> -0.2; factor 0.8
    assert c.beta == pytest.approx(1.02 * 0.975 * 0.8)


def test_make_kl_controller():
    fixed = make_kl_controller(0.02)
    assert isinstance(fixed, FixedKLController) and fixed.beta == 0.02
    adaptive = make_kl_controller(0.15, target=6.0)
    assert isinstance(adaptive, AdaptiveKLController)
    assert (adaptive.beta, adaptive.target, adaptive.horizon) == (0.15, 6.0, 10000.0)
    custom = make_kl_controller(0.1, target=1.0, horizon=500)
    assert isinstance(custom, AdaptiveKLController) and custom.horizon == 500
