"""The RLHF math on hand-computed numbers."""

import math

import pytest
import torch

from rlhfkit.rl.losses import pairwise_loss


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
