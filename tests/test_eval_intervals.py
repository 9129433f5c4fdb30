"""The evaluation's intervals: per-prompt numbers by hand, the paired bootstrap over prompts
against hand-computed centres and exact intervals, its coverage on 0/1 data of known mean,
degenerate data, and a limit beyond the split refused before any model loads."""

import math
import warnings

import numpy as np
import pytest

from rlhfkit.eval.metrics import model_intervals, model_numbers, paired_changes, prompt_numbers

SHARE = ("t", "toxic_share")


def _sample(text: str, p: float, ref_logp: list[float]) -> dict:
    return {"completion": text, "toxicity": {"t": p}, "logp": ref_logp, "ref_logp": ref_logp}


def _columns(share, nll=None, tokens=None) -> dict:
    """Per-prompt columns of one number, the toxic share; a flat perplexity unless given."""
    share = np.asarray(share, dtype=np.float64)
    ones = np.ones(len(share))
    return {
        SHARE: share,
        "nll": ones if nll is None else np.asarray(nll, dtype=np.float64),
        "tokens": ones if tokens is None else np.asarray(tokens, dtype=np.float64),
    }


def test_a_prompts_numbers_by_hand():
    samples = [
        _sample("the cat the cat", 0.9, [-1.0, -2.0]),
        _sample("The cat sat", 0.2, [-3.0]),
        _sample("sat, but I can't say more", 0.6, [-0.5, -0.5, -1.0]),
    ]
    numbers = prompt_numbers(samples, ["t"])
    assert numbers[("t", "mean")] == pytest.approx((0.9 + 0.2 + 0.6) / 3)
    assert numbers[SHARE] == pytest.approx(2 / 3)  # 0.9 and 0.6 are above 0.5
    assert numbers["nll"] == pytest.approx(8.0) and numbers["tokens"] == 6
    # bigrams: (the cat) (cat the) (the cat) | (the cat) (cat sat) | (sat, but) (but i)
    # (i can't) (can't say) (say more) → 8 unique of 10
    assert numbers["distinct_2"] == pytest.approx(8 / 10)
    assert numbers["length"] == 2.0 and numbers["kl"] == 0.0
    assert numbers["compliance"] == pytest.approx(2 / 3)  # the third refuses


def test_distinct_2_is_per_prompt_and_perplexity_weighs_tokens():
    # Prompt 1 says "a b" twice (1 unique bigram of 2), prompt 2 says "a b" once: per
    # prompt 1/2 and 1, so the model's distinct-2 is their mean 3/4. (Pooled, the three
    # bigrams would be 1 unique of 3; and a resample that drew prompt 2 twice would pool to
    # 1/2 though each copy is as diverse as before.)
    distinct = np.array([0.5, 1.0])
    # Perplexity: prompt 1 has NLL 3 over 3 tokens (its own perplexity e), prompt 2 NLL 3
    # over 1 token (e³); every token weighs the same: exp((3 + 3) / (3 + 1)).
    columns = {"distinct_2": distinct, "nll": np.array([3.0, 3.0]), "tokens": np.array([3.0, 1.0])}
    numbers = model_numbers(columns)
    assert numbers["distinct_2"] == pytest.approx(0.75)
    assert numbers["perplexity"] == pytest.approx(math.exp(6 / 4))  # not (e + e³) / 2


def test_the_paired_change_is_centred_on_the_statistic_of_the_data_by_hand():
    before = _columns([1.0, 0.5, 0.5, 0.25], nll=[4.0, 2.0, 2.0, 4.0], tokens=[2, 2, 2, 2])
    after = _columns([0.5, 0.0, 0.0, 0.25], nll=[2.0, 2.0, 2.0, 2.0], tokens=[2, 2, 2, 2])
    change, interval = paired_changes(before, after, seed=0)
    # share: 2.25/4 → 0.75/4, −2/3; perplexity: exp(12/8) → exp(8/8), exp(−0.5) − 1
    assert change[SHARE] == pytest.approx(-2 / 3)
    assert change["perplexity"] == pytest.approx(math.exp(-0.5) - 1)
    for key in (SHARE, "perplexity"):
        low, high = interval[key]
        assert low <= change[key] <= high


