"""Supervised fine-tuning: the loss on the response tokens only (hand-checked), training that
lowers the held-out loss, a resume that continues the same run, and a policy directory that
stacks: PPO started from it is held to it (KL 0 at the first step)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import write_jsonl
from rlhfkit.errors import RlhfkitError
from rlhfkit.train.sft import (
    IGNORE,
    Example,
    SFTConfig,
    collate,
    encode,
    read_examples,
    response_nll,
)


def test_only_the_response_and_its_end_token_are_labelled(tiny_model):
    from rlhfkit.models import load_causal_lm

    _, tokenizer = load_causal_lm(tiny_model)
    ids, labels = encode(tokenizer, Example("Say hi.", "Hello there."), 256)
    response = tokenizer("Hello there.", add_special_tokens=False).input_ids
    n = len(response) + 1
    assert labels[-n:] == [*response, tokenizer.eos_token_id] == ids[-n:]
    assert labels[:-n] == [IGNORE] * (len(ids) - n)
    cut_ids, cut_labels = encode(tokenizer, Example("Say hi.", "Hello there."), len(ids) - 2)
    assert cut_ids == ids[:-2] and cut_labels == labels[:-2]


def test_the_loss_is_the_mean_nll_of_labelled_tokens():
    class Fixed(torch.nn.Module):
        """Logits that give token t probability p[t] at every position."""

        def forward(self, input_ids, attention_mask, position_ids, logits_to_keep):
            p = torch.tensor([0.5, 0.25, 0.25])
            logits = p.log().expand(*input_ids.shape, 3)[:, -logits_to_keep:]
            return type("Out", (), {"logits": logits})()

    batch = collate([([0, 1, 2], [IGNORE, 1, 0]), ([2, 0], [IGNORE, 2])], pad_id=0)
    nll, tokens = response_nll(Fixed(), batch)
    # labelled: token 1 (p .25), token 0 (p .5), token 2 (p .25)
    assert tokens == 3
    assert float(nll) == pytest.approx(-(2 * torch.tensor(0.25).log() + torch.tensor(0.5).log()))


def test_labelled_logps_of_a_padded_batch_are_each_rows_own(tiny_model):
    """Rows of different lengths, left-padded, logits kept for the responses only: each
    labelled token's log p is what the model gives the row alone, over all its positions."""
    from rlhfkit.models import load_causal_lm
    from rlhfkit.train.sft import labelled_logps

    model, tokenizer = load_causal_lm(tiny_model)
    rows = [
        encode(tokenizer, Example("Say hi to everyone in the room.", "Hello."), 256),
        encode(tokenizer, Example("Hi.", "Hello there, how are you today?"), 256),
    ]
    with torch.no_grad():
        pad = tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id
        logps, labelled = labelled_logps(model, collate(rows, pad))
        for row, (ids, labels) in enumerate(rows):
            alone = model(input_ids=torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
            want = [alone[t, labels[t + 1]] for t in range(len(ids) - 1) if labels[t + 1] >= 0]
            got = logps[row][labelled[row]]
            torch.testing.assert_close(got, torch.stack(want), atol=1e-4, rtol=0)


def test_empty_revisions_are_skipped_and_counted_and_bad_lines_named(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "  "}]
    )
    examples, empty = read_examples(path)
    assert examples == [Example("a", "b")] and empty == 1
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "response": 3}])
    with pytest.raises(RlhfkitError, match=r"bad.jsonl:1: 'response' must be a string"):
        read_examples(bad)


def _data(tmp_path, n: int = 40):
    rows = [
        {"prompt": f"Question {i}: how are you?", "response": "I am well, thank you."}
        for i in range(n)
    ]
    return write_jsonl(tmp_path / "revisions.jsonl", rows)


