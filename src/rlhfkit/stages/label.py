"""The label stage: automatic labelers rank the run's completions: by a reward with noise of
their own, or (with `judge`) as an AI judge reading a constitution."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from rlhfkit.config import StageConfig
from rlhfkit.files import atomic_write
from rlhfkit.progress import Progress
from rlhfkit.stages import PROJECT, run_store


class LabelerConfig(StageConfig):
    """One labeler of a pipeline's `label:` section: an automatic labeler or an AI judge."""

    setting = "labeler setting"
    renamed = {"judge_model": "endpoint_model", "reference": "check_against"}
    name: str = Field(description="the labeler's name in the store")
    reward: str = Field("scorer:profanity", description="reward spec it ranks by")
    noise: float = Field(0.5, ge=0, description="in standard deviations of the reward")
    seed: int = Field(0, description="of its noise")
    # An AI judge instead of a reward (`rlhfkit label judge`): a model or an endpoint's URL.
    judge: str | None = Field(
        None, description="an AI judge instead of a reward: a model or an endpoint's URL"
    )
    endpoint_model: str | None = Field(None, description="the model an endpoint judge serves")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="the environment variable holding an endpoint's API key"
    )
    constitution: str = Field("builtin:default", description="the judge's constitution")
    check_against: str = Field(
        "scorer:profanity", description="what the judge is checked against: a scorer, or people"
    )
    min_agreement: float = Field(
        0.55,
        ge=0,
        le=1,
        description="the judge is refused at or below this agreement with what it is checked "
        "against",
    )
    force: bool = Field(False, description="label even with a judge that fails the check")


def _three_labelers() -> list[LabelerConfig]:
    return [LabelerConfig(name=f"ai-{k}", seed=k) for k in (1, 2, 3)]


class LabelConfig(StageConfig):
    """A pipeline's `label:` section: the labelers that rank the completions."""

    setting = "label setting"
    labelers: list[LabelerConfig] = Field(default_factory=_three_labelers, min_length=1)


def label_stage(run: Path, settings: LabelConfig, progress: Progress) -> str:
    from rlhfkit.feedback.labelers import auto_label
    from rlhfkit.reward import load_reward

    store = run_store(run)
    counts = {}
    for labeler in settings.labelers:
        if labeler.judge:
            counts[labeler.name] = _judge(run, store, labeler, progress)
            continue
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


def _judge(run: Path, store, labeler: LabelerConfig, progress: Progress) -> int:
    """Rank with an AI judge; its report (agreement with the reference, position bias) goes
    to RUN/label/judge-NAME.json."""
    from rlhfkit.cai.constitution import load_constitution
    from rlhfkit.cai.label import judge_label
    from rlhfkit.models.backends import open_backend

    report = judge_label(
        store,
        PROJECT,
        open_backend(labeler.judge, labeler.endpoint_model, api_key_env=labeler.api_key_env),
        load_constitution(labeler.constitution),
        labeler=labeler.name,
        reference=labeler.check_against,
        min_agreement=labeler.min_agreement,
        force=labeler.force,
        seed=labeler.seed,
        progress=progress,
    )
    atomic_write(
        run / "label" / f"judge-{labeler.name}.json", json.dumps(report.as_dict(), indent=2)
    )
    progress.note(f"   judge {labeler.name}: {report.check_line()}")
    return report.prompts_ranked + report.prompts_already_ranked
