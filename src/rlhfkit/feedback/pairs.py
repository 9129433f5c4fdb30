"""Rankings, thumbs and imported pairs from the store -> (chosen, rejected) training pairs.

A ranking of n completions gives its C(n, 2) pairs, the better-ranked one as `chosen`, ties
skipped. Several labelers' rankings of one prompt are first merged into a consensus over
the labelers that are not flagged as poor (agreement.py); an admin's adjudication of a
prompt, made in the labeling app, replaces that consensus. Gold prompts, whose ranking is
known and which serve to measure labelers, give no pairs and count in no agreement.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.agreement import Rankings, flagged_labelers
from rlhfkit.feedback.consensus import METHODS, Ranking
from rlhfkit.feedback.store import (
    Adjudication,
    Completion,
    Gold,
    Labeler,
    Preference,
    Project,
    Prompt,
    RankingItem,
    Store,
    Thumb,
    get_project,
)
from rlhfkit.feedback.store import (
    Ranking as RankingRow,
)


def ranking_pairs(order: Sequence[Hashable], ranking: Ranking) -> tuple[list[tuple], int]:
    """All C(n, 2) pairs of the ranked items in `order`, as (chosen, rejected); and the
    number of ties skipped."""
    pairs, ties = [], 0
    ranked = [item for item in order if item in ranking]
    for a, b in combinations(ranked, 2):
        if ranking[a] == ranking[b]:
            ties += 1
        else:
            pairs.append((a, b) if ranking[a] < ranking[b] else (b, a))
    return pairs, ties


def _is_gold():
    return exists().where(Gold.prompt_id == Prompt.id)


def load_rankings(session: Session, project: Project, gold: bool = False) -> Rankings:
    """prompt id -> labeler name -> completion id -> rank, of the ordinary prompts (or, with
    `gold`, of the gold prompts only)."""
    rows = session.execute(
        select(RankingRow.prompt_id, Labeler.name, RankingItem.completion_id, RankingItem.rank)
        .join(RankingItem, RankingItem.ranking_id == RankingRow.id)
        .join(Labeler, RankingRow.labeler_id == Labeler.id)
        .join(Prompt, RankingRow.prompt_id == Prompt.id)
        .where(Prompt.project_id == project.id, _is_gold() if gold else ~_is_gold())
        .order_by(RankingRow.prompt_id, Labeler.name, RankingItem.completion_id)
    ).all()
    rankings: Rankings = defaultdict(dict)
    for prompt_id, labeler, completion_id, rank in rows:
        rankings[prompt_id].setdefault(labeler, {})[completion_id] = rank
    return dict(rankings)


def load_thumbs_as_ranks(session: Session, project: Project) -> Rankings:
    """prompt id -> labeler name -> completion id -> 1 (up) or 2 (down), of the ordinary
    prompts: thumbs read as rankings with ties, so the agreement measures apply unchanged
    (a comparison is a completion one labeler put up and another down)."""
    rows = session.execute(
        select(Completion.prompt_id, Labeler.name, Completion.id, Thumb.label)
        .join(Thumb, Thumb.completion_id == Completion.id)
        .join(Labeler, Thumb.labeler_id == Labeler.id)
        .join(Prompt, Completion.prompt_id == Prompt.id)
        .where(Prompt.project_id == project.id, ~_is_gold())
        .order_by(Completion.prompt_id, Labeler.name, Completion.id)
    ).all()
    rankings: Rankings = defaultdict(dict)
    for prompt_id, labeler, completion_id, label in rows:
        rankings[prompt_id].setdefault(labeler, {})[completion_id] = 1 if label == "up" else 2
    return dict(rankings)


def load_labels(session: Session, project: Project) -> Rankings:
    """The labels a project collects, as rankings: its rankings, or its thumbs as ranks."""
    if project.mode == "thumbs":
        return load_thumbs_as_ranks(session, project)
    return load_rankings(session, project)


@dataclass
class PairsResult:
    pairs: list[dict[str, Any]] = field(default_factory=list)
    prompts: int = 0
    ties: int = 0
    excluded: list[str] = field(default_factory=list)


def project_pairs(
    store: Store,
    project: str,
    method: str = "borda",
    per_labeler: bool = False,
    min_tau: float | None = 0.2,
) -> PairsResult:
    """`build_pairs` for the project of that name in `store`."""
    if method not in METHODS:
        raise RlhfkitError(f"unknown consensus method '{method}'; choose borda or tideman")
    with store.session(read_only=True) as session:
        return build_pairs(session, get_project(session, project), method, per_labeler, min_tau)


def build_pairs(
    session: Session,
    project: Project,
    method: str = "borda",
    per_labeler: bool = False,
    min_tau: float | None = 0.2,
) -> PairsResult:
    """Training pairs for a project; `min_tau=None` keeps every labeler."""
    rankings = load_rankings(session, project)
    excluded = set() if min_tau is None else flagged_labelers(rankings, method, min_tau)
    prompts = {
        p.id: p for p in session.scalars(select(Prompt).where(Prompt.project_id == project.id))
    }
    texts = dict(
        session.execute(
            select(Completion.id, Completion.text)
            .join(Prompt)
            .where(Prompt.project_id == project.id)
        ).all()
    )
    result = PairsResult(excluded=sorted(excluded))
    seen: set[tuple[int, int]] = set()
    used_prompts: set[int] = set()

    def emit(prompt_id: int, chosen: int, rejected: int, source: str, labelers: list[str]) -> None:
        key = (chosen, rejected) if not per_labeler else (chosen, rejected, tuple(labelers))
        if key in seen:
            return
        seen.add(key)
        used_prompts.add(prompt_id)
        prompt = prompts[prompt_id]
        record = {
            "prompt": prompt.text,
            **prompt.messages_field(),
            "chosen": texts[chosen],
            "rejected": texts[rejected],
            "prompt_id": prompt.external_id or str(prompt.id),
            "split": prompt.split,
            "source": source,
        }
        record["labeler" if per_labeler else "labelers"] = labelers[0] if per_labeler else labelers
        result.pairs.append(record)

    adjudicated = {} if per_labeler else latest_adjudications(session, project)
    for prompt_id in sorted(rankings.keys() | adjudicated.keys()):
        kept = {name: r for name, r in rankings.get(prompt_id, {}).items() if name not in excluded}
        if prompt_id in adjudicated:
            ranking = adjudicated[prompt_id]
            groups = [(ranking, sorted(kept), "adjudication")]
        elif per_labeler:
            groups = [(r, [name], "ranking") for name, r in sorted(kept.items())]
        elif kept:
            groups = [(METHODS[method](list(kept.values())), sorted(kept), "ranking")]
        else:
            continue
        for ranking, labelers, source in groups:
            pairs, ties = ranking_pairs(sorted(ranking), ranking)  # in completion id order
            result.ties += ties
            for chosen, rejected in pairs:
                emit(prompt_id, chosen, rejected, source, labelers)

    for prompt_id, chosen, rejected, labelers in _thumbs_pairs(
        session, project, excluded, per_labeler
    ):
        emit(prompt_id, chosen, rejected, "thumbs", labelers)
    for prompt_id, chosen, rejected, labelers in _imported_pairs(
        session, project, excluded, per_labeler
    ):
        emit(prompt_id, chosen, rejected, "pair", labelers)
    result.prompts = len(used_prompts)
    return result


def latest_adjudications(session: Session, project: Project) -> dict[int, Ranking]:
    """prompt id -> the ranks of its newest adjudication (completion id -> rank)."""
    rows = session.execute(
        select(Adjudication.prompt_id, Adjudication.ranks)
        .join(Prompt)
        .where(Prompt.project_id == project.id, ~_is_gold())
        .order_by(Adjudication.id)
    ).all()
    return {prompt_id: {int(c): r for c, r in ranks.items()} for prompt_id, ranks in rows}


def _majority(votes: dict[Any, list[str]]) -> Any | None:
    """The option with the most votes, or None on a tie."""
    ranked = sorted(votes.items(), key=lambda kv: -len(kv[1]))
    if not ranked or (len(ranked) > 1 and len(ranked[0][1]) == len(ranked[1][1])):
        return None
    return ranked[0][0]


def _thumbs_pairs(session, project, excluded, per_labeler) -> Iterator[tuple]:
    """Every "up" completion of a prompt beats every "down" one; several labelers' thumbs on
    one completion are decided by majority (ties give no label)."""
    rows = session.execute(
        select(Completion.prompt_id, Completion.id, Labeler.name, Thumb.label)
        .join(Thumb, Thumb.completion_id == Completion.id)
        .join(Labeler, Thumb.labeler_id == Labeler.id)
        .join(Prompt, Completion.prompt_id == Prompt.id)
        .where(
            Prompt.project_id == project.id,
            Labeler.name.not_in(sorted(excluded)),
            ~_is_gold(),
        )
        .order_by(Completion.prompt_id, Completion.id)
    ).all()
    # group -> completion -> label -> labelers; a group is a prompt (or prompt and labeler)
    groups: dict[tuple, dict[int, dict[str, list[str]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for prompt_id, completion_id, labeler, label in rows:
        group = (prompt_id, labeler) if per_labeler else (prompt_id,)
        groups[group][completion_id][label].append(labeler)
    for group, completions in groups.items():
        decided = {
            c: (_majority(votes), sorted({n for ns in votes.values() for n in ns}))
            for c, votes in completions.items()
        }
        ups = [(c, names) for c, (label, names) in decided.items() if label == "up"]
        downs = [(c, names) for c, (label, names) in decided.items() if label == "down"]
        for up, up_names in ups:
            for down, down_names in downs:
                yield group[0], up, down, sorted(set(up_names) | set(down_names))


def _imported_pairs(session, project, excluded, per_labeler) -> Iterator[tuple]:
    """Imported pairs; when labelers contradict each other on a pair, the majority decides."""
    rows = session.execute(
        select(Completion.prompt_id, Preference.chosen_id, Preference.rejected_id, Labeler.name)
        .join(Completion, Preference.chosen_id == Completion.id)
        .join(Labeler, Preference.labeler_id == Labeler.id)
        .join(Prompt, Completion.prompt_id == Prompt.id)
        .where(
            Prompt.project_id == project.id,
            Labeler.name.not_in(sorted(excluded)),
            ~_is_gold(),
        )
        .order_by(Preference.id)
    ).all()
    if per_labeler:
        for prompt_id, chosen, rejected, labeler in rows:
            yield prompt_id, chosen, rejected, [labeler]
        return
    votes: dict[tuple, dict[tuple[int, int], list[str]]] = defaultdict(lambda: defaultdict(list))
    for prompt_id, chosen, rejected, labeler in rows:
        votes[(prompt_id, frozenset((chosen, rejected)))][(chosen, rejected)].append(labeler)
    for (prompt_id, _), options in votes.items():
        winner = _majority(options)
        if winner is not None:
            yield prompt_id, winner[0], winner[1], sorted(options[winner])
