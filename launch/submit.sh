#!/usr/bin/env bash
# Submit a PPO run to a Ray cluster with `ray job submit`:
#
#     RAY_ADDRESS=http://HEAD:8265 launch/submit.sh [options] FILE [key=value ...]
#
# runs `rlhf-dist ppo --config FILE key=value ...` as a Ray job. The repository is shipped as the
# job's working directory (without .venv, runs, .git and other large or generated folders), so the
# job runs the code of this checkout; its dependencies (torch, vLLM, DeepSpeed, Ray, ...) come from
# the `python` on the cluster's PATH, i.e. the environment `ray start` ran in on the head node: the
# cluster's nodes must have rlhf-dist installed (`pip install -e ".[gpu]"` or the docker image).
# Inside the job Ray sets RAY_ADDRESS to the cluster, so the driver connects to it and starts no
# Ray of its own.
#
# options (before FILE; --no-wait may also come later):
#   --no-wait             return once the job is submitted (default: follow its logs, wait for it
#                         to finish and exit with the job's exit status)
#   --env KEY=VALUE       environment variable for the job (repeatable)
#   --submission-id ID    job id (default: rlhf-ppo-<config name>-<time>-<random>)
#   -h, --help            this text
#
# environment:
#   RAY_ADDRESS           the cluster's dashboard/job address, e.g. http://127.0.0.1:8265
#                         (RAY_API_SERVER_ADDRESS wins when set, as in `ray job submit`)
#   RAY_AUTH_MODE         default here: token (Ray's token authentication stays on). The token comes
#                         from RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token:
#                         copy the head node's ~/.ray/auth_token to the submitting machine.
#   RLHF_DIST_JOB_PYTHON  interpreter the job runs on the cluster (default: python)
#
# Paths in the config and overrides are read ON THE CLUSTER. A relative `out`/`models`/`data`
# lands in the job's copy of the working directory (a temporary folder Ray manages for the job):
# give absolute paths on storage the nodes share, e.g. out=/shared/runs/ppo-0.5b.
set -euo pipefail

PROG=submit.sh
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
# Not shipped with the job (gitignore-style patterns, relative to the repository root).
EXCLUDES=(".venv" "venv" "runs" ".git" "__pycache__" "*.pyc" "*.egg-info" ".pytest_cache" "build"
          "dist" ".whl" ".torch_extensions" ".mypy_cache" ".ruff_cache" "wandb")
MAX_EMBED_BYTES=65536

