"""What a PPO learner rank computes on its micro-batches: the policy and the critic, each in its own
DeepSpeed engine (separate networks, as in N+ (Huang et al. 2024, arXiv 2403.17031); the critic starts from the RM,
InstructGPT C.4).

Micro-batches are Arrow trajectory tables (rlhf_dist.buffer), converted to padded tensors here.
Losses are token sums divided by the normaliser of the whole minibatch (global valid-token count
over all ranks / (ranks x accumulation): rlhf_dist.algo.losses.global_normalizer), so the summed
gradient is the gradient of the full-minibatch token mean whatever the split. Statistics come
back as sums (or maxima, for keys ending in `_max`) that add up exactly over micro-batches and
ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import pyarrow as pa
import torch

from rlhf_dist.algo import (
    aggregate_loss,
    entropy_from_logits,
    kl_penalty_loss,
    lm_loss,
    logprobs_from_logits,
    masked_sum,
    policy_loss,
    value_loss,
)
from rlhf_dist.buffer import TrajectoryTensors, per_token_column, to_padded
from rlhf_dist.models.forward import by_length, response_logits

def train_columns(cfg: "PPOLossConfig", table: pa.Table) -> list[str]:
    """The per-token columns a PPO micro-step reads from its rows."""
    return (["old_logprobs", "advantages"] + (["values", "returns"] if cfg.critic else [])
            + (["ref_logprobs"] if cfg.kl_loss_coef else []) + (["is_weights"] if "is_weights" in table.column_names else []))


@dataclass(frozen=True)
class PPOLossConfig:
    """What the learner's loss reads: the loss fields of the algorithm config (`PPOAlgoConfig`,
    same names) and the sampling temperature that divides every log-prob's logits."""

    temperature: float = 1.0
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    value_clip: float | None = 0.2
    vf_coef: float = 1.0
    entropy_coef: float = 0.0
    ptx_coef: float = 0.0
    kl_loss_coef: float = 0.0  # beta of the k3 KL(pi || ref) loss term (ppo.kl_penalty=loss)
    critic: bool = True  # GAE trains a critic; the critic-free estimators build none
    forward_max_tokens: int = 0  # learner.forward_max_tokens (0: one forward per micro-batch)

    @classmethod
    def from_config(cls, algo, temperature: float, ptx: bool, learner=None) -> "PPOLossConfig":
        """Derived from a `PPOAlgoConfig` by field name; `ptx_coef` is 0 when the run has no ptx data;
        `forward_max_tokens` from the `LearnerConfig`, 0 under ZeRO-3, whose every forward gathers the
        parameters collectively: the ranks must make the same number of forward calls."""
        derived = ("temperature", "ptx_coef", "kl_loss_coef", "critic", "forward_max_tokens")
        names = [f.name for f in fields(cls) if f.name not in derived]
        budget = learner.forward_max_tokens if learner is not None and learner.zero_stage != 3 else 0
        return cls(temperature=temperature, ptx_coef=algo.ptx_coef if ptx else 0.0,
                   kl_loss_coef=algo.kl_coef if algo.kl_penalty == "loss" else 0.0, critic=algo.has_critic,
                   forward_max_tokens=budget, **{n: getattr(algo, n) for n in names})


def policy_forward(policy, t: TrajectoryTensors, temperature: float, with_entropy: bool = False, entropy_grad: bool = False,
                   max_tokens: int = 0):
    """log pi_T of each response token (B, T) fp32, and optionally the entropy of pi_T (B, T),
    differentiable only with `entropy_grad` (an entropy bonus; otherwise it is a statistic).
    `max_tokens`: rows forwarded in length-sorted groups of at most that many padded tokens (`by_length`)."""

    def forward(b):
        logits = response_logits(policy, b)
        logp = logprobs_from_logits(logits, b.response_ids, temperature)
        if not with_entropy:
            return logp, None
        if entropy_grad:
            return logp, entropy_from_logits(logits, temperature)
        with torch.no_grad():
            return logp, entropy_from_logits(logits.detach(), temperature)

    return by_length(forward, t, max_tokens)


def critic_forward(critic, t: TrajectoryTensors, max_tokens: int = 0) -> torch.Tensor:
    """V(s_t) for each response token: the critic's output at the state BEFORE y_t, i.e. at column
    P + t - 1 (TRL/N+: `full_value[:, context_length - 1 : -1]`). (B, T) fp32. `max_tokens`: as in
    `policy_forward`."""

    def forward(b):
        values = critic(b.input_ids, b.attention_mask, b.position_ids)
        P, T = b.prompt_len, b.response_mask.shape[1]
        return (values[:, P - 1 : P + T - 1].float(),)

    return by_length(forward, t, max_tokens)[0]


def _as_columns(parts: Sequence[tuple], lengths: Sequence) -> tuple[pa.Array, ...]:
    """Per micro-batch (log-probs, entropy, values) (B, T) tensors -> three list<float32> arrays in row
    order (values None without a critic)."""
    cols = []
    for k in range(3):
        if parts and parts[0][k] is None:
            cols.append(None)
            continue
        chunks = [per_token_column(p[k].detach(), n) for p, n in zip(parts, lengths)]
        cols.append(pa.chunked_array(chunks, type=pa.list_(pa.float32())).combine_chunks())
    return tuple(cols)


