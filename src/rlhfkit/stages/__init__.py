"""Stages: each reads its inputs from files and the store, writes its outputs there, and can
be run alone (CLI), from Python, or as a step of a pipeline.

Each module holds one stage's runner for a pipeline run directory: given the directory, the
stage's settings and a `Progress`, it calls the domain API (feedback, reward, train, eval),
writes the stage's folder and returns a one-line summary. Ordering, done-markers and the
run directory's checks are the pipeline's.
"""

from __future__ import annotations

from pathlib import Path

PROJECT = "run"  # the feedback project inside a run's own store


def run_store(run: Path):
    """The run directory's own SQLite feedback store."""
    from rlhfkit.feedback.store import Store

    return Store(f"sqlite:///{run / 'feedback.db'}")


def resume_or_clear(out: Path, made_by: str) -> bool:
    """Whether a trainer's folder holds a checkpoint to resume from; without one, what a run
    killed before its first checkpoint left there is removed, to start afresh."""
    from rlhfkit.files import remove_ours
    from rlhfkit.train.checkpoint import CHECKPOINT

    if (out / CHECKPOINT).exists():
        return True
    remove_ours(out, made_by)
    return False