die() { echo "$PROG: error: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }

json_str() {  # a JSON string literal
    local s=$1
    s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\n'/\\n}; s=${s//$'\t'/\\t}; s=${s//$'\r'/\\r}
    printf '"%s"' "$s"
}

wait_for_job=1
env_vars=()
submission_id=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --no-wait) wait_for_job=0; shift ;;
        --env) [[ $# -ge 2 && $2 == *=* ]] || die "--env needs KEY=VALUE"; env_vars+=("$2"); shift 2 ;;
        --env=*) [[ ${1#--env=} == *=* ]] || die "--env needs KEY=VALUE"; env_vars+=("${1#--env=}"); shift ;;
        --submission-id) [[ $# -ge 2 ]] || die "--submission-id needs a value"; submission_id=$2; shift 2 ;;
        --submission-id=*) submission_id=${1#--submission-id=}; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        -*) die "unknown option $1 (options go before FILE; see --help)" ;;
        *) break ;;
    esac
done
[[ $# -ge 1 ]] || die "missing config FILE (usage: $PROG [--no-wait] FILE [key=value ...])"
config=$1
shift
overrides=()
has_out=0
for arg in "$@"; do
    case $arg in
        --no-wait) wait_for_job=0; continue ;;
        out=*|--out|--out=*) has_out=1 ;;
    esac
    overrides+=("$arg")
done

[[ -f $config ]] || die "config file not found: $config"
[[ -r $config ]] || die "config file not readable: $config"
address=${RAY_API_SERVER_ADDRESS:-${RAY_ADDRESS:-}}
[[ -n $address ]] || die "RAY_ADDRESS is not set: export the cluster's dashboard/job address, e.g. RAY_ADDRESS=http://HEAD_IP:8265"
command -v ray >/dev/null 2>&1 || die "the ray CLI is not on PATH (pip install 'ray[default]==2.60.0', or activate the project's venv)"

# Token authentication: on unless the caller turned it off explicitly.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
if [[ $RAY_AUTH_MODE == token ]]; then
    token_file=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
    if [[ -z ${RAY_AUTH_TOKEN:-} && ! -r $token_file ]]; then
        die "no Ray auth token: $token_file is missing (copy the head node's ~/.ray/auth_token there, or set RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)"
    fi
else
    echo "$PROG: warning: RAY_AUTH_MODE=$RAY_AUTH_MODE: submitting without token authentication" >&2
fi

# The config reaches the job inside the shipped repository when it lives there (and is not in an
# excluded folder); otherwise its text travels in the entrypoint and is written out in the job.
config_abs="$(cd "$(dirname "$config")" && pwd -P)/$(basename "$config")"
config_rel=""
if [[ $config_abs == "$REPO"/* ]]; then
    config_rel=${config_abs#"$REPO"/}
    IFS=/ read -r -a parts <<<"$config_rel"
    for part in "${parts[@]}"; do
        for pattern in "${EXCLUDES[@]}"; do
            # shellcheck disable=SC2053  # glob match on purpose
            if [[ $part == $pattern ]]; then config_rel=""; fi
        done
    done
    if [[ -n $config_rel ]] && git -C "$REPO" check-ignore -q -- "$config_rel" 2>/dev/null; then
        config_rel=""  # Ray leaves .gitignore'd files out of the working dir too
    fi
fi

stem=$(basename "$config"); stem=${stem%.*}; stem=$(printf %s "$stem" | tr -c 'A-Za-z0-9_.-' '-')
submission_id=${submission_id:-rlhf-ppo-$stem-$(date +%Y%m%d-%H%M%S)-$RANDOM}
job_python=${RLHF_DIST_JOB_PYTHON:-python}

if [[ -n $config_rel ]]; then
    entrypoint=("$job_python" -m rlhf_dist.cli ppo --config "$config_rel" "${overrides[@]}")
else
    size=$(wc -c <"$config")
    ((size <= MAX_EMBED_BYTES)) || die "$config is outside the repository and larger than $MAX_EMBED_BYTES bytes: put it under $REPO/configs/"
    echo "$PROG: note: $config is not shipped with the repository; its text goes with the job" >&2
    b64=$(base64 <"$config" | tr -d '\n')
    job_config=".submitted-$submission_id.yaml"
    script="set -e; printf %s \"\$1\" | base64 -d > $(printf %q "$job_config"); shift; exec $(printf %q "$job_python") -m rlhf_dist.cli ppo --config $(printf %q "$job_config") \"\$@\""
    entrypoint=(sh -c "$script" rlhf-dist-submit "$b64" "${overrides[@]}")
fi
if [[ $has_out == 0 ]]; then
    echo "$PROG: note: no out=... given: the config's 'out' is used as is; a relative one lands in the job's temporary working directory on the cluster" >&2
fi

excludes_json=""
for pattern in "${EXCLUDES[@]}"; do excludes_json+="${excludes_json:+, }$(json_str "$pattern")"; done
env_json=""
[[ -n ${RLHF_DIST_DEBUG:-} ]] && env_vars=("RLHF_DIST_DEBUG=$RLHF_DIST_DEBUG" "${env_vars[@]}")
for kv in "${env_vars[@]}"; do env_json+="${env_json:+, }$(json_str "${kv%%=*}"): $(json_str "${kv#*=}")"; done
runtime_env="{\"working_dir\": $(json_str "$REPO"), \"excludes\": [$excludes_json], \"env_vars\": {$env_json}}"

shown=""
for arg in "${overrides[@]}"; do printf -v quoted '%q' "$arg"; shown+=" $quoted"; done
echo "$PROG: submitting to $address: rlhf-dist ppo --config $(printf %q "${config_rel:-$config}")$shown"
if ! submit_log=$(ray job submit --address "$address" --submission-id "$submission_id" \
        --runtime-env-json "$runtime_env" --no-wait -- "${entrypoint[@]}" 2>&1); then
    printf '%s\n' "$submit_log" >&2
    echo "$PROG: error: ray job submit failed (address $address; see above)" >&2
    exit 1
fi

auth_prefix=""
[[ $RAY_AUTH_MODE == token ]] && auth_prefix="RAY_AUTH_MODE=token "
echo "job id: $submission_id"
echo "follow logs: ${auth_prefix}ray job logs -f --address $address $submission_id"
if [[ $wait_for_job == 0 ]]; then
    echo "status:      ${auth_prefix}ray job status --address $address $submission_id"
    echo "stop:        ${auth_prefix}ray job stop --address $address $submission_id"
    exit 0
fi

trap 'echo; echo "$PROG: stopped following; the job keeps running (stop it: ${auth_prefix}ray job stop --address $address $submission_id)" >&2; exit 130' INT
ray job logs -f --log-style record --address "$address" "$submission_id" || true

# The job's outcome: `ray job status` says SUCCEEDED / FAILED (with the entrypoint's exit code) /
# STOPPED once the job is over; the log stream can close a moment before that.
status=""
for _ in $(seq 60); do
    status=$(ray job status --log-style record --log-color false --address "$address" "$submission_id" 2>&1 || true)
    if grep -Eq "Job '[^']*' (succeeded|failed|was stopped)" <<<"$status"; then break; fi
    sleep 2
done
trap - INT
if grep -q "Job '[^']*' succeeded" <<<"$status"; then
    echo "$PROG: job $submission_id succeeded"
    exit 0
fi
code=$(grep -Eo 'failed with exit code -?[0-9]+' <<<"$status" | head -n1 | grep -Eo -- '-?[0-9]+$' || true)
if [[ -n $code && $code -gt 0 && $code -lt 256 ]]; then
    echo "$PROG: job $submission_id failed: exit status $code" >&2
    exit "$code"
fi
if grep -q "was stopped" <<<"$status"; then
    echo "$PROG: job $submission_id was stopped" >&2
else
    echo "$PROG: job $submission_id did not succeed:" >&2
    grep -E "Job '|Status message" <<<"$status" >&2 || printf '%s\n' "$status" | tail -n 5 >&2
fi
exit 1
