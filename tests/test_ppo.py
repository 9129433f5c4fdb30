"""PPO on the packaged SmolLM2: the reference, padding, EOS handling, a run that learns,
checkpoints that resume exactly, and settings checked before any model loads."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from rlhfkit.errors import RlhfkitError
from rlhfkit.generation import truncate_after_eos
from rlhfkit.train.ppo.losses import entropy_from_logits, kl_penalty
from rlhfkit.train.ppo.policy import Policy
from rlhfkit.train.ppo.rollout import response_logits, rollout, token_logp
from rlhfkit.train.ppo.step import (
    PPOConfig,
    RewardScale,
    ppo_update,
    response_forward,
    with_old_logp,
)
from rlhfkit.train.ppo.trainer import CHECKPOINT, read_checkpoint, run_ppo


def exclamations(prompts, completions):
    """A simple known reward: how excited the response sounds, 0 to 3."""
    return torch.tensor([float(min(c.count("!"), 3)) for c in completions])


def test_responses_are_cut_after_the_first_eos():
    tokens = torch.tensor([[5, 6, 2, 7, 2], [5, 6, 7, 8, 9], [2, 5, 5, 5, 5]])
    cut, mask, finished = truncate_after_eos(tokens, [2], pad_id=0)
    assert cut.tolist() == [[5, 6, 2, 0, 0], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert finished.tolist() == [True, False, True]


def test_reward_normalisation_is_fitted_once_on_the_first_batch():
    scale = RewardScale(enabled=True)
    first = torch.tensor([1.0, 2.0, 3.0])  # mean 2, sample std 1
    assert scale(first, first).tolist() == [-1.0, 0.0, 1.0]
    later = torch.tensor([4.0, 6.0])
    assert scale(later, later).tolist() == [2.0, 4.0]  # the same map, not refitted
    assert RewardScale(enabled=False)(later, later) is later
    restored = RewardScale(enabled=True)
    restored.load_state_dict(scale.state_dict())
    assert restored(later, later).tolist() == [2.0, 4.0]


def test_bad_settings_are_one_line_errors():
    with pytest.raises(RlhfkitError, match="'precision'"):
        PPOConfig.make(precision="fp8")
    with pytest.raises(RlhfkitError, match="not a torch device"):
        PPOConfig.make(device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(RlhfkitError, match="no CUDA device"):
            PPOConfig.make(device="cuda").check_hardware()  # when PPO starts, not on loading
    with pytest.raises(RlhfkitError, match="does not split into 3 minibatches"):
        PPOConfig.make(batch_size=8, minibatches=3)
    with pytest.raises(RlhfkitError, match="'init_kl_coef'"):
        PPOConfig.make(init_kl_coef=-0.1)
    with pytest.raises(RlhfkitError, match="'steps'"):
        PPOConfig.make(steps=0)


def test_bf16_on_a_cpu_that_emulates_it_is_refused(monkeypatch):
    mkldnn = torch.ops.mkldnn
    monkeypatch.setattr(mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.raises(RlhfkitError, match="bf16 on a CPU needs AVX-512.*use fp32"):
        PPOConfig.make(precision="bf16", device="cpu").check_hardware()
    PPOConfig.make(precision="fp32", device="cpu").check_hardware()
    monkeypatch.setattr(mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    PPOConfig.make(precision="bf16", device="cpu").check_hardware()


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    return Policy.load("smollm2-135m-instruct", PPOConfig().lora_args())


@pytest.mark.slow
def test_kl_is_zero_with_a_fresh_adapter_and_positive_after_updates(policy):
    prompts = ["Tell me about cats.", "What is rain?", "Say something nice.", "Hi!"]
    torch.manual_seed(1)
    batch = rollout(policy, prompts, "chat", max_new_tokens=8)
    # LoRA's B starts at zero: the policy *is* the reference, token for token.
    assert torch.equal(batch.logp, batch.ref_logp)
    config = PPOConfig(batch_size=4, minibatches=1, ppo_epochs=4, lr=3e-3)
    optimizer = torch.optim.Adam(policy.trainable_parameters(), lr=config.lr)
    scores = torch.tensor([3.0, -3.0, 3.0, -3.0])
    ppo_update(policy, optimizer, batch, scores, 0.0, config)
    # Each response became likelier if it scored +3 and less likely if −3.
    keep = batch.response_ids.shape[1] + 1
    with torch.no_grad():
        logits, _ = policy(batch.input_ids, batch.attention_mask, keep)
    now = token_logp(response_logits(logits, keep - 1, 1.0), batch.response_ids)
    change = ((now - batch.logp) * batch.response_mask).sum(dim=1)
    assert change.sign().tolist() == scores.sign().tolist()
    # On fresh samples the policy is off the reference: k3 = (ρ − 1) − log ρ, ρ = π_ref / π,
    # by hand in float64, is positive on every token whose log-probabilities differ.
    torch.manual_seed(2)
    after = rollout(policy, prompts, "chat", max_new_tokens=8)
    real = after.response_mask.bool()
    log_rho = (after.ref_logp - after.logp)[real].double()
    k3 = kl_penalty(after.logp, after.ref_logp, "k3")[real]
    torch.testing.assert_close(k3.double(), log_rho.exp() - 1 - log_rho, rtol=1e-4, atol=1e-7)
    moved = log_rho.abs() > 1e-4
    assert moved.sum() >= real.sum() // 2 and (k3[moved] > 0).all()


@pytest.mark.slow
def test_one_minibatch_takes_the_old_log_probs_from_its_first_forward_pass(policy):
    """With one minibatch the rollout skips the policy's forward pass; the update must come
    out as if it had not: same log π_old and V_old, same statistics, same new weights. The
    caller's rollout is not filled in behind its back."""
    prompts = ["Tell me about dogs.", "Why is the sky blue?", "Name a colour.", "Hello."]
    torch.manual_seed(5)
    eager = rollout(policy, prompts, "chat", max_new_tokens=8)
    lazy = dataclasses.replace(eager, logp=None, values=None)
    config = PPOConfig(batch_size=4, minibatches=1, ppo_epochs=2, lr=1e-3)
    scores = torch.tensor([1.0, -1.0, 0.5, 0.0])
    shuffled = torch.tensor([2, 0, 3, 1])  # a forward pass in minibatch order is put back in order
    with torch.no_grad():
        _, logp, values = response_forward(policy, lazy, shuffled, config.temperature)
    filled = with_old_logp(lazy, shuffled, logp, values)
    assert torch.allclose(filled.logp, eager.logp, atol=1e-5)
    assert torch.allclose(filled.values, eager.values, atol=1e-5)
    start = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}

    def update(batch):
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if name in start:
                    p.copy_(start[name])
        optimizer = torch.optim.Adam(policy.trainable_parameters(), lr=config.lr)
        generator = torch.Generator().manual_seed(0)
        stats = ppo_update(policy, optimizer, batch, scores, 0.1, config, generator)
        return stats, {n: p.detach().clone() for n, p in policy.named_parameters() if n in start}

    eager_stats, eager_weights = update(eager)
    lazy_stats, lazy_weights = update(lazy)
    assert lazy.logp is None and lazy.values is None
    assert lazy_stats == pytest.approx(eager_stats, rel=1e-4, abs=1e-6)
    assert any(not torch.equal(eager_weights[n], start[n]) for n in start)  # it did train
    for name in start:
        assert torch.allclose(lazy_weights[name], eager_weights[name], atol=1e-6), name
    with pytest.raises(ValueError, match="one minibatch"):
        two = PPOConfig(batch_size=4, minibatches=2)
        ppo_update(
            policy, None, dataclasses.replace(eager, logp=None, values=None), scores, 0.1, two
        )


