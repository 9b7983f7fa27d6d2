#!/usr/bin/env bash
# Example: PPO on ONE machine with several GPUs, through a local Ray head and launch/submit.sh.
# UNTESTED ON GPUs so far (no GPU machine was available); the same path runs on CPU in
# tests/test_launch.py.
#
#     launch/single_node_gpus.sh [key=value ...]        # overrides go to rlhf-dist ppo
#
# 1. starts a Ray head here (`ray start --head --num-gpus=N`; token authentication on, the token
#    in ~/.ray/auth_token), unless one already answers on the dashboard port;
# 2. submits CONFIG with launch/submit.sh and waits for the job (its exit status is ours);
# 3. stops the Ray head it started (KEEP_CLUSTER=1 leaves it up for more jobs).
#
# environment:
#   NUM_GPUS        GPUs to give Ray (default: all that `nvidia-smi -L` lists)
#   NUM_CPUS        CPUs to give Ray (default: all cores; the 8-GPU config asks for 36)
#   CONFIG          default configs/ppo_0.5b_1node_8gpu.yaml (7 of 8 GPUs, see its comments)
#   OUT             run folder (default: runs/ppo_0.5b_1node in this repository)
#   DASHBOARD_PORT  default 8265
#   KEEP_CLUSTER    1: leave the Ray head running afterwards
# Run it in the environment that has rlhf-dist installed (`pip install -e ".[gpu]"`): the Ray
# head and the job's driver use that environment's `python`.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
CONFIG=${CONFIG:-$REPO/configs/ppo_0.5b_1node_8gpu.yaml}
OUT=${OUT:-$REPO/runs/ppo_0.5b_1node}
PORT=${DASHBOARD_PORT:-8265}

die() { echo "single_node_gpus.sh: error: $*" >&2; exit 2; }
command -v ray >/dev/null 2>&1 || die "the ray CLI is not on PATH (activate the environment with rlhf-dist installed)"
[[ -f $CONFIG ]] || die "config file not found: $CONFIG"

if [[ -z ${NUM_GPUS:-} ]]; then
    command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: set NUM_GPUS"
    NUM_GPUS=$(nvidia-smi -L | grep -c '^GPU ' || true)
fi
[[ $NUM_GPUS =~ ^[0-9]+$ && $NUM_GPUS -ge 1 ]] || die "NUM_GPUS=$NUM_GPUS: need at least one GPU"
NUM_CPUS=${NUM_CPUS:-$(nproc)}
if [[ $NUM_GPUS -lt 7 && $CONFIG == *ppo_0.5b_1node_8gpu.yaml ]]; then
    echo "single_node_gpus.sh: warning: $CONFIG places 7 GPUs and this node has $NUM_GPUS:" \
         "scale down, e.g. rollout.num_workers=$((NUM_GPUS > 2 ? NUM_GPUS - 2 : 1)) learner.num_ranks=1" >&2
fi
if [[ $NUM_CPUS -lt 36 && $CONFIG == *ppo_0.5b_1node_8gpu.yaml ]]; then
    echo "single_node_gpus.sh: warning: $CONFIG asks Ray for 36 CPUs and Ray gets $NUM_CPUS:" \
         "lower rollout.cpus_per_worker / learner.cpus_per_rank, or set NUM_CPUS=36 (Ray CPUs are scheduling slots)" >&2
fi

export RAY_ADDRESS=http://127.0.0.1:$PORT
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
started=0
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$RAY_ADDRESS/api/version" 2>/dev/null || true)
if [[ -n $code && $code != 000 ]]; then  # any HTTP answer (401 too: token auth) means a dashboard is up
    echo "single_node_gpus.sh: a Ray dashboard already answers at $RAY_ADDRESS: submitting to that cluster"
else
    ray start --head --num-gpus="$NUM_GPUS" --num-cpus="$NUM_CPUS" --dashboard-host=127.0.0.1 \
        --dashboard-port="$PORT" --disable-usage-stats
    started=1
fi
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
    if [[ $started == 1 && ${KEEP_CLUSTER:-0} != 1 ]]; then
        echo "single_node_gpus.sh: stopping the Ray head started here (KEEP_CLUSTER=1 keeps it)"
        ray stop || true
    fi
}
trap cleanup EXIT

status=0
"$REPO/launch/submit.sh" "$CONFIG" "out=$OUT" "$@" || status=$?
exit "$status"
