"""Automatic labelers, a source of feedback: rank each prompt's completions by a reward,
optionally with noise, and store the rankings as a labeler's.

Several noisy labelers disagree realistically, which lets the whole pipeline (agreement,
consensus, pairs, reward model) run without people; with a constitution-following judge as
the reward it is the first step of RL from AI feedback.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from rlhfkit.data.records import RankingRecord
from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.consensus import ranks_from_scores
from rlhfkit.feedback.store import Prompt, Store, get_project
from rlhfkit.feedback.transfer import import_records
from rlhfkit.progress import Progress


def noisy_ranks(rewards: np.ndarray, noise: float, rng: np.random.Generator) -> list[int]:
    """Competition ranks (1 = highest reward) after adding N(0, noise²) to each reward."""
    noisy = rewards + rng.normal(0.0, noise, size=len(rewards)) if noise > 0 else rewards
    return list(ranks_from_scores(dict(enumerate(noisy.tolist()))).values())


def project_prompts(
    store: Store, project: str, split: str | None = None
) -> list[tuple[str, list[str]]]:
    """(prompt, completions) of the project's prompts (of one split, if given) that have two
    or more completions, in the order they were added; an error when there is none."""
    with store.session(read_only=True) as session:
        query = (
            select(Prompt)
            .where(Prompt.project_id == get_project(session, project).id)
            .options(selectinload(Prompt.completions))  # in one query, not one per prompt
            .order_by(Prompt.id)
        )
        if split:
            query = query.where(Prompt.split == split)
        prompts = [(p.text, [c.text for c in p.completions]) for p in session.scalars(query)]
    prompts = [p for p in prompts if len(p[1]) >= 2]
    if not prompts:
        raise RlhfkitError(f"project '{project}' has no prompt with two or more completions")
    return prompts


def auto_label(
    store: Store,
    project: str,
    reward: Callable,
    labeler: str,
    noise: float = 0.0,
    seed: int = 0,
    split: str | None = None,
    progress: Progress | None = None,
) -> Counter:
    """Rank every prompt of `project` (of one split, if given) with ≥ 2 completions, as the
    AI labeler `labeler`. `noise` is in units of the standard deviation of the rewards over
    all the completions, so σ = 1 blurs differences as large as the typical spread.

    Every ranking is made first, then written in bulk in one short transaction: the store's
    write lock is not held while ranking. Returns the counts `rankings created/updated/
    unchanged`. `reward` is any reward (reward/specs.py): called on (prompts, completions),
    it gives a tensor of scores, and it has a `name`."""
    if noise < 0:
        raise RlhfkitError("noise must be >= 0")
    prompts = project_prompts(store, project, split)
    texts = [(text, completion) for text, completions in prompts for completion in completions]
    rewards = reward([t[0] for t in texts], [t[1] for t in texts]).double().numpy()
    if not np.isfinite(rewards).all():
        raise RlhfkitError(f"{reward.name} gave non-finite rewards")
    scale = noise * (rewards.std() if rewards.std() > 0 else 1.0)
    rng = np.random.default_rng(seed)
    records = []
    offset = 0
    progress = progress or Progress()
    progress.start(f"labeler {labeler}", len(prompts))
    for text, completions in prompts:
        ranks = noisy_ranks(rewards[offset : offset + len(completions)], scale, rng)
        offset += len(completions)
        records.append(RankingRecord(text, tuple(completions), tuple(ranks), labeler, "ai"))
        progress.advance(1)
    counts = import_records(store, project, records, progress=progress)
    return Counter({key: n for key, n in counts.items() if key.startswith("rankings ")})