@pytest.mark.slow
def test_the_entropy_anchor_holds_the_policy_s_entropy_near_the_reference_s(policy):
    """Updates that favour the samples' own tokens sharpen the policy; the anchor, on the
    same updates, keeps its entropy closer to the reference's. The gap it acts on is logged."""
    prompts = ["Tell me about owls.", "What is snow?", "Name a fruit.", "Good morning."]
    torch.manual_seed(7)
    batch = rollout(policy, prompts, "chat", max_new_tokens=8)
    start = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    keep = batch.response_ids.shape[1] + 1
    real = batch.response_mask.bool()
    scores = torch.full((4,), 3.0)  # every sample rewarded, advantages not whitened

    def reset():
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if name in start:
                    p.copy_(start[name])

    def entropy_gap() -> float:
        with torch.no_grad():
            logits, _ = policy(batch.input_ids, batch.attention_mask, keep)
            ref = policy.reference_logits(batch.input_ids, batch.attention_mask, keep)
        h = entropy_from_logits(response_logits(logits, keep - 1, 1.0).float())[real].mean()
        h_ref = entropy_from_logits(response_logits(ref, keep - 1, 1.0).float())[real].mean()
        return (h - h_ref).item()

    def after_updates(anchor: float) -> tuple[float, dict]:
        reset()
        config = PPOConfig(
            batch_size=4, minibatches=1, ppo_epochs=1, lr=3e-3, whiten_advantages=False
        ).model_copy(update={"entropy_anchor": anchor})
        optimizer = torch.optim.Adam(policy.trainable_parameters(), lr=config.lr)
        first = ppo_update(policy, optimizer, batch, scores, 0.0, config)
        for _ in range(12):
            ppo_update(policy, optimizer, batch, scores, 0.0, config)
        return entropy_gap(), first

    before = entropy_gap()
    free, first_free = after_updates(0.0)
    held, first_held = after_updates(50.0)
    reset()
    assert "entropy_gap" not in first_free
    # Masked means by token over the minibatch, as the loss takes them, before any update.
    assert first_held["entropy_gap"] == pytest.approx(before, abs=1e-4)
    assert free < before - 0.05  # rewarded for its own tokens, the policy grows surer
    assert abs(held) < 0.5 * abs(free)


