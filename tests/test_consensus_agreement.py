"""Consensus and agreement statistics against hand-computed numbers and independent code."""

import math

import krippendorff
import numpy as np
import pytest
from scipy.stats import kendalltau

from rlhfkit.feedback.agreement import (
    compare,
    flagged_labelers,
    krippendorff_alpha_ordinal,
    labeler_agreement,
    pairwise_agreement_rate,
    pairwise_matrix,
)
from rlhfkit.feedback.consensus import borda, ranks_from_scores, tideman

# The hot-house example: completions 0 "nothing you can do", 1 "air conditioning", 2 "not too hot".
SEED = {"hot": {"H1": {0: 2, 1: 1, 2: 3}, "H2": {0: 2, 1: 1, 2: 3}, "H3": {0: 2, 1: 3, 2: 1}}}


def test_ranks_from_scores_are_competition_ranks():
    assert ranks_from_scores({"a": 3, "b": 2, "c": 2, "d": 1}) == {"a": 1, "b": 2, "c": 2, "d": 4}


def test_borda_on_the_seed_example():
    # Items beaten per labeler: item0 1+1+1 = 3, item1 2+2+0 = 4, item2 0+0+2 = 2.
    assert borda(list(SEED["hot"].values())) == {1: 1, 0: 2, 2: 3}


def test_borda_counts_ties_as_half():
    # a ties b above c: a and b score 1.5 each, c 0; a second ranking a > b > c adds 2, 1, 0.
    assert borda([{"a": 1, "b": 1, "c": 3}, {"a": 1, "b": 2, "c": 3}]) == {"a": 1, "b": 2, "c": 3}
    assert borda([{"a": 1, "b": 1}]) == {"a": 1, "b": 1}


def test_tideman_breaks_a_cycle_at_its_weakest_link():
    # 5× A>B>C, 4× B>C>A, 3× C>A>B. Margins: B>C 9-3=6, A>B 8-4=4, C>A 7-5=2.
    # Lock B>C, then A>B; C>A would close a cycle and is skipped: A > B > C.
    votes = (
        5 * [{"A": 1, "B": 2, "C": 3}]
        + 4 * [{"B": 1, "C": 2, "A": 3}]
        + 3 * [{"C": 1, "A": 2, "B": 3}]
    )
    assert tideman(votes) == {"A": 1, "B": 2, "C": 3}
    # Borda scores the same votes A 13, B 13, C 10: a tie on top that ranked pairs resolves.
    assert borda(votes) == {"A": 1, "B": 1, "C": 3}


def test_tideman_leaves_unresolved_items_tied():
    assert tideman([{"a": 1, "b": 2}, {"a": 2, "b": 1}]) == {"a": 1, "b": 1}


def test_krippendorff_alpha_on_the_seed_example_by_hand():
    # Units (completions) hold ranks {2,2,2}, {1,1,3}, {3,3,1}. Coincidences (weight 1/2 per
    # ordered pair): o11=1, o13=o31=2, o22=3, o33=1; n1=n2=n3=3, n=9.
    # Ordinal δ²: (1,2)=(2,3)=(3+3-3)²=9, (1,3)=(9-3)²=36.
    # D_o = 2·2·36 = 144; D_e = (2·9·9 + 2·9·9 + 2·9·36)/8 = 121.5; α = 1 - 144/121.5 = -5/27.
    assert krippendorff_alpha_ordinal(SEED) == pytest.approx(-5 / 27)


def test_pairwise_agreement_on_the_seed_example_by_hand():
    # H1-H2 agree on all 3 item pairs; H3 disagrees with both on all 3: 3 of 9.
    assert pairwise_matrix(SEED) == {
        ("H1", "H2"): (3, 3),
        ("H1", "H3"): (0, 3),
        ("H2", "H3"): (0, 3),
    }
    assert pairwise_agreement_rate(SEED) == pytest.approx(1 / 3)


def test_compare_skips_pairs_either_labeler_tied():
    assert compare({"a": 1, "b": 1, "c": 2}, {"a": 1, "b": 2, "c": 3}) == (2, 2)
    assert compare({"a": 1, "b": 2}, {"c": 1, "d": 2}) == (0, 0)


def test_seed_example_flags_h3_only():
    report = {a.labeler: a for a in labeler_agreement(SEED)}
    # H3 against H1+H2's consensus (air > nothing > not too hot): every pair reversed.
    assert report["H3"].tau_b == pytest.approx(-1.0) and report["H3"].flagged
    assert report["H3"].pairwise == 0.0 and report["H3"].comparisons == 3
    # For H1 the others (H2, H3) cancel out into a three-way tie: nothing to measure against.
    assert math.isnan(report["H1"].tau_b) and not report["H1"].flagged
    assert not report["H2"].flagged
    assert flagged_labelers(SEED) == {"H3"}


