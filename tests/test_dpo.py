"""`rlhfkit dpo` on a tiny random model: bad pairs refused in one line before any model loads,
the same held-out prompts as train-rm, learning on separable pairs, a resume that continues
the same run, and a policy directory that stacks (the model as loaded is the reference)."""

import json

import pytest
import torch

from conftest import write_jsonl
from rlhfkit.errors import RlhfkitError
from rlhfkit.train.dpo import DPOConfig, encode_pairs, train_dpo


def _pairs(tmp_path, n: int = 40, name: str = "pairs.jsonl"):
    """Separable pairs: the chosen is always one polite reply, the rejected one rude reply."""
    rows = [
        {
            "prompt": f"Message {i}: what do you think?",
            "chosen": " Thank you, that is kind.",
            "rejected": " Go away, fool.",
        }
        for i in range(n)
    ]
    return write_jsonl(tmp_path / name, rows)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, "are the same text"),
        ({"prompt": "p", "chosen": "  ", "rejected": "no"}, "'chosen' is empty"),
    ],
)
def test_pairs_dpo_cannot_learn_from_are_one_line(tmp_path, cli, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [row])
    answer = cli("dpo", "--pairs", path, "--out", tmp_path / "dpo", ok=False)
    assert answer.exit_code != 0 and "bad.jsonl:1: " in answer.output and message in answer.output
    assert "Traceback" not in answer.output and not (tmp_path / "dpo").exists()


def test_too_few_prompts_to_hold_out_is_one_line(tmp_path, cli):
    answer = cli("dpo", "--pairs", _pairs(tmp_path, 2), "--out", tmp_path / "dpo", ok=False)
    assert "too few prompts to hold any out" in answer.output


def test_dpo_holds_out_the_prompts_train_rm_holds_out(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    from rlhfkit.reward.data import group_pairs, read_pairs, split_by_prompt

    groups = group_pairs(read_pairs(_pairs(tmp_path)))
    train, held = split_by_prompt(groups, 0.25)  # what train-rm does with the same file
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    data = encode_pairs(tokenizer, train, held, "raw", 64)
    assert len(data.held_out) == len(held) > 0 and len(data.train) == len(train)
    # every distinct text once: the two replies of each prompt
    assert len(data.sequences) == 2 * len(groups)
    ids, labels = data.sequences[data.held_out[0][0]]
    prompt = tokenizer(held[0].prompt).input_ids
    assert ids[: len(prompt)] == prompt and labels[: len(prompt)] == [-100] * len(prompt)
    reply = tokenizer(" Thank you, that is kind.", add_special_tokens=False).input_ids
    assert labels[len(prompt) :] == reply


def test_dpo_learns_separable_pairs_and_resumes(tmp_path, tiny_model):
    pairs = _pairs(tmp_path)
    out = tmp_path / "dpo"
    config = DPOConfig(
        policy=tiny_model, epochs=2, batch_size=8, lr=1e-2, beta=0.5, held_out_fraction=0.25
    )
    summary = train_dpo(pairs, out, config)
    before, after = summary["held_out"]["before"], summary["held_out"]["after"]
    assert before["accuracy"] == 0.0 and before["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert after["accuracy"] == 1.0 and after["loss"] < 0.5  # every held-out pair ranked right
    info = json.loads((out / "policy" / "rlhfkit_policy.json").read_text())
    assert info["base"] == tiny_model and info["stage"] == "dpo" and info["lora"] is True
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "chosen_reward", "rejected_reward", "reward_margin", "accuracy"} <= set(
        metrics[0]
    )
    assert "held_out_accuracy" in metrics[-1]
    with pytest.raises(RlhfkitError, match="--resume"):
        train_dpo(pairs, out, config)
    longer = DPOConfig(**{**config.model_dump(), "epochs": 3})
    resumed = train_dpo(pairs, out, longer, resume=True)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, resumed["steps"] + 1)) and resumed["steps"] > summary["steps"]
    # The reference came back with the checkpoint: one log-probability per distinct text.
    from rlhfkit.train.checkpoint import CHECKPOINT, read_state

    assert len(read_state(out / CHECKPOINT)["trainer"]["reference"]) == 2 * 40
    # Resuming with other data or settings would continue another run: refused.
    other = _pairs(tmp_path, 41, "other.jsonl")
    with pytest.raises(RlhfkitError, match="was started on other data"):
        train_dpo(other, out, longer, resume=True)
    with pytest.raises(RlhfkitError, match=r"other settings \(batch_size 8, not 4\)"):
        train_dpo(pairs, out, DPOConfig(**{**longer.model_dump(), "batch_size": 4}), resume=True)


