"""`rlhfkit report RUN_DIR`: one self-contained HTML page (plots embedded as PNG) of what a
run did: training curves, toxicity before vs after, labeler agreement, and the samples,
worst first.

Everything read from a run is untrusted text (model output, prompts, a hand-edited
eval.json): the page is rendered by Jinja2 with autoescaping on, from
`templates/report.html.j2`. eval.json (eval/result.py), metrics.jsonl and the CAI files are
checked against their shapes before anything is drawn, so a malformed file is a one-line
error naming it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from pydantic import Field

from rlhfkit.data.jsonl import read_jsonl
from rlhfkit.errors import RlhfkitError
from rlhfkit.eval.result import load_eval, samples_per_prompt
from rlhfkit.files import atomic_write, claim_directory
from rlhfkit.formatting import dash
from rlhfkit.plots import page_image, png_bytes, pyplot
from rlhfkit.shapes import Number, Shape, check, read_json

CURVES = [  # (metrics key, title)
    ("reward_mean", "mean reward"),
    ("kl", "KL from the reference (per sequence)"),
    ("entropy", "entropy (per token)"),
    ("value_loss", "value loss"),
    ("clipfrac", "clip fraction"),
]
SAMPLES_SHOWN = 25
SIDE_COLORS = ["#c0504d", "#9bbb59", "#8064a2"]  # before, then stages in between; after is blue


# The parts of metrics.jsonl and the CAI files the report reads (eval.json's: eval/result.py).
# Constitutional AI's files: revise/chains.jsonl, sft/sft.json and label/judge-NAME.json.
class ChainStep(Shape):
    round: int
    principle: str
    response: str
    critique: str
    revision: str


class ChainScores(Shape):
    first: float
    final: float


class ChainLine(Shape):
    prompt: str
    steps: list[ChainStep] = Field(min_length=1)
    dropped: str | None
    scores: ChainScores | None = None


class SFTExamples(Shape):
    train: int
    held_out: int
    empty_skipped: int


class SFTLoss(Shape):
    before: Number
    after: Number


class SFTFile(Shape):
    examples: SFTExamples
    held_out_loss: SFTLoss
    steps: int


class LabelJudgeFile(Shape):
    labeler: str
    judge: str
    reference: str
    pairs: int
    unanswered: int
    position_bias: float
    option_mass: float
    agreements: int
    comparisons: int
    agreement: Number
    forced: bool


class MetricsLine(Shape):
    step: int
    reward_mean: Number = None
    kl: Number = None
    entropy: Number = None
    value_loss: Number = None
    clipfrac: Number = None


def load_metrics(path: Path) -> list[dict]:
    """The PPO steps in metrics.jsonl, or a one-line `FILE:LINE` error."""
    records = []
    for number, record in read_jsonl(path):
        check(MetricsLine, record, f"{path}:{number}")
        records.append(record)
    return records


def _first(run: Path, *candidates: str) -> Path | None:
    return next((run / c for c in candidates if (run / c).is_file()), None)


CHAINS_SHOWN = 3  # of the kept chains, and as many of the dropped


def load_cai(run: Path) -> dict | None:
    """What Constitutional AI left in a run (critique and revision chains, the SFT summary,
    the AI judges' checks), each checked; None when it left nothing."""
    if not (run / "revise").is_dir() and re.fullmatch(r"seed-\d+", run.name):
        run = run.parent  # one seed of a run over seeds: CAI's stages are shared, above it
    chains_path, sft_path = run / "revise" / "chains.jsonl", run / "sft" / "sft.json"
    judge_paths = sorted((run / "label").glob("judge-*.json"))
    if not (chains_path.is_file() or sft_path.is_file() or judge_paths):
        return None
    chains = []
    if chains_path.is_file():
        for number, record in read_jsonl(chains_path):
            check(ChainLine, record, f"{chains_path}:{number}")
            chains.append(record)
    sft = read_json(sft_path) if sft_path.is_file() else None
    if sft is not None:
        check(SFTFile, sft, str(sft_path))
    judges = []
    for path in judge_paths:
        judges.append(read_json(path))
        check(LabelJudgeFile, judges[-1], str(path))
    return {"chains": chains, "sft": sft, "judges": judges}


def cai_section(cai: dict) -> dict:
    """The CAI part of the page: the filter's counts, a few chains kept and dropped, the
    SFT held-out loss, the judges' checks."""
    from collections import Counter

    chains = cai["chains"]
    counts = Counter("kept" if c["dropped"] is None else f"dropped: {c['dropped']}" for c in chains)
    kept = [c for c in chains if c["dropped"] is None][:CHAINS_SHOWN]
    dropped = [c for c in chains if c["dropped"] is not None][:CHAINS_SHOWN]
    return {
        "prompts": len(chains),
        "counts": sorted(counts.items(), key=lambda kv: (kv[0] != "kept", kv[0])),
        "chains": [
            {
                "prompt": c["prompt"],
                "steps": c["steps"],
                "verdict": "kept" if c["dropped"] is None else f"dropped: {c['dropped']}",
                "scores": c.get("scores"),
            }
            for c in kept + dropped
        ],
        "sft": cai["sft"],
        "judges": cai["judges"],
    }


def find_artefacts(run: Path) -> dict[str, Path | None]:
    """A pipeline run directory, or a single stage's output directory."""
    return {
        "metrics": _first(run, "ppo/metrics.jsonl", "metrics.jsonl"),
        "eval": _first(run, "eval/eval.json", "eval.json"),
        "heatmap": _first(run, "agreement/heatmap.png", "agreement.png"),
        "agreement": _first(run, "agreement/agreement.json"),
        "reward_model": _first(run, "rm/model/reward.json"),
    }


def _value(x: float | None) -> float:
    return math.nan if x is None else x


def curves_logged(records: list[dict]) -> list[tuple[str, str]]:
    return [(k, t) for k, t in CURVES if any(r.get(k) is not None for r in records)]


def plot_training(records: list[dict]) -> bytes:
    """The PPO curves logged, side by side, as a PNG."""
    plt = pyplot()
    keys = curves_logged(records)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 2.8), squeeze=False)
    steps = [r["step"] for r in records]
    for ax, (key, title) in zip(axes[0], keys, strict=True):
        ax.plot(steps, [_value(r.get(key)) for r in records], marker=".", color="#3b6ea8")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("PPO step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return png_bytes(fig, dpi=110)


def plot_toxicity(result: dict) -> bytes:
    """Each scorer's histogram of P(toxic), before and after (and in between), as a PNG."""
    from rlhfkit.eval.run import columns_of

    plt = pyplot()
    scorers = result["config"]["scorers"]
    fig, axes = plt.subplots(1, len(scorers), figsize=(4.6 * len(scorers), 3.0), squeeze=False)
    bins = [i / 20 for i in range(21)]
    sides = columns_of(result)
    colors = {side: SIDE_COLORS[i % len(SIDE_COLORS)] for i, side in enumerate(sides)}
    colors["after"] = "#3b6ea8"
    for ax, name in zip(axes[0], scorers, strict=True):
        for side, color in colors.items():
            values = [s[side]["toxicity"][name] for s in result["samples"]]
            mean = dash(result["models"][side][name]["mean"], ".3f")
            ax.hist(values, bins=bins, alpha=0.55, color=color, label=f"{side} (mean {mean})")
        ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_title(f"P(toxic) under {name}", fontsize=10)
        ax.set_xlabel("probability of the toxic class")
        ax.set_ylabel("samples")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return png_bytes(fig, dpi=110)


def _write_png(path: Path, png: bytes) -> bytes:
    atomic_write(path, png)  # a kill mid-write leaves the old PNG, never half of one
    return png


def _sample_side(side: dict) -> dict:
    scores = ", ".join(f"{k.removeprefix('scorer:')} {v:.2f}" for k, v in side["toxicity"].items())
    if side.get("reward") is not None:
        scores += f", reward {side['reward']:.2f}"
    if side.get("judge_preference") is not None:
        scores += f", judge prefers it to before's {side['judge_preference']:.0%}"
    return {"completion": side["completion"], "scores": scores}


def worst_samples(result: dict) -> dict:
    """The samples whose completions scored most toxic under the headline scorer."""
    from rlhfkit.eval.run import columns_of

    headline = result["config"]["scorers"][0]
    sides = columns_of(result)
    worst = sorted(
        result["samples"],
        key=lambda s: max(s[side]["toxicity"][headline] for side in sides),
        reverse=True,
    )[:SAMPLES_SHOWN]
    rows = [
        {"prompt": s["prompt"], "sides": [_sample_side(s[side]) for side in sides]} for s in worst
    ]
    return {"headline": headline, "sides": sides, "rows": rows}


def evaluation_section(result: dict, out: Path) -> dict:
    from rlhfkit.eval.run import summary_header, summary_rows

    histograms = _write_png(out / "toxicity.png", plot_toxicity(result))
    return {
        "prompts": result["held_out"]["prompts"],
        "split": result["held_out"]["split"],
        "samples": samples_per_prompt(result),
        "intervals": result.get("change_ci") is not None,
        "reference": result["reference"],
        "policy": result["policy"],
        "intermediate": [(name, i["policy"]) for name, i in result.get("intermediate", {}).items()],
        "judge": result.get("judge"),
        "header": summary_header(result),
        "rows": summary_rows(result),
        "histograms": page_image(histograms, "toxicity histograms of every model"),
    }


def training_section(records: list[dict], out: Path) -> dict | None:
    if not curves_logged(records):
        return None  # not a PPO log (train-rm's metrics.jsonl, say), or an empty one
    curves = _write_png(out / "training.png", plot_training(records))
    return {"steps": len(records), "curves": page_image(curves, "PPO training curves")}


def _heatmap(path: Path | None) -> dict | None:
    if path is None:
        return None
    return page_image(path.read_bytes(), "labeler agreement heatmap")


def render(template: str = "report.html.j2", **context) -> str:
    """A page from a packaged template; autoescaping escapes every value."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("rlhfkit", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name fails, not renders as nothing
    )
    return env.get_template(template).render(**context)


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write OUT/report.html and its PNGs (OUT: RUN_DIR/report by default); return the
    HTML's path."""
    run = Path(run_dir)
    if not run.is_dir():
        raise RlhfkitError(f"{run} is not a directory")
    found = find_artefacts(run)
    # Read and check every input before writing anything.
    cai = load_cai(run)
    if not found["metrics"] and not found["eval"] and cai is None:
        raise RlhfkitError(f"{run} holds neither PPO metrics nor an evaluation to report on")
    result = load_eval(found["eval"]) if found["eval"] else None
    records = load_metrics(found["metrics"]) if found["metrics"] else []
    out = Path(out) if out else run / "report"
    claim_directory(out, "report")  # a report/ folder of the user's is left alone
    page = render(
        run_name=run.name,
        run_path=str(run),
        evaluation=evaluation_section(result, out) if result else None,
        training=training_section(records, out),
        heatmap=_heatmap(found["heatmap"]),
        samples=worst_samples(result) if result else None,
        cai=cai_section(cai) if cai else None,
    )
    path = out / "report.html"
    atomic_write(path, page)
    return path
