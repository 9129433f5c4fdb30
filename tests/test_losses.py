"""The RLHF math on hand-computed numbers."""

import math

import pytest
import torch

from rlhfkit.reward.losses import dpo_loss, pairwise_loss
from rlhfkit.train.ppo.kl import AdaptiveKL, FixedKL
from rlhfkit.train.ppo.losses import (
    entropy_anchor_loss,
    entropy_from_logits,
    gae,
    group_normalise,
    kl_penalty,
    leave_one_out,
    masked_mean,
    masked_whiten,
    policy_loss,
    ppo_loss,
    sequence_rewards,
    token_rewards,
    value_loss,
)


def nll(margin: float) -> float:
    return -math.log(1 / (1 + math.exp(-margin)))


def test_pairwise_loss_is_the_mean_negative_log_sigmoid_of_the_margin():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0])
    # −log σ(1) = 0.31326, −log σ(0) = log 2 = 0.69315; mean 0.50320.
    assert pairwise_loss(chosen, rejected).item() == pytest.approx((nll(1) + math.log(2)) / 2)
    assert pairwise_loss(chosen, rejected).item() == pytest.approx(0.503204, abs=1e-6)


def test_grouped_loss_averages_within_each_prompt_then_over_prompts():
    chosen = torch.tensor([2.0, 0.0, 3.0])
    rejected = torch.tensor([1.0, 0.0, 3.0])
    group = torch.tensor([7, 7, 4])  # two pairs of prompt 7, one of prompt 4
    # prompt 7: (0.31326 + 0.69315)/2 = 0.50320; prompt 4: 0.69315; mean 0.598176.
    expected = ((nll(1) + math.log(2)) / 2 + math.log(2)) / 2
    assert pairwise_loss(chosen, rejected, group).item() == pytest.approx(expected)
    assert expected == pytest.approx(0.598176, abs=1e-6)
    # Pooled over pairs instead, prompt 7 would weigh twice: a different number.
    assert pairwise_loss(chosen, rejected).item() == pytest.approx((nll(1) + 2 * math.log(2)) / 3)


def test_the_gradient_raises_chosen_and_lowers_rejected():
    chosen = torch.tensor([0.5], requires_grad=True)
    rejected = torch.tensor([0.0], requires_grad=True)
    pairwise_loss(chosen, rejected).backward()
    # d/dΔ −log σ(Δ) = σ(Δ) − 1 = −0.37754 at Δ = 0.5.
    assert chosen.grad.item() == pytest.approx(1 / (1 + math.exp(0.5)) * -1, abs=1e-6)
    assert rejected.grad.item() == pytest.approx(-chosen.grad.item())


# --- PPO math -------------------------------------------------------------------------------


def close(tensor, expected, tol=1e-5):
    return torch.allclose(tensor, torch.tensor(expected, dtype=tensor.dtype), atol=tol)


def test_masked_mean_and_whiten_ignore_padding():
    x, mask = torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    # mean 2, unbiased variance (1 + 0 + 1)/2 = 1: whitened -1, 0, 1; padding stays 0.
    assert close(masked_whiten(x, mask), [[-1.0, 0.0, 1.0, 0.0]], 1e-4)
    assert close(masked_whiten(x, mask, shift_mean=False), [[1.0, 2.0, 3.0, 0.0]], 1e-4)