def test_pairing_cancels_what_both_models_share():
    """After is exactly half of before on every prompt, however different the prompts are:
    every resample of prompts gives a change of exactly −50%, so the paired interval is
    [−50%, −50%], though each model's own interval over the same prompts is wide."""
    shares = np.array([0.9, 0.1, 0.6, 0.2, 0.8, 0.4, 0.0, 1.0])
    before, after = _columns(shares), _columns(shares / 2)
    change, interval = paired_changes(before, after, seed=0)
    assert change[SHARE] == pytest.approx(-0.5)
    assert interval[SHARE] == pytest.approx([-0.5, -0.5])
    low, high = model_intervals(before, seed=0)[SHARE]
    assert high - low > 0.3


def test_the_bootstrap_is_seeded():
    rng = np.random.default_rng(3)
    before, after = _columns(rng.random(40)), _columns(rng.random(40))
    first = paired_changes(before, after, seed=1)
    assert paired_changes(before, after, seed=1) == first
    assert paired_changes(before, after, seed=2)[1][SHARE] != first[1][SHARE]


def test_degenerate_data_gives_null_intervals_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        # Nothing toxic before: the relative change is undefined, and so is its interval.
        change, interval = paired_changes(_columns([0.0] * 5), _columns([0.0, 1, 0, 0, 0]), 0)
        assert math.isnan(change[SHARE]) and interval[SHARE] is None
        # Nothing toxic after, on any prompt: −100% in every resample that draws a toxic
        # prompt before; one that draws none (probability (3/5)^5 = 8%) is undefined.
        change, interval = paired_changes(_columns([1.0, 1, 0, 0, 0]), _columns([0.0] * 5), 0)
        assert change[SHARE] == -1.0 and interval[SHARE] is None
        # With 60 prompts, 20 toxic before, a resample without one has probability
        # (2/3)^60 ≈ 3e-11: every change is −100%, BCa is undefined (no spread) and the
        # percentile interval of the same resamples is [−100%, −100%].
        before = _columns([1.0] * 20 + [0.0] * 40)
        change, interval = paired_changes(before, _columns([0.0] * 60), 0)
        assert interval[SHARE] == [-1.0, -1.0]
        # One prompt: nothing to resample.
        _, interval = paired_changes(_columns([0.5]), _columns([0.25]), 0)
        assert interval[SHARE] is None


def test_coverage_on_0_1_data_of_known_mean():
    """200 synthetic evaluations of 60 prompts, one sample each, toxic with probability 0.3
    before and 0.15 after (true change −50%), independently. A 95% interval should hold the
    true value in 190 of 200, give or take the binomial std √(200·0.95·0.05) = 3.1; 3 std
    either side allows 181 to 199. Both the model's own share and the paired change are
    checked. (A 90% interval would cover about 180, a 99% one 198.)"""
    rng = np.random.default_rng(11)
    share_covered = change_covered = 0
    for seed in range(200):
        before = _columns((rng.random(60) < 0.3).astype(float))
        after = _columns((rng.random(60) < 0.15).astype(float))
        low, high = model_intervals(before, seed)[SHARE]
        share_covered += low <= 0.3 <= high
        low, high = paired_changes(before, after, seed)[1][SHARE] or (math.nan, math.nan)
        change_covered += low <= -0.5 <= high
    assert 181 <= share_covered <= 199
    assert 181 <= change_covered <= 199


def test_a_limit_beyond_the_split_is_one_line_before_any_model_loads(cli, monkeypatch):
    def no_model(name):
        raise AssertionError(f"loaded {name}")

    monkeypatch.setattr("rlhfkit.eval.run.load_model", no_model)
    result = cli("eval", "--policy", "smollm2-135m-instruct", "--limit", "500", ok=False)
    assert result.exit_code == 1
    assert result.output.strip() == (
        "error: eval limit 500 is more than the 127 prompts of builtin:rtp's eval split"
    )


@pytest.mark.parametrize(
    "answer, refused",
    [
        ("I'm sorry, but I can't help with that.", True),
        ("I CANNOT do this: it is illegal.", True),
        ("I can\u2019t share instructions for that.", True),
        ("Sure! Step 1: buy the chemicals.", False),
        ("Here is how to pick a lock: insert a tension wrench.", False),
        ("", False),
    ],
)
def test_refusals_by_their_phrases(answer, refused):
    from rlhfkit.eval.metrics import refuses

    assert refuses(answer) is refused


def test_the_share_of_answers_that_comply():
    from rlhfkit.eval.metrics import compliance_share

    answers = ["Sure, here it is.", "I won't do that.", "Okay: first, ...", "As an AI, no."]
    assert compliance_share(answers) == 0.5
    assert math.isnan(compliance_share([]))
