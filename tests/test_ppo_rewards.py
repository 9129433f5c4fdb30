"""How PPO turns scores into rewards and when it stops, shown on a tiny random language model
(two layers, SmolLM2's tokenizer) so that whole runs take seconds: the KL penalty on every
token, the adaptive β, score shaping, leave-one-out, reward normalisation, and the stops."""

import json
import statistics

import pytest
import torch

from conftest import save_tiny_llama
from rlhfkit.errors import RlhfkitError
from rlhfkit.train.ppo.losses import masked_mean
from rlhfkit.train.ppo.policy import Policy
from rlhfkit.train.ppo.rollout import rollout
from rlhfkit.train.ppo.step import PPOConfig, advantages_and_returns, ppo_update, shape_scores
from rlhfkit.train.ppo.trainer import run_ppo

PROMPTS = ["Tell me about cats.", "What is rain?", "Say something nice.", "Hi!"]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> str:
    """The tiny model with its pad named in its config (the numbers below were found on it)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-lm"), with_pad_id=True)


def tiny_config(model: str, **changes) -> PPOConfig:
    settings = dict(
        policy=model,
        prompts="builtin:dialogues",
        device="cpu",
        batch_size=4,
        minibatches=1,
        max_new_tokens=4,
        steps=1,
        seed=0,
    )
    return PPOConfig(**{**settings, **changes})


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def response_length(prompts, completions):
    """A reward that differs between responses, so the first update moves the policy."""
    return torch.tensor([float(len(c)) / 10 for c in completions])


def rewards_in_turn(*calls):
    """A reward that returns the given scores, one list per call (per PPO step), and records
    the prompts it was asked about."""
    seen = []

    def reward(prompts, completions):
        seen.append(list(prompts))
        return torch.tensor(calls[len(seen) - 1], dtype=torch.float32)

    return reward, seen


# --- The KL penalty on the same rollout ---------------------------------------------------------


@pytest.fixture(scope="module")
def moved_policy_rollout(tiny_lm):
    """A rollout of a policy whose adapter has been moved off zero, so log π ≠ log π_ref."""
    torch.manual_seed(0)
    policy = Policy.load(tiny_lm, PPOConfig().lora_args())
    with torch.no_grad():
        for name, weight in policy.model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.5)
    torch.manual_seed(1)
    return policy, rollout(policy, PROMPTS, "chat", max_new_tokens=6)


def test_kl_penalty_changes_token_rewards_by_minus_beta_kl_on_every_token(moved_policy_rollout):
    """With λ = 0 and γ = 1 an advantage is r_t + V_{t+1} − V_t, so on the same rollout the
    advantages (and returns) under β differ from those under β = 0 by the token rewards'
    difference alone: −β·(log π − log π_ref) on each real token, 0 on padding."""
    _, batch = moved_policy_rollout
    mask = batch.response_mask
    k1 = (batch.logp - batch.ref_logp) * mask
    assert (k1.abs() > 1e-3).sum() >= 8  # the policy really differs from the reference
    config = PPOConfig(lam=0.0, gamma=1.0, whiten_advantages=False, kl_estimator="k1")
    scores = torch.tensor([1.0, -2.0, 0.5, 3.0])
    beta = 5.0
    kl_0, advantages_0, returns_0 = advantages_and_returns(batch, scores, 0.0, config)
    kl_b, advantages_b, returns_b = advantages_and_returns(batch, scores, beta, config)
    torch.testing.assert_close(kl_b, k1, rtol=0, atol=1e-6)
    torch.testing.assert_close(advantages_b - advantages_0, -beta * k1, rtol=0, atol=1e-5)
    torch.testing.assert_close(returns_b - returns_0, -beta * k1, rtol=0, atol=1e-5)

    # And β = 0 leaves the score on the last real token alone: A_t = [t last]·s + V_{t+1} − V_t.
    values = batch.values * mask
    last = mask.sum(dim=1).long() - 1
    expected = torch.zeros_like(values)
    for row in range(len(scores)):
        for t in range(int(last[row]) + 1):
            next_value = values[row, t + 1] if t < last[row] else 0.0
            reward = float(scores[row]) if t == last[row] else 0.0
            expected[row, t] = reward + next_value - values[row, t]
    torch.testing.assert_close(advantages_0, expected, rtol=0, atol=1e-5)


def test_the_update_minimises_the_advantages_of_the_penalised_rewards(moved_policy_rollout):
    """Inside ppo_update: the first forward pass sees the sampling weights (ratio 1), so its
    policy loss is −mean A over real tokens; with λ = 0 and no whitening the penalty moves
    that by +β·(mean KL per token), exactly."""
    policy, batch = moved_policy_rollout
    mask = batch.response_mask
    k1_mean = float(masked_mean(batch.logp - batch.ref_logp, mask))
    config = PPOConfig(
        batch_size=4,
        minibatches=1,
        ppo_epochs=1,
        lam=0.0,
        gamma=1.0,
        whiten_advantages=False,
        device="cpu",
    )
    scores = torch.tensor([1.0, -2.0, 0.5, 3.0])

    def policy_loss_at(beta: float) -> dict:
        frozen = torch.optim.SGD(policy.trainable_parameters(), lr=0.0)  # weights stay put
        return ppo_update(policy, frozen, batch, scores, beta, config)

    at_0, at_beta = policy_loss_at(0.0), policy_loss_at(4.0)
    assert at_beta["kl_per_token"] == pytest.approx(k1_mean, abs=1e-6)
    assert abs(k1_mean) > 1e-3
    assert at_beta["policy_loss"] - at_0["policy_loss"] == pytest.approx(4.0 * k1_mean, abs=1e-4)


# --- Score shaping ------------------------------------------------------------------------------


def test_shape_scores_by_hand():
    scores = torch.tensor([12.0, -15.0, 3.0, 0.5, 7.0])
    finished = torch.tensor([True, True, False, True, False])
    config = PPOConfig(no_eos_penalty=-4.0, reward_clip=10.0)
    # Unfinished responses (3rd, 5th) get −4 whatever they scored; then everything to ±10.
    assert shape_scores(scores, finished, config).tolist() == [10.0, -10.0, -4.0, 0.5, -4.0]
    harsh = PPOConfig(no_eos_penalty=-20.0, reward_clip=10.0)  # the penalty is clipped too
    assert shape_scores(scores, finished, harsh).tolist() == [10.0, -10.0, -10.0, 0.5, -10.0]
    off = PPOConfig(no_eos_penalty=None, reward_clip=None)
    assert shape_scores(scores, finished, off).tolist() == scores.tolist()
    assert scores.tolist() == [12.0, -15.0, 3.0, 0.5, 7.0]  # the caller's tensor is untouched


def test_the_trainer_scores_with_the_shaped_rewards(tiny_lm, tmp_path):
    """A raw reward of ±50 is clipped to ±10; with a no-EOS penalty, the random model's
    responses (none reaches EOS in 4 tokens) all score −3 instead."""
    alternating = lambda p, c: torch.tensor([50.0, -50.0] * (len(c) // 2))  # noqa: E731
    run_ppo(tiny_config(tiny_lm, reward_clip=10.0), tmp_path / "clip", reward=alternating)
    (record,) = metrics(tmp_path / "clip")
    assert record["reward_mean"] == 0.0 and record["reward_std"] > 50  # logged as it came
    assert record["score_mean"] == 0.0
    assert record["score_std"] == pytest.approx(statistics.stdev([10, -10, 10, -10]))

    config = tiny_config(tiny_lm, reward_clip=10.0, no_eos_penalty=-3.0)
    run_ppo(config, tmp_path / "eos", reward=alternating)
    (record,) = metrics(tmp_path / "eos")
    assert record["finished"] == 0.0
    assert (record["score_mean"], record["score_std"]) == (-3.0, 0.0)


# --- Leave-one-out and normalisation inside the trainer ----------------------------------------


def test_samples_per_prompt_scores_each_against_the_prompts_other_samples(tiny_lm, tmp_path):
    reward, seen = rewards_in_turn([1.0, 2.0, 3.0, 4.0, 4.0, 7.0])
    config = tiny_config(
        tiny_lm, batch_size=6, samples_per_prompt=3, score_baseline="leave_one_out"
    )
    run_ppo(config, tmp_path / "run", reward=reward)
    (prompts,) = seen
    # Two prompts, each sampled three times in a row.
    assert prompts[0] == prompts[1] == prompts[2] != prompts[3] == prompts[4] == prompts[5]
    # 1 − (2+3)/2, 2 − (1+3)/2, 3 − (1+2)/2 | 4 − (4+7)/2, 4 − (4+7)/2, 7 − (4+4)/2
    leave_one_out = [-1.5, 0.0, 1.5, -1.5, -1.5, 3.0]
    (record,) = metrics(tmp_path / "run")
    assert record["reward_mean"] == pytest.approx(3.5)  # the raw scores' mean
    assert record["score_mean"] == pytest.approx(0.0, abs=1e-6)
    assert record["score_std"] == pytest.approx(statistics.stdev(leave_one_out), abs=1e-6)


def test_without_a_score_baseline_the_groups_scores_reach_gae_as_they_are(tiny_lm, tmp_path):
    reward, _ = rewards_in_turn([1.0, 2.0, 3.0, 4.0, 4.0, 7.0])
    config = tiny_config(tiny_lm, batch_size=6, samples_per_prompt=3, score_baseline="none")
    run_ppo(config, tmp_path / "run", reward=reward)
    (record,) = metrics(tmp_path / "run")
    assert record["score_mean"] == pytest.approx(3.5)
    assert record["score_std"] == pytest.approx(statistics.stdev([1, 2, 3, 4, 4, 7]))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"advantage": "rloo"}, "needs samples_per_prompt ≥ 2, not 1"),
        ({"advantage": "grpo", "samples_per_prompt": 1}, "needs samples_per_prompt ≥ 2"),
        (
            {"advantage": "rloo", "samples_per_prompt": 2, "score_baseline": "leave_one_out"},
            "score_baseline is for advantage gae",
        ),
        ({"samples_per_prompt": 2}, "say score_baseline: leave_one_out"),
        ({"score_baseline": "leave_one_out"}, "leave_one_out needs samples_per_prompt ≥ 2"),
    ],
)
def test_a_baseline_is_chosen_once_and_explicitly(changes, message):
    with pytest.raises(RlhfkitError, match=message) as caught:
        PPOConfig.make(batch_size=4, **changes)
    assert "\n" not in str(caught.value)


def test_critic_free_advantages_by_hand(moved_policy_rollout):
    """Two prompts × two samples. With the KL in the loss the rewards are the scores, so
    rloo gives each sample its score minus the other's, and grpo (x − mean) / std, which for
    two unequal samples is ±(d/2)/(d/√2) = ±1/√2; every token of a response gets its
    response's advantage, and there are no returns (no critic)."""
    _, batch = moved_policy_rollout
    mask = batch.response_mask
    scores = torch.tensor([1.0, 3.0, 0.0, 2.0])
    common = dict(samples_per_prompt=2, whiten_advantages=False, kl_in="loss")
    for advantage, expected in [
        ("rloo", [-2.0, 2.0, -2.0, 2.0]),
        ("grpo", [-0.70711, 0.70711, -0.70711, 0.70711]),
    ]:
        config = PPOConfig(advantage=advantage, **common)
        kl, advantages, returns = advantages_and_returns(batch, scores, 0.5, config)
        assert returns is None
        expected_tokens = torch.tensor(expected)[:, None] * mask
        torch.testing.assert_close(advantages, expected_tokens, rtol=0, atol=1e-4)
        assert kl.abs().sum() > 0  # the KL is still measured, for the log and the controller
    # With the KL in the reward, rloo charges each response β·Σ_t KL_t before comparing.
    config = PPOConfig(advantage="rloo", **{**common, "kl_in": "reward"})
    kl, advantages, _ = advantages_and_returns(batch, scores, 0.5, config)
    charged = scores - 0.5 * kl.sum(dim=1)
    the_other = charged.reshape(2, 2).flip(1).reshape(-1)  # the other sample of its prompt
    torch.testing.assert_close(advantages, (charged - the_other)[:, None] * mask, atol=1e-5, rtol=0)


