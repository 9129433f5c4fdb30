"""The AI judge's arithmetic: a preference from the probabilities of "A" and "B", both
presentation orders averaged, and a ranking of K completions from their pairwise
preferences. Pure functions, checked against hand-computed numbers.

For two answers x and y, the judge is asked twice: x as (A) and y as (B), then the other
way round. With p₁ = P(A | x first) and p₂ = P(A | y first), each normalised over {A, B}:

    P(x better) = (p₁ + (1 − p₂)) / 2        position bias = (p₁ + p₂) / 2 − 1/2

A judge that always says "A" has P(x better) = 1/2 for every pair and bias +1/2: averaging
the orders turns a position preference into no preference instead of a wrong one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rlhfkit.feedback.consensus import ranks_from_scores

MIN_OPTION_MASS = 0.01  # P(A) + P(B) below this: the judge is not answering the question
# An order-averaged preference this close to 1/2 is no preference: what is left of a judge
# that answers by position once both orders are averaged is noise, not a view of the answers.
TIE = 0.01


def decided(p: float, tie: float = TIE) -> float:
    """The preference, or exactly 1/2 when it leans less than `tie`."""
    return 0.5 if abs(p - 0.5) < tie else p


@dataclass(frozen=True)
class Choice:
    """One question's answer: P("A") normalised over the two options, and how much of the
    next-token probability the two options held at all."""

    p_a: float
    mass: float


def choice(logprob_a: float | None, logprob_b: float | None) -> Choice | None:
    """P("A") normalised over {"A", "B"}; None when neither option has a log-probability (an
    endpoint whose top tokens hold neither). An option missing beside the other counts as
    far less likely than the one present."""
    if logprob_a is None and logprob_b is None:
        return None
    if logprob_b is None:
        return Choice(1.0, math.exp(logprob_a))
    if logprob_a is None:
        return Choice(0.0, math.exp(logprob_b))
    top = max(logprob_a, logprob_b)
    a, b = math.exp(logprob_a - top), math.exp(logprob_b - top)
    return Choice(a / (a + b), math.exp(top) * (a + b))


@dataclass(frozen=True)
class Preference:
    p_first: float  # P(the first answer is better), the two orders averaged
    bias: float  # (p₁ + p₂)/2 − 1/2: > 0 leans to "A", < 0 to "B"


def order_averaged(first_as_a: Choice, second_as_a: Choice) -> Preference:
    """The preference for x over y from the two orders: x shown as (A), then y shown as (A)."""
    p1, p2 = first_as_a.p_a, second_as_a.p_a
    return Preference(p_first=(p1 + (1.0 - p2)) / 2.0, bias=(p1 + p2) / 2.0 - 0.5)


def ranking_from_preferences(
    k: int, preferences: Mapping[tuple[int, int], float], tie: float = TIE
) -> list[int]:
    """Ranks (1 = best) of K completions from P(i better than j) for every i < j: each
    completion scores its expected wins, Σ_j P(i ≻ j) (a Borda count of probabilities), a
    preference within `tie` of 1/2 counting as 1/2; equal scores share a rank ("1, 1, 3")."""
    wins = [0.0] * k
    for i in range(k):
        for j in range(i + 1, k):
            p = decided(preferences[(i, j)], tie)
            wins[i] += p
            wins[j] += 1.0 - p
    return list(ranks_from_scores(dict(enumerate(wins))).values())


def agreement_with_reference(
    preferences: Sequence[float], reference: Sequence[float | None], tie: float = TIE
) -> tuple[int, int]:
    """(agreements, comparisons): pairs where the reference prefers one answer (its value is
    P(first better) or a sign, 0.5 = no preference, None = unknown) and the judge leans the
    same way. A judge within `tie` of 1/2 agrees with nothing."""
    agree = total = 0
    for judged, known in zip(preferences, reference, strict=True):
        if known is None or known == 0.5:
            continue
        total += 1
        agree += (decided(judged, tie) - 0.5) * (known - 0.5) > 0
    return agree, total
