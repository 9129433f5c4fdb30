"""Reward plumbing without training: grouping, batching, calibration, scorers, specs."""

import math
import random
import sys

import numpy as np
import pytest
import torch

from rlhfkit.data.records import Pair
from rlhfkit.data.synthetic import relevance_pairs
from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.labelers import noisy_ranks
from rlhfkit.reward import load_reward
from rlhfkit.reward.data import group_pairs, pack_batches, split_by_prompt
from rlhfkit.reward.evaluate import expected_calibration_error, flatten
from rlhfkit.reward.scorers import HateSonarScorer, ProfanityScorer
from test_records_and_prompts import held_out_by_hash


def test_pairs_are_grouped_by_prompt_and_each_text_scored_once():
    groups = group_pairs(
        [
            Pair("q", "a", "b"),
            Pair("q", "a", "c"),
            Pair("q", "b", "c"),
            Pair("r", "x", "y"),
            Pair("q", "a", "b"),
        ]
    )
    assert [(g.prompt, g.completions, g.pairs) for g in groups] == [
        ("q", ["a", "b", "c"], [(0, 1), (0, 2), (1, 2)]),
        ("r", ["x", "y"], [(0, 1)]),
    ]
    prompts, completions, chosen, rejected, group = flatten(groups)
    assert completions == ["a", "b", "c", "x", "y"]  # 5 forward passes for 4 pairs, not 8
    assert (chosen, rejected, group) == ([0, 0, 1, 3], [1, 2, 2, 4], [0, 0, 0, 1])


def test_batches_hold_whole_prompts_up_to_the_pair_budget():
    groups = group_pairs(relevance_pairs(k=4)[:200])
    batches = pack_batches(groups, 12, random.Random(0))
    assert sorted(g.prompt for b in batches for g in b) == sorted(g.prompt for g in groups)
    for batch in batches:
        assert sum(len(g.pairs) for g in batch) <= 12 or len(batch) == 1


def test_split_is_by_prompt_never_by_pair():
    groups = group_pairs(relevance_pairs(k=4))
    train, held_out = split_by_prompt(groups, 0.2)
    # Whole prompts, by a hash of "reward-model" + the prompt: salted, so the reward model's
    # held-out prompts are not the generate stage's.
    salted = {g.prompt for g in groups if held_out_by_hash("reward-model" + g.prompt, 0.2)}
    assert {g.prompt for g in held_out} == salted
    assert {g.prompt for g in train} == {g.prompt for g in groups} - salted
    assert sum(len(g.pairs) for g in train + held_out) == sum(len(g.pairs) for g in groups)
    unsalted = {g.prompt for g in groups if held_out_by_hash(g.prompt, 0.2)}
    assert salted != unsalted
    assert 0.1 < len(held_out) / (len(train) + len(held_out)) < 0.3


def test_expected_calibration_error_by_hand():
    # p = σ(margin) = 0.78, 0.78, 0.22, 0.93 -> confidence 0.78 ×3 (2 correct), 0.93 ×1 (correct).
    # ECE = 3/4·|2/3 − 0.78| + 1/4·|1 − 0.93| = 0.085 + 0.0175 = 0.1025.
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    margins = np.array([logit(0.78), logit(0.78), -logit(0.78), logit(0.93)])
    assert expected_calibration_error(margins) == pytest.approx(0.1025)


def test_noisy_ranks():
    rng = np.random.default_rng(0)
    assert noisy_ranks(np.array([0.1, 2.0, -1.0]), 0.0, rng) == [2, 1, 3]
    assert noisy_ranks(np.array([1.0, 1.0, 0.0]), 0.0, rng) == [1, 1, 3]
    flips = sum(noisy_ranks(np.array([0.0, 1.0]), 1.0, rng) == [1, 2] for _ in range(2000))
    # P(N(0,1) − N(0,1) > 1) = Φ(−1/√2) = 0.2398: about 480 of 2000 flip.
    assert 400 < flips < 560


def test_profanity_scorer_probability_and_not_toxic_logit():
    scorer = ProfanityScorer()
    texts = ["What a lovely morning for a walk.", "shut up you fucking idiot"]
    p = scorer.toxicity(texts)
    assert p[0] < 0.2 < 0.8 < p[1]
    expected = torch.tensor([math.log((1 - x) / x) for x in np.clip(p, 1e-6, 1 - 1e-6)])
    assert torch.allclose(scorer(["", ""], texts), expected.float(), atol=1e-4)


def test_hatesonar_runs_with_the_locale_patch():
    scorer = HateSonarScorer()
    probabilities = scorer.class_probabilities(["I like tea.", "fuck you all, you bitches"])
    assert probabilities.shape == (2, 3)
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    toxicity = scorer.toxicity(["I like tea.", "fuck you all, you bitches"])
    assert np.allclose(toxicity, 1 - probabilities[:, 2])
    assert toxicity[1] > 0.9 > toxicity[0]


def test_python_reward_spec(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def length(prompts, completions):\n    return [len(c) for c in completions]\n"
        "def wrong(prompts, completions):\n    return [1.0]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reward = load_reward("python:my_rewards:length")
    assert reward(["p", "p"], ["ab", "abcd"]).tolist() == [2.0, 4.0]
    with pytest.raises(RlhfkitError, match="returned 1 rewards for 2 completions"):
        load_reward("python:my_rewards:wrong")(["p", "p"], ["a", "b"])
    sys.modules.pop("my_rewards", None)


def test_classifier_spec_reads_the_named_label_logit(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models import load_classifier

    model, tokenizer = load_classifier("minilm-l6", num_labels=2)
    model.config.id2label, model.config.label2id = {0: "toxic", 1: "ok"}, {"toxic": 0, "ok": 1}
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reward = load_reward(f"classifier:{tmp_path}:ok")
    texts = ["hello there", "a second, longer text"]
    reference = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        logits = reference(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    assert torch.allclose(reward(["q", "q"], texts), logits[:, 1], atol=1e-5)
    with pytest.raises(RlhfkitError, match="has no label 'nice'; its labels: toxic, ok"):
        load_reward(f"classifier:{tmp_path}:nice")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("toxicity", "unknown reward spec 'toxicity'"),
        ("scorer:perspective", "unknown scorer 'perspective'"),
        ("rm:/no/such/dir", "no reward model in '/no/such/dir'"),
        ("python:no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
        ("python:math:no_such_function", "'math' has no function 'no_such_function'"),
    ],
)
def test_reward_specs_that_name_nothing(spec, message):
    with pytest.raises(RlhfkitError, match=message):
        load_reward(spec)
