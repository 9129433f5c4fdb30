"""`rlhfkit cai revise`: Constitutional AI's stage 1. The model answers red-team prompts,
then criticises its answer under a principle drawn at random and rewrites it, for R rounds.

Every round of every prompt is stored (`revisions`: prompt, principle, answer criticised,
critique, revision, model) as soon as its batch is done, so a rerun continues where a crash
stopped. `export_revisions` then writes the supervised fine-tuning data: the final revision
of each prompt that passes the filter (non-empty, not a copy of the request or of the first
answer, not a comment on the answer, not a loop, and not scoring clearly lower than that
answer under a reward spec), and the counts kept and dropped for each reason.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from rlhfkit.cai.constitution import Constitution, critique_messages, revision_messages
from rlhfkit.data.records import PromptRecord
from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.store import Project, Prompt, Registry, Revision, Store, ensure_project
from rlhfkit.files import atomic_write
from rlhfkit.models.backends import ChatBackend
from rlhfkit.progress import Progress

# Labels a small model puts in front of its rewrite or critique; the text after them is kept.
_LEAD = re.compile(
    r"^\s*(?:revision|revised response|rewrite|critique)\s*(?:request)?\s*:\s*", re.IGNORECASE
)
WORSE_MARGIN = 1.0  # in the reward's units (a scorer's not-toxic logit): a clear drop
# Below this share of distinct word pairs a text is a loop ("The Great X: The Great X: …"),
# which a small model falls into and fine-tuning would teach; prose is near 1.
LOOP_DISTINCT_2 = 0.5
# A revision that opens by discussing "the response" is a critique, not an answer to train on.
# Critique wording: "the original answer…", "this assistant's reply…", "the response is/fails…"
# (and not an answer that happens to open with "the response to violence…").
ABOUT_THE_ANSWER = re.compile(
    r"^\W*(?:"
    r"(?:the|this|my)\s+(?:(?:original|previous|last|above|assistant'?s?)\s+)+"
    r"(?:response|answer|reply)"
    r"|(?:the|this)\s+(?:response|reply)\s+(?:is|was|does|did|doesn't|fails|failed|should|"
    r"could|seems|contains|provides|uses|lacks|needs)"
    r")\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ReviseSettings:
    rounds: int = 1
    max_new_tokens: int = 96
    temperature: float = 0.7
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self):
        if self.rounds < 1:
            raise RlhfkitError("rounds must be >= 1")


def clean(text: str) -> str:
    """The model's text without surrounding space or a leading label ("Revision: …")."""
    return _LEAD.sub("", text.strip(), count=1).strip()


@dataclass
class Chain:
    """One prompt's stage-1 history: its rounds so far, in order."""

    prompt_id: int
    prompt: str
    rounds: list[Revision] = field(default_factory=list)


def _chains(store: Store, project: str, prompts: Sequence[PromptRecord]) -> list[Chain]:
    """The project's prompts (added if new) with the rounds stored for them already."""
    with store.session() as session:
        project_row = session.get(Project, ensure_project(session, project))
        registry = Registry(session, project_row)
        rows = [registry.prompt(p.prompt, p.id, messages=p.messages) for p in prompts]
        session.flush()
        ids = [row.id for row in rows]
        stored: dict[int, list[Revision]] = {}
        for revision in session.scalars(
            select(Revision).where(Revision.prompt_id.in_(ids)).order_by(Revision.round)
        ):
            stored.setdefault(revision.prompt_id, []).append(revision)
        session.expunge_all()
        return [Chain(row.id, row.text, stored.get(row.id, [])) for row in rows]


def revise(
    store: Store,
    project: str,
    prompts: Sequence[PromptRecord],
    backend: ChatBackend,
    constitution: Constitution,
    settings: ReviseSettings = ReviseSettings(),
    progress: Progress | None = None,
) -> Counter:
    """Answer, criticise and revise each prompt for `settings.rounds` rounds, storing each
    round when its batch is done; prompts done before are skipped. Counts `rounds stored`,
    `prompts done before`."""
    progress = progress or Progress()
    chains = _chains(store, project, prompts)
    counts = Counter()
    todo = [c for c in chains if len(c.rounds) < settings.rounds]
    counts["prompts done before"] = len(chains) - len(todo)
    progress.start(f"critique and revision, {settings.rounds} round(s)", len(todo))
    for start in range(0, len(todo), settings.batch_size):
        batch = todo[start : start + settings.batch_size]
        counts["rounds stored"] += _revise_batch(store, batch, backend, constitution, settings)
        progress.advance(len(batch))
    return +counts