def test_gae_by_hand_with_and_without_padding():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 9.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [1.0, 1.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # Row 0: δ2 = 1 − 0.7 = 0.3; δ1 = 0.7 − 0.6 = 0.1, A1 = 0.1 + 0.95·0.3 = 0.385;
    #        δ0 = 0.6 − 0.5 = 0.1, A0 = 0.1 + 0.95·0.385 = 0.46575.
    # Row 1 ends after two steps (the 9s are padding): A1 = 2 − 1 = 1, A0 = (1 − 1) + 0.95 = 0.95.
    assert close(advantages, [[0.46575, 0.385, 0.3], [0.95, 1.0, 0.0]])
    assert close(returns, [[0.96575, 0.985, 1.0], [1.95, 2.0, 0.0]])


def test_gae_discounts_with_gamma():
    # One reward of 1 at the end of 3 steps, values 0, γ = 0.5, λ = 1: A = 0.25, 0.5, 1.
    advantages, _ = gae(
        torch.tensor([[0.0, 0.0, 1.0]]), torch.zeros(1, 3), torch.ones(1, 3), gamma=0.5, lam=1.0
    )
    assert close(advantages, [[0.25, 0.5, 1.0]])


def test_kl_estimators():
    logp, ref = torch.tensor([-1.0, -0.5]), torch.tensor([-2.0, -0.5])
    assert close(kl_penalty(logp, ref, "k1"), [1.0, 0.0])
    # k3 with log ρ = −1: e^{-1} − 1 + 1 = 0.367879; equal log-probs give 0.
    assert close(kl_penalty(logp, ref, "k3"), [0.367879, 0.0])
    assert (kl_penalty(torch.randn(100), torch.randn(100), "k3") >= 0).all()


def test_token_rewards_put_the_score_on_the_last_real_token():
    score = torch.tensor([1.5, -1.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, -0.1, 0.5]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    # β = 0.5: row 0 −0.05, −0.1, −0.15 + 1.5; row 1 −0.2, +0.05 − 1, padding 0.
    assert close(
        token_rewards(score, kl, mask, beta=0.5), [[-0.05, -0.1, 1.35], [-0.2, -0.95, 0.0]]
    )


def test_policy_loss_clips_by_hand():
    logp = torch.tensor([[0.0, math.log(1.5), math.log(0.5)]])
    advantages = torch.tensor([[1.0, 1.0, -1.0]])
    loss, stats = policy_loss(logp, torch.zeros(1, 3), advantages, torch.ones(1, 3), 0.2)
    # ρ = 1, 1.5, 0.5: max(−Aρ, −A·clip(ρ)) = −1; max(−1.5, −1.2) = −1.2; max(0.5, 0.8) = 0.8.
    assert loss.item() == pytest.approx((-1 - 1.2 + 0.8) / 3)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)
    assert stats["approx_kl"].item() == pytest.approx(
        0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 3
    )


def test_policy_gradient_raises_the_probability_of_advantaged_actions():
    logp = torch.tensor([[-1.0]], requires_grad=True)
    loss, _ = policy_loss(logp, torch.tensor([[-1.0]]), torch.tensor([[2.0]]), torch.ones(1, 1))
    loss.backward()
    assert logp.grad.item() == pytest.approx(-2.0)  # descending the loss raises log π


def test_value_loss_takes_the_worse_of_clipped_and_unclipped():
    values, old = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]])
    returns, mask = torch.tensor([[2.0, 0.1]]), torch.ones(1, 2)
    # t0: (1−2)² = 1 vs (0.7−2)² = 1.69; t1: (0−0.1)² = 0.01 vs (0.3−0.1)² = 0.04.
    assert value_loss(values, old, returns, mask, 0.2).item() == pytest.approx(
        0.5 * (1.69 + 0.04) / 2
    )
    assert value_loss(values, old, returns, mask, None).item() == pytest.approx(
        0.5 * (1 + 0.01) / 2
    )


def test_entropy_from_logits():
    h = entropy_from_logits(torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]]))
    # uniform over 2: ln 2; p = (0.25, 0.75): −(0.25 ln 0.25 + 0.75 ln 0.75) = 0.562335.
    assert close(h, [math.log(2), 0.562335])


def test_the_entropy_anchor_pulls_the_entropy_back_to_the_reference_s():
    assert entropy_anchor_loss(torch.tensor(0.3), 2.0).item() == pytest.approx(2.0 * 0.09)
    reference = torch.tensor([[2.0, 0.5, -1.0, 0.0]])
    target = entropy_from_logits(reference).mean()
    for temperature in (0.5, 2.0):  # sharper and flatter than the reference
        logits = reference / temperature
        gaps = []
        for _ in range(20):  # gradient descent on the anchor alone
            logits = logits.detach().requires_grad_()
            gap = entropy_from_logits(logits).mean() - target
            entropy_anchor_loss(gap, 1.0).backward()
            gaps.append(gap.item())
            logits = logits - 1.0 * logits.grad
        assert all(abs(b) < abs(a) and a * b > 0 for a, b in zip(gaps, gaps[1:], strict=False))
        assert abs(gaps[-1]) < 0.5 * abs(gaps[0])


def test_ppo_loss_signs():
    total = ppo_loss(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0), 0.1, 0.01)
    assert total.item() == pytest.approx(1.0 + 0.1 * 2.0 - 0.01 * 3.0)  # entropy is rewarded


def test_kl_controllers():
    assert FixedKL(0.05).update(kl=100.0, steps=64) == 0.05
    controller = AdaptiveKL(beta=0.1, target=6.0, horizon=10000)
    # KL 12 is 100% over target: the error is clipped to +0.2, β ← 0.1·(1 + 0.2·256/10000).
    assert controller.update(12.0, 256) == pytest.approx(0.1 * 1.00512)
    assert controller.update(6.0, 256) == pytest.approx(0.1 * 1.00512)  # on target: unchanged
    controller.update(3.0, 256)  # 50% under: clipped to −0.2
    assert controller.beta == pytest.approx(0.1 * 1.00512 * 0.99488)
    restored = AdaptiveKL(1.0, 1.0, 1)
    restored.load_state_dict(controller.state_dict())
    assert restored == controller


