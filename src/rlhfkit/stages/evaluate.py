"""The eval and report stages: before vs after on held-out prompts, then one HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rlhfkit.formatting import dash
from rlhfkit.progress import Progress

if TYPE_CHECKING:
    from rlhfkit.eval.run import EvalConfig


def eval_stage(run: Path, config: EvalConfig, progress: Progress) -> str:
    """Before vs after into RUN/eval/eval.json."""
    from rlhfkit.eval.run import run_eval, write_result

    result = run_eval(config, progress)
    write_result(result, run / "eval" / "eval.json")
    headline = config.scorers[0]
    before, after = (result["models"][k][headline] for k in ("before", "after"))
    change, interval = result["change"][headline], result["change_ci"][headline]
    return (
        f"{headline}: toxic share {before['toxic_share']:.1%} → {after['toxic_share']:.1%} "
        f"({_percent(change['toxic_share'], interval['toxic_share'])}), "
        f"mean {before['mean']:.3f} → {after['mean']:.3f} "
        f"({_percent(change['mean'], interval['mean'])}); "
        f"{result['held_out']['prompts']} prompts × {config.samples_per_prompt} samples"
    )


def _percent(change: float, interval: list[float] | None) -> str:
    """A relative change with its 95% interval, e.g. "-53% [-68%, -37%]"."""
    text = dash(change, "+.0%")
    return text if interval is None else f"{text} [{interval[0]:+.0%}, {interval[1]:+.0%}]"


def report_stage(run: Path, progress: Progress) -> str:
    from rlhfkit.report import build_report

    return str(build_report(run))
