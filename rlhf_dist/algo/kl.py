"""KL estimators and KL-coefficient controllers.

Estimators follow J. Schulman, "Approximating KL Divergence" (2020): with samples y ~ pi and
log r = log pi_ref(y) - log pi(y),
  k1 = -log r                 unbiased, high variance, can be negative;
  k2 = (log r)^2 / 2          biased, low variance, >= 0;
  k3 = (r - 1) - log r        unbiased, low variance, >= 0.
All estimate KL(pi || pi_ref) per token; their sum over a response estimates the sequence KL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate from the sampled tokens' log-probs. (B, T), (B, T) -> (B, T)."""
    log_ratio = logp.float() - ref_logp.float()  # log pi - log pi_ref = -log r
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        # torch.expm1 keeps precision when the policies are close (r - 1 ~ 0).
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; expected one of {KL_ESTIMATORS}")


@dataclass
class FixedKLController:
    """A constant KL coefficient beta (InstructGPT: 0.02)."""

    beta: float

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: a fixed coefficient does not adapt."""


@dataclass
class AdaptiveKLController:
    """Adaptive beta from Ziegler et al. 2019 (arXiv 1909.08593, section 2.2).

    beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon), where KL is the
    mean per-sequence KL of the last batch and n_steps the number of samples (episodes) in it.
    OpenAI 2019 used beta=0.15, target=6, horizon=10000.
    """

    beta: float
    target: float
    horizon: float

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + proportional_error * n_steps / self.horizon


def make_kl_controller(
    beta: float, target: float | None = None, horizon: float = 10000.0
) -> FixedKLController | AdaptiveKLController:
    """A fixed controller when `target` is None, else the adaptive one."""
    if target is None:
        return FixedKLController(beta)
    return AdaptiveKLController(beta, target, horizon)
