"""`rlhfkit label judge`: an AI judge ranks each prompt's completions by a constitution, and
its rankings go into the store as a labeler of kind `ai`, where agreement, pairs, `train-rm`
and `ppo` take them as they take people's.

For each prompt, every pair of its completions is put to the judge under a principle drawn
at random (seeded by the prompt and the pair, so a rerun asks the same questions), in both
presentation orders (judge.py). Before any label is written the judge is checked on the
first prompts against a reference the project has (a scorer, or people's rankings of the
same prompts): a judge that agrees with it on no more than `min_agreement` of the pairs is
refused unless forced, since a judge at chance trains a reward model on noise. Rankings are
written a chunk of prompts at a time; a rerun skips the prompts this labeler has ranked.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations

from sqlalchemy import select

from rlhfkit.cai.constitution import Constitution, judge_text
from rlhfkit.cai.judge import (
    MIN_OPTION_MASS,
    Preference,
    agreement_with_reference,
    choice,
    order_averaged,
    ranking_from_preferences,
)
from rlhfkit.data.records import RankingRecord
from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.consensus import borda
from rlhfkit.feedback.labelers import project_prompts
from rlhfkit.feedback.pairs import load_rankings
from rlhfkit.feedback.store import Labeler, Prompt, Ranking, Store, get_project
from rlhfkit.feedback.transfer import import_records
from rlhfkit.models.backends import ChatBackend
from rlhfkit.progress import Progress

PEOPLE = "people"


@dataclass
class JudgeReport:
    labeler: str
    judge: str
    reference: str
    prompts_ranked: int = 0  # in this run
    prompts_already_ranked: int = 0  # by an earlier run, skipped
    pairs: int = 0
    unanswered: int = 0  # pairs where neither option was among the judge's likely tokens
    position_bias: float = 0.0  # mean (P(A | x first) + P(A | y first))/2 − 1/2
    option_mass: float = 0.0  # mean P(A) + P(B): how much the judge answers the question
    agreements: int = 0  # with the reference, on the pairs it orders
    comparisons: int = 0
    forced: bool = False
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def agreement(self) -> float | None:
        return self.agreements / self.comparisons if self.comparisons else None

    def check_line(self) -> str:
        """The judge against its reference, in one line."""
        from rlhfkit.formatting import dash

        agreement = dash(self.agreement, ".0%")
        return (
            f"agreement with {self.reference} {agreement} of {self.comparisons} pairs, "
            f"position bias {self.position_bias:+.2f}"
        )

    def as_dict(self) -> dict:
        return {**asdict(self), "agreement": self.agreement}


@dataclass(frozen=True)
class Item:
    prompt: str
    completions: tuple[str, ...]


def pair_principles(constitution: Constitution, item: Item, seed: int) -> list:
    """The principle each pair (i < j) of the item is judged by, drawn with a generator of its
    own (the same on every run)."""
    rng = random.Random(f"{seed}:{item.prompt}")
    k = len(item.completions)
    return [constitution.draw(rng) for _ in combinations(range(k), 2)]


def judge_items(
    backend: ChatBackend, constitution: Constitution, items: Sequence[Item], seed: int
) -> list[list[tuple[Preference | None, float]]]:
    """For each item, each pair's (preference, option mass), pairs in combinations order; a
    pair the judge did not answer in either order has no preference."""
    texts, shape = [], []
    for item in items:
        principles = pair_principles(constitution, item, seed)
        pairs = list(combinations(range(len(item.completions)), 2))
        for principle, (i, j) in zip(principles, pairs, strict=True):
            x, y = item.completions[i], item.completions[j]
            texts += [
                judge_text(principle, item.prompt, x, y),
                judge_text(principle, item.prompt, y, x),
            ]
        shape.append(len(pairs))
    answers = backend.choice_logprobs(texts)
    out, at = [], 0
    for n in shape:
        judged = []
        for _ in range(n):
            first, second = (choice(a["A"], a["B"]) for a in answers[at : at + 2])
            at += 2
            if first is None or second is None:
                judged.append((None, 0.0))
                continue
            judged.append((order_averaged(first, second), (first.mass + second.mass) / 2))
        out.append(judged)
    return out


def item_ranking(item: Item, judged: list[tuple[Preference | None, float]]) -> list[int]:
    """Ranks of the item's completions from its judged pairs (an unanswered pair: 0.5)."""
    pairs = combinations(range(len(item.completions)), 2)
    preferences = {
        pair: (p.p_first if p is not None else 0.5)
        for pair, (p, _) in zip(pairs, judged, strict=True)
    }
    return ranking_from_preferences(len(item.completions), preferences)


# --- the reference the judge is checked against -----------------------------------------------


def reference_preferences(
    store: Store, project: str, reference: str, items: Sequence[Item], margin: float
) -> list[list[float | None]]:
    """For each item, each pair's known preference: 1.0 (first better), 0.0, 0.5 (no
    preference, or a scorer difference under `margin`), None (unknown). `reference` is
    `people` (the consensus of the project's human labelers) or a reward spec (a scorer: the
    higher-scored completion is better)."""
    if reference == PEOPLE:
        return _people_preferences(store, project, items)
    from rlhfkit.reward import load_reward

    scorer = load_reward(reference)
    flat = [(item.prompt, c) for item in items for c in item.completions]
    scores = scorer([p for p, _ in flat], [c for _, c in flat]).double().tolist()
    out, at = [], 0
    for item in items:
        s = scores[at : at + len(item.completions)]
        at += len(item.completions)
        out.append(
            [
                0.5 if abs(s[i] - s[j]) < margin else float(s[i] > s[j])
                for i, j in combinations(range(len(s)), 2)
            ]
        )
    return out


