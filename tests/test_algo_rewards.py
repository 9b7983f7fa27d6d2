"""Response masks after EOS, the last token index, and KL-shaped per-token rewards, vs naive loops."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_dist.algo.rewards import last_token_index, response_mask_after_eos, token_level_rewards

EOS, PAD = 2, 0


def naive_cut(row: list[int], eos: int, pad: int) -> tuple[list[int], list[bool], bool]:
    ids, mask, seen = [], [], False
    for tok in row:
        keep = not seen and tok != pad
        ids.append(tok if keep else pad)
        mask.append(keep)
        if tok == eos:
            seen = True
    return ids, mask, eos in row


@pytest.mark.parametrize(
    "row, ids, mask, has_eos",
    [
        ([5, 6, 7, 8], [5, 6, 7, 8], [1, 1, 1, 1], False),  # no EOS: cut off by the budget
        ([EOS, 5, 6, 7], [EOS, PAD, PAD, PAD], [1, 0, 0, 0], True),  # EOS at position 0
        ([5, 6, 7, EOS], [5, 6, 7, EOS], [1, 1, 1, 1], True),  # EOS at the last position
        ([5, EOS, 6, EOS], [5, EOS, PAD, PAD], [1, 1, 0, 0], True),  # several EOS: the first counts
        ([EOS, EOS, EOS, 9], [EOS, PAD, PAD, PAD], [1, 0, 0, 0], True),
        ([5, 6, PAD, PAD], [5, 6, PAD, PAD], [1, 1, 0, 0], False),  # pads already present, no EOS
        ([5, EOS, PAD, PAD], [5, EOS, PAD, PAD], [1, 1, 0, 0], True),  # pads already present
        ([5, EOS, 7, PAD], [5, EOS, PAD, PAD], [1, 1, 0, 0], True),
    ],
)
def test_response_mask_after_eos_cases(row, ids, mask, has_eos):
    inp = torch.tensor([row])
    before = inp.clone()
    out_ids, out_mask, out_has = response_mask_after_eos(inp, EOS, PAD)
    assert out_ids.tolist() == [ids]
    assert out_mask.dtype == torch.bool and out_mask.tolist() == [[bool(m) for m in mask]]
    assert out_has.tolist() == [has_eos]
    assert torch.equal(inp, before)  # input untouched


def test_response_mask_after_eos_random_batch_vs_loop():
    gen = torch.Generator().manual_seed(0)
    B, T = 40, 9
    # tokens in {0 (PAD), 1, 2 (EOS), 3, 4, 5}; EOS frequent enough to get 0, 1 and several per row
    ids = torch.randint(1, 6, (B, T), generator=gen)
    ids[torch.rand(B, T, generator=gen) < 0.12] = EOS
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    ids[torch.arange(T).unsqueeze(0) >= lengths.unsqueeze(1)] = PAD  # some rows already right-padded
    out_ids, out_mask, out_has = response_mask_after_eos(ids, EOS, PAD)
    for b in range(B):
        e_ids, e_mask, e_has = naive_cut(ids[b].tolist(), EOS, PAD)
        assert out_ids[b].tolist() == e_ids
        assert out_mask[b].tolist() == e_mask
        assert bool(out_has[b]) == e_has
    assert (~out_has).any() and out_has.any()


def test_last_token_index():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 0, 1]
    assert last_token_index(mask.bool()).dtype == torch.long
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, 12, (30,), generator=gen)
    m = torch.arange(11).unsqueeze(0) < lengths.unsqueeze(1)
    assert last_token_index(m).tolist() == [n - 1 for n in lengths.tolist()]


def test_last_token_index_empty_row_raises():
    with pytest.raises(ValueError):
        last_token_index(torch.tensor([[1, 1, 0], [0, 0, 0]]).bool())


def _random_rollout(gen, B=8, T=10):
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[0], lengths[1] = T, 1
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    kl = 0.3 * torch.randn(B, T, generator=gen)
    garbage = torch.tensor([float("nan"), 1e30, -1e30, float("inf")])[torch.randint(0, 4, (B, T), generator=gen)]
    kl = torch.where(mask, kl, garbage)
    score = 2.0 * torch.randn(B, generator=gen)
    has_eos = torch.rand(B, generator=gen) < 0.5
    has_eos[0], has_eos[2] = False, True
    return score, kl, mask, lengths.tolist(), has_eos


def naive_rewards(score, kl, lengths, beta, has_eos=None, penalty=None):
    B, T = kl.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        L = lengths[b] - 1
        s = float(score[b])
        if penalty is not None and not bool(has_eos[b]):
            s -= penalty
        for t in range(L + 1):
            out[b, t] = -beta * float(kl[b, t])
        out[b, L] += s
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("beta", [0.0, 0.02, 0.5])
def test_token_level_rewards_match_loop(seed, beta):
    gen = torch.Generator().manual_seed(seed)
    score, kl, mask, lengths, _ = _random_rollout(gen)
    r = token_level_rewards(score, kl, mask, beta)
    assert r.dtype == torch.float32 and r.shape == kl.shape
    torch.testing.assert_close(r.double(), naive_rewards(score, kl, lengths, beta), rtol=1e-5, atol=1e-6)
    assert torch.all(r[~mask] == 0.0)  # exactly 0 after L (NaN/inf garbage in kl ignored)
    for b, n in enumerate(lengths):
        # sum_t r_t == score - beta * sum_{t <= L} kl_t
        expected = float(score[b]) - beta * math.fsum(float(kl[b, t]) for t in range(n))
        assert float(r[b].double().sum()) == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_token_level_rewards_hand_numbers():
    score = torch.tensor([1.0, -2.0])
    kl = torch.tensor([[0.5, 1.0, 2.0, float("nan")], [1.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]]).bool()
    r = token_level_rewards(score, kl, mask, beta=0.1)
    torch.testing.assert_close(r, torch.tensor([[-0.05, -0.1, -0.2 + 1.0, 0.0], [-0.1 - 2.0, 0.0, 0.0, 0.0]]))


def test_missing_eos_penalty_only_on_rows_without_eos():
    gen = torch.Generator().manual_seed(3)
    score, kl, mask, lengths, has_eos = _random_rollout(gen)
    beta, penalty = 0.05, 1.5
    plain = token_level_rewards(score, kl, mask, beta)
    pen = token_level_rewards(score, kl, mask, beta, has_eos=has_eos, missing_eos_penalty=penalty)
    torch.testing.assert_close(
        pen.double(), naive_rewards(score, kl, lengths, beta, has_eos, penalty), rtol=1e-5, atol=1e-6
    )
    diff = (pen - plain).double()
    for b, n in enumerate(lengths):
        exp_row = torch.zeros(kl.shape[1], dtype=torch.float64)
        if not bool(has_eos[b]):
            exp_row[n - 1] = -penalty
        torch.testing.assert_close(diff[b], exp_row, rtol=0, atol=1e-6)
    # has_eos without a penalty changes nothing
    torch.testing.assert_close(token_level_rewards(score, kl, mask, beta, has_eos=has_eos), plain)
    with pytest.raises(ValueError):
        token_level_rewards(score, kl, mask, beta, missing_eos_penalty=1.0)


def test_token_level_rewards_low_precision_inputs():
    gen = torch.Generator().manual_seed(4)
    score, kl, mask, lengths, _ = _random_rollout(gen)
    kl = torch.where(mask, kl, torch.zeros(()))
    r = token_level_rewards(score.bfloat16(), kl.bfloat16(), mask, 0.1)
    assert r.dtype == torch.float32
    torch.testing.assert_close(
        r.double(), naive_rewards(score.bfloat16().float(), kl.bfloat16().float(), lengths, 0.1), rtol=1e-5, atol=1e-6
    )
