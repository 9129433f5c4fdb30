"""Who labels what: the queue of prompts, leases, submissions, skips, gold items,
adjudications and progress, as functions of a database session (the app calls them inside
one transaction per request).

A prompt is handed out until `overlap` distinct labelers have labeled it; nobody gets a
prompt twice. A handed-out prompt is leased to its labeler for `lease_minutes` and counts
toward the overlap while the lease lasts, so two labelers asking at once never push a prompt
past it, and an abandoned one returns to the queue when its lease expires. Handing out and
submitting are serialised per project: SQLite's writers take the write lock when they begin;
on PostgreSQL an advisory lock on the project does the same.
"""

from __future__ import annotations

import hashlib
import statistics
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, case, delete, exists, func, or_, select, text, update
from sqlalchemy.orm import Session, aliased

from rlhfkit.data.records import RecordError, check_ranks
from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.store import (
    Adjudication,
    Completion,
    Gold,
    Labeler,
    Lease,
    Member,
    Project,
    Prompt,
    Ranking,
    RankingItem,
    Skip,
    Thumb,
    User,
)
from rlhfkit.web.accounts import aware, now

LEASE_MINUTES = 15.0
RETIRE_AFTER = 2  # skips or flags by this many labelers take a prompt out of the queue
GOLD_EVERY = 5  # about one item in this many is a gold item, while the labeler has some left


class LabelingError(RlhfkitError):
    """A submission that cannot be taken; `status` is the HTTP status that says why."""

    def __init__(self, message: str, status: int = 409):
        super().__init__(message)
        self.status = status


@dataclass
class Item:
    prompt_id: int
    prompt: str
    completions: list[tuple[int, str]]  # in this labeler's order


def lock_project(session: Session, project: Project) -> None:
    """Serialise the queue of one project for the rest of the transaction (SQLite's writing
    transactions are serialised already)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(1, :id)"), {"id": project.id})


def shuffled(completions: list[tuple[int, str]], labeler_id: int, prompt_id: int) -> list:
    """The completions in an order of their own for each labeler and prompt, the same on
    every reload, so no position (the first shown, say) is favoured across labelers."""

    def key(item: tuple[int, str]) -> str:
        return hashlib.sha256(f"{labeler_id}:{prompt_id}:{item[0]}".encode()).hexdigest()

    return sorted(completions, key=key)


def _labeled_by(project: Project):
    """(prompt id, labeler id) of every label of the project in its mode."""
    prompt = aliased(Prompt)
    if project.mode == "thumbs":
        query = (
            select(Completion.prompt_id, Thumb.labeler_id)
            .join(Thumb, Thumb.completion_id == Completion.id)
            .join(prompt, prompt.id == Completion.prompt_id)
            .distinct()
        )
    else:
        query = select(Ranking.prompt_id, Ranking.labeler_id).join(
            prompt, prompt.id == Ranking.prompt_id
        )
    return query.where(prompt.project_id == project.id)


def _gold_ids(session: Session, project: Project) -> set[int]:
    return set(
        session.scalars(select(Gold.prompt_id).join(Prompt).where(Prompt.project_id == project.id))
    )


def _item(session: Session, prompt_id: int, labeler_id: int) -> Item:
    prompt = session.get(Prompt, prompt_id)
    completions = [(c.id, c.text) for c in prompt.completions]
    return Item(prompt_id, prompt.text, shuffled(completions, labeler_id, prompt_id))


def current_item(session: Session, project: Project, labeler_id: int) -> Item | None:
    """The prompt leased to this labeler in this project, while the lease lasts."""
    lease = session.scalar(
        select(Lease)
        .join(Prompt)
        .where(
            Prompt.project_id == project.id,
            Lease.labeler_id == labeler_id,
            Lease.expires_at > now(),
        )
        .order_by(Lease.id)
        .limit(1)
    )
    return None if lease is None else _item(session, lease.prompt_id, labeler_id)


def next_item(
    session: Session, project: Project, labeler_id: int, lease_minutes: float = LEASE_MINUTES
) -> Item | None:
    """The labeler's current item, or a new one leased to them; None when nothing is left."""
    lock_project(session, project)
    current = current_item(session, project, labeler_id)
    if current is not None:
        return current
    prompt_id = _due_gold(session, project, labeler_id) or _next_prompt(
        session, project, labeler_id
    )
    if prompt_id is None:
        return None
    session.execute(
        delete(Lease).where(Lease.prompt_id == prompt_id, Lease.labeler_id == labeler_id)
    )
    lease = Lease(
        prompt_id=prompt_id,
        labeler_id=labeler_id,
        created_at=now(),
        expires_at=now() + timedelta(minutes=lease_minutes),
    )
    session.add(lease)
    session.flush()
    return _item(session, prompt_id, labeler_id)