def old_logprobs_and_values(policy, critic, micro_tables: Sequence[pa.Table], pad_id: int, temperature: float,
                            device, max_tokens: int = 0) -> tuple[pa.Array, pa.Array, pa.Array]:
    """For every row: log pi_old of the response tokens, V_old, and the policy's entropy, as
    list<float32> arrays in row order. "Old" = the weights before this iteration's PPO epochs:
    recomputed here rather than taken from vLLM (verl/OpenRLHF default; the vLLM gap is logged)."""
    with torch.no_grad():
        (logp, entropy, values), _ = _trajectory_forwards(policy, critic, micro_tables, pad_id, temperature, False,
                                                          max_tokens, device)
    return logp, values, entropy


def kept_forwards(policy, critic, micro_tables: Sequence[pa.Table], pad_id: int, cfg: "PPOLossConfig",
                  device) -> tuple[tuple[pa.Array, pa.Array, pa.Array], list[tuple]]:
    """`old_logprobs_and_values` computed WITH the autograd graph, which is kept for the update.

    With one PPO epoch, one minibatch and one micro-batch per rank, the first (and only) update
    forwards exactly these rows with exactly these weights, so its forward pass is this one: the
    log-probs before the update ARE the log-probs of the update's forward, detached (ratio 1 up to
    nothing, since Llama has no dropout). `ppo_micro_step(..., forwards=kept[i])` then skips its
    two forwards: one policy and one critic forward less per iteration. -> (the three arrays as
    `old_logprobs_and_values` returns them, [(logp, entropy, values) (B, T) with graphs] per
    micro-batch)."""
    (logp, entropy, values), kept = _trajectory_forwards(policy, critic, micro_tables, pad_id, cfg.temperature,
                                                         bool(cfg.entropy_coef), cfg.forward_max_tokens, device)
    return (logp, values, entropy), kept


def _trajectory_forwards(policy, critic, micro_tables: Sequence[pa.Table], pad_id: int, temperature: float,
                         entropy_grad: bool, max_tokens: int, device) -> tuple[tuple, list[tuple]]:
    """Policy (log-probs, entropy) and critic forwards of each micro-batch. -> (the three list<float32>
    columns in row order (values None without a critic), [(logp, entropy, values) (B, T)] per micro-batch)."""
    parts, lengths = [], []
    for table in micro_tables:
        t = to_padded(table, pad_id, columns=[]).to(device)
        logp, entropy = policy_forward(policy, t, temperature, with_entropy=True, entropy_grad=entropy_grad,
                                       max_tokens=max_tokens)
        parts.append((logp, entropy, critic_forward(critic, t, max_tokens) if critic is not None else None))
        lengths.append(t.response_mask.sum(1).cpu().numpy())
    return _as_columns(parts, lengths), parts


