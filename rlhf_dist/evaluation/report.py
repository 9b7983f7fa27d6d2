"""`report.html`: one self-contained file (plots embedded as PNG data URIs, no network) that shows
whether a run worked.

    rlhf-dist report --out runs/quickstart      # the run folder; report.html is written into it

It reads what the stages left in the run folder, and shows each part that exists:
- training curves of every PPO run (subfolders whose metrics.jsonl has PPO records): proxy
  reward, gold score of the training samples, KL to SFT, entropy, value loss, clip fraction,
  response length;
- `eval/eval.json` (`rlhf-dist eval`): win rate against SFT with 95% intervals, gold/proxy/KL
  table, alignment-tax bars (held-out pretraining NLL); sample responses with their gold scores;
- `overopt/overopt.png` (`rlhf-dist overopt`);
- `quickstart.json`: the stage timings and headline numbers.
TensorBoard logs stay beside it in each stage's `tb/` folder.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from rlhf_dist.config import parse_cli
from rlhf_dist.config.evaluation import ReportConfig

CURVES = [
    ("objective/score", "proxy reward (RM score)"),
    ("gold/train_mean", "gold score of training samples"),
    ("objective/kl", "KL(policy || SFT) per response"),
    ("policy/entropy", "policy entropy (nats/token)"),
    ("loss/value", "value loss"),
    ("policy/clipfrac", "clip fraction"),
    ("rollout/response_len", "response length (tokens)"),
    ("ptx/nll", "ptx: NLL of the ptx data"),
]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ppo_runs(run: Path) -> dict[str, list[dict]]:
    """name -> training records of every PPO run directly under `run` (or `run` itself)."""
    found = {}
    for metrics in sorted([run / "metrics.jsonl", *run.glob("*/metrics.jsonl")]):
        if metrics.exists():
            records = [r for r in _records(metrics) if "objective/score" in r]
            if records:
                found[metrics.parent.name] = records
    return found


def curves_figure(runs: dict[str, list[dict]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [(k, t) for k, t in CURVES if any(k in r for recs in runs.values() for r in recs)]
    cols = 4
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    colors = {name: f"C{i}" for i, name in enumerate(runs)}  # one colour per run in every panel
    for ax, (key, title) in zip(axes.flat, keys):
        for name, recs in runs.items():
            pts = [(r["step"], r[key]) for r in recs if key in r]
            if pts:
                ax.plot(*zip(*pts), label=name, color=colors[name], marker="." if len(pts) < 30 else None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def eval_figures(ev: dict) -> tuple[str, str]:
    """(win-rate bars with 95% intervals, alignment-tax bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = ev["models"]
    names = list(models)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    wins = [models[n].get("win_rate_vs_sft") for n in names]
    los = [w - models[n]["win_rate_ci95"][0] if w is not None else 0 for n, w in zip(names, wins)]
    his = [models[n]["win_rate_ci95"][1] - w if w is not None else 0 for n, w in zip(names, wins)]
    ax.bar(names, [w or 0 for w in wins], yerr=[los, his], capsize=5, color="#4c72b0")
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("win rate vs SFT (labeler)")
    ax.set_title("How often the labeler prefers each model to SFT (95% CI)", fontsize=10)
    fig.tight_layout()
    win_png = _png(fig)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    nll = {n: m.get("pretrain_nll") for n, m in models.items() if m.get("pretrain_nll") is not None}
    ax.bar(list(nll), list(nll.values()), color="#dd8452")
    ax.set_ylabel("held-out pretraining NLL (nats/token)")
    ax.set_title("Alignment tax: NLL on held-out pretraining text (lower is better)", fontsize=10)
    if nll:
        lo, hi = min(nll.values()), max(nll.values())
        ax.set_ylim(max(0.0, lo - (hi - lo) * 2 - 0.05), hi + (hi - lo) * 0.5 + 0.05)
    fig.tight_layout()
    return win_png, _png(fig)


def _table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3f}"
        return html.escape(str(v)) if v is not None else "n/a"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def parts_section(ev: dict) -> str:
    """The gold score's parts per model (what PPO changed) and the RM's accuracy on pairs that
    differ in each part (what it can see), when the task exposes `gold_parts`."""
    out = ""
    models = {n: m["gold_parts"] for n, m in ev.get("models", {}).items() if m.get("gold_parts")}
    if models:
        keys = list(next(iter(models.values())))
        out += ("<h3>Gold score by part (mean over the held-out samples)</h3>"
                + _table(["model", *keys], [[n, *(p.get(k) for k in keys)] for n, p in models.items()]))
    by_part = ev.get("rm_accuracy_by_part") or {}
    if by_part:
        rows = [[k, v["pairs"], v["accuracy"], v["only_pairs"], v["only_accuracy"], ", ".join(v.get("moves_with", []))]
                for k, v in by_part.items()]
        out += ("<h3>What the reward model sees</h3><p>Held-out pairs whose gold scores differ: how often the RM orders "
                "them as gold does, over the pairs where a part differs, and where it differs alone (with the parts "
                "that always move with it). A part the RM does not see is one PPO cannot improve.</p>"
                + _table(["part", "pairs", "RM agrees", "pairs, part alone", "RM agrees", "moves with"], rows))
    return out


