"""GAE against an O(T^2) reference A_t = sum_l (gamma*lam)^l delta_{t+l}, with V = 0 after L."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_dist.algo.gae import gae_advantages
from tests.conftest import with_garbage


def random_batch(gen, B=6, T=11):
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[0], lengths[1] = T, 1
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    rewards = torch.randn(B, T, generator=gen)
    values = 2.0 * torch.randn(B, T, generator=gen)
    return rewards, values, mask, lengths.tolist()


def reference_gae(rewards, values, lengths, gamma, lam):
    """O(T^2) per row, plain floats. V_t = 0 for t >= L+1 (terminal at L)."""
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    ret = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        n = lengths[b]
        r = [float(rewards[b, t]) for t in range(n)]
        v = [float(values[b, t]) for t in range(n)] + [0.0]
        delta = [r[t] + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            a = math.fsum((gamma * lam) ** l * delta[t + l] for l in range(n - t))
            adv[b, t] = a
            ret[b, t] = a + v[t]
    return adv, ret


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.99, 0.95), (0.9, 0.5), (1.0, 1.0), (1.0, 0.0), (0.8, 1.0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_matches_quadratic_reference(gamma, lam, seed):
    gen = torch.Generator().manual_seed(seed)
    rewards, values, mask, lengths = random_batch(gen)
    adv, ret = gae_advantages(with_garbage(rewards, mask, gen), with_garbage(values, mask, gen), mask, gamma, lam)
    assert adv.dtype == torch.float32 and ret.dtype == torch.float32
    e_adv, e_ret = reference_gae(rewards, values, lengths, gamma, lam)
    torch.testing.assert_close(adv.double(), e_adv, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ret.double(), e_ret, rtol=1e-5, atol=1e-5)
    assert torch.all(adv[~mask] == 0.0) and torch.all(ret[~mask] == 0.0)


def test_lambda_zero_gives_td_error():
    gen = torch.Generator().manual_seed(5)
    rewards, values, mask, lengths = random_batch(gen)
    gamma = 0.97
    adv, ret = gae_advantages(rewards, values, mask, gamma=gamma, lam=0.0)
    for b, n in enumerate(lengths):
        for t in range(n):
            v_next = float(values[b, t + 1]) if t + 1 < n else 0.0
            delta = float(rewards[b, t]) + gamma * v_next - float(values[b, t])
            assert float(adv[b, t]) == pytest.approx(delta, abs=1e-5)
            assert float(ret[b, t]) == pytest.approx(float(rewards[b, t]) + gamma * v_next, abs=1e-5)


def test_gamma_lambda_one_gives_monte_carlo_return_minus_value():
    gen = torch.Generator().manual_seed(6)
    rewards, values, mask, lengths = random_batch(gen)
    adv, ret = gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    for b, n in enumerate(lengths):
        for t in range(n):
            g = math.fsum(float(rewards[b, k]) for k in range(t, n))
            assert float(adv[b, t]) == pytest.approx(g - float(values[b, t]), abs=1e-5)
            assert float(ret[b, t]) == pytest.approx(g, abs=1e-5)
        # the return at position 0 is the whole (KL-shaped) episode return
        assert float(ret[b, 0]) == pytest.approx(math.fsum(float(rewards[b, k]) for k in range(n)), abs=1e-5)


def test_last_token_is_terminal():
    """A_L = r_L - V_L for any lambda, gamma: no bootstrap past L."""
    gen = torch.Generator().manual_seed(7)
    rewards, values, mask, lengths = random_batch(gen)
    adv, _ = gae_advantages(with_garbage(rewards, mask, gen), with_garbage(values, mask, gen), mask, 0.99, 0.95)
    for b, n in enumerate(lengths):
        assert float(adv[b, n - 1]) == pytest.approx(float(rewards[b, n - 1]) - float(values[b, n - 1]), abs=1e-6)


def test_hand_numbers():
    # one row, L = 2; r = [0, 0, 1], V = [0.5, 0.25, 0.5]; gamma = 1, lam = 0.5
    # delta = [0 + 0.25 - 0.5, 0 + 0.5 - 0.25, 1 + 0 - 0.5] = [-0.25, 0.25, 0.5]
    # A_2 = 0.5, A_1 = 0.25 + 0.5 * 0.5 = 0.5, A_0 = -0.25 + 0.5 * 0.5 = 0
    rewards = torch.tensor([[0.0, 0.0, 1.0, 123.0]])
    values = torch.tensor([[0.5, 0.25, 0.5, -55.0]])
    mask = torch.tensor([[True, True, True, False]])
    adv, ret = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.5, 0.5, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.5, 0.75, 1.0, 0.0]]))


@pytest.mark.parametrize("seed", [0, 1])
def test_tail_invariance(seed):
    """Garbage (NaN, inf, 1e30) in r and V after L changes nothing at all."""
    gen = torch.Generator().manual_seed(seed)
    rewards, values, mask, _ = random_batch(gen)
    clean_r = torch.where(mask, rewards, torch.zeros(()))
    clean_v = torch.where(mask, values, torch.zeros(()))
    a0, r0 = gae_advantages(clean_r, clean_v, mask, 1.0, 0.95)
    for _ in range(3):
        a1, r1 = gae_advantages(with_garbage(rewards, mask, gen), with_garbage(values, mask, gen), mask, 1.0, 0.95)
        assert torch.equal(a0, a1) and torch.equal(r0, r1)


def test_batched_equals_per_row():
    gen = torch.Generator().manual_seed(8)
    rewards, values, mask, lengths = random_batch(gen, B=7, T=9)
    rewards, values = with_garbage(rewards, mask, gen), with_garbage(values, mask, gen)
    adv, ret = gae_advantages(rewards, values, mask, 0.99, 0.9)
    for b, n in enumerate(lengths):
        # the row alone, unpadded
        a_row, r_row = gae_advantages(rewards[b : b + 1, :n], values[b : b + 1, :n], mask[b : b + 1, :n], 0.99, 0.9)
        torch.testing.assert_close(adv[b, :n], a_row[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ret[b, :n], r_row[0], rtol=1e-6, atol=1e-6)


def test_low_precision_inputs_upcast():
    gen = torch.Generator().manual_seed(9)
    rewards, values, mask, lengths = random_batch(gen)
    adv, ret = gae_advantages(rewards.bfloat16(), values.bfloat16(), mask, 1.0, 0.95)
    assert adv.dtype == torch.float32
    e_adv, e_ret = reference_gae(rewards.bfloat16().float(), values.bfloat16().float(), lengths, 1.0, 0.95)
    torch.testing.assert_close(adv.double(), e_adv, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ret.double(), e_ret, rtol=1e-5, atol=1e-5)
