"""Constitutional AI's stage 1 in a run: revise (red-team prompts answered, criticised and
revised into RUN/revise/, every round kept in the run's store) and sft (a policy fine-tuned
on the revisions, in RUN/sft/, which generate and PPO then start from)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from rlhfkit.config import StageConfig
from rlhfkit.progress import Progress
from rlhfkit.stages import resume_or_clear, run_store

if TYPE_CHECKING:
    from rlhfkit.train.sft import SFTConfig

REVISE_PROJECT = "cai-revise"


class ReviseConfig(StageConfig):
    """A pipeline's `revise:` section: Constitutional AI's stage 1 (critique and revision)."""

    setting = "revise setting"
    renamed = {"model": "policy"}
    prompts: str = Field("builtin:redteam", description="red-team prompts to answer")
    limit: int | None = Field(64, ge=1, description="red-team prompts of the train split")
    constitution: str = Field(
        "builtin:default", description="builtin:NAME or a YAML file of principles"
    )
    policy: str | None = Field(
        None, description="who answers and revises: a model or an endpoint (default: the run's)"
    )
    endpoint_model: str | None = Field(
        None, description="the model an endpoint serves, when policy is a URL"
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="the environment variable holding an endpoint's API key"
    )
    rounds: int = Field(1, ge=1, description="critique-and-revision rounds a prompt")
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.7, ge=0)
    batch_size: int = Field(16, ge=1)
    filter_reward: str | None = Field(
        "scorer:profanity",
        description="reward spec a revision must not score worse under; null: no such check",
    )
    filter_margin: float = Field(1.0, ge=0, description="a drop in the reward that counts")


def revise_stage(
    run: Path, settings: ReviseConfig, model: str, eval_fraction: float, seed: int, progress
) -> str:
    from rlhfkit.cai.constitution import load_constitution
    from rlhfkit.cai.revise import ReviseSettings, export_revisions, revise
    from rlhfkit.data.prompts import load_prompts
    from rlhfkit.models.backends import open_backend

    constitution = load_constitution(settings.constitution)
    prompts = load_prompts(settings.prompts, "train", eval_fraction, settings.limit)
    backend = open_backend(
        settings.policy or model,
        settings.endpoint_model,
        batch_size=settings.batch_size,
        api_key_env=settings.api_key_env,
    )
    store = run_store(run)
    options = ReviseSettings(
        settings.rounds, settings.max_new_tokens, settings.temperature, settings.batch_size, seed
    )
    revise(store, REVISE_PROJECT, prompts, backend, constitution, options, progress)
    kept = export_revisions(
        store,
        REVISE_PROJECT,
        run / "revise",
        settings.filter_reward,
        settings.rounds,
        settings.filter_margin,
    )
    return ", ".join(f"{n} {what}" for what, n in sorted(kept.items()))


def sft_stage(run: Path, config: SFTConfig, progress: Progress) -> str:
    """SFT in RUN/sft on RUN/revise/revisions.jsonl, resuming from its checkpoint if any."""
    from rlhfkit.train.sft import MADE_BY, held_out_line, train_sft

    out = run / "sft"
    resume = resume_or_clear(out, MADE_BY)
    summary = train_sft(run / "revise" / "revisions.jsonl", out, config, resume, progress)
    return (
        f"{summary['examples']['train']} revisions, {summary['steps']} steps, "
        f"{held_out_line(summary)}"
    )