def _people_preferences(store: Store, project: str, items: Sequence[Item]):
    with store.session(read_only=True) as session:
        project_row = get_project(session, project)
        humans = set(session.scalars(select(Labeler.name).where(Labeler.kind == "human")))
        rankings = load_rankings(session, project_row)
        prompts = {
            p.id: (p.text, {c.id: c.text for c in p.completions})
            for p in session.scalars(select(Prompt).where(Prompt.id.in_(list(rankings))))
        }
    consensus: dict[str, dict[str, int]] = {}
    for prompt_id, by_labeler in rankings.items():
        people = [r for name, r in by_labeler.items() if name in humans]
        if people:
            text, completions = prompts[prompt_id]
            consensus[text] = {completions[c]: rank for c, rank in borda(people).items()}
    out = []
    for item in items:
        ranks = consensus.get(item.prompt, {})
        row = []
        for i, j in combinations(range(len(item.completions)), 2):
            a, b = ranks.get(item.completions[i]), ranks.get(item.completions[j])
            row.append(None if a is None or b is None else 0.5 if a == b else float(a < b))
        out.append(row)
    return out


# --- the whole step -----------------------------------------------------------------------------


def _ranked_by(store: Store, project: str, labeler: str) -> set[str]:
    with store.session(read_only=True) as session:
        project_row = get_project(session, project)
        return set(
            session.scalars(
                select(Prompt.text)
                .join(Ranking, Ranking.prompt_id == Prompt.id)
                .join(Labeler, Ranking.labeler_id == Labeler.id)
                .where(Prompt.project_id == project_row.id, Labeler.name == labeler)
            )
        )


def judge_label(
    store: Store,
    project: str,
    backend: ChatBackend,
    constitution: Constitution,
    labeler: str = "ai-judge",
    reference: str = "scorer:profanity",
    min_agreement: float = 0.55,
    reference_margin: float = 1.0,
    check_prompts: int = 32,
    force: bool = False,
    seed: int = 0,
    split: str | None = None,
    limit: int | None = None,
    chunk: int = 16,
    progress: Progress | None = None,
) -> JudgeReport:
    """Rank the project's prompts (of one split, the first `limit`) with the judge, after
    checking it on the first `check_prompts` of them against `reference`."""
    progress = progress or Progress()
    report = JudgeReport(labeler, backend.name, reference, forced=force)
    items = [Item(text, tuple(c)) for text, c in project_prompts(store, project, split)]
    items = items[:limit] if limit else items
    done = _ranked_by(store, project, labeler)
    todo = [item for item in items if item.prompt not in done]
    report.prompts_already_ranked = len(items) - len(todo)
    if not todo:
        return report
    biases, masses = [], []

    def judged_chunk(chunk_items: Sequence[Item]):
        judged = judge_items(backend, constitution, chunk_items, seed)
        for row in judged:
            for preference, mass in row:
                report.pairs += 1
                if preference is None:
                    report.unanswered += 1
                else:
                    biases.append(preference.bias)
                    masses.append(mass)
        report.option_mass = statistics.fmean(masses) if masses else 0.0
        report.position_bias = statistics.fmean(biases) if biases else 0.0
        return judged

    progress.start(f"judge {labeler}: checking against {reference}", min(check_prompts, len(todo)))
    check = todo[:check_prompts]
    check_judged = []
    for start in range(0, len(check), chunk):
        check_judged += judged_chunk(check[start : start + chunk])
        progress.advance(len(check[start : start + chunk]))
    known = reference_preferences(store, project, reference, check, reference_margin)
    judged_p = [p.p_first if p else 0.5 for row in check_judged for p, _ in row]
    report.agreements, report.comparisons = agreement_with_reference(
        judged_p, [k for row in known for k in row]
    )
    _check_judge(report, min_agreement, force)

    def write(chunk_items: Sequence[Item], judged) -> None:
        records = [
            RankingRecord(
                item.prompt, item.completions, tuple(item_ranking(item, row)), labeler, "ai"
            )
            for item, row in zip(chunk_items, judged, strict=True)
        ]
        for key, n in import_records(store, project, records).items():
            report.counts[key] = report.counts.get(key, 0) + n
        report.prompts_ranked += len(records)
        progress.advance(len(records))

    progress.start(f"judge {labeler}: ranking", len(todo))
    write(check, check_judged)
    for start in range(len(check), len(todo), chunk):
        batch = todo[start : start + chunk]
        write(batch, judged_chunk(batch))
    return report


def _check_judge(report: JudgeReport, min_agreement: float, force: bool) -> None:
    """Refuse a judge that is not answering, or that agrees with the reference no better than
    `min_agreement`, unless forced."""
    hint = "; --force labels anyway"
    silent = report.unanswered == report.pairs or report.option_mass < MIN_OPTION_MASS
    if silent and not force:
        raise RlhfkitError(
            f"the judge {report.judge} is not answering: P(A) + P(B) averages "
            f"{report.option_mass:.4f} at the answer position ({report.unanswered} of "
            f"{report.pairs} pairs unanswered){hint}"
        )
    if report.comparisons == 0:
        if not force:
            raise RlhfkitError(
                f"{report.reference} orders none of the checked pairs: nothing to check the "
                f"judge against (try another --check-against or a smaller --check-margin){hint}"
            )
        return
    if report.agreement <= min_agreement and not force:
        raise RlhfkitError(
            f"the judge {report.judge} agrees with {report.reference} on "
            f"{report.agreement:.0%} of {report.comparisons} pairs (needs more than "
            f"{min_agreement:.0%}); position bias {report.position_bias:+.2f}{hint}"
        )
