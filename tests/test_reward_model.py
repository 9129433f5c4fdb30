"""Training reward models for real, on pairs built from packaged data."""

import json

import pytest
import torch

from conftest import write_jsonl
from rlhfkit.data.prompts import load_prompts
from rlhfkit.data.records import Pair
from rlhfkit.data.synthetic import relevance_pairs
from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.agreement import labeler_agreement
from rlhfkit.feedback.labelers import auto_label
from rlhfkit.feedback.pairs import build_pairs, load_rankings
from rlhfkit.feedback.store import Registry, Store, get_project
from rlhfkit.reward import load_reward
from rlhfkit.reward.data import group_pairs, read_pairs, split_by_prompt
from rlhfkit.reward.evaluate import evaluate_reward, pair_metrics, score_pairs
from rlhfkit.reward.model import RewardModel
from rlhfkit.train import reward_model as train_module
from rlhfkit.train.reward_model import RMConfig, train_reward_model

pytestmark = pytest.mark.slow


def pairs_file(path, pairs):
    return write_jsonl(
        path, [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
    )


@pytest.fixture(scope="module")
def relevance_rm(tmp_path_factory):
    """MiniLM trained on the synthetic relevance preference (own reply ≻ off-topic replies)."""
    folder = tmp_path_factory.mktemp("relevance")
    path = pairs_file(folder / "pairs.jsonl", relevance_pairs(k=3)[:900])
    info = train_reward_model(path, folder / "rm", RMConfig(epochs=2, held_out_fraction=0.2))
    return folder, path, info


def test_a_learnable_preference_is_learned(relevance_rm):
    _, _, info = relevance_rm
    assert info["metrics"]["eval_accuracy"] >= 0.9
    assert info["data"]["eval_prompts"] > 50  # enough held-out prompts for 0.9 to mean it
    assert info["base"] == "minilm-l6" and len(info["data"]["sha256"]) == 64


def test_saved_models_reload_with_identical_rewards_and_normalisation(relevance_rm):
    folder, path, info = relevance_rm
    model = RewardModel.load(folder / "rm")
    again = load_reward(f"rm:{folder / 'rm'}")
    groups, _ = split_by_prompt(group_pairs(read_pairs(path)), 0.2)
    prompts = [g.prompt for g in groups for _ in g.completions]
    completions = [c for g in groups for c in g.completions]
    rewards = model(prompts, completions)
    # Normalised on the training completions: mean 0, std 1 there.
    assert rewards.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert rewards.std().item() == pytest.approx(1.0, abs=1e-4)
    few_prompts, few = prompts[:64], completions[:64]
    assert torch.equal(model(few_prompts, few), again(few_prompts, few))  # identical, bit for bit
    assert again.info["normalisation"] == info["normalisation"]
    raw = model.score(few_prompts, few, normalise=False)
    n = info["normalisation"]
    assert torch.allclose(rewards[:64], n["gain"] * raw + n["bias"], atol=1e-5)
    metrics = [json.loads(x) for x in (folder / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "lr", "grad_norm", "pairs_per_s"} <= set(metrics[1])
    assert (folder / "rm" / "tensorboard").is_dir()


def test_profanity_labelers_to_a_reward_model(tmp_path):
    """The pipeline without people: three noisy automatic labelers rank completions by
    profanity, their consensus pairs train MiniLM, and it ranks held-out prompts' pairs."""
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    texts = [p.prompt for p in load_prompts("builtin:rtp")]  # real text, varied toxicity
    prompts = [p.prompt for p in load_prompts("builtin:dialogues")][: len(texts) // 4]
    with store.session() as session:
        registry = Registry(session, get_project(session, "tox", create=True))
        for i, prompt in enumerate(prompts):
            row = registry.prompt(prompt)
            for text in texts[4 * i : 4 * i + 4]:
                registry.completion(row, text)
    scorer = load_reward("scorer:profanity")
    for seed, name in enumerate(["ai-1", "ai-2", "ai-3"]):
        auto_label(store, "tox", scorer, name, noise=0.5, seed=seed)
    with store.session() as session:
        project = get_project(session, "tox")
        agreement = labeler_agreement(load_rankings(session, project))
        pairs = build_pairs(session, project).pairs
    assert all(0.3 < a.tau_b < 0.8 and not a.flagged for a in agreement)  # they disagree
    path = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    info = train_reward_model(path, tmp_path / "rm", RMConfig(epochs=3, held_out_fraction=0.2))
    accuracy = info["metrics"]["eval_accuracy"]
    _, held_out = split_by_prompt(group_pairs(read_pairs(path)), 0.2)
    ceiling = pair_metrics(score_pairs(scorer, held_out))["accuracy"]
    # Chance is 0.5. The noise-free scorer that made the labels gets 0.83 of the noisy
    # consensus pairs right (measured): that is about the best any model can do. A model
    # that learned profanity from these labels must be well clear of chance: at least 0.7.
    assert ceiling > 0.8
    assert accuracy >= 0.7
    report = evaluate_reward(f"rm:{tmp_path / 'rm'}", path, store, "tox")
    assert [row["labeler"] for row in report["labelers"]] == ["ai-1", "ai-2", "ai-3"]
    assert all(row["accuracy"] > 0.65 for row in report["labelers"])


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_model(tmp_path, monkeypatch):
    path = pairs_file(tmp_path / "pairs.jsonl", relevance_pairs(k=3)[:200])
    real_loss = train_module.pairwise_loss
    calls = []

    def explode_at_step_5(*args):
        calls.append(1)
        loss = real_loss(*args)
        return loss * float("nan") if len(calls) == 5 else loss

    monkeypatch.setattr(train_module, "pairwise_loss", explode_at_step_5)
    with pytest.raises(RlhfkitError, match=r"loss became nan at step 5; .*step 4\) is kept"):
        train_reward_model(
            path,
            tmp_path / "rm",
            RMConfig(epochs=1, eval_every=2, held_out_fraction=0.3, patience=10),
        )
    kept = RewardModel.load(tmp_path / "rm")
    assert kept.info["metrics"]["step"] in (2, 4)
    assert torch.isfinite(kept(["q"], ["a reply"])).all()


def test_a_causal_lm_reward_model_with_lora(tmp_path):
    path = pairs_file(tmp_path / "pairs.jsonl", relevance_pairs(k=3)[:24])
    reference = write_jsonl(
        tmp_path / "reference.jsonl",
        [  # as `generate --out` writes it
            {"prompt": "Hi", "completions": ["Hello!", "Go away.", "Hi, how are you?"]},
            {"prompt": "Thanks", "completions": ["You're welcome.", "Whatever."]},
        ],
    )
    config = RMConfig(
        reference=str(reference),
        base="smollm2-135m-instruct",
        lora=True,
        lora_r=4,
        epochs=1,
        batch_size=8,
        lr=1e-3,
        max_length=64,
        held_out_fraction=0.0,
    )
    info = train_reward_model(path, tmp_path / "rm", config)
    assert info["kind"] == "causal" and info["lora"]["r"] == 4
    model = RewardModel.load(tmp_path / "rm")  # merged: loads without peft
    texts = ["Hello.", "A much longer reply that pads the other one in the batch."]
    batched = model(["Hi", "Hi"], texts)
    one = model(["Hi"], texts[:1])
    assert torch.allclose(batched[:1], one, atol=1e-4)  # padding does not move the score
    assert torch.isfinite(batched).all()
    normalised = model(
        ["Hi"] * 3 + ["Thanks"] * 2,
        ["Hello!", "Go away.", "Hi, how are you?", "You're welcome.", "Whatever."],
    )
    assert normalised.mean().item() == pytest.approx(0.0, abs=1e-4)  # on its reference set
    assert normalised.std().item() == pytest.approx(1.0, abs=1e-4)


def test_inputs_longer_than_max_length_are_counted_not_those_that_fit():
    from rlhfkit.reward.data import group_pairs
    from rlhfkit.reward.model import RewardModel
    from rlhfkit.train.reward_model import _count_truncated

    reward = RewardModel.from_base("minilm-l6", max_length=12)
    # [CLS] a [SEP] + 8 words + [SEP] = 12 tokens, exactly the limit; 9 words are one too many
    fits = "one two three four five six seven eight"
    too_long = fits + " nine"
    assert reward.token_lengths(["a", "a"], [fits, too_long]) == [12, 13]
    groups = group_pairs([Pair("a", fits, too_long)])
    assert _count_truncated(reward, groups) == (1, 2)


def test_a_model_that_reads_the_completion_alone_ignores_the_prompt(tmp_path):
    path = pairs_file(tmp_path / "pairs.jsonl", relevance_pairs(k=3)[:24])
    config = RMConfig(reads="completion", epochs=1, held_out_fraction=0.0, max_length=64)
    info = train_reward_model(path, tmp_path / "rm", config)
    assert info["reads"] == "completion"
    model = RewardModel.load(tmp_path / "rm")  # the setting travels with the model
    replies = ["Hello there.", "Go away."]
    assert torch.equal(model(["Hi", "Hi"], replies), model(["What is 2+2?", "x"], replies))
    # [CLS] two words . [SEP]: the prompt is not read, so it cannot be truncated either
    assert model.token_lengths(["a long prompt " * 20], ["Hello there."]) == [5]
    both = RewardModel.from_base("minilm-l6", max_length=64)  # the default reads both
    assert not torch.equal(both(["Hi", "Hi"], replies), both(["What is 2+2?", "x"], replies))
