"""The HTML report (rlhf_dist/evaluation/report.py): one self-contained file, rendered with its
plots by headless Chromium, and the `report` command's one-line error."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import pytest

from rlhf_dist.evaluation.overoptimisation import kl_bon


@pytest.fixture
def run_folder(tmp_path):
    """A synthetic run folder with everything the report reads."""
    from rlhf_dist.evaluation.overoptimisation import plot

    run = tmp_path / "run"
    for name, slope in (("ppo", 1.0), ("ppo_ptx", 0.5)):
        (run / name).mkdir(parents=True)
        rows = [{"step": i, "objective/score": slope * i / 10, "gold/train_mean": 0.3 + 0.01 * i, "objective/kl": 0.1 * i,
                 "policy/entropy": 1.0 - 0.01 * i, "loss/value": 1.0 / (i + 1), "policy/clipfrac": 0.02,
                 "rollout/response_len": 12 + i / 5} for i in range(1, 21)]
        (run / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "eval").mkdir()
    models = {m: {"gold_score": g, "proxy_score": g * 2, "kl_to_sft": k, "pretrain_nll": nll, "response_len": 12.0,
                  "win_rate_vs_sft": w, "win_rate_ci95": [max(0.0, w - 0.07), min(1.0, w + 0.07)], "win_prob_vs_sft": w - 0.028}
              for m, g, k, nll, w in (("base", 0.14, 5.0, 1.30, 0.2), ("sft", 0.28, 0.0, 1.35, 0.5),
                                      ("ppo", 0.35, 2.0, 1.45, 0.66), ("ppo_ptx", 0.34, 1.8, 1.38, 0.64))}
    for m in models.values():
        m["gold_parts"] = {"total": m["gold_score"], "correct": 0.6, "rude_words": 0.25}
    by_part = {"correct": {"pairs": 40, "accuracy": 0.61, "only_pairs": 12, "only_accuracy": 0.47, "moves_with": ["helpful"]},
               "rude_words": {"pairs": 30, "accuracy": 0.93, "only_pairs": 0, "only_accuracy": None, "moves_with": []}}
    (run / "eval" / "eval.json").write_text(json.dumps({"models": models, "rm_accuracy": 0.69, "labeler_agreement": 0.82,
                                                        "rm_accuracy_by_part": by_part, "prompts": 3,
                                                        "config": {"temperature": 0.5}}))
    (run / "eval" / "eval_samples.jsonl").write_text("".join(
        json.dumps({"model": m, "prompt": f"sort {i} 2 1.", "response": "1 2 <b>bold?</b>", "gold": 0.5}) + "\n"
        for i in range(3) for m in models))
    (run / "overopt").mkdir()
    points = [{"method": "best-of-n", "n": n, "kl": kl_bon(n), "gold": 0.3 + 0.02 * math.log(n), "proxy": 0.1 * n} for n in (1, 2, 4, 8)]
    points += [{"method": "PPO beta=0", "iteration": i, "kl": 0.5 * i, "gold": 0.3 + 0.05 * i - 0.02 * i * i, "proxy": 0.3 * i}
               for i in range(6)]
    plot(points, run / "overopt" / "overopt.png")
    shape = {"start": {"kl": 0.0, "gold": 0.3, "proxy": 0.0}, "peak": {"kl": 0.5, "gold": 0.33, "proxy": 0.3},
             "end": {"kl": 2.5, "gold": 0.05, "proxy": 1.5}, "gold_drop": 0.28, "proxy_rise": 1.2, "overoptimised": True}
    (run / "overopt" / "overopt.json").write_text(json.dumps({"points": points, "shapes": {"PPO beta=0": shape}}))
    (run / "quickstart.json").write_text(json.dumps({"headline": {"gold: SFT": "0.28"}, "timings_s": {"ppo": 60.0}}))
    return run


def test_report_is_one_self_contained_file(run_folder):
    from rlhf_dist.evaluation.report import write_report

    html = write_report(run_folder).read_text()
    assert html.count("<img") == 4  # win rates, alignment tax, training curves, over-optimisation
    assert html.count('src="data:image/png;base64,') == 4
    assert "http://" not in html and "https://" not in html  # nothing to fetch: opens offline
    for text in ("ppo_ptx", "0.690", "0.820", "[0.590, 0.730]", "3 prompts, one sample per model at temperature 0.5",
                 "<td>ppo_ptx</td><td>0.640</td><td>[0.570, 0.710]</td><td>0.612</td><td>0.340</td>",  # judged, CI, expected, gold
                 "&lt;b&gt;bold?&lt;/b&gt;",  # escaped sample text
                 "PPO beta=0: gold 0.300 -&gt; peak 0.330 (KL 0.50) -&gt; 0.050 (KL 2.50)", "over-optimised",
                 "Gold score by part", "<th>rude_words</th>", "<td>0.250</td>",
                 "What the reward model sees", "<td>correct</td><td>40</td><td>0.610</td><td>12</td><td>0.470</td><td>helpful</td>",
                 "<td>rude_words</td><td>30</td><td>0.930</td><td>0</td><td>n/a</td>"):
        assert text in html, text
    assert "<b>bold?</b>" not in html  # the sample text is never rendered as markup


def test_report_renders_its_plots_in_headless_chromium(run_folder, tmp_path):
    """The acceptance check: Chromium opens report.html from disk and paints the plots."""
    from PIL import Image

    from rlhf_dist.evaluation.report import write_report

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium on this machine (`make browser` installs Debian's chromium)")
    report = write_report(run_folder)
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1200,2600",
                    f"--screenshot={shot}", report.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2600)
    pixels = list(image.get_flattened_data()) if hasattr(image, "get_flattened_data") else list(image.getdata())
    # matplotlib's default blue (#1f77b4) and the bar colours appear only inside the plots
    blue = sum(1 for r, g, b in pixels if abs(r - 0x1F) < 40 and abs(g - 0x77) < 40 and abs(b - 0xB4) < 40)
    bars = sum(1 for r, g, b in pixels if abs(r - 0x4C) < 30 and abs(g - 0x72) < 30 and abs(b - 0xB0) < 30)
    assert blue > 500, f"only {blue} plot-blue pixels: the plots did not render"
    assert bars > 500, f"only {bars} bar pixels: the win-rate plot did not render"


def test_report_command_and_its_error(run_folder, tmp_path):
    import sys

    ok = subprocess.run([sys.executable, "-m", "rlhf_dist.cli", "report", "--out", str(run_folder)],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and (run_folder / "report.html").is_file(), ok.stderr
    bad = subprocess.run([sys.executable, "-m", "rlhf_dist.cli", "report", "--out", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "no such run folder" in bad.stderr
