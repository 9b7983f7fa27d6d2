"""Truncated importance weights of stale rows against a per-token Python loop."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_dist.algo import truncated_is_weights


def _reference(old, behaviour, lengths, stale, cap):
    weights, capped, stale_w = [], 0, []
    for b, n in enumerate(lengths):
        row = []
        for t in range(len(old[b])):
            if t >= n:
                row.append(0.0)
            elif not stale[b]:
                row.append(1.0)
            else:
                w = math.exp(old[b][t] - behaviour[b][t])
                capped += w > cap
                row.append(min(w, cap))
                stale_w.append(row[-1])
        weights.append(row)
    total = sum(lengths)
    return weights, capped / total, (sum(stale_w) / len(stale_w) if stale_w else 1.0)


@pytest.mark.parametrize("seed", range(4))
def test_truncated_is_weights_match_a_token_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    B, T, cap = 7, 9, [1.0, 1.5, 2.0, 5.0][seed]
    lengths = torch.randint(1, T + 1, (B,), generator=gen).tolist()
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    old = torch.randn(B, T, generator=gen) - 2.0
    behaviour = old + 0.8 * torch.randn(B, T, generator=gen)
    old[~mask] = float("nan")  # padding garbage must not reach the weights
    behaviour[~mask] = 1e9
    stale = torch.rand(B, generator=gen) < 0.6
    stale[0], stale[1] = True, False
    w, stats = truncated_is_weights(old, behaviour, mask, stale, cap)
    ref_w, ref_capped, ref_mean = _reference(old.tolist(), behaviour.tolist(), lengths, stale.tolist(), cap)
    torch.testing.assert_close(w, torch.tensor(ref_w), atol=1e-6, rtol=1e-5)
    assert not w.requires_grad
    assert stats["offpolicy/capped_share"] == pytest.approx(ref_capped, abs=1e-9)
    assert stats["offpolicy/is_weight_mean"] == pytest.approx(ref_mean, rel=1e-5)
    assert stats["offpolicy/stale_rows"] == pytest.approx(sum(stale.tolist()) / B)
    if cap == 1.0:
        assert ref_capped > 0  # the cap is exercised


def test_no_stale_rows_give_unit_weights():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    w, stats = truncated_is_weights(torch.zeros(2, 3), torch.full((2, 3), -3.0), mask, torch.tensor([False, False]), 2.0)
    assert torch.equal(w, mask.float())
    assert stats == {"offpolicy/stale_rows": 0.0, "offpolicy/is_weight_mean": 1.0, "offpolicy/capped_share": 0.0}