def samples_section(path: Path, per_model: int = 4) -> str:
    if not path.exists():
        return ""
    samples = _records(path)
    by_model: dict[str, list[dict]] = {}
    for s in samples:
        by_model.setdefault(s.get("model", "?"), []).append(s)
    prompts = []
    for s in samples:
        if s.get("prompt") not in prompts:
            prompts.append(s.get("prompt"))
        if len(prompts) == per_model:
            break
    parts = []
    for prompt in prompts:
        rows = [[m, next((s.get("response", "") for s in ss if s.get("prompt") == prompt), ""),
                 next((s.get("gold") for s in ss if s.get("prompt") == prompt), None)] for m, ss in by_model.items()]
        parts.append(f"<h4>prompt: <code>{html.escape(str(prompt))}</code></h4>" + _table(["model", "response", "gold"], rows))
    return "<h2>Sample responses (held-out prompts)</h2>" + "".join(parts)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}code{white-space:pre-wrap}td{white-space:pre-wrap}"""


def write_report(run: str | Path) -> Path:
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run folder")
    sections = [f"<h1>rlhf-dist run report</h1><p>run folder: <code>{html.escape(str(run.resolve()))}</code></p>"]
    qs = run / "quickstart.json"
    if qs.exists():
        q = json.loads(qs.read_text())
        rows = [[k, v] for k, v in q.get("headline", {}).items()]
        rows += [[f"time: {k}", f"{v:.0f} s"] for k, v in q.get("timings_s", {}).items()]
        sections.append("<h2>Summary</h2>" + _table(["", "value"], rows))
    ev_path = run / "eval" / "eval.json"
    if ev_path.exists():
        ev = json.loads(ev_path.read_text())
        win_png, tax_png = eval_figures(ev)
        rows = [[n, m.get("win_rate_vs_sft"), "[{:.3f}, {:.3f}]".format(*m["win_rate_ci95"]) if m.get("win_rate_ci95") else None,
                 m.get("win_prob_vs_sft"), m.get("gold_score"), m.get("proxy_score"), m.get("kl_to_sft"), m.get("pretrain_nll"),
                 m.get("response_len")] for n, m in ev["models"].items()]
        cfg = ev.get("config", {})
        sections.append("<h2>Evaluation on held-out prompts</h2>"
                        + f"<p>{ev.get('prompts')} prompts, one sample per model at temperature {cfg.get('temperature')}; "
                          "the labeler judges each against SFT's sample (ties count half); "
                          "'expected' is the mean of the labeler's preference probability (no labeler noise).</p>"
                        + _table(["model", "win rate vs SFT", "95% CI", "expected", "gold", "proxy (RM)", "KL to SFT",
                                  "pretrain NLL", "length"], rows)
                        + f"<p>RM pairwise accuracy on held-out comparisons: {ev.get('rm_accuracy', float('nan')):.3f}; "
                          f"the labeler's own agreement ceiling: {ev.get('labeler_agreement', float('nan')):.3f}</p>"
                        + f'<img alt="win rates" src="{win_png}"> <img alt="alignment tax" src="{tax_png}">'
                        + parts_section(ev))
    runs = ppo_runs(run)
    if runs:
        sections.append("<h2>PPO training curves</h2>" + f'<img alt="training curves" src="{curves_figure(runs)}">')
    over = run / "overopt" / "overopt.png"
    if over.exists():
        from rlhf_dist.evaluation.overoptimisation import describe_shape

        data = "data:image/png;base64," + base64.b64encode(over.read_bytes()).decode()
        over_json = run / "overopt" / "overopt.json"
        shapes = json.loads(over_json.read_text()).get("shapes", {}) if over_json.exists() else {}
        lines = "".join(f"<li>{html.escape(describe_shape(m, s))}</li>" for m, s in shapes.items())
        sections.append("<h2>Reward-model over-optimisation (Gao et al. 2022)</h2>"
                        "<p>Gold and proxy scores against sqrt(KL from SFT): PPO at several KL coefficients and best-of-n.</p>"
                        f'<img alt="over-optimisation" src="{data}">' + (f"<ul>{lines}</ul>" if lines else ""))
    sections.append(samples_section(run / "eval" / "eval_samples.jsonl"))
    sections.append("<p>TensorBoard: <code>tensorboard --logdir " + html.escape(str(run)) + "</code></p>")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>rlhf-dist report</title><style>{STYLE}</style></head><body>{''.join(sections)}</body></html>"
    from rlhf_dist.runtime import write_text_atomic

    path = run / "report.html"
    write_text_atomic(path, page)
    return path


def main(argv: list[str]) -> int:
    cfg = parse_cli(ReportConfig, argv, "rlhf-dist report", __doc__)
    print(f"wrote {write_report(cfg.out)}")
    return 0