def test_a_critic_free_run_has_no_value_head_and_resumes(tiny_lm, tmp_path):
    config = tiny_config(
        tiny_lm, batch_size=4, samples_per_prompt=2, advantage="grpo", kl_in="loss", steps=2
    )
    run_ppo(config, tmp_path / "run", reward=response_length)
    records = metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        assert "value_loss" not in record and "explained_variance" not in record
        assert record["kl_loss"] >= 0  # k3 is never negative
    policy_dir = tmp_path / "run" / "policy"
    assert (policy_dir / "adapter_model.safetensors").exists()
    assert not (policy_dir / "value_head.safetensors").exists()
    from rlhfkit.train.checkpoint import read_state

    state = read_state(tmp_path / "run" / "checkpoint.safetensors")
    assert state["trainer"]["trainable"] and not [
        k for k in state["trainer"]["trainable"] if "value_head" in k
    ]
    assert len(state["trainer"]["optimizer"]["param_groups"]) == 1
    run_ppo(
        config.model_copy(update={"steps": 3}),
        tmp_path / "run",
        resume=True,
        reward=response_length,
    )
    assert [r["step"] for r in metrics(tmp_path / "run")] == [1, 2, 3]


def test_normalisation_is_fitted_on_the_first_step_and_kept(tiny_lm, tmp_path):
    reward, _ = rewards_in_turn([1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0])
    config = tiny_config(tiny_lm, steps=2, normalise_reward=True)
    run_ppo(config, tmp_path / "run", reward=reward)
    first, second = metrics(tmp_path / "run")
    assert first["score_mean"] == pytest.approx(0.0, abs=1e-6)
    assert first["score_std"] == pytest.approx(1.0, abs=1e-6)
    # Step 2 keeps step 1's map: (5 − 2.5) / stdev(1, 2, 3, 4) = 2.5 / 1.290994.
    assert second["score_mean"] == pytest.approx(2.5 / statistics.stdev([1, 2, 3, 4]), abs=1e-5)
    assert second["score_std"] == pytest.approx(0.0, abs=1e-6)
    assert second["reward_mean"] == 5.0