def ppo_micro_step(policy_engine, critic_engine, table: pa.Table, ptx_batch: dict | None, pad_id: int,
                   token_normalizer: float, ptx_normalizer: float, cfg: PPOLossConfig, device,
                   forwards: tuple | None = None) -> dict[str, float]:
    """Forward + backward of one micro-batch through both engines (optimizer steps happen at the
    accumulation boundary, inside `TrainEngine.micro_step`). `forwards`: this micro-batch's
    (logp, entropy, values) from `kept_forwards`, used instead of forwarding again. An
    `is_weights` column (truncated importance weights of stale rows, rlhf_dist.algo.offpolicy)
    multiplies each token's policy loss. Returns additive statistics."""
    t = to_padded(table, pad_id, columns=train_columns(cfg, table)).to(device)
    mask = t.loss_mask  # the policy's tokens: an episode's observation tokens are context, not targets
    n_tokens = mask.sum().item()
    c = t.columns

    # Policy: clipped surrogate (+ entropy bonus) on the trajectories, + gamma * ptx NLL
    # (InstructGPT eq. 2; one backward of the sum = the two gradients accumulated).
    if forwards is None:
        logp, entropy = policy_forward(policy_engine.engine, t, cfg.temperature, with_entropy=True,
                                       entropy_grad=bool(cfg.entropy_coef), max_tokens=cfg.forward_max_tokens)
    else:
        logp, entropy, kept_values = forwards
    pg_tokens, pg_stats = policy_loss(logp, c["old_logprobs"], c["advantages"], mask, cfg.clip_eps, cfg.clip_eps_high)
    if "is_weights" in c:  # decoupled PPO: the clipped surrogate of pi_theta / pi_old, weighted by pi_old / pi_behaviour
        pg_tokens = pg_tokens * c["is_weights"]
    pg = aggregate_loss(pg_tokens, mask, "token_mean", token_normalizer)
    total = pg
    if cfg.entropy_coef:
        total = total - cfg.entropy_coef * aggregate_loss(entropy, mask, "token_mean", token_normalizer)
    if cfg.kl_loss_coef:  # GRPO's KL term (Shao et al. 2024, eq. 4): k3 estimate of KL(pi_theta || pi_ref) per token
        kl_tokens = kl_penalty_loss(logp, c["ref_logprobs"], mask)
        total = total + cfg.kl_loss_coef * aggregate_loss(kl_tokens, mask, "token_mean", token_normalizer)
    stats = {
        "tokens": n_tokens,
        "pg_loss_sum": masked_sum(pg_tokens, mask).item(),
        "clipfrac_sum": pg_stats["clipfrac"].item() * n_tokens,
        "approx_kl_sum": pg_stats["approx_kl"].item() * n_tokens,
        "ratio_sum": pg_stats["ratio_mean"].item() * n_tokens,
        "ratio_max": pg_stats["ratio_max"].item(),
        "ratio_dev_max": torch.where(mask, (logp.detach() - c["old_logprobs"]).exp().sub(1).abs(), 0.0).max().item(),
        "entropy_sum": masked_sum(entropy.detach(), mask).item(),
    }
    if ptx_batch is not None and cfg.ptx_coef:
        ptx = {k: (v.to(device) if v is not None else None) for k, v in ptx_batch.items()}
        logits = policy_engine.engine(input_ids=ptx["input_ids"], attention_mask=ptx["attention_mask"],
                                      position_ids=ptx["position_ids"], use_cache=False).logits
        nll = lm_loss(logits, ptx["labels"], ptx["loss_mask"])
        nll_sum = masked_sum(nll, ptx["loss_mask"])
        total = total + cfg.ptx_coef * nll_sum / ptx_normalizer
        stats["ptx_nll_sum"] = nll_sum.item()
        stats["ptx_tokens"] = float(ptx["loss_mask"].sum())
    if cfg.kl_loss_coef:
        stats["kl_loss_sum"] = masked_sum(kl_tokens.detach(), mask).item()
    policy_engine.micro_step(total)
    if critic_engine is None:
        return stats

    # Critic: clipped value loss against the GAE returns.
    v = critic_forward(critic_engine.engine, t, cfg.forward_max_tokens) if forwards is None else kept_values
    vf_tokens, vf_stats = value_loss(v, c["values"], c["returns"], mask, cfg.value_clip)
    critic_engine.micro_step(cfg.vf_coef * aggregate_loss(vf_tokens, mask, "token_mean", token_normalizer))
    stats["vf_loss_sum"] = masked_sum(vf_tokens, mask).item()
    stats["vf_clipfrac_sum"] = vf_stats["vf_clipfrac"].item() * n_tokens
    return stats


def sum_stats(parts: Sequence[dict]) -> dict[str, float]:
    """Add statistics over micro-batches or ranks; keys ending in `_max` take the maximum."""
    out: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            if k.endswith("_max"):
                out[k] = max(out.get(k, float("-inf")), v)
            else:
                out[k] = out.get(k, 0.0) + v
    return out


def learner_metrics(steps: Sequence[dict]) -> dict[str, float]:
    """One iteration's learner metrics from its PPO steps' statistics: token means over all steps
    (cleanrl's names: approx_kl, clipfrac), plus the first minibatch's on-policy check (ratio 1 and
    clip fraction 0 when sampling and training weights are the same: docs/ppo-details.md item 37)."""
    tok = sum(s["tokens"] for s in steps)
    first = steps[0]
    m = {
        "loss/policy": sum(s["pg_loss_sum"] for s in steps) / tok,

        "policy/approx_kl": sum(s["approx_kl_sum"] for s in steps) / tok,
        "policy/clipfrac": sum(s["clipfrac_sum"] for s in steps) / tok,
        "policy/ratio_mean": sum(s["ratio_sum"] for s in steps) / tok,
        "policy/ratio_max": max(s["ratio_max"] for s in steps),
        "policy/entropy": sum(s["entropy_sum"] for s in steps) / tok,

        "policy/first_minibatch_ratio_dev_max": first["ratio_dev_max"],
        "policy/first_minibatch_clipfrac": first["clipfrac_sum"] / first["tokens"],
        "policy/lr": steps[-1]["policy_lr_max"],
    }
    if "vf_loss_sum" in first:  # with a critic
        m.update({"loss/value": sum(s["vf_loss_sum"] for s in steps) / tok,
                  "value/clipfrac": sum(s["vf_clipfrac_sum"] for s in steps) / tok, "value/lr": steps[-1]["critic_lr_max"]})
    if "kl_loss_sum" in first:
        m["loss/kl"] = sum(s["kl_loss_sum"] for s in steps) / tok
    if "ptx_tokens" in first:
        m["ptx/nll"] = sum(s["ptx_nll_sum"] for s in steps) / sum(s["ptx_tokens"] for s in steps)
    for name in ("policy_grad_norm_max", "critic_grad_norm_max"):
        if name in first:
            m[f"{name.split('_')[0]}/grad_norm"] = sum(s[name] for s in steps) / len(steps)
    return m
