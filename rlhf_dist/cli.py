"""The `rlhf-dist` command.

    rlhf-dist quickstart [--config FILE] [key=value ...]    the whole pipeline (`make demo`; alias: demo)
    rlhf-dist task-data --out DIR [key=value ...]           write a task's data files for a seed
    rlhf-dist build-model --out DIR [key=value ...]         tokenizer + random-init tiny Llama from a task corpus
    rlhf-dist pretrain | sft | rm --out DIR [key=value ...]  train a stage on the DeepSpeed learner group
    rlhf-dist dpo --out DIR data=DIR init=DIR [ref=DIR]     DPO from comparisons on the learner group
    rlhf-dist label --out DIR policy=DIR data=DIR           the labeler ranks K samples of a policy per prompt
    rlhf-dist ppo --config FILE [key=value ...]             PPO(-ptx) on Ray: rollout, reward, reference, learner
    rlhf-dist eval --out DIR models.sft=DIR models.ppo=DIR ...  gold win rate, KL, proxy, alignment tax of model folders
    rlhf-dist overopt --out DIR sft=DIR reward_model=DIR data=DIR   gold/proxy vs sqrt(KL): PPO and best-of-n
    rlhf-dist compare --config configs/compare.yaml [--out DIR]  RL methods from one SFT model and RM, evaluated together
    rlhf-dist report --out DIR                              report.html for a run folder
    rlhf-dist version

Every command takes `key=value` overrides of its typed config; unknown keys are rejected.
Errors in input print one line (naming the file, line or key) and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from rlhf_dist import __version__

COMMANDS = {
    "quickstart": ("rlhf_dist.recipes.quickstart:main", "the whole pipeline on CPU: data, pretrain, SFT, RM, PPO, PPO-ptx, eval, report"),
    "demo": ("rlhf_dist.recipes.quickstart:main", "same as quickstart (what `make demo` runs)"),
    "task-data": ("rlhf_dist.recipes.task_data:main", "write a task's data files (corpus, demonstrations, prompts, rankings)"),
    "build-model": ("rlhf_dist.recipes.build_model:main", "train a tokenizer on a task corpus and save a random-init tiny Llama"),
    "pretrain": ("rlhf_dist.recipes.stages:pretrain_main", "train the base LM on a corpus (learner group, DeepSpeed)"),
    "sft": ("rlhf_dist.recipes.stages:sft_main", "supervised fine-tuning on demonstrations (response tokens only)"),
    "rm": ("rlhf_dist.recipes.stages:rm_main", "reward model on K-way rankings (all C(K,2) pairs per prompt)"),
    "dpo": ("rlhf_dist.recipes.stages:dpo_main", "DPO on comparisons: the policy from init against a frozen ref (learner group)"),
    "label": ("rlhf_dist.recipes.label:main", "the simulated labeler ranks K samples of a policy per prompt (RM data)"),
    "ppo": ("rlhf_dist.recipes.ppo:ppo_main", "PPO(-ptx): vLLM rollout workers, reward/reference actors, DeepSpeed learner"),
    "overopt": ("rlhf_dist.recipes.overopt:main", "over-optimisation study: PPO at several KL coefficients and best-of-n"),
    "compare": ("rlhf_dist.recipes.compare:main", "methods side by side (PPO, GRPO, RLOO, REINFORCE++, DPO, ...): win rate, gold, cost"),
    "report": ("rlhf_dist.evaluation.report:main", "write report.html for a run folder"),
    "eval": ("rlhf_dist.evaluation.evaluate:main", "gold win rate vs a baseline, gold/proxy scores, KL, RM accuracy, alignment tax"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="rlhf-dist",
        description="Distributed RLHF: SFT, reward model and PPO-ptx on Ray, vLLM, DeepSpeed and Arrow.",
        epilog="commands:\n" + "\n".join(f"  {name:<12} {doc}" for name, (_, doc) in COMMANDS.items())
        + "\n  version      print the version\n\n`rlhf-dist COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also RLHF_DIST_DEBUG=1)")
    parser.add_argument("command", choices=[*COMMANDS, "version"], metavar="COMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    debug = "--debug" in argv[:1]
    argv = argv[1:] if debug else argv
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    ns = parser.parse_args(argv[:1])
    if ns.command == "version":
        print(f"rlhf-dist {__version__}")
        return 0
    import importlib

    from rlhf_dist.config import ConfigError
    from rlhf_dist.data import DataError
    from rlhf_dist.runtime import RunStopped, stop_on_sigterm
    from rlhf_dist.tasks.base import TaskSpecError

    debug = debug or bool(os.environ.get("RLHF_DIST_DEBUG"))
    stop_on_sigterm()
    module_name, function = COMMANDS[ns.command][0].split(":")
    entry = getattr(importlib.import_module(module_name), function)
    try:
        return int(entry(argv[1:]) or 0)
    except (ConfigError, DataError, TaskSpecError, ValueError, OSError, RunStopped) as e:
        if debug:
            raise
        print(f"rlhf-dist {ns.command}: error: {_one_line(e)} (--debug or RLHF_DIST_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rlhf-dist {ns.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        _stop_local_ray()


def _one_line(e: Exception) -> str:
    """The error as one line; an OS error as 'path: reason' (a run folder under a file, no permission, ...)."""
    if isinstance(e, OSError) and e.filename and e.strerror:
        from pathlib import Path

        if isinstance(e, (FileExistsError, NotADirectoryError)) and Path(e.filename).is_file():
            return f"{e.filename}: is a file, not a folder"
        return f"{e.filename}: {e.strerror}"
    return " ".join(str(e).split())


def _stop_local_ray() -> None:
    """Shut down Ray if this process started or joined it (the actors go with a local instance)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def run() -> None:
    """The `rlhf-dist` command: `main`, then a quick exit. When `main` returns, the command's files
    are written and closed and Ray is shut down; the exit handlers (`atexit`: logging, finalizers)
    run as at any exit, and only the interpreter's teardown of the loaded extension modules (torch,
    Ray's core worker, Arrow) is skipped (docs/results.md, "Start-up"), which does nothing the
    operating system does not do at process exit. In-process callers (tests) use `main`."""
    import atexit

    code = main()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
