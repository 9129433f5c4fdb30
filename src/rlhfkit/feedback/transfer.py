"""Importing feedback files into the store, and exporting it again as JSONL.

An import reads and validates the whole file and looks up what the store already holds
before it writes anything; then it writes in bulk, in one short transaction, so it holds the
store's write lock for as little time as it can. A bad line means nothing from the file is
written; importing the same data again changes nothing; a labeler's new ranking of a prompt
replaces their old one. Every record names its labeler, or the import is given one for the
records that do not (`labeler=`, `--labeler NAME`): never a default, which could fold one
person's rankings into another's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.orm import Session

from rlhfkit.data.jsonl import write_jsonl
from rlhfkit.data.records import (
    MISSING_LABELER,
    PromptRecord,
    RankingRecord,
    Record,
    RecordError,
    ThumbsRecord,
    parse_record,
)
from rlhfkit.data.sources import is_dataset_source, read_source
from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.store import (
    Completion,
    Labeler,
    Preference,
    Project,
    Prompt,
    Ranking,
    RankingItem,
    Store,
    Thumb,
    check_labeler_kind,
    ensure_project,
    get_project,
    insert_rows,
    text_key,
)
from rlhfkit.progress import Progress

EXPORT_KINDS = ("rankings", "thumbs", "pairs", "completions")
CHUNK = 1000  # rows one statement writes, or keys one statement looks up
SKIPPED_SINGLE = "rankings of a single completion skipped"


def read_records(
    path: str | Path, default_labeler: str | None = None, fields: dict | None = None
) -> list[Record]:
    """Every record of a source (data/sources.py: JSONL, Parquet, CSV, JSON, a saved or Hub
    dataset), validated; a bad one raises `SOURCE:N: why`. A record may leave its labeler out.
    `fields` renames columns ({"prompt": "question"})."""
    records = [record for _, record in _parse_file(path, default_labeler, fields=fields)]
    if not records:
        raise RlhfkitError(f"{path}: no records")
    return records


def read_feedback(
    path: str | Path,
    labeler: str | None = None,
    progress: Progress | None = None,
    fields: dict | None = None,
) -> list[Record]:
    """A source's records for import: each names its labeler, or is given `labeler`.
    `progress` counts the bytes read (of a JSONL file)."""
    records = [record for _, record in _parse_file(path, labeler, progress, True, fields=fields)]
    if not records:
        raise RlhfkitError(f"{path}: no records")
    return records


def _parse_file(
    path: str | Path,
    default_labeler: str | None,
    progress: Progress | None = None,
    require_labeler: bool = False,
    fields: dict | None = None,
) -> Iterator[tuple[int, Record]]:
    for number, obj in read_source(path, fields, _byte_counter(path, progress)):
        try:
            yield number, parse_record(obj, default_labeler, require_labeler)
        except RecordError as e:
            raise RlhfkitError(f"{path}:{number}: {e}") from None


def _byte_counter(path: str | Path, progress: Progress | None) -> Callable[[int], None] | None:
    """Reports the bytes read every 256 KiB and at the end of the file."""
    if progress is None or is_dataset_source(path):
        return None
    try:
        total = Path(path).stat().st_size
    except OSError:
        return None  # read_jsonl says why it cannot read the file
    progress.start(f"reading {Path(path).name}", total)
    done = reported = 0

    def count(n: int) -> None:
        nonlocal done, reported
        done += n
        if done - reported >= 1 << 18 or done >= total:
            progress.advance(done - reported)
            reported = done

    return count


def import_file(
    store: Store,
    project_name: str,
    path: str | Path,
    labeler: str | None = None,
    progress: Progress | None = None,
    **project_fields: Any,
) -> Counter:
    """Import a JSONL file of rankings, thumbs, pairs, HH-RLHF pairs or prompts (mixed is
    fine); `labeler` names the labeler of the records that name none."""
    records = read_feedback(path, labeler, progress)
    return import_records(store, project_name, records, labeler, progress, **project_fields)


def import_records(
    store: Store,
    project_name: str,
    records: Iterable[Record],
    labeler: str | None = None,
    progress: Progress | None = None,
    criterion: str | None = None,
    instructions: str | None = None,
) -> Counter:
    """Write records in one transaction; returns counts such as `rankings created`.

    `labeler` is the labeler of the records that name none; a record that needs one and has
    none is an error. A ranking of a single completion has nothing to rank: it is skipped
    and counted."""
    batch = collect(records, labeler)
    found = look_up(store, project_name, batch)
    counts = batch.skipped + classify(batch, found)
    if nothing_to_write(batch, found):
        return +counts  # a repeated import takes no write lock at all
    with store.session() as session:
        writer = _Writer(session, batch, found, progress or Progress())
        counts += writer.write(project_name, criterion, instructions)
    return +counts  # drop zero counts


# --- 1. what the records ask for, keyed by text hashes and labeler names -----------------

PromptKey = str  # text_key of the prompt
CompletionKey = tuple[str, str]  # (prompt key, text_key of the completion)


@dataclass
class Batch:
    """An import's content, with duplicates merged: a later ranking or thumbs of the same
    labeler and texts replaces an earlier one, as a later import does; a prompt keeps the
    first id given it, as the store keeps the id a prompt has."""

    prompts: dict[PromptKey, str] = field(default_factory=dict)
    external_ids: dict[PromptKey, str] = field(default_factory=dict)
    messages: dict[PromptKey, str] = field(default_factory=dict)  # a conversation's, as JSON
    completions: dict[CompletionKey, str] = field(default_factory=dict)
    labelers: dict[str, str | None] = field(default_factory=dict)  # name -> kind, if given
    rankings: dict[tuple[PromptKey, str], dict[CompletionKey, int]] = field(default_factory=dict)
    thumbs: dict[tuple[CompletionKey, str], str] = field(default_factory=dict)
    preferences: set[tuple[CompletionKey, CompletionKey, str]] = field(default_factory=set)
    skipped: Counter = field(default_factory=Counter)
    _keys: dict[str, str] = field(default_factory=dict)

    def prompt(self, text: str) -> PromptKey:
        key = self._keys.get(text)
        if key is None:
            key = self._keys[text] = text_key(text)
        self.prompts[key] = text
        return key

    def completion(self, prompt: PromptKey, text: str) -> CompletionKey:
        key = (prompt, text_key(text))
        self.completions[key] = text
        return key

    def labeler(self, name: str, kind: str | None) -> str:
        known = self.labelers.get(name)
        if kind is not None and known is not None and known != kind:
            raise RlhfkitError(f"labeler '{name}' is given as both {known} and {kind}")
        self.labelers[name] = known or kind
        return name


def collect(records: Iterable[Record], labeler: str | None = None) -> Batch:
    batch = Batch()
    for number, record in enumerate(records, start=1):
        if isinstance(record, RankingRecord) and len(record.completions) < 2:
            batch.skipped[SKIPPED_SINGLE] += 1
            continue
        prompt = batch.prompt(record.prompt)
        if record.messages is not None:
            batch.messages.setdefault(prompt, record.messages)
        if isinstance(record, PromptRecord):
            if record.id is not None:
                batch.external_ids.setdefault(prompt, record.id)
            continue
        name = record.labeler or labeler
        if name is None:  # a file's records are checked as they are read, with FILE:LINE
            raise RlhfkitError(f"record {number}: {MISSING_LABELER}")
        who = batch.labeler(name, record.labeler_kind)
        if isinstance(record, RankingRecord):
            batch.rankings[prompt, who] = {
                batch.completion(prompt, text): rank
                for text, rank in zip(record.completions, record.ranks, strict=True)
            }
        elif isinstance(record, ThumbsRecord):
            batch.thumbs[batch.completion(prompt, record.completion), who] = record.label
        else:
            chosen = batch.completion(prompt, record.chosen)
            batch.preferences.add((chosen, batch.completion(prompt, record.rejected), who))
    return batch


# --- 2. what the store holds already, read before the write transaction ------------------


@dataclass
class Found:
    """Ids of what the store holds of a batch, and its existing feedback on them."""

    project: int | None = None
    labelers: dict[str, int] = field(default_factory=dict)
    prompts: dict[PromptKey, int] = field(default_factory=dict)
    unnamed_prompts: set[int] = field(default_factory=set)  # prompts without an external id
    completions: dict[CompletionKey, int] = field(default_factory=dict)
    rankings: dict[tuple[PromptKey, str], dict[CompletionKey, int]] = field(default_factory=dict)
    thumbs: dict[tuple[CompletionKey, str], str] = field(default_factory=dict)
    preferences: set[tuple[CompletionKey, CompletionKey, str]] = field(default_factory=set)


def chunks(items: list, size: int = CHUNK) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def look_up(store: Store, project_name: str, batch: Batch) -> Found:
    found = Found()
    with store.session(read_only=True) as session:
        found.project = session.scalar(select(Project.id).where(Project.name == project_name))
        names = sorted(batch.labelers)
        for part in chunks(names):
            rows = session.execute(
                select(Labeler.name, Labeler.id, Labeler.kind).where(Labeler.name.in_(part))
            )
            for name, id_, kind in rows:
                check_labeler_kind(name, kind, batch.labelers[name])
                found.labelers[name] = id_
        if found.project is not None:
            _look_up_texts(session, found, batch)
            _look_up_feedback(session, found)
    return found


def _look_up_texts(session: Session, found: Found, batch: Batch) -> None:
    for part in chunks(sorted(batch.prompts)):
        rows = session.execute(
            select(Prompt.text_key, Prompt.id, Prompt.external_id).where(
                Prompt.project_id == found.project, Prompt.text_key.in_(part)
            )
        )
        for key, id_, external_id in rows:
            found.prompts[key] = id_
            if external_id is None:
                found.unnamed_prompts.add(id_)
    prompt_keys = {id_: key for key, id_ in found.prompts.items()}
    for part in chunks(sorted(prompt_keys)):
        rows = session.execute(
            select(Completion.prompt_id, Completion.text_key, Completion.id).where(
                Completion.prompt_id.in_(part)
            )
        )
        for prompt_id, key, id_ in rows:
            found.completions[prompt_keys[prompt_id], key] = id_


def _look_up_feedback(session: Session, found: Found) -> None:
    """The existing rankings, thumbs and pairs of the batch's labelers on its prompts."""
    labelers = {id_: name for name, id_ in found.labelers.items()}
    completions = {id_: key for key, id_ in found.completions.items()}
    if not labelers or not completions:
        return
    prompt_keys = {id_: key for key, id_ in found.prompts.items()}
    for part in chunks(sorted(prompt_keys)):
        rows = session.execute(
            select(
                Ranking.prompt_id, Ranking.labeler_id, RankingItem.completion_id, RankingItem.rank
            )
            .join(RankingItem, RankingItem.ranking_id == Ranking.id)
            .where(Ranking.prompt_id.in_(part))
        )
        for prompt_id, labeler_id, completion_id, rank in rows:
            if labeler_id in labelers:
                ranking = found.rankings.setdefault(
                    (prompt_keys[prompt_id], labelers[labeler_id]), {}
                )
                ranking[completions[completion_id]] = rank
    for part in chunks(sorted(completions)):
        for completion_id, labeler_id, label in session.execute(
            select(Thumb.completion_id, Thumb.labeler_id, Thumb.label).where(
                Thumb.completion_id.in_(part)
            )
        ):
            if labeler_id in labelers:
                found.thumbs[completions[completion_id], labelers[labeler_id]] = label
        for chosen, rejected, labeler_id in session.execute(
            select(Preference.chosen_id, Preference.rejected_id, Preference.labeler_id).where(
                Preference.chosen_id.in_(part)
            )
        ):
            if labeler_id in labelers and rejected in completions:
                found.preferences.add(
                    (completions[chosen], completions[rejected], labelers[labeler_id])
                )


