"""Independent checks of rlhf_dist.algo.masked against naive per-row/per-position loops.

References are plain Python floats over the valid positions only; padded positions hold
garbage (huge numbers, inf, NaN) that must never reach the result.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_dist.algo.masked import masked_mean, masked_sum, masked_var, masked_whiten

GARBAGE = (float("nan"), 1e30, -1e30, float("inf"), 12345.0)


def random_padded(gen: torch.Generator, B: int = 7, T: int = 9, loc: float = 0.0, scale: float = 1.0):
    """Right-padded batch: random lengths in [1, T] (one full row, one length-1 row), garbage at pads."""
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[0] = T
    lengths[1] = 1
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    x = loc + scale * torch.randn(B, T, generator=gen)
    pick = torch.randint(0, len(GARBAGE), (B, T), generator=gen)
    garbage = torch.tensor(GARBAGE)[pick]
    x = torch.where(mask, x, garbage)
    return x, mask, lengths.tolist()


def valid_values(x: torch.Tensor, lengths: list[int]) -> list[list[float]]:
    return [[float(x[b, t]) for t in range(n)] for b, n in enumerate(lengths)]


def naive_mean(vals: list[float]) -> float:
    return math.fsum(vals) / len(vals)


def naive_var(vals: list[float], unbiased: bool) -> float:
    m = naive_mean(vals)
    ss = math.fsum((v - m) ** 2 for v in vals)
    return ss / (len(vals) - 1 if unbiased else len(vals))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_sum_and_mean_match_loops(seed):
    gen = torch.Generator().manual_seed(seed)
    x, mask, lengths = random_padded(gen)
    rows = valid_values(x, lengths)
    flat = [v for row in rows for v in row]

    total = masked_sum(x, mask)
    assert torch.isfinite(total)
    assert float(total) == pytest.approx(math.fsum(flat), rel=1e-5, abs=1e-5)
    per_row = masked_sum(x, mask, dim=1)
    assert per_row.shape == (x.shape[0],)
    torch.testing.assert_close(per_row, torch.tensor([math.fsum(r) for r in rows]), rtol=1e-5, atol=1e-5)

    mean = masked_mean(x, mask)
    assert float(mean) == pytest.approx(naive_mean(flat), rel=1e-5, abs=1e-6)
    row_means = masked_mean(x, mask, dim=1)
    torch.testing.assert_close(row_means, torch.tensor([naive_mean(r) for r in rows]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.long, torch.float32])
def test_masked_mean_accepts_0_1_masks(mask_dtype):
    gen = torch.Generator().manual_seed(3)
    x, mask, lengths = random_padded(gen)
    flat = [v for row in valid_values(x, lengths) for v in row]
    m = mask.to(mask_dtype)
    assert float(masked_mean(x, m)) == pytest.approx(naive_mean(flat), rel=1e-5, abs=1e-6)
    assert float(masked_var(x, m, unbiased=True)) == pytest.approx(naive_var(flat, True), rel=1e-5, abs=1e-6)


def test_masked_mean_hand_numbers():
    x = torch.tensor([[1.0, 2.0, 3.0, float("nan")], [10.0, float("inf"), -float("inf"), 7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]]).bool()
    assert float(masked_sum(x, mask)) == 16.0
    assert float(masked_mean(x, mask)) == 4.0
    assert masked_mean(x, mask, dim=1).tolist() == [2.0, 10.0]
    # var over {1, 2, 3, 10}: mean 4, squared deviations 9 + 4 + 1 + 36 = 50
    assert float(masked_var(x, mask, unbiased=False)) == pytest.approx(50 / 4, abs=1e-6)
    assert float(masked_var(x, mask, unbiased=True)) == pytest.approx(50 / 3, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("unbiased", [False, True])
def test_masked_var_matches_loop(seed, unbiased):
    gen = torch.Generator().manual_seed(seed)
    x, mask, lengths = random_padded(gen, loc=3.0, scale=2.0)
    flat = [v for row in valid_values(x, lengths) for v in row]
    var = masked_var(x, mask, unbiased=unbiased)
    assert var.dim() == 0
    assert float(var) == pytest.approx(naive_var(flat, unbiased), rel=1e-5, abs=1e-6)


def test_masked_var_unbiased_needs_two_tokens():
    x = torch.tensor([[5.0, float("nan"), 1e30]])
    mask = torch.tensor([[True, False, False]])
    with pytest.raises(ValueError):
        masked_var(x, mask, unbiased=True)
    assert float(masked_var(x, mask, unbiased=False)) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_masked_whiten_shift_mean_true(seed):
    """Zero mean over valid tokens (|.| < 1e-6) and UNBIASED variance 1 (biased = (n-1)/n)."""
    gen = torch.Generator().manual_seed(seed)
    x, mask, lengths = random_padded(gen, loc=5.0, scale=3.0)
    w = masked_whiten(x, mask, shift_mean=True)
    assert w.shape == x.shape
    assert torch.all(w[~mask] == 0.0)  # exactly zero, no NaN leaking from the pads
    assert torch.isfinite(w).all()

    flat = [v for row in valid_values(x, lengths) for v in row]
    n = len(flat)
    m, var_u = naive_mean(flat), naive_var(flat, unbiased=True)
    expected = torch.zeros_like(x)
    for b, L in enumerate(lengths):
        for t in range(L):
            expected[b, t] = (float(x[b, t]) - m) / math.sqrt(var_u + 1e-8)
    torch.testing.assert_close(w, expected, rtol=1e-5, atol=1e-5)

    out = [v for row in valid_values(w, lengths) for v in row]
    assert abs(naive_mean(out)) < 1e-6
    assert naive_var(out, unbiased=True) == pytest.approx(1.0, abs=1e-5)
    assert naive_var(out, unbiased=False) == pytest.approx((n - 1) / n, abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_whiten_shift_mean_false_keeps_mean(seed):
    """shift_mean=False (reward whitening): the mean is preserved, only the spread is rescaled."""
    gen = torch.Generator().manual_seed(seed)
    x, mask, lengths = random_padded(gen, loc=4.0, scale=0.5)
    w = masked_whiten(x, mask, shift_mean=False)
    assert torch.all(w[~mask] == 0.0)
    flat = [v for row in valid_values(x, lengths) for v in row]
    m, var_u = naive_mean(flat), naive_var(flat, unbiased=True)
    out = [v for row in valid_values(w, lengths) for v in row]
    assert naive_mean(out) == pytest.approx(m, abs=1e-5)
    assert abs(m) > 1.0  # so keeping vs removing the mean is distinguishable
    assert naive_var(out, unbiased=True) == pytest.approx(1.0, abs=1e-5)
    for b, L in enumerate(lengths):
        for t in range(L):
            exp = (float(x[b, t]) - m) / math.sqrt(var_u + 1e-8) + m
            assert float(w[b, t]) == pytest.approx(exp, rel=1e-5, abs=1e-5)


def test_masked_whiten_shift_flag_meaning_hand_numbers():
    # valid {1, 2, 3}: mean 2, unbiased var 1 -> whitened {-1, 0, 1}
    x = torch.tensor([[1.0, 2.0, float("nan")], [3.0, -1e30, 1e30]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    w = masked_whiten(x, mask, shift_mean=True, eps=0.0)
    assert w.tolist() == [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    w = masked_whiten(x, mask, shift_mean=False, eps=0.0)
    assert w.tolist() == [[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]]


def test_masked_mean_gradient_ignores_nan_pads():
    gen = torch.Generator().manual_seed(7)
    x, mask, lengths = random_padded(gen)
    x = x.clone().requires_grad_(True)
    masked_mean(x, mask).backward()
    n = sum(lengths)
    expected = torch.where(mask, torch.full_like(x, 1.0 / n), torch.zeros_like(x))
    assert torch.equal(torch.isnan(x.grad), torch.zeros_like(mask))
    torch.testing.assert_close(x.grad, expected, rtol=1e-6, atol=1e-7)