@pytest.mark.slow
def test_bf16_keeps_the_reference_exact_and_the_log_probs_close_to_fp32():
    torch.manual_seed(0)
    policy = Policy.load("smollm2-135m-instruct", PPOConfig().lora_args(), precision="bf16")
    torch.manual_seed(1)
    batch = rollout(policy, ["Tell me about cats.", "What is rain?"], "chat", max_new_tokens=12)
    assert torch.equal(batch.logp, batch.ref_logp)  # the same bf16 path, the same weights
    policy.precision = "fp32"
    keep = batch.response_ids.shape[1] + 1
    with torch.no_grad():
        logits, _ = policy(batch.input_ids, batch.attention_mask, keep)
    fp32 = token_logp(response_logits(logits, keep - 1, 1.0), batch.response_ids)
    error = (fp32 - batch.logp).abs() * batch.response_mask
    # bf16 keeps 8 bits of mantissa: logits of ~20 are off by ~0.1 at worst
    assert error.max() < 0.25 and float(error.sum() / batch.response_mask.sum()) < 0.05


@pytest.mark.slow
def test_long_prompts_are_cut_from_the_left_and_counted(policy):
    long = "word " * 200 + "The end of the prompt is kept:"
    batch = rollout(policy, [long, "Short."], "raw", max_new_tokens=4, max_prompt_tokens=32)
    assert batch.truncated_prompts == 1 and batch.prompt_length == 32
    kept = policy.tokenizer.decode(batch.input_ids[0, :32])
    assert kept.endswith("The end of the prompt is kept:")


