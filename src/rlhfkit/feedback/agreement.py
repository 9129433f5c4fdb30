"""How much labelers agree, and which labelers disagree with everyone else.

Input everywhere is `Rankings`: prompt -> labeler -> item -> rank (1 = best, ties allowed).
Pure functions over plain data, so each is checked against hand-computed numbers.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import asdict, dataclass
from itertools import combinations

import numpy as np
from scipy.stats import kendalltau

from rlhfkit.feedback.consensus import METHODS, Ranking

Rankings = dict[Hashable, dict[str, Ranking]]


def krippendorff_alpha_ordinal(rankings: Rankings) -> float:
    """Krippendorff's α with the ordinal metric; a unit is one (prompt, item), its values the
    labelers' ranks. α = 1 − D_o / D_e over the coincidence matrix o_ck, with
    δ²_ck = (Σ_{g=c..k} n_g − (n_c + n_k)/2)². NaN when there is nothing to compare."""
    units: dict[tuple, list[int]] = {}
    for prompt, by_labeler in rankings.items():
        for ranking in by_labeler.values():
            for item, rank in ranking.items():
                units.setdefault((prompt, item), []).append(rank)
    values = sorted({v for vs in units.values() for v in vs})
    index = {v: i for i, v in enumerate(values)}
    o = np.zeros((len(values), len(values)))
    for vs in units.values():
        m = len(vs)
        if m < 2:
            continue  # a unit one labeler valued is not pairable
        for i, j in ((i, j) for i in range(m) for j in range(m) if i != j):
            o[index[vs[i]], index[vs[j]]] += 1.0 / (m - 1)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    if n <= 1:
        return math.nan
    cumulative = np.cumsum(n_c)
    delta2 = np.zeros_like(o)
    for c in range(len(values)):
        for k in range(len(values)):
            lo, hi = min(c, k), max(c, k)
            between = cumulative[hi] - (cumulative[lo - 1] if lo > 0 else 0.0)
            delta2[c, k] = (between - (n_c[c] + n_c[k]) / 2) ** 2
    observed = (o * delta2).sum()
    expected = (np.outer(n_c, n_c) * delta2).sum() / (n - 1)
    return math.nan if expected == 0 else float(1.0 - observed / expected)


def compare(a: Ranking, b: Ranking) -> tuple[int, int]:
    """(agreements, comparisons) over item pairs both rankings order strictly."""
    agree = total = 0
    for x, y in combinations([item for item in a if item in b], 2):
        if a[x] != a[y] and b[x] != b[y]:
            total += 1
            agree += (a[x] < a[y]) == (b[x] < b[y])
    return agree, total


def pairwise_matrix(rankings: Rankings) -> dict[tuple[str, str], tuple[int, int]]:
    """(agreements, comparisons) for each two labelers, pooled over the prompts both ranked."""
    matrix: dict[tuple[str, str], tuple[int, int]] = {}
    for by_labeler in rankings.values():
        for a, b in combinations(sorted(by_labeler), 2):
            agree, total = compare(by_labeler[a], by_labeler[b])
            old = matrix.get((a, b), (0, 0))
            matrix[(a, b)] = (old[0] + agree, old[1] + total)
    return matrix


def pairwise_agreement_rate(rankings: Rankings) -> float:
    """Agreements ÷ comparisons over every labeler pair, prompt and strictly ordered item pair
    (the statistic InstructGPT reports as 72.6%)."""
    counts = pairwise_matrix(rankings).values()
    total = sum(t for _, t in counts)
    return sum(a for a, _ in counts) / total if total else math.nan


@dataclass(frozen=True)
class LabelerAgreement:
    """A labeler against the consensus of the other labelers on the prompts they share."""

    labeler: str
    prompts: int  # prompts where the others' consensus could be compared with this labeler
    tau_b: float  # mean Kendall τ-b over those prompts (NaN when none)
    pairwise: float  # agreements ÷ strictly ordered pairs, pooled
    comparisons: int
    flagged: bool

    def as_dict(self) -> dict:
        d = asdict(self)
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def labeler_agreement(
    rankings: Rankings, method: str = "borda", min_tau: float = 0.2
) -> list[LabelerAgreement]:
    """Each labeler's Kendall τ-b and pairwise agreement with the leave-one-out consensus;
    flagged when the mean τ-b is below `min_tau`."""
    consensus = METHODS[method]
    taus: dict[str, list[float]] = {}
    pooled: dict[str, list[int]] = {}
    for by_labeler in rankings.values():
        for name, own in by_labeler.items():
            taus.setdefault(name, [])
            pooled.setdefault(name, [0, 0])
            others = [r for other, r in by_labeler.items() if other != name]
            if not others:
                continue
            agreed = consensus(others)
            shared = [item for item in own if item in agreed]
            agree, total = compare(own, agreed)
            pooled[name][0] += agree
            pooled[name][1] += total
            if len(shared) >= 2:
                tau = kendalltau([own[i] for i in shared], [agreed[i] for i in shared]).statistic
                if not math.isnan(tau):
                    taus[name].append(float(tau))
    report = []
    for name in sorted(taus):
        mean_tau = float(np.mean(taus[name])) if taus[name] else math.nan
        agree, total = pooled[name]
        report.append(
            LabelerAgreement(
                labeler=name,
                prompts=len(taus[name]),
                tau_b=mean_tau,
                pairwise=agree / total if total else math.nan,
                comparisons=total,
                flagged=not math.isnan(mean_tau) and mean_tau < min_tau,
            )
        )
    return report


def flagged_labelers(rankings: Rankings, method: str = "borda", min_tau: float = 0.2) -> set[str]:
    return {a.labeler for a in labeler_agreement(rankings, method, min_tau) if a.flagged}