def test_leave_one_out_subtracts_the_mean_of_the_prompts_other_samples():
    scores = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 13.0])
    # 1 − (2+3)/2, 2 − (1+3)/2, 3 − (1+2)/2 | 10 − 11.5, 10 − 11.5, 13 − 10
    expected = [-1.5, 0.0, 1.5, -1.5, -1.5, 3.0]
    assert leave_one_out(scores, 3).tolist() == expected
    assert leave_one_out(scores, 1) is scores


def test_group_normalise_scales_each_prompts_samples_by_their_own_spread():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 5.0, 5.0, 5.0, 9.0])
    # Group 1: mean ½, unbiased std √(4·¼ / 3) = 1/√3, so ±½·√3 = ±0.8660.
    # Group 2: mean 6, deviations −1, −1, −1, 3: std √(12/3) = 2, so −0.5 ×3 and 1.5.
    expected = [0.8660, -0.8660, -0.8660, 0.8660, -0.5, -0.5, -0.5, 1.5]
    assert group_normalise(scores, 4, eps=0.0).tolist() == pytest.approx(expected, abs=1e-4)
    # A group whose samples all scored alike has nothing to learn: advantages 0, not NaN.
    assert group_normalise(torch.tensor([2.0, 2.0]), 2).tolist() == [0.0, 0.0]


def test_sequence_rewards_charge_the_summed_kl_of_real_tokens_only():
    score = torch.tensor([1.0, 0.5])
    kl = torch.tensor([[0.2, 0.4, 9.0], [0.1, 0.1, 0.1]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    # 1 − 0.5·(0.2 + 0.4) = 0.7 (the padding's 9 not charged); 0.5 − 0.5·0.3 = 0.35
    assert sequence_rewards(score, kl, mask, 0.5).tolist() == pytest.approx([0.7, 0.35])


def test_dpo_loss_by_hand():
    # Pair 1: log-ratios +1 (chosen) and −1 (rejected), β = 0.5: z = 0.5·2 = 1, loss
    # −log σ(1) = log(1 + e^−1). Pair 2: both 0: z = 0, loss log 2.
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])
    loss, stats = dpo_loss(chosen, rejected, beta=0.5)
    assert loss.item() == pytest.approx((nll(1.0) + math.log(2)) / 2)
    assert stats["chosen_reward"].item() == pytest.approx(0.25)  # mean of 0.5·1 and 0.5·0
    assert stats["rejected_reward"].item() == pytest.approx(-0.25)
    assert stats["reward_margin"].item() == pytest.approx(0.5)
    assert stats["accuracy"].item() == 0.5  # a tie is not a success
    # Label smoothing ε = 0.1: 0.9·(−log σ(1)) + 0.1·(−log σ(−1)), and log 2 for the tie.
    smoothed, _ = dpo_loss(chosen, rejected, beta=0.5, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx((0.9 * nll(1.0) + 0.1 * nll(-1.0) + math.log(2)) / 2)


def test_ipo_loss_pulls_the_gap_to_one_over_two_beta():
    # β = 0.5: target gap 1. Gaps 2 and 0: (2 − 1)² and (0 − 1)²; gap 1: 0.
    chosen, rejected = torch.tensor([1.0, 0.0, 0.5]), torch.tensor([-1.0, 0.0, -0.5])
    loss, _ = dpo_loss(chosen, rejected, beta=0.5, loss_type="ipo")
    assert loss.item() == pytest.approx((1 + 1 + 0) / 3)


def test_dpo_gradient_raises_the_chosen_and_lowers_the_rejected():
    chosen = torch.tensor([0.0], requires_grad=True)
    rejected = torch.tensor([0.0], requires_grad=True)
    loss, _ = dpo_loss(chosen, rejected, beta=0.1)
    loss.backward()
    # d/dΔc of −log σ(β(Δc − Δr)) at 0 is −β·σ(0) = −0.05: descent raises Δc.
    assert chosen.grad.item() == pytest.approx(-0.05) and rejected.grad.item() == pytest.approx(
        0.05
    )
    with pytest.raises(ValueError, match="unknown DPO loss"):
        dpo_loss(chosen, rejected, loss_type="hinge")