@pytest.mark.slow
def test_left_padding_does_not_change_the_log_probabilities_of_real_tokens(policy):
    tokenizer = policy.tokenizer
    short = tokenizer("The cat sat on the mat.", return_tensors="pt")
    tokenizer.padding_side = "left"
    both = tokenizer(
        [
            "The cat sat on the mat.",
            "A much longer sentence, so the short one gets padding on its left.",
        ],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        alone, _ = policy(short.input_ids, short.attention_mask)
        batched, _ = policy(both.input_ids, both.attention_mask)
    n = short.input_ids.shape[1]
    assert both.input_ids.shape[1] > n  # the short row really is padded
    ids = short.input_ids[:, 1:]
    lp_alone = token_logp(alone[:, :-1], ids)
    lp_batched = token_logp(batched[:1, -n:-1], ids)
    assert torch.allclose(lp_alone, lp_batched, atol=1e-4)
    # positions t−1 predict token t, on all logits or only the kept last ones
    assert torch.equal(response_logits(alone, 3, 2.0), alone[:, -4:-1] / 2.0)
    with torch.no_grad():
        kept, _ = policy(short.input_ids, short.attention_mask, logits_to_keep=4)
    assert torch.allclose(response_logits(kept, 3, 1.0), alone[:, -4:-1], atol=1e-4)


@pytest.mark.slow
def test_a_short_run_raises_the_reward_and_stays_near_the_reference(tmp_path):
    config = PPOConfig(
        prompts="builtin:dialogues",
        batch_size=16,
        minibatches=2,
        ppo_epochs=2,
        lr=1e-3,
        lora_r=8,
        max_new_tokens=12,
        steps=6,
        adaptive_kl=True,
        init_kl_coef=0.05,
        kl_target=6.0,
        seed=0,
    )
    result = run_ppo(config, tmp_path / "run", reward=exclamations)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward_mean"] for r in records]
    # Measured: 0.13, 0.06 in the first two steps, 0.56 and 1.1 in the last two. The sampled
    # mean of 16 responses wobbles by about ±0.15 step to step; +0.3 is well clear of that.
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.3
    assert all(r["kl"] < config.kl_target for r in records)
    assert {
        "policy_loss",
        "value_loss",
        "entropy",
        "clipfrac",
        "approx_kl",
        "explained_variance",
        "response_length",
        "tokens_per_s",
        "beta",
    } <= set(records[-1])
    assert result["steps"] == 6
    assert (tmp_path / "run" / "policy" / "adapter_model.safetensors").exists()


TINY = [
    "--prompts",
    "builtin:dialogues",
    "--batch-size",
    "4",
    "--minibatches",
    "2",
    "--max-new-tokens",
    "6",
    "--seed",
    "3",
    "--reward",
    "scorer:profanity",
]


def _rlhfkit(*args):
    return [os.path.join(os.path.dirname(sys.executable), "rlhfkit"), *args]


@pytest.mark.slow
def test_a_run_killed_mid_way_resumes_as_if_never_stopped(tmp_path):
    straight = subprocess.run(
        _rlhfkit("ppo", "--out", tmp_path / "a", "--steps", "3", *TINY),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert straight.returncode == 0, straight.stderr
    victim = subprocess.Popen(
        _rlhfkit("ppo", "--out", tmp_path / "b", "--steps", "3", *TINY),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = tmp_path / "b" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n")):
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)  # kill -9 after its first step
    victim.wait()
    done = metrics.read_text().count("\n")
    assert 1 <= done < 3
    resumed = subprocess.run(
        _rlhfkit("ppo", "--out", tmp_path / "b", "--steps", "3", "--resume", *TINY),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr

    def steps(run):
        rows = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return {
            r["step"]: {k: v for k, v in r.items() if "seconds" not in k and "per_s" not in k}
            for r in rows
        }

    a, b = steps("a"), steps("b")
    assert sorted(b) == [1, 2, 3]
    for step in (1, 2, 3):  # identical, bit for bit, including the steps after the resume
        assert a[step] == b[step], step
    again = subprocess.run(
        _rlhfkit("ppo", "--out", tmp_path / "b", *TINY), capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 1 and "pass --resume" in again.stderr


@pytest.mark.slow
def test_full_fine_tune_mode_keeps_a_separate_frozen_reference():
    full = Policy.load("smollm2-135m-instruct", lora=None)
    assert not full.uses_lora
    assert all(not p.requires_grad for p in full.reference_model.parameters())
    trainable = sum(p.numel() for p in full.trainable_parameters())
    assert trainable == pytest.approx(134.5e6, rel=0.01)  # every weight, and the value head
    torch.manual_seed(0)
    batch = rollout(full, ["Hello there."], "chat", max_new_tokens=6)
    assert torch.equal(batch.logp, batch.ref_logp)  # identical copies before training


@pytest.mark.slow
def test_ctrl_c_keeps_the_checkpoint_and_says_how_to_resume(tmp_path):
    run = subprocess.Popen(
        _rlhfkit("ppo", "--out", tmp_path / "c", "--steps", "50", *TINY),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # SIGABRT prints where it hangs
        # Ctrl-C as at a terminal, even where this runs with SIGINT ignored (a background job)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    metrics = tmp_path / "c" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n")):
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    try:
        _, stderr = run.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        run.send_signal(signal.SIGABRT)
        pytest.fail(f"still running 120 s after Ctrl-C:\n{run.communicate()[1][-5000:]}")
    assert run.returncode == 1
    assert "interrupted; the checkpoint of step" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr
    state = read_checkpoint(tmp_path / "c" / CHECKPOINT)
    assert state["step"] == metrics.read_text().count("\n") >= 1
