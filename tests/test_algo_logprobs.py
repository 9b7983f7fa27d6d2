"""Independent checks of rlhf_dist.algo.logprobs against naive float64 math over the vocabulary."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_dist.algo.logprobs import entropy_from_logits, logprobs_from_logits


def naive_log_softmax(row: list[float], temperature: float) -> list[float]:
    z = [v / temperature for v in row]
    m = max(z)
    lse = m + math.log(math.fsum(math.exp(v - m) for v in z if v != -math.inf))
    return [v - lse for v in z]


def naive_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    B, T, _ = logits.shape
    out = torch.empty(B, T, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            row = [float(v) for v in logits[b, t].double()]
            out[b, t] = naive_log_softmax(row, temperature)[int(tokens[b, t])]
    return out


def naive_entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    B, T, _ = logits.shape
    out = torch.empty(B, T, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            lp = naive_log_softmax([float(v) for v in logits[b, t].double()], temperature)
            # 0 * log 0 = 0
            out[b, t] = -math.fsum(math.exp(v) * v for v in lp if v != -math.inf)
    return out


def make(gen, B=3, T=5, V=11, scale=3.0):
    logits = scale * torch.randn(B, T, V, generator=gen)
    tokens = torch.randint(0, V, (B, T), generator=gen)
    return logits, tokens


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
@pytest.mark.parametrize("seed", [0, 1])
def test_logprobs_match_naive_log_softmax(temperature, seed):
    gen = torch.Generator().manual_seed(seed)
    logits, tokens = make(gen)
    lp = logprobs_from_logits(logits, tokens, temperature=temperature)
    assert lp.dtype == torch.float32 and lp.shape == tokens.shape
    torch.testing.assert_close(lp.double(), naive_logprobs(logits, tokens, temperature), rtol=1e-5, atol=1e-5)


def test_temperature_actually_changes_the_result():
    gen = torch.Generator().manual_seed(5)
    logits, tokens = make(gen)
    lp1 = logprobs_from_logits(logits, tokens, 1.0)
    lp07 = logprobs_from_logits(logits, tokens, 0.7)
    assert (lp1 - lp07).abs().max() > 1e-2
    # T = 0.7 is the same as T = 1 on logits / 0.7
    torch.testing.assert_close(lp07, logprobs_from_logits(logits / 0.7, tokens, 1.0), rtol=1e-5, atol=1e-5)


def test_logprobs_large_logits_are_stable():
    gen = torch.Generator().manual_seed(2)
    logits, tokens = make(gen, scale=1.0)
    logits = logits + 500.0  # a huge common offset must not overflow
    logits[0, 0, 3] = 900.0
    tokens[0, 0] = 3
    lp = logprobs_from_logits(logits, tokens, 0.7)
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(lp.double(), naive_logprobs(logits, tokens, 0.7), rtol=1e-5, atol=1e-4)


def test_logprobs_normalised_over_vocab():
    gen = torch.Generator().manual_seed(3)
    logits, _ = make(gen, B=2, T=3, V=7)
    for temperature in (1.0, 0.5):
        total = torch.zeros(2, 3, dtype=torch.float64)
        for v in range(7):
            total += logprobs_from_logits(logits, torch.full((2, 3), v), temperature).double().exp()
        torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_low_precision_path_equals_fp32_path_on_upcast_values(dtype, temperature):
    gen = torch.Generator().manual_seed(4)
    logits, tokens = make(gen, B=4, T=6, V=13)
    low = logits.to(dtype)
    lp_low = logprobs_from_logits(low, tokens, temperature)
    assert lp_low.dtype == torch.float32
    lp_up = logprobs_from_logits(low.float(), tokens, temperature)
    torch.testing.assert_close(lp_low, lp_up, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lp_low.double(), naive_logprobs(low.float(), tokens, temperature), rtol=1e-5, atol=1e-5)
    ent_low = entropy_from_logits(low, temperature)
    assert ent_low.dtype == torch.float32
    torch.testing.assert_close(ent_low.double(), naive_entropy(low.float(), temperature), rtol=1e-5, atol=1e-5)


def test_float64_input_gives_fp32_output_close_to_float64_math():
    gen = torch.Generator().manual_seed(6)
    logits, tokens = make(gen)
    lp = logprobs_from_logits(logits.double(), tokens, 0.8)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp.double(), naive_logprobs(logits, tokens, 0.8), rtol=1e-6, atol=2e-6)


def test_logprob_gradient_closed_form():
    """d log softmax(z/T)_y / dz_v = (1[v = y] - p_v) / T."""
    gen = torch.Generator().manual_seed(8)
    logits, tokens = make(gen, B=2, T=3, V=5)
    T = 0.7
    z = logits.clone().requires_grad_(True)
    logprobs_from_logits(z, tokens, T).sum().backward()
    for b in range(2):
        for t in range(3):
            lp = naive_log_softmax([float(v) for v in logits[b, t]], T)
            for v in range(5):
                exp = ((1.0 if v == int(tokens[b, t]) else 0.0) - math.exp(lp[v])) / T
                assert float(z.grad[b, t, v]) == pytest.approx(exp, abs=1e-5)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_non_positive_temperature_raises(bad):
    logits = torch.zeros(1, 2, 3)
    with pytest.raises(ValueError):
        logprobs_from_logits(logits, torch.zeros(1, 2, dtype=torch.long), bad)
    with pytest.raises(ValueError):
        entropy_from_logits(logits, bad)


@pytest.mark.parametrize("temperature", [1.0, 0.6, 2.0])
def test_entropy_matches_naive(temperature):
    gen = torch.Generator().manual_seed(9)
    logits, _ = make(gen, scale=4.0)
    ent = entropy_from_logits(logits, temperature)
    assert ent.dtype == torch.float32 and ent.shape == logits.shape[:2]
    torch.testing.assert_close(ent.double(), naive_entropy(logits, temperature), rtol=1e-5, atol=1e-5)


def test_entropy_extremes():
    V = 8
    uniform = torch.zeros(1, 1, V)
    assert float(entropy_from_logits(uniform)) == pytest.approx(math.log(V), abs=1e-6)
    peaked = torch.zeros(1, 1, V)
    peaked[0, 0, 2] = 200.0  # p ~ 1 with other probabilities ~ e^-200 (log 0 territory in fp32)
    ent = entropy_from_logits(peaked)
    assert torch.isfinite(ent).all() and abs(float(ent)) < 1e-6


def test_entropy_with_masked_vocabulary_entries():
    """-inf logits (p = 0 exactly, e.g. a masked/padded vocabulary) contribute 0 * log 0 = 0."""
    logits = torch.tensor([[[float("-inf"), 0.0, 1.0, float("-inf")]]])
    ent = entropy_from_logits(logits)
    torch.testing.assert_close(ent.double(), naive_entropy(logits, 1.0), rtol=1e-6, atol=1e-6)
    # logprobs are fine with -inf logits
    lp = logprobs_from_logits(logits, torch.tensor([[2]]))
    assert float(lp) == pytest.approx(1.0 - math.log(1.0 + math.e), abs=1e-6)


def naive_entropy_grad(row: list[float], temperature: float) -> list[float]:
    """dH/dz_v = -p_v (log p_v + H) / T, and 0 where p_v = 0."""
    lp = naive_log_softmax(row, temperature)
    H = -math.fsum(math.exp(v) * v for v in lp if v != -math.inf)
    return [0.0 if v == -math.inf else -math.exp(v) * (v + H) / temperature for v in lp]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_entropy_gradient_closed_form(temperature):
    gen = torch.Generator().manual_seed(10)
    logits, _ = make(gen, B=2, T=3, V=6)
    z = logits.clone().requires_grad_(True)
    entropy_from_logits(z, temperature).sum().backward()
    for b in range(2):
        for t in range(3):
            exp = naive_entropy_grad([float(v) for v in logits[b, t]], temperature)
            torch.testing.assert_close(z.grad[b, t].double(), torch.tensor(exp, dtype=torch.float64), rtol=1e-5, atol=1e-6)


def test_entropy_gradient_with_masked_vocabulary_entries():
    """An entropy bonus on a -inf-masked vocabulary: finite gradient, 0 on the masked entries."""
    logits = torch.tensor([[[float("-inf"), 0.0, 1.0, 2.0], [0.5, float("-inf"), -1.0, 3.0]]])
    z = logits.clone().requires_grad_(True)
    entropy_from_logits(z).sum().backward()
    for t in range(2):
        exp = naive_entropy_grad([float(v) for v in logits[0, t]], 1.0)
        torch.testing.assert_close(z.grad[0, t].double(), torch.tensor(exp, dtype=torch.float64), rtol=1e-5, atol=1e-6)
