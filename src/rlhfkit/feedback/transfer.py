"""Importing feedback files into the store, and exporting it again as JSONL.

An import reads and validates the whole file first, then writes it in one transaction: a
bad line means nothing from the file is written. Importing the same data again changes
nothing; a labeler's new ranking of a prompt replaces their old one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import select

from rlhfkit.data.jsonl import read_jsonl
from rlhfkit.data.records import (
    Pair,
    PromptRecord,
    RankingRecord,
    Record,
    RecordError,
    ThumbsRecord,
    parse_record,
)
from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.store import (
    Completion,
    Labeler,
    Preference,
    Project,
    Prompt,
    Ranking,
    RankingItem,
    Registry,
    Store,
    Thumb,
    get_project,
)

EXPORT_KINDS = ("rankings", "thumbs", "pairs", "completions")


def read_records(path: str | Path, default_labeler: str | None = None) -> list[Record]:
    records = []
    for number, obj in read_jsonl(path):
        try:
            records.append(parse_record(obj, default_labeler))
        except RecordError as e:
            raise RlhfkitError(f"{path}:{number}: {e}") from None
    if not records:
        raise RlhfkitError(f"{path}: no records")
    return records


def import_records(
    store: Store,
    project_name: str,
    records: list[Record],
    default_labeler: str = "imported",
    criterion: str | None = None,
    instructions: str | None = None,
) -> Counter:
    """Write records in one transaction; returns counts such as `rankings created`."""
    counts: Counter = Counter()
    with store.session() as session:
        project = get_project(
            session, project_name, create=True, criterion=criterion, instructions=instructions
        )
        registry = Registry(session, project)
        for record in records:
            prompt = registry.prompt(record.prompt, getattr(record, "id", None))
            if isinstance(record, RankingRecord):
                labeler = registry.labeler(record.labeler, record.labeler_kind)
                ranks = {
                    registry.completion(prompt, text).id: rank
                    for text, rank in zip(record.completions, record.ranks, strict=True)
                }
                counts[f"rankings {put_ranking(session, prompt, labeler, ranks)}"] += 1
            elif isinstance(record, ThumbsRecord):
                labeler = registry.labeler(record.labeler, record.labeler_kind)
                completion = registry.completion(prompt, record.completion)
                counts[f"thumbs {_put_thumb(session, completion, labeler, record.label)}"] += 1
            elif isinstance(record, Pair):
                labeler = registry.labeler(record.labeler or default_labeler, record.labeler_kind)
                chosen = registry.completion(prompt, record.chosen)
                rejected = registry.completion(prompt, record.rejected)
                counts[f"pairs {_put_preference(session, chosen, rejected, labeler)}"] += 1
            else:
                assert isinstance(record, PromptRecord)
        for what, n in registry.created.items():
            counts[f"{what} created"] += n
    return +counts  # drop zero counts


def put_ranking(session, prompt: Prompt, labeler: Labeler, ranks: dict[int, int]) -> str:
    ranking = session.scalar(
        select(Ranking).where(Ranking.prompt_id == prompt.id, Ranking.labeler_id == labeler.id)
    )
    if ranking is None:
        session.add(
            Ranking(
                prompt_id=prompt.id,
                labeler_id=labeler.id,
                items=[RankingItem(completion_id=c, rank=r) for c, r in ranks.items()],
            )
        )
        return "created"
    if {i.completion_id: i.rank for i in ranking.items} == ranks:
        return "unchanged"
    ranking.items = [RankingItem(completion_id=c, rank=r) for c, r in ranks.items()]
    session.flush()
    return "updated"


def _put_thumb(session, completion: Completion, labeler: Labeler, label: str) -> str:
    thumb = session.scalar(
        select(Thumb).where(Thumb.completion_id == completion.id, Thumb.labeler_id == labeler.id)
    )
    if thumb is None:
        session.add(Thumb(completion_id=completion.id, labeler_id=labeler.id, label=label))
        return "created"
    if thumb.label == label:
        return "unchanged"
    thumb.label = label
    return "updated"


def _put_preference(session, chosen: Completion, rejected: Completion, labeler: Labeler) -> str:
    exists = session.scalar(
        select(Preference.id).where(
            Preference.chosen_id == chosen.id,
            Preference.rejected_id == rejected.id,
            Preference.labeler_id == labeler.id,
        )
    )
    if exists is not None:
        return "unchanged"
    session.add(Preference(chosen_id=chosen.id, rejected_id=rejected.id, labeler_id=labeler.id))
    session.flush()
    return "created"


def import_file(
    store: Store,
    project_name: str,
    path: str | Path,
    default_labeler: str | None = None,
    **project_fields: Any,
) -> Counter:
    """Import a JSONL file of rankings, thumbs, pairs, HH-RLHF pairs or prompts (mixed is fine)."""
    labeler = default_labeler or Path(path).stem
    return import_records(
        store, project_name, read_records(path, labeler), labeler, **project_fields
    )


def export_records(store: Store, project_name: str, kind: str) -> Iterator[dict[str, Any]]:
    """The project's records of one kind, in the JSONL formats `import_file` reads."""
    if kind not in EXPORT_KINDS:
        raise RlhfkitError(f"unknown export kind '{kind}'; choose from {', '.join(EXPORT_KINDS)}")
    with store.session() as session:
        project = get_project(session, project_name)
        yield from _EXPORTERS[kind](session, project)