def _enough_completions():
    return (
        select(func.count(Completion.id)).where(Completion.prompt_id == Prompt.id)
    ).scalar_subquery() >= 2


def _labeled_by_labeler(labeler_id: int, project: Project):
    """The prompt of the enclosing query has this labeler's label, in the project's mode."""
    if project.mode == "thumbs":
        return exists().where(
            Completion.prompt_id == Prompt.id,
            Thumb.completion_id == Completion.id,
            Thumb.labeler_id == labeler_id,
        )
    return exists().where(Ranking.prompt_id == Prompt.id, Ranking.labeler_id == labeler_id)


def _untouched_by(labeler_id: int, project: Project):
    """The prompt of the enclosing query is neither labeled nor skipped by this labeler."""
    skipped = exists().where(Skip.prompt_id == Prompt.id, Skip.labeler_id == labeler_id)
    return and_(~_labeled_by_labeler(labeler_id, project), ~skipped)


def _due_gold(session: Session, project: Project, labeler_id: int) -> int | None:
    """A gold prompt this labeler has not had, when one is due: after every GOLD_EVERY - 1
    ordinary items (and as their first item but one), so they cannot be told apart by when
    they come."""
    golds = select(Gold.prompt_id).join(Prompt).where(Prompt.project_id == project.id)
    if session.scalar(golds.limit(1)) is None:
        return None  # most projects have none: one query, not four
    labeled = _labeled_by(project).subquery()
    mine = select(labeled.c[0]).where(labeled.c[1] == labeler_id)
    done_all = session.scalar(select(func.count()).select_from(mine.subquery()))
    done_gold = session.scalar(
        select(func.count()).select_from(Gold).where(Gold.prompt_id.in_(mine))
    )
    done_ordinary = done_all - done_gold
    if done_gold >= (done_ordinary + GOLD_EVERY - 1) // GOLD_EVERY:
        return None
    candidates = session.scalars(
        golds.where(_untouched_by(labeler_id, project), _enough_completions())
    ).all()
    if not candidates:
        return None
    return min(candidates, key=lambda p: hashlib.sha256(f"{labeler_id}:{p}".encode()).digest())


def _label_count(project: Project):
    """How many labelers have labeled the prompt of the enclosing query (a correlated count:
    an index lookup per prompt the query looks at, never an aggregate over the project)."""
    if project.mode == "thumbs":
        return (
            select(func.count(func.distinct(Thumb.labeler_id)))
            .join(Completion, Thumb.completion_id == Completion.id)
            .where(Completion.prompt_id == Prompt.id)
            .scalar_subquery()
        )
    return select(func.count()).where(Ranking.prompt_id == Prompt.id).scalar_subquery()


def _skip_count():
    return select(func.count()).where(Skip.prompt_id == Prompt.id).scalar_subquery()


def close_finished(session: Session, project: Project, prompt_ids: list[int] | None = None) -> None:
    """Mark the project's prompts (or these of them) closed when they need no more labels:
    `overlap` labelers labeled them, or RETIRE_AFTER passed on them; and open again those that
    do (after the overlap or the mode changed). The queue scans open prompts only."""
    finished = or_(_label_count(project) >= project.overlap, _skip_count() >= RETIRE_AFTER)
    query = update(Prompt).where(Prompt.project_id == project.id)
    if prompt_ids is not None:
        query = query.where(Prompt.id.in_(prompt_ids))
    closed_at = case((finished, func.coalesce(Prompt.closed_at, now())), else_=None)
    session.execute(query.values(closed_at=closed_at).execution_options(synchronize_session=False))


def _next_prompt(session: Session, project: Project, labeler_id: int) -> int | None:
    """The oldest ordinary prompt this labeler has not labeled or skipped, that fewer than
    RETIRE_AFTER labelers passed on, and that is below the overlap counting live leases.
    Only open prompts are looked at (an index holds them in id order), and the labels are
    counted all the same, so a prompt labeled outside the app (`feedback import`) is right
    before it is closed."""
    live_leases = (
        select(func.count())
        .where(
            Lease.prompt_id == Prompt.id,
            Lease.expires_at > now(),
            Lease.labeler_id != labeler_id,
        )
        .scalar_subquery()
    )
    query = (
        select(Prompt.id)
        .where(
            Prompt.project_id == project.id,
            Prompt.closed_at.is_(None),
            ~exists().where(Gold.prompt_id == Prompt.id),
            _label_count(project) + live_leases < project.overlap,
            _untouched_by(labeler_id, project),
            _skip_count() < RETIRE_AFTER,
            _enough_completions(),
        )
        .order_by(Prompt.id)
        .limit(1)
    )
    return session.scalar(query)