def test_labeler_agreement_leave_one_out_by_hand():
    forward = {"a": 1, "b": 2, "c": 3}
    rankings = {"p": {"L1": forward, "L2": forward, "L3": forward, "L4": {"a": 3, "b": 2, "c": 1}}}
    report = {a.labeler: a for a in labeler_agreement(rankings, min_tau=0.2)}
    # L1's others: Borda a 2+2+0=4, b 1+1+1=3, c 0+0+2=2, i.e. forward: τ = 1.
    assert report["L1"].tau_b == pytest.approx(1.0) and report["L1"].pairwise == 1.0
    assert report["L4"].tau_b == pytest.approx(-1.0) and report["L4"].flagged
    assert [a.labeler for a in report.values() if a.flagged] == ["L4"]


def test_tau_b_with_ties_matches_the_formula():
    # own (1,2,3,4) vs consensus (1,2,2,3): concordant 5, discordant 0, one tie in consensus:
    # τ_b = (5-0)/sqrt(6·5) = 0.9129.
    rankings = {"p": {"x": {1: 1, 2: 2, 3: 3, 4: 4}, "y": {1: 1, 2: 2, 3: 2, 4: 3}}}
    report = {a.labeler: a for a in labeler_agreement(rankings)}
    assert report["x"].tau_b == pytest.approx(5 / math.sqrt(30))


def _generated(seed=0, prompts=60, labelers=5):
    """Several labelers with different reliability ranking 3-6 completions per prompt."""
    rng = np.random.default_rng(seed)
    reliability = np.linspace(0.9, 0.1, labelers)
    data = {}
    for p in range(prompts):
        n = int(rng.integers(3, 7))
        truth = rng.permutation(n) + 1
        data[p] = {}
        for k in range(labelers):
            if rng.random() < 0.85:  # not everyone ranks every prompt
                ranks = truth if rng.random() < reliability[k] else rng.permutation(n) + 1
                if rng.random() < 0.2:  # some ties
                    ranks = np.minimum(ranks, n - 1)
                data[p][f"L{k}"] = {i: int(ranks[i]) for i in range(n)}
    return data


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alpha_matches_the_krippendorff_package(seed):
    data = _generated(seed)
    labelers = sorted({name for by in data.values() for name in by})
    units = sorted({(p, i) for p, by in data.items() for r in by.values() for i in r})
    matrix = np.full((len(labelers), len(units)), np.nan)
    for j, (p, i) in enumerate(units):
        for k, name in enumerate(labelers):
            if name in data[p]:
                matrix[k, j] = data[p][name][i]
    expected = krippendorff.alpha(reliability_data=matrix, level_of_measurement="ordinal")
    assert krippendorff_alpha_ordinal(data) == pytest.approx(expected, abs=1e-9)


def test_pairwise_rate_matches_a_brute_force_count():
    data = _generated(3)
    agree = total = 0
    for by in data.values():
        names = sorted(by)
        for x in range(len(names)):
            for y in range(x + 1, len(names)):
                a, b = by[names[x]], by[names[y]]
                for i in a:
                    for j in a:
                        if i < j and a[i] != a[j] and b[i] != b[j]:
                            total += 1
                            agree += np.sign(a[i] - a[j]) == np.sign(b[i] - b[j])
    assert pairwise_agreement_rate(data) == pytest.approx(agree / total)


def test_unreliable_labelers_are_flagged_and_taus_match_scipy():
    data = _generated(4, prompts=120)
    report = {a.labeler: a for a in labeler_agreement(data, min_tau=0.2)}
    taus = [report[f"L{k}"].tau_b for k in range(5)]
    # Faithfulness falls from 90% (L0) to 10% (L4): agreement with the others falls with it,
    # and only the near-random labeler drops under the threshold.
    assert taus == sorted(taus, reverse=True)
    assert [name for name, a in report.items() if a.flagged] == ["L4"]
    # The mean τ-b is scipy's τ-b per prompt against the leave-one-out Borda consensus.
    taus = []
    for by in data.values():
        if "L2" in by and len(by) > 1:
            cons = borda([r for name, r in by.items() if name != "L2"])
            t = kendalltau([by["L2"][i] for i in cons], [cons[i] for i in cons]).statistic
            if not math.isnan(t):
                taus.append(t)
    assert report["L2"].tau_b == pytest.approx(np.mean(taus))
    assert report["L2"].prompts == len(taus)