def test_max_steps_cuts_the_epoch_short_and_still_evaluates_and_checkpoints(tmp_path, tiny_model):
    out = tmp_path / "dpo"
    config = DPOConfig(policy=tiny_model, max_steps=2, lr=1e-2, held_out_fraction=0.25)
    summary = train_dpo(_pairs(tmp_path), out, config)  # 30 train pairs: 4 steps an epoch
    assert summary["steps"] == 2 and summary["held_out"]["after"] is not None
    from rlhfkit.train.checkpoint import CHECKPOINT, read_state

    assert read_state(out / CHECKPOINT)["step"] == 2
    resumed = train_dpo(_pairs(tmp_path), out, config.model_copy(update={"max_steps": 3}), True)
    assert resumed["steps"] == 3


def test_a_dpo_policy_loads_as_its_base_plus_what_it_learned(tmp_path, tiny_model):
    from rlhfkit.models.stack import lineage, load_policy_model

    out = tmp_path / "dpo"
    train_dpo(_pairs(tmp_path), out, DPOConfig(policy=tiny_model, lr=1e-2, held_out_fraction=0.25))
    tuned, tokenizer = load_policy_model(out / "policy")
    base, _ = load_policy_model(tiny_model)
    ids = tokenizer("Message 1: what do you think? Thank you", return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(tuned(**ids).logits, base(**ids).logits, atol=1e-4)
    assert [entry["stage"] for entry in lineage(out / "policy")] == ["dpo"]


POLITE = [
    " and I would be glad to talk it through calmly with you.",
    " so thank you for asking, it is a kind question.",
    " which is why we should listen to each other with respect.",
    " and that sounds like a lovely plan for the weekend.",
]
RUDE = [
    " you stupid idiot, shut your mouth.",
    " and you are a worthless moron, get lost.",
    " damn it, you filthy jerk, nobody cares.",
    " screw you, dumb loser, go to hell.",
]


@pytest.mark.slow
def test_dpo_on_smollm2_learns_clearly_separable_pairs(tmp_path):
    """On the packaged SmolLM2, a short DPO run on polite-over-rude pairs of RealToxicityPrompts
    prompts ranks most held-out pairs right by its implicit reward."""
    from rlhfkit.data.prompts import load_prompts

    prompts = [p.prompt for p in load_prompts("builtin:rtp", "train", 0.2, 64)]
    rows = [
        {"prompt": prompt, "chosen": POLITE[i % 4], "rejected": RUDE[(i // 4) % 4]}
        for i, prompt in enumerate(prompts)
    ]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    config = DPOConfig(epochs=1, batch_size=8, lr=2e-4, beta=0.1, held_out_fraction=0.25)
    summary = train_dpo(pairs, tmp_path / "dpo", config)
    after = summary["held_out"]["after"]
    assert summary["counts"]["held_out_pairs"] >= 10
    assert after["accuracy"] >= 0.6 and after["loss"] < summary["held_out"]["before"]["loss"]


def test_a_schedule_by_group_keeps_each_groups_examples_together():
    from rlhfkit.train.loop import Schedule

    groups = tuple(i // 5 for i in range(40))  # 8 groups of 5
    schedule = Schedule(40, 10, 3, seed=1, groups=groups)
    orders = [schedule.order(epoch) for epoch in range(3)]
    for order in orders:
        assert sorted(order) == list(range(40))  # each example once an epoch
        runs = [groups[i] for i in order]
        # a group's examples are one run: its group never reappears after another's
        assert len({g for g in runs}) == len(
            [g for k, g in enumerate(runs) if k == 0 or g != runs[k - 1]]
        )
    assert orders[0] != orders[1]  # a fresh order each epoch
    again = Schedule(40, 10, 3, seed=1, groups=groups)
    assert [again.batch(s) for s in range(12)] == [schedule.batch(s) for s in range(12)]
    plain = Schedule(40, 10, 3, seed=1)
    assert any(len({groups[i] for i in plain.batch(s)}) > 2 for s in range(4))


def test_dpo_by_prompt_reads_each_completion_once_for_all_its_pairs(
    tmp_path, tiny_model, monkeypatch
):
    import rlhfkit.train.dpo as dpo

    replies = [" Thank you.", " That is kind.", " Go away.", " Whatever, fool."]
    rows = [
        {"prompt": f"Message {i}?", "chosen": replies[a], "rejected": replies[b]}
        for i in range(12)
        for a in range(4)
        for b in range(a + 1, 4)
    ]  # 12 prompts × C(4,2) = 6 pairs
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    read = []
    original = dpo.logps_of

    def counting(model, sequences, which, pad_id, batch_size, on_batch=None):
        if torch.is_grad_enabled():  # a training step, not the reference or held-out pass
            read.append(len(which))
        return original(model, sequences, which, pad_id, batch_size, on_batch)

    monkeypatch.setattr(dpo, "logps_of", counting)
    per_step = {}
    for batching in ("by_prompt", "shuffled"):
        read.clear()
        config = DPOConfig(policy=tiny_model, batch_size=6, batching=batching, held_out_fraction=0)
        train_dpo(pairs, tmp_path / batching, config)
        per_step[batching] = sum(read) / len(read)
    assert per_step["by_prompt"] == 4  # one prompt's 6 pairs: its 4 completions
    assert per_step["shuffled"] > 6  # pairs of several prompts: more distinct texts