def _take_lease(session: Session, project: Project, labeler_id: int, prompt_id: int) -> Lease:
    """The labeler's live lease on the prompt, removed; or the reason there is none."""
    project_prompt(session, project, prompt_id)
    lease = session.scalar(
        select(Lease).where(Lease.prompt_id == prompt_id, Lease.labeler_id == labeler_id)
    )
    if lease is None:
        raise LabelingError("that item was not handed to you; take the next one", 409)
    if aware(lease.expires_at) <= now():  # left in place: the next hand-out replaces it
        raise LabelingError(
            "your time on that item ran out and it went back to the queue; nothing was "
            "saved, take the next one",
            409,
        )
    session.delete(lease)
    return lease


def _already_labeled(session: Session, project: Project, labeler_id: int, prompt_id: int) -> bool:
    query = select(Prompt.id).where(
        Prompt.id == prompt_id, _labeled_by_labeler(labeler_id, project)
    )
    return session.scalar(query) is not None


def check_item_ranks(
    ranks: dict[int, int], completion_ids: list[int], allow_ties: bool
) -> dict[int, int]:
    """Ranks for exactly these completions: 1 = best, each a rank in 1..n; equal ranks only
    where ties are allowed."""
    if sorted(ranks) != sorted(completion_ids):
        raise LabelingError("the ranks do not fit this item's completions", 422)
    try:
        check_ranks([ranks[c] for c in completion_ids], len(completion_ids))
    except RecordError as e:
        raise LabelingError(str(e).replace("'ranks'", "the ranks"), 422) from None
    if not allow_ties and len(set(ranks.values())) != len(ranks):
        raise LabelingError(
            "this project does not allow ties: give every completion its own rank", 422
        )
    return ranks


def submit_ranking(
    session: Session, project: Project, labeler_id: int, prompt_id: int, ranks: dict[int, int]
) -> bool:
    """Store the labeler's ranking of a leased prompt; False when they had stored it already
    (a double submit: one ranking stays, the first)."""
    lock_project(session, project)
    if _already_labeled(session, project, labeler_id, prompt_id):
        return False
    if project.mode != "ranking":
        raise LabelingError("this project collects thumbs, not rankings", 422)
    lease = _take_lease(session, project, labeler_id, prompt_id)
    ids = [c.id for c in session.get(Prompt, prompt_id).completions]
    check_item_ranks(ranks, ids, project.allow_ties)
    seconds = (now() - aware(lease.created_at)).total_seconds()
    session.add(
        Ranking(
            prompt_id=prompt_id,
            labeler_id=labeler_id,
            created_at=now(),
            seconds=seconds,
            items=[RankingItem(completion_id=c, rank=r) for c, r in sorted(ranks.items())],
        )
    )
    session.flush()
    close_finished(session, project, [prompt_id])
    return True


def submit_thumbs(
    session: Session, project: Project, labeler_id: int, prompt_id: int, labels: dict[int, str]
) -> bool:
    """Thumbs up or down on every completion of a leased prompt; False on a double submit."""
    lock_project(session, project)
    if _already_labeled(session, project, labeler_id, prompt_id):
        return False
    if project.mode != "thumbs":
        raise LabelingError("this project collects rankings, not thumbs", 422)
    _take_lease(session, project, labeler_id, prompt_id)
    ids = [c.id for c in session.get(Prompt, prompt_id).completions]
    if sorted(labels) != sorted(ids) or set(labels.values()) - {"up", "down"}:
        raise LabelingError("give every completion a thumbs up or down", 422)
    for completion_id, label in labels.items():
        session.add(
            Thumb(completion_id=completion_id, labeler_id=labeler_id, label=label, created_at=now())
        )
    session.flush()
    close_finished(session, project, [prompt_id])
    return True


def skip_item(
    session: Session, project: Project, labeler_id: int, prompt_id: int, kind: str, reason: str
) -> None:
    """Pass on a leased prompt, or flag it as unrankable (with a reason)."""
    if kind not in ("skip", "flag"):
        raise LabelingError("skip or flag, nothing else", 422)
    if kind == "flag" and not reason.strip():
        raise LabelingError("say why the item cannot be ranked", 422)
    lock_project(session, project)
    _take_lease(session, project, labeler_id, prompt_id)
    session.add(
        Skip(
            prompt_id=prompt_id,
            labeler_id=labeler_id,
            kind=kind,
            reason=reason.strip()[:2000],
            created_at=now(),
        )
    )
    session.flush()
    close_finished(session, project, [prompt_id])


def own_progress(session: Session, project: Project, labeler_id: int) -> dict[str, int]:
    """How many of the project's prompts this labeler has labeled and skipped."""
    labeled = _labeled_by(project).subquery()
    done = session.scalar(
        select(func.count()).select_from(labeled).where(labeled.c[1] == labeler_id)
    )
    skipped = session.scalar(
        select(func.count(Skip.id))
        .join(Prompt)
        .where(Prompt.project_id == project.id, Skip.labeler_id == labeler_id)
    )
    return {"done": done, "skipped": skipped}


