"""The agreement and pairs stages: how much the labelers agree, and the consensus rankings
of those who are not flagged turned into (chosen, rejected) pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from rlhfkit.config import StageConfig
from rlhfkit.errors import RlhfkitError
from rlhfkit.files import atomic_write
from rlhfkit.progress import Progress
from rlhfkit.stages import PROJECT, run_store


class PairsConfig(StageConfig):
    """A pipeline's `pairs:` section: the consensus ranking, and whom it leaves out."""

    setting = "pairs setting"
    method: Literal["borda", "tideman"] = Field(
        "borda", description="the consensus ranking: Borda count or Tideman's ranked pairs"
    )
    min_tau: float | None = Field(0.2, description="exclude labelers below it; null: nobody")


def agreement_stage(run: Path, settings: PairsConfig, progress: Progress) -> str:
    from rlhfkit.feedback.summary import agreement_summary

    folder = run / "agreement"
    folder.mkdir(parents=True, exist_ok=True)
    summary = agreement_summary(
        run_store(run),
        PROJECT,
        settings.method,
        settings.min_tau if settings.min_tau is not None else 0.2,
        heatmap=folder / "heatmap.png",
    )
    atomic_write(folder / "agreement.json", json.dumps(summary, indent=2))
    flagged = [a["labeler"] for a in summary["labelers"] if a.get("flagged")]
    alpha, pairwise = summary["krippendorff_alpha"], summary["pairwise_agreement"]
    return (  # None: one labeler alone has nobody to agree with
        f"Krippendorff's α {'–' if alpha is None else f'{alpha:.2f}'}, pairwise agreement "
        f"{'–' if pairwise is None else f'{pairwise:.2f}'}, "
        f"flagged: {', '.join(flagged) or 'none'}"
    )


def pairs_stage(run: Path, settings: PairsConfig, progress: Progress) -> str:
    from rlhfkit.data.jsonl import write_jsonl
    from rlhfkit.feedback.pairs import project_pairs

    result = project_pairs(run_store(run), PROJECT, settings.method, False, settings.min_tau)
    if not result.pairs:
        raise RlhfkitError("the rankings gave no pairs (every ranking a tie?)")
    write_jsonl(run / "pairs" / "pairs.jsonl", result.pairs)
    return f"{len(result.pairs)} pairs from {result.prompts} prompts, {result.ties} ties skipped"
