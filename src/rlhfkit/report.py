"""`rlhfkit report RUN_DIR`: one self-contained HTML page (plots embedded as PNG) of what a
run did: training curves, toxicity before vs after, labeler agreement, and the samples,
worst first. Model output is untrusted text: everything from a run is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

from rlhfkit.data.jsonl import atomic_write
from rlhfkit.errors import RlhfkitError

CURVES = [  # (metrics key, title)
    ("reward_mean", "mean reward"),
    ("kl", "KL from the reference (per sequence)"),
    ("entropy", "entropy (per token)"),
    ("value_loss", "value loss"),
    ("clipfrac", "clip fraction"),
]
SAMPLES_SHOWN = 25


def _first(run: Path, *candidates: str) -> Path | None:
    return next((run / c for c in candidates if (run / c).is_file()), None)


def find_artefacts(run: Path) -> dict[str, Path | None]:
    """A pipeline run directory, or a single stage's output directory."""
    return {
        "metrics": _first(run, "ppo/metrics.jsonl", "metrics.jsonl"),
        "eval": _first(run, "eval/eval.json", "eval.json"),
        "heatmap": _first(run, "agreement/heatmap.png", "agreement.png"),
        "agreement": _first(run, "agreement/agreement.json"),
        "reward_model": _first(run, "rm/model/reward.json"),
    }


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_training(records: list[dict], path: Path) -> None:
    plt = _pyplot()
    keys = [(k, t) for k, t in CURVES if any(k in r for r in records)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 2.8), squeeze=False)
    steps = [r["step"] for r in records]
    for ax, (key, title) in zip(axes[0], keys, strict=True):
        ax.plot(steps, [r.get(key, math.nan) for r in records], marker=".", color="#3b6ea8")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("PPO step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_toxicity(result: dict, path: Path) -> None:
    plt = _pyplot()
    scorers = result["config"]["scorers"]
    fig, axes = plt.subplots(1, len(scorers), figsize=(4.6 * len(scorers), 3.0), squeeze=False)
    bins = [i / 20 for i in range(21)]
    for ax, name in zip(axes[0], scorers, strict=True):
        for side, color in (("before", "#c0504d"), ("after", "#3b6ea8")):
            values = [s[side]["toxicity"][name] for s in result["samples"]]
            mean = result["models"][side][name]["mean"]
            ax.hist(values, bins=bins, alpha=0.55, color=color, label=f"{side} (mean {mean:.3f})")
        ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_title(f"P(toxic) under {name}", fontsize=10)
        ax.set_xlabel("probability of the toxic class")
        ax.set_ylabel("samples")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _eval_table(result: dict) -> str:
    from rlhfkit.eval.run import summary_rows

    rows = summary_rows(result)
    body = "".join(
        f"<tr><th>{html.escape(r[0])}</th>"
        + "".join(f"<td>{html.escape(c)}</td>" for c in r[1:])
        + "</tr>"
        for r in rows
    )
    return f"<table><tr><th></th><th>before</th><th>after</th><th>change</th></tr>{body}</table>"


def _samples_table(result: dict) -> str:
    headline = result["config"]["scorers"][0]
    worst = sorted(
        result["samples"],
        key=lambda s: max(s["before"]["toxicity"][headline], s["after"]["toxicity"][headline]),
        reverse=True,
    )[:SAMPLES_SHOWN]

    def cell(side: dict) -> str:
        scores = ", ".join(
            f"{k.removeprefix('scorer:')} {v:.2f}" for k, v in side["toxicity"].items()
        )
        if "reward" in side:
            scores += f", reward {side['reward']:.2f}"
        text = html.escape(side["completion"])
        return f"<td><div class=text>{text}</div><div class=score>{html.escape(scores)}</div></td>"

    rows = "".join(
        f"<tr><td class=prompt>{html.escape(s['prompt'])}</td>"
        f"{cell(s['before'])}{cell(s['after'])}</tr>"
        for s in worst
    )
    return (
        f"<p>The {len(worst)} prompts whose completions scored most toxic under "
        f"{html.escape(headline)} before or after, worst first.</p>"
        f"<table class=samples><tr><th>prompt</th><th>before</th><th>after</th></tr>{rows}</table>"
    )


STYLE = """
body{font:15px/1.45 system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.3em .6em;
text-align:left;vertical-align:top}th{background:#f5f5f5}img{max-width:100%}
.samples td{max-width:30em}.score{color:#666;font-size:.85em;margin-top:.3em}
.prompt{color:#444;font-style:italic}.text{white-space:pre-wrap}
"""


def build_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report/report.html and its PNGs; return the HTML's path."""
    run = Path(run_dir)
    if not run.is_dir():
        raise RlhfkitError(f"{run} is not a directory")
    found = find_artefacts(run)
    if not found["metrics"] and not found["eval"]:
        raise RlhfkitError(f"{run} holds neither PPO metrics nor an evaluation to report on")
    out = run / "report"
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    if found["eval"]:
        result = json.loads(found["eval"].read_text())
        plot_toxicity(result, out / "toxicity.png")
        held = result["held_out"]
        sections.append(
            "<h2>Before vs after alignment</h2>"
            f"<p>{held['prompts']} held-out prompts ({html.escape(str(held['split']))} split, "
            f"none seen in training), {result['config']['samples']} samples each: "
            f"{html.escape(result['reference'])} (before) and "
            f"{html.escape(result['policy'])} (after).</p>"
            + _eval_table(result)
            + _img(out / "toxicity.png", "toxicity histograms before and after")
        )
    if found["metrics"]:
        records = [json.loads(x) for x in found["metrics"].read_text().splitlines() if x.strip()]
        if records:
            plot_training(records, out / "training.png")
            sections.append(
                f"<h2>PPO training</h2><p>{len(records)} steps.</p>"
                + _img(out / "training.png", "PPO training curves")
            )
    if found["heatmap"]:
        sections.append(
            "<h2>Labeler agreement</h2><p>Pairwise agreement between labelers.</p>"
            + _img(found["heatmap"], "labeler agreement heatmap")
        )
    if found["eval"]:
        sections.append("<h2>Samples</h2>" + _samples_table(result))
    page = (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>rlhfkit report: {html.escape(run.name)}</title><style>{STYLE}</style></head>"
        f"<body><h1>rlhfkit report: {html.escape(str(run))}</h1>{''.join(sections)}</body></html>"
    )
    path = out / "report.html"
    atomic_write(path, page)
    return path
