"""The train-rm, dpo and ppo stages: a reward model on the run's pairs, DPO on the same
pairs, then PPO against the reward model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rlhfkit.formatting import dash
from rlhfkit.progress import Progress
from rlhfkit.stages import resume_or_clear

if TYPE_CHECKING:
    from rlhfkit.train.dpo import DPOConfig
    from rlhfkit.train.ppo.step import PPOConfig
    from rlhfkit.train.reward_model import RMConfig


def train_rm_stage(run: Path, pairs: Path, config: RMConfig, progress: Progress) -> str:
    """Trains a reward model on `pairs` into RUN/rm (the run's own RUN/pairs/pairs.jsonl or,
    for one seed of a run over seeds, the pairs its seeds share), resuming from its
    checkpoint if it has one."""
    from rlhfkit.train.reward_model import train_reward_model

    out = run / "rm"
    resume = resume_or_clear(out, "train-rm")
    summary = train_reward_model(pairs, out, config, progress, resume)
    accuracy = summary.get("metrics", {}).get("eval_accuracy")
    return "held-out pair accuracy " + dash(accuracy, ".3f")


def dpo_stage(run: Path, pairs: Path, config: DPOConfig, progress: Progress) -> str:
    """DPO in RUN/dpo on `pairs`, resuming from its checkpoint if it has one."""
    from rlhfkit.train.dpo import MADE_BY, held_out_line, train_dpo

    out = run / "dpo"
    resume = resume_or_clear(out, MADE_BY)
    summary = train_dpo(pairs, out, config, resume, progress)
    return f"{summary['steps']} steps, {held_out_line(summary)}"


def ppo_stage(run: Path, config: PPOConfig, progress: Progress) -> str:
    """PPO in RUN/ppo, resuming from its checkpoint if it has one."""
    from rlhfkit.train.ppo.trainer import run_ppo

    out = run / "ppo"
    resume = resume_or_clear(out, "ppo")
    result = run_ppo(config, out, resume=resume, progress=progress)
    return (
        f"{result['steps']} steps ({result['stopped']}), last mean reward "
        f"{result.get('reward_mean', float('nan')):+.3f}, KL {result.get('kl', float('nan')):.2f}"
    )
