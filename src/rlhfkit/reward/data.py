"""Pairs grouped by prompt: each prompt's completions are scored once and all its pairs are
read off those scores, so a prompt's C(K,2) pairs cost K forward passes, not 2·C(K,2)."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rlhfkit.data.prompts import split_of
from rlhfkit.data.records import Pair
from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.transfer import read_records


@dataclass
class PromptPairs:
    prompt: str
    completions: list[str] = field(default_factory=list)
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (chosen, rejected) indices

    def index(self, text: str) -> int:
        if text not in self.completions:
            self.completions.append(text)
        return self.completions.index(text)


def group_pairs(pairs: Iterable[Pair]) -> list[PromptPairs]:
    """Group by prompt, first-seen order; a repeated (chosen, rejected) pair is kept once."""
    groups: dict[str, PromptPairs] = {}
    for pair in pairs:
        group = groups.setdefault(pair.prompt, PromptPairs(pair.prompt))
        key = (group.index(pair.chosen), group.index(pair.rejected))
        if key not in group.pairs:
            group.pairs.append(key)
    return list(groups.values())


def read_pairs(path: str | Path, fields: dict[str, str] | None = None) -> list[Pair]:
    """The pairs of a source (data/sources.py), `fields` renaming its columns."""
    records = read_records(path, fields=fields)
    pairs = [r for r in records if isinstance(r, Pair)]
    if len(pairs) != len(records):
        raise RlhfkitError(
            f"{path}: expected pairs ({{prompt, chosen, rejected}}), found "
            f"{len(records) - len(pairs)} other records"
        )
    return pairs


def split_by_prompt(
    groups: list[PromptPairs], eval_fraction: float, salt: str = "reward-model"
) -> tuple[list[PromptPairs], list[PromptPairs]]:
    """Train and eval groups, by a salted hash of the prompt: never by pair, so no prompt is
    on both sides; salted, so it is independent of the generate stage's train/eval split."""
    train = [g for g in groups if split_of(salt + g.prompt, eval_fraction) == "train"]
    held_out = [g for g in groups if split_of(salt + g.prompt, eval_fraction) == "eval"]
    return train, held_out


def pack_batches(
    groups: list[PromptPairs], pairs_per_batch: int, rng: random.Random | None = None
) -> list[list[PromptPairs]]:
    """Whole prompts per batch, up to `pairs_per_batch` pairs (a bigger prompt goes alone).

    Prompts of similar length share a batch, since a batch is padded to its longest text
    (on the relevance data this halves the time per pair); with `rng`, the lengths are
    jittered by ±10% so batches differ between epochs, and the batch order is shuffled."""

    def length(group: PromptPairs) -> float:
        size = len(group.prompt) + max(len(c) for c in group.completions)
        return size * (rng.uniform(0.9, 1.1) if rng else 1.0)

    batches: list[list[PromptPairs]] = []
    current: list[PromptPairs] = []
    size = 0
    for group in sorted(groups, key=length):
        if current and size + len(group.pairs) > pairs_per_batch:
            batches.append(current)
            current, size = [], 0
        current.append(group)
        size += len(group.pairs)
    if current:
        batches.append(current)
    if rng is not None:
        rng.shuffle(batches)
    return batches