def classify(batch: Batch, found: Found) -> Counter:
    """Counts of feedback created, updated and unchanged; what is unchanged leaves the batch,
    so the write transaction holds only what changes."""
    counts: Counter = Counter()
    for kind, new, old in (
        ("rankings", batch.rankings, found.rankings),
        ("thumbs", batch.thumbs, found.thumbs),
    ):
        for key in list(new):
            status = (
                "created" if key not in old else "unchanged" if old[key] == new[key] else "updated"
            )
            counts[f"{kind} {status}"] += 1
            if status == "unchanged":
                del new[key]
    counts["pairs unchanged"] = len(batch.preferences & found.preferences)
    batch.preferences -= found.preferences
    return counts


def nothing_to_write(batch: Batch, found: Found) -> bool:
    """Whether the store holds the whole (classified) batch already."""
    return (
        found.project is not None
        and batch.labelers.keys() <= found.labelers.keys()
        and batch.prompts.keys() <= found.prompts.keys()
        and batch.completions.keys() <= found.completions.keys()
        and not (batch.rankings or batch.thumbs or batch.preferences)
        and not any(found.prompts[key] in found.unnamed_prompts for key in batch.external_ids)
    )


# --- 3. the write transaction ------------------------------------------------------------


class _Writer:
    """Writes a classified batch in bulk. Rows go in sorted by their unique key, so two
    imports on PostgreSQL take their row locks in one order and cannot deadlock; every
    insert tolerates a row another import made meanwhile (ON CONFLICT)."""

    def __init__(self, session: Session, batch: Batch, found: Found, progress: Progress):
        self.session, self.batch, self.found = session, batch, found
        self.now = datetime.now(UTC)
        self.progress = progress
        self.done = 0
        self.total = (  # rows to write: the new texts and labelers, and every change
            len(batch.labelers.keys() - found.labelers.keys())
            + len(batch.prompts.keys() - found.prompts.keys())
            + len(batch.completions.keys() - found.completions.keys())
            + len(batch.rankings) * 2  # each upserted, and its old items deleted
            + sum(len(ranks) for ranks in batch.rankings.values())
            + len(batch.thumbs)
            + len(batch.preferences)
        )
        self.counts: Counter = Counter()
        progress.start("writing", self.total)

    def advance(self, rows: int) -> None:
        shown = min(self.done + rows, self.total) - min(self.done, self.total)
        self.done += rows
        self.progress.advance(shown)

    def write(self, project_name: str, criterion: str | None, instructions: str | None) -> Counter:
        project = ensure_project(
            self.session, project_name, criterion=criterion, instructions=instructions
        )
        labelers = self.labelers()
        prompts = self.prompts(project)
        completions = self.completions(prompts)
        self.rankings(prompts, labelers, completions)
        self.thumbs(labelers, completions)
        self.preferences(labelers, completions)
        return self.counts

    def insert_new(self, table, rows: list[dict], key: tuple[str, ...]) -> dict[Any, int]:
        """Insert rows, sorted by their unique `key`, skipping any that another import made
        meanwhile; returns the ids of those inserted, by key (one column: its value)."""
        rows.sort(key=lambda row: tuple(row[k] for k in key))
        ids = {}
        for part in chunks(rows):
            for id_, *values in insert_rows(self.session, table, part, returning=("id", *key)):
                ids[values[0] if len(values) == 1 else tuple(values)] = id_
            self.advance(len(part))
        return ids

    def labelers(self) -> dict[str, int]:
        table = Labeler.__table__
        rows = [
            {"name": name, "kind": kind or "human", "created_at": self.now}
            for name, kind in self.batch.labelers.items()
            if name not in self.found.labelers
        ]
        ids = self.insert_new(table, rows, ("name",))
        self.counts["labelers created"] = len(ids)
        ids.update(self.found.labelers)
        missing = sorted(set(self.batch.labelers) - set(ids))
        for part in chunks(missing):
            query = select(Labeler.name, Labeler.id, Labeler.kind).where(Labeler.name.in_(part))
            for name, id_, kind in self.session.execute(query):
                check_labeler_kind(name, kind, self.batch.labelers[name])  # made meanwhile?
                ids[name] = id_
        return ids

    def prompts(self, project: int) -> dict[PromptKey, int]:
        table = Prompt.__table__
        external = self.batch.external_ids
        rows = [
            {
                "project_id": project,
                "text": text,
                "text_key": key,
                "external_id": external.get(key),
                "messages": self.batch.messages.get(key),
                "split": None,
                "created_at": self.now,
            }
            for key, text in self.batch.prompts.items()
            if key not in self.found.prompts
        ]
        ids = self.insert_new(table, rows, ("text_key",))
        self.counts["prompts created"] = len(ids)
        ids.update(self.found.prompts)  # none if the project is new
        missing = sorted(self.batch.prompts.keys() - ids.keys())  # made by another import
        for part in chunks(missing):
            query = select(Prompt.text_key, Prompt.id).where(
                Prompt.project_id == project, Prompt.text_key.in_(part)
            )
            ids.update({key: id_ for key, id_ in self.session.execute(query)})
        self.name_prompts(ids)
        return ids

    def name_prompts(self, ids: dict[PromptKey, int]) -> None:
        """Give prompts the store knew without an id the id a prompt record gives them."""
        rows = [
            {"row": ids[key], "external": value}
            for key, value in sorted(self.batch.external_ids.items())
            if ids[key] in self.found.unnamed_prompts
        ]
        if rows:
            self.session.execute(
                update(Prompt.__table__)
                .where(Prompt.id == bindparam("row"), Prompt.external_id.is_(None))
                .values(external_id=bindparam("external")),
                rows,
            )

    def completions(self, prompts: dict[PromptKey, int]) -> dict[CompletionKey, int]:
        """Imported completions have no model or sampling parameters: both stay NULL."""
        table = Completion.__table__
        rows = [
            {"prompt_id": prompts[key[0]], "text": text, "text_key": key[1], "created_at": self.now}
            for key, text in self.batch.completions.items()
            if key not in self.found.completions
        ]
        prompt_keys = {id_: key for key, id_ in prompts.items()}
        created = self.insert_new(table, rows, ("prompt_id", "text_key"))
        self.counts["completions created"] = len(created)
        ids = {(prompt_keys[p], key): id_ for (p, key), id_ in created.items()}
        ids.update(self.found.completions)
        missing = self.batch.completions.keys() - ids.keys()  # made by another import
        for part in chunks(sorted({prompts[prompt] for prompt, _ in missing})):
            query = select(Completion.prompt_id, Completion.text_key, Completion.id).where(
                Completion.prompt_id.in_(part)
            )
            for prompt_id, key, id_ in self.session.execute(query):
                ids[prompt_keys[prompt_id], key] = id_
        return ids

    def rankings(self, prompts: dict, labelers: dict, completions: dict) -> None:
        """Upsert the new and changed rankings, then give each exactly its new items."""
        wanted = {
            (prompts[prompt], labelers[name]): {completions[c]: rank for c, rank in ranks.items()}
            for (prompt, name), ranks in self.batch.rankings.items()
        }
        key = ("prompt_id", "labeler_id")
        ids = {}
        for part in chunks(sorted(wanted)):
            rows = [{"prompt_id": p, "labeler_id": w, "created_at": self.now} for p, w in part]
            upserted = insert_rows(
                self.session, Ranking.__table__, rows, key, ("created_at",), ("id", *key)
            )
            for id_, prompt, labeler in upserted:
                ids[prompt, labeler] = id_
            self.advance(len(part))
        # Old items go: a changed ranking's, and any a concurrent import gave a "new" one.
        for part in chunks(sorted(ids.values())):
            self.session.execute(delete(RankingItem).where(RankingItem.ranking_id.in_(part)))
            self.advance(len(part))
        items = sorted(
            (ids[key], completion, rank)
            for key, ranks in wanted.items()
            for completion, rank in ranks.items()
        )
        for part in chunks(items):
            insert_rows(
                self.session,
                RankingItem.__table__,
                [{"ranking_id": r, "completion_id": c, "rank": k} for r, c, k in part],
            )
            self.advance(len(part))

    def thumbs(self, labelers: dict, completions: dict) -> None:
        """Upsert the new and changed thumbs: the last label given wins."""
        rows = sorted(
            (completions[completion], labelers[name], label)
            for (completion, name), label in self.batch.thumbs.items()
        )
        for part in chunks(rows):
            insert_rows(
                self.session,
                Thumb.__table__,
                [
                    {"completion_id": c, "labeler_id": w, "label": label, "created_at": self.now}
                    for c, w, label in part
                ],
                ("completion_id", "labeler_id"),
                update=("label", "created_at"),
            )
            self.advance(len(part))

    def preferences(self, labelers: dict, completions: dict) -> None:
        rows = [
            {
                "chosen_id": completions[chosen],
                "rejected_id": completions[rejected],
                "labeler_id": labelers[name],
                "created_at": self.now,
            }
            for chosen, rejected, name in self.batch.preferences
        ]
        key = ("chosen_id", "rejected_id", "labeler_id")
        self.counts["pairs created"] = len(self.insert_new(Preference.__table__, rows, key))


