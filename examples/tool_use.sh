#!/usr/bin/env bash
# The built-in task with a tool (docs/environments.md, docs/results.md "Tool use"): SFT on
# demonstrations that call the tool half of the time, then GRPO in the tool environment with the
# verifiable correctness reward, evaluated on the 500 held-out prompts against the single-turn SFT
# and PPO models of `make demo` (run it first: this reuses its base model, SFT, PPO and RM).
#
#   bash examples/tool_use.sh [OUT=runs/tools] [QUICKSTART=runs/quickstart]
set -euo pipefail
OUT=${1:-runs/tools}
Q=${2:-runs/quickstart}
BIN=${BIN:-.venv/bin}
ENV=rlhf_dist.tasks.instruct:ToolEnv

# 1. The task's data with seed 0 (the held-out prompts of `make demo`), half the demonstrations with the tool.
$BIN/rlhf-dist task-data --out "$OUT/data" tool_share=0.5
# 2. SFT from the demo's base model, with the demo's SFT settings; the loss counts the policy's turns only.
$BIN/rlhf-dist sft --config "$Q/sft/config.yaml" --out "$OUT/sft" data="$OUT/data" init="$Q/base/model" overwrite=true
# 3. GRPO in the tool environment (the compare command's grpo_correct settings, plus env=).
$BIN/rlhf-dist ppo --config configs/tiny.yaml --out "$OUT/grpo" overwrite=true sft="$OUT/sft/model" \
    reward_model="$Q/rm/model" data="$OUT/data" env=$ENV reward_source=fn \
    reward_fn=rlhf_dist.tasks.instruct:correctness ppo.advantage=grpo rollout.samples_per_prompt=4 \
    prompts_per_iteration=8 iterations=40 rollout.max_new_tokens=32 rollout.max_episode_tokens=96 eval_prompts=0
# 4. Every model on the same 500 held-out prompts, episodes in the tool environment (a model that
#    never calls the tool answers in one turn, exactly as without it), at the demo's eval settings.
$BIN/rlhf-dist eval --out "$OUT/eval" data="$OUT/data" env=$ENV prompts=500 temperature=0.5 max_new_tokens=32 \
    max_episode_tokens=96 reward_model="$Q/rm/model" models.sft="$Q/sft/model" models.ppo="$Q/ppo/model" \
    models.tool_sft="$OUT/sft/model" models.tool_grpo="$OUT/grpo/model" pretrain_texts=0
# 5. Correctness with its interval, tool-call and malformed-call rates, turns, time per iteration.
$BIN/python examples/tool_use_report.py "$OUT"
