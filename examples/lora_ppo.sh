#!/usr/bin/env bash
# PPO with LoRA on the built-in task (docs/lora.md, docs/results.md "LoRA"): the demo's PPO run
# (its SFT, RM and settings) with rank-16 adapters on every linear layer of the policy and the
# critic, at five learning rates, and the full fine-tuning run of `make demo` beside them on the
# 500 held-out prompts (run `make demo` first: this reuses its SFT, RM and PPO models).
# The learning rate is chosen on the training batches' gold score (mean of the last 10
# iterations' `gold/train_mean`), not on the held-out prompts.
#
#   bash examples/lora_ppo.sh [OUT=runs/lora] [QUICKSTART=runs/quickstart]
set -euo pipefail
OUT=${1:-runs/lora}
Q=${2:-runs/quickstart}
BIN=${BIN:-.venv/bin}

# 1. LoRA PPO from the demo's PPO config at five learning rates (its full-weight run uses 2e-4); the
#    critic's rate keeps the demo's critic/policy ratio (2.5).
for LR in 2e-4 5e-4 1e-3 3e-3 1e-2; do
  CLR=$($BIN/python -c "print(2.5 * $LR)")
  $BIN/rlhf-dist ppo --config "$Q/ppo/config.yaml" --out "$OUT/ppo_lr$LR" overwrite=true \
      learner.lora_rank=16 learner.lora_alpha=32 optim.lr=$LR critic_optim.lr=$CLR
done
# 2. The learning rate with the best training gold.
BEST=$($BIN/python - "$OUT" <<'PY'
import json, pathlib, sys
def gold(d):
    rows = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
    g = [r["gold/train_mean"] for r in rows if "gold/train_mean" in r][-10:]
    return sum(g) / len(g)
runs = sorted(pathlib.Path(sys.argv[1]).glob("ppo_lr*"))
for d in runs:
    print(f"{d.name}: training gold (last 10 iterations) {gold(d):.3f}", file=sys.stderr)
print(max(runs, key=gold))
PY
)
echo "chosen: $BEST"
# 3. SFT, full-weight PPO and every LoRA run on the same 500 held-out prompts, at the demo's eval settings.
MODELS=""
for d in "$OUT"/ppo_lr*; do MODELS="$MODELS models.lora_$(basename "$d" | sed 's/ppo_//')=$d/model"; done
$BIN/rlhf-dist eval --out "$OUT/eval" data="$Q/data" prompts=500 temperature=0.5 max_new_tokens=32 \
    reward_model="$Q/rm/model" models.sft="$Q/sft/model" models.ppo_full="$Q/ppo/model" $MODELS pretrain_texts=200
# 4. The table: held-out gold, win rate vs SFT, KL, and the runs' own time and memory.
$BIN/python examples/lora_report.py "$OUT" "$Q/ppo"