def _revise_batch(
    store: Store,
    batch: list[Chain],
    backend: ChatBackend,
    constitution: Constitution,
    settings: ReviseSettings,
) -> int:
    def ask(conversations) -> list[str]:
        answers = backend.chat(
            conversations, settings.max_new_tokens, settings.temperature, settings.seed
        )
        return [clean(a) for a in answers]

    first = [c for c in batch if not c.rounds]
    answers = ask([[{"role": "user", "content": c.prompt}] for c in first]) if first else []
    first_answer = {c.prompt_id: a for c, a in zip(first, answers, strict=True)}
    new: list[Revision] = []
    for round_number in range(1, settings.rounds + 1):
        active = [c for c in batch if len(c.rounds) < round_number]
        if not active:
            continue
        principles = [
            constitution.draw(random.Random(f"{settings.seed}:{c.prompt}:{round_number}"))
            for c in active
        ]
        # the previous round's revision (even an empty one), else the first answer
        answered = [
            c.rounds[-1].revision if c.rounds else first_answer[c.prompt_id] for c in active
        ]
        critiques = ask(
            [
                critique_messages(constitution, p, c.prompt, a)
                for c, p, a in zip(active, principles, answered, strict=True)
            ]
        )
        revisions = ask(
            [
                revision_messages(constitution, p, c.prompt, a, k)
                for c, p, a, k in zip(active, principles, answered, critiques, strict=True)
            ]
        )
        for c, p, a, k, r in zip(active, principles, answered, critiques, revisions, strict=True):
            row = Revision(
                prompt_id=c.prompt_id,
                round=round_number,
                principle=p.name,
                response=a,
                critique=k,
                revision=r,
                model=backend.name[:500],
            )
            c.rounds.append(row)
            new.append(row)
    with store.session() as session:
        session.add_all(new)
    return len(new)


# --- the fine-tuning data ---------------------------------------------------------------------


def _same(a: str, b: str) -> bool:
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def drop_reason(
    prompt: str,
    first: str,
    final: str,
    scores: tuple[float, float] | None,
    margin: float = WORSE_MARGIN,
) -> str | None:
    """Why a final revision is not fit to train on, or None: it is empty, repeats the
    request or the first answer, talks about the answer instead of giving one, goes round in
    a loop, or scores lower than the first answer by more than `margin` (scores: first,
    final; between two clean answers a scorer's small differences are noise, not a
    verdict)."""
    from rlhfkit.data.text import distinct_n

    if not final.strip():
        return "empty"
    if _same(final, prompt):
        return "copies the request"
    if _same(final, first):
        return "copies the answer"
    if ABOUT_THE_ANSWER.match(final):
        return "talks about the answer"
    if len(final.split()) > 8 and distinct_n([final], 2) < LOOP_DISTINCT_2:
        return "repeats itself"
    if scores is not None and scores[1] < scores[0] - margin:
        return "scores worse"
    return None


def export_revisions(
    store: Store,
    project: str,
    out_dir: Path,
    reward: str | None = "scorer:profanity",
    rounds: int | None = None,
    margin: float = WORSE_MARGIN,
) -> Counter:
    """Write `revisions.jsonl` (prompt, response = the final revision) of the chains that pass
    the filter, and `chains.jsonl` (every step, and why a chain was dropped). Counts `kept`
    and `dropped: REASON`."""
    with store.session(read_only=True) as session:
        rows = session.execute(
            select(Prompt.text, Revision)
            .join(Revision, Revision.prompt_id == Prompt.id)
            .join(Project, Project.id == Prompt.project_id)
            .where(Project.name == project)
            .order_by(Prompt.id, Revision.round)
        ).all()
        chains: dict[str, list[dict]] = {}
        for text, r in rows:
            if rounds is None or r.round <= rounds:
                chains.setdefault(text, []).append(
                    {
                        "round": r.round,
                        "principle": r.principle,
                        "response": r.response,
                        "critique": r.critique,
                        "revision": r.revision,
                        "model": r.model,
                    }
                )
    if not chains:
        raise RlhfkitError(f"project '{project}' has no critique and revision stored yet")
    prompts = list(chains)
    firsts = [chains[p][0]["response"] for p in prompts]
    finals = [chains[p][-1]["revision"] for p in prompts]
    scores = [None] * len(prompts)
    if reward:
        from rlhfkit.reward import load_reward

        scorer = load_reward(reward)
        values = scorer(prompts + prompts, firsts + finals).double().tolist()
        scores = list(zip(values[: len(prompts)], values[len(prompts) :], strict=True))
    counts: Counter = Counter()
    kept, every = [], []
    for prompt, first, final, score in zip(prompts, firsts, finals, scores, strict=True):
        reason = drop_reason(prompt, first, final, score, margin)
        counts["kept" if reason is None else f"dropped: {reason}"] += 1
        if reason is None:
            kept.append({"prompt": prompt, "response": final, "first_response": first})
        every.append(
            {
                "prompt": prompt,
                "steps": chains[prompt],
                "dropped": reason,
                "scores": None if score is None else {"first": score[0], "final": score[1]},
            }
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "revisions.jsonl", [json.dumps(r) + "\n" for r in kept])
    atomic_write(out_dir / "chains.jsonl", [json.dumps(r) + "\n" for r in every])
    return counts