def test_sft_lowers_the_held_out_loss_and_resumes(tmp_path, tiny_model, cli):
    data = _data(tmp_path)
    out = tmp_path / "sft"
    config = SFTConfig(
        policy=tiny_model, epochs=2, batch_size=8, lr=1e-2, held_out_fraction=0.25, lora=False
    )
    from rlhfkit.train.sft import train_sft

    summary = train_sft(data, out, config)
    loss = summary["held_out_loss"]
    assert summary["examples"]["held_out"] > 0 and loss["after"] < loss["before"] - 0.5
    info = json.loads((out / "policy" / "rlhfkit_policy.json").read_text())
    assert info["base"] == tiny_model and info["stage"] == "sft" and info["lora"] is False
    with pytest.raises(RlhfkitError, match="--resume"):
        train_sft(data, out, config)
    # a longer run resumed from the first: the steps continue, the metrics append
    longer = SFTConfig(**{**config.model_dump(), "epochs": 3})
    resumed = train_sft(data, out, longer, resume=True)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, resumed["steps"] + 1)) and resumed["steps"] > summary["steps"]
    with pytest.raises(RlhfkitError, match=r"other settings \(max_length 256, not 128\)"):
        train_sft(data, out, SFTConfig(**{**longer.model_dump(), "max_length": 128}), resume=True)


def test_a_killed_runs_metrics_after_its_last_checkpoint_are_dropped_on_resume(
    tmp_path, tiny_model
):
    """A kill between a step's metrics line and the next checkpoint leaves lines the resumed
    run writes again: they are dropped first, so every step is logged once."""
    from rlhfkit.train.sft import train_sft

    data = _data(tmp_path)
    out = tmp_path / "sft"
    config = SFTConfig(policy=tiny_model, epochs=1, batch_size=8, lr=1e-2, held_out_fraction=0.25)
    first = train_sft(data, out, config)
    with (out / "metrics.jsonl").open("a") as log:  # as if step N+1 was logged, then killed
        log.write(json.dumps({"step": first["steps"] + 1, "loss": 9.9}) + "\n")
    longer = SFTConfig(**{**config.model_dump(), "epochs": 2})
    train_sft(data, out, longer, resume=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 2 * first["steps"] + 1))
    assert all(r["loss"] != 9.9 for r in records)


def test_a_policy_stacked_on_sft_starts_at_the_sft_model(tmp_path, tiny_model):
    from rlhfkit.models.stack import lineage, load_policy_model
    from rlhfkit.train.ppo.policy import Policy
    from rlhfkit.train.ppo.step import PPOConfig
    from rlhfkit.train.sft import train_sft

    out = tmp_path / "sft"
    train_sft(_data(tmp_path), out, SFTConfig(policy=tiny_model, epochs=1, lr=1e-2))
    sft_model, tokenizer = load_policy_model(out / "policy")
    base, _ = load_policy_model(tiny_model)
    ids = tokenizer("Question 1: how are you?", return_tensors="pt")
    with torch.no_grad():
        tuned = sft_model(**ids).logits
        assert not torch.allclose(tuned, base(**ids).logits, atol=1e-4)  # SFT changed it
        policy = Policy.load(str(out / "policy"), PPOConfig(policy=tiny_model).lora_args())
        with policy.model.disable_adapter():  # the reference: the adapter off
            reference = policy.model(**ids).logits
        current = policy.model(**ids).logits
    # a fresh adapter starts as a no-op: policy = reference = the SFT model, KL 0
    assert torch.allclose(current, reference) and torch.allclose(reference, tuned, atol=1e-4)
    assert [step["stage"] for step in lineage(out / "policy")] == ["sft"]


def test_sft_holds_out_revisions_of_prompts_from_the_runs_train_split():
    """The revise stage answers the train split's prompts; SFT's own split must still hold
    some of them out (the run's split, unsalted, would hold out none)."""
    from rlhfkit.data.prompts import load_prompts, split_of
    from rlhfkit.train.sft import is_held_out

    prompts = [p.prompt for p in load_prompts("builtin:redteam", "train", 0.2, 100)]
    assert not any(split_of(p, 0.2) == "eval" for p in prompts)
    held = sum(is_held_out(p, 0.2) for p in prompts)
    assert 10 <= held <= 30  # about a fifth