# --- export -----------------------------------------------------------------------------


def export_file(store: Store, project_name: str, kind: str, path: str | Path) -> int:
    """Write the project's records of one kind to a JSONL file; returns how many."""
    path = Path(path)
    if path.is_dir():
        raise RlhfkitError(f"{path}: is a folder; give --out a file name")
    try:
        return write_jsonl(path, export_records(store, project_name, kind))
    except OSError as e:
        raise RlhfkitError(f"{path}: cannot write ({e.strerror or e})") from None


def export_records(store: Store, project_name: str, kind: str) -> Iterator[dict[str, Any]]:
    """The project's records of one kind, in the JSONL formats `import_file` reads."""
    if kind not in EXPORT_KINDS:
        raise RlhfkitError(f"unknown export kind '{kind}'; choose from {', '.join(EXPORT_KINDS)}")
    with store.session(read_only=True) as session:
        project = get_project(session, project_name)
        yield from _EXPORTERS[kind](session, project)


def _export_rankings(session, project: Project) -> Iterator[dict[str, Any]]:
    rankings = session.scalars(
        select(Ranking).join(Prompt).where(Prompt.project_id == project.id).order_by(Ranking.id)
    )
    for ranking in rankings:
        prompt = session.get(Prompt, ranking.prompt_id)
        texts = {c.id: c.text for c in prompt.completions}
        yield {
            "prompt": prompt.text,
            **prompt.messages_field(),
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
            **thumb.completion.prompt.messages_field(),
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
            **p.chosen.prompt.messages_field(),
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
            **prompt.messages_field(),
            "split": prompt.split,
            "completions": [c.text for c in prompt.completions],
        }


_EXPORTERS = {
    "rankings": _export_rankings,
    "thumbs": _export_thumbs,
    "pairs": _export_pairs,
    "completions": _export_completions,
}