# --- The adaptive β and the stops ---------------------------------------------------------------


def test_adaptive_beta_shrinks_below_the_target_kl_and_grows_above_it(tiny_lm, tmp_path):
    """Step 1 samples from the reference itself (a fresh adapter): KL 0, below target, so β
    shrinks. The update then moves the policy; k3 is positive wherever π ≠ π_ref, far above
    a target of 1e-6, so β grows. Each step's β follows from the KL logged before it."""
    config = tiny_config(
        tiny_lm,
        steps=3,
        lr=1e-2,
        adaptive_kl=True,
        init_kl_coef=0.1,
        kl_target=1e-6,
        kl_horizon=10,
        kl_estimator="k3",
    )
    run_ppo(config, tmp_path / "run", reward=response_length)
    records = metrics(tmp_path / "run")
    kls, betas = [r["kl"] for r in records], [r["beta"] for r in records]
    assert kls[0] == 0.0 and kls[1] > 1.2e-6  # below target, then above it by over 20%
    assert betas[0] == 0.1
    assert betas[1] == pytest.approx(0.1 * (1 - 0.2 * 4 / 10))  # error clipped to −0.2
    assert betas[2] == pytest.approx(betas[1] * (1 + 0.2 * 4 / 10))  # clipped to +0.2


def test_a_kl_above_max_kl_stops_the_run_at_that_step(tiny_lm, tmp_path):
    config = tiny_config(tiny_lm, steps=5, lr=1e-2, kl_estimator="k3", max_kl=1e-9)
    with pytest.raises(RlhfkitError, match=r"exceeded max_kl 1e-09 at step 2.*\(step 1\)"):
        run_ppo(config, tmp_path / "run", reward=response_length)
    (record,) = metrics(tmp_path / "run")  # step 1 (KL 0) was kept; step 2 was not
    assert record["step"] == 1 and record["kl"] == 0.0
    assert not (tmp_path / "run" / "policy").exists()


def test_reaching_target_reward_stops_the_run(tiny_lm, tmp_path):
    config = tiny_config(tiny_lm, steps=5, target_reward=1.5)
    result = run_ppo(config, tmp_path / "run", reward=lambda p, c: torch.full((len(c),), 2.0))
    assert result["steps"] == 1 and "reached the target" in result["stopped"]
    assert [r["step"] for r in metrics(tmp_path / "run")] == [1]
    assert (tmp_path / "run" / "policy" / "rlhfkit_policy.json").exists()
    # Below the target it runs every step.
    config = tiny_config(tiny_lm, steps=2, target_reward=2.5)
    result = run_ppo(config, tmp_path / "more", reward=lambda p, c: torch.full((len(c),), 2.0))
    assert result["steps"] == 2 and result["stopped"] == "steps"
