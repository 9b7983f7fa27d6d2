"""Masked reductions and whitening over the valid tokens of a padded batch."""

from __future__ import annotations

import torch


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `x` where `mask` is set. x, mask: (B, T). dim=None sums everything."""
    x = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over positions where `mask` is set. x, mask: (B, T) -> scalar, or (B,) with dim=1.

    Padded positions never enter the result, whatever value they hold (NaN included).
    """
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.to(x.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `x` over all valid positions (one number). x, mask: (B, T) -> scalar.

    unbiased=True applies Bessel's correction n/(n-1), as TRL's `masked_var` does; it needs
    at least two valid tokens.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n < 2:
            raise ValueError(f"masked_var(unbiased=True) needs at least 2 valid elements, got {int(n)}")
        var = var * n / (n - 1)
    return var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Whiten `x` with the mean and (unbiased) variance of its valid positions. x, mask: (B, T) -> (B, T).

    shift_mean=True gives zero mean and unit variance over valid tokens (TRL/OpenAI semantics;
    used for advantages). shift_mean=False keeps the original mean and only rescales (used for
    rewards). Note torchtune's `whiten` means the opposite by the same flag. Padded positions
    come out as exactly 0.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros((), dtype=x.dtype, device=x.device))
