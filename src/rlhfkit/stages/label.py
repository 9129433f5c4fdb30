"""The label stage: automatic labelers, each with its own noise, rank the run's completions."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from rlhfkit.config import StageConfig
from rlhfkit.files import atomic_write
from rlhfkit.progress import Progress
from rlhfkit.stages import PROJECT, run_store


class Labeler(StageConfig):
    setting = "labeler setting"
    name: str
    reward: str = "scorer:profanity"
    noise: float = Field(0.5, ge=0, description="in standard deviations of the reward")
    seed: int = 0


def _three_labelers() -> list[Labeler]:
    return [Labeler(name=f"ai-{k}", seed=k) for k in (1, 2, 3)]


class LabelStage(StageConfig):
    setting = "label setting"
    labelers: list[Labeler] = Field(default_factory=_three_labelers, min_length=1)


def label_stage(run: Path, settings: LabelStage, progress: Progress) -> str:
    from rlhfkit.reward import load_reward
    from rlhfkit.reward.labelers import auto_label

    store = run_store(run)
    counts = {}
    for labeler in settings.labelers:
        ranked = auto_label(
            store,
            PROJECT,
            load_reward(labeler.reward),
            labeler.name,
            labeler.noise,
            labeler.seed,
            progress=progress,
        )
        counts[labeler.name] = sum(ranked.values())
    atomic_write(run / "label" / "labels.json", json.dumps(counts, indent=2))
    return ", ".join(f"{name}: {n} rankings" for name, n in counts.items())