def _export_rankings(session, project: Project) -> Iterator[dict[str, Any]]:
    rankings = session.scalars(
        select(Ranking).join(Prompt).where(Prompt.project_id == project.id).order_by(Ranking.id)
    )
    for ranking in rankings:
        texts = {c.id: c.text for c in session.get(Prompt, ranking.prompt_id).completions}
        yield {
            "prompt": session.get(Prompt, ranking.prompt_id).text,
            "completions": [texts[i.completion_id] for i in ranking.items],
            "ranks": [i.rank for i in ranking.items],
            "labeler": ranking.labeler.name,
            "labeler_kind": ranking.labeler.kind,
        }


def _export_thumbs(session, project: Project) -> Iterator[dict[str, Any]]:
    thumbs = session.scalars(
        select(Thumb)
        .join(Completion)
        .join(Prompt)
        .where(Prompt.project_id == project.id)
        .order_by(Thumb.id)
    )
    for thumb in thumbs:
        yield {
            "prompt": thumb.completion.prompt.text,
            "completion": thumb.completion.text,
            "label": thumb.label,
            "labeler": thumb.labeler.name,
            "labeler_kind": thumb.labeler.kind,
        }


def _export_pairs(session, project: Project) -> Iterator[dict[str, Any]]:
    preferences = session.scalars(
        select(Preference)
        .join(Completion, Preference.chosen_id == Completion.id)
        .join(Prompt)
        .where(Prompt.project_id == project.id)
        .order_by(Preference.id)
    )
    for p in preferences:
        yield {
            "prompt": p.chosen.prompt.text,
            "chosen": p.chosen.text,
            "rejected": p.rejected.text,
            "labeler": p.labeler.name,
            "labeler_kind": p.labeler.kind,
        }


def _export_completions(session, project: Project) -> Iterator[dict[str, Any]]:
    """One line per prompt, its completions in order: a ranking file minus labeler and ranks."""
    for prompt in session.scalars(
        select(Prompt).where(Prompt.project_id == project.id).order_by(Prompt.id)
    ):
        yield {
            "id": prompt.external_id or str(prompt.id),
            "prompt": prompt.text,
            "split": prompt.split,
            "completions": [c.text for c in prompt.completions],
        }


_EXPORTERS = {
    "rankings": _export_rankings,
    "thumbs": _export_thumbs,
    "pairs": _export_pairs,
    "completions": _export_completions,
}