# --- what admins see --------------------------------------------------------------------


def project_progress(session: Session, project: Project) -> dict[str, Any]:
    """Prompts done (labeled by `overlap` labelers), partly done, retired by skips or flags,
    in flight; per member: done, gold, skipped, flagged, in flight, median seconds an item."""
    gold = _gold_ids(session, project)
    prompts = (
        set(
            session.scalars(
                select(Prompt.id).where(Prompt.project_id == project.id, _enough_completions())
            )
        )
        - gold
    )
    labels = session.execute(_labeled_by(project)).all()  # (prompt, labeler)
    skips = session.execute(
        select(Skip.prompt_id, Skip.labeler_id, Skip.kind, Skip.reason, Prompt.text)
        .join(Prompt)
        .where(Prompt.project_id == project.id)
        .order_by(Skip.id)
    ).all()
    leases = session.execute(
        select(Lease.prompt_id, Lease.labeler_id)
        .join(Prompt)
        .where(Prompt.project_id == project.id, Lease.expires_at > now())
    ).all()
    labeled = Counter(prompt for prompt, _ in labels if prompt in prompts)
    skipped = Counter(row.prompt_id for row in skips)
    k = project.overlap
    retired = {p for p in prompts if skipped[p] >= RETIRE_AFTER and labeled[p] < k}
    return {
        "prompts": len(prompts),
        "done": sum(labeled[p] >= k for p in prompts),
        "partly": sum(0 < labeled[p] < k for p in prompts - retired),
        "retired": len(retired),
        "in_flight": len(leases),
        "gold": len(gold),
        "labelers": _member_progress(session, project, gold, labels, skips, leases),
        "flags": [row for row in skips if row.kind == "flag" or row.prompt_id in retired],
    }


def _member_progress(session, project, gold, labels, skips, leases) -> list[dict[str, Any]]:
    members = session.execute(
        select(Labeler.id, Labeler.name)
        .join(Member, Member.labeler_id == Labeler.id)
        .where(Member.project_id == project.id)
        .order_by(Labeler.name)
    ).all()
    seconds: dict[int, list[float]] = {}
    for labeler_id, value in session.execute(
        select(Ranking.labeler_id, Ranking.seconds)
        .join(Prompt)
        .where(Prompt.project_id == project.id, Ranking.seconds.is_not(None))
    ):
        seconds.setdefault(labeler_id, []).append(value)
    rows = []
    for member, name in members:
        mine = [prompt for prompt, labeler in labels if labeler == member]
        my_skips = [row.kind for row in skips if row.labeler_id == member]
        times = seconds.get(member)
        rows.append(
            {
                "labeler": name,
                "done": sum(p not in gold for p in mine),
                "gold": sum(p in gold for p in mine),
                "skipped": my_skips.count("skip"),
                "flagged": my_skips.count("flag"),
                "in_flight": sum(labeler == member for _, labeler in leases),
                "median_seconds": statistics.median(times) if times else None,
            }
        )
    return rows


def project_prompt(session: Session, project: Project, prompt_id: int) -> Prompt:
    """The prompt, if it is the project's; else a 404 that does not say whose it is."""
    prompt = session.get(Prompt, prompt_id)
    if prompt is None or prompt.project_id != project.id:
        raise LabelingError("that prompt is not in this project", 404)
    return prompt


def _known_ranks(prompt: Prompt, ranks: dict[int, int]) -> dict[str, int]:
    """An admin's ranks for the prompt, checked (ties allowed), as stored: JSON keys."""
    check_item_ranks(ranks, [c.id for c in prompt.completions], allow_ties=True)
    return {str(c): r for c, r in ranks.items()}


def adjudicate(
    session: Session, project: Project, user: User, prompt_id: int, ranks: dict[int, int]
) -> None:
    """Record an admin's ranking as the one that settles the prompt (logged, never a vote)."""
    settled = _known_ranks(project_prompt(session, project, prompt_id), ranks)
    session.add(Adjudication(prompt_id=prompt_id, user_id=user.id, ranks=settled, created_at=now()))


def set_gold(
    session: Session, project: Project, user: User, prompt_id: int, ranks: dict[int, int] | None
) -> None:
    """Mark a prompt's ranking as known (or, with None, unmark it)."""
    prompt = project_prompt(session, project, prompt_id)
    session.execute(delete(Gold).where(Gold.prompt_id == prompt_id))
    if ranks is not None:
        known = _known_ranks(prompt, ranks)
        session.add(Gold(prompt_id=prompt_id, user_id=user.id, ranks=known, created_at=now()))
