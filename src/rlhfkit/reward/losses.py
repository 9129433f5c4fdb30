"""The preference losses as pure tensor functions, tested on hand-computed numbers in
tests/test_losses.py: the reward model's, −log σ(r_chosen − r_rejected), and DPO's, the same
Bradley–Terry likelihood with the policy's implicit reward β·log(π/π_ref) in place of r.
PPO's math is in train/ppo/losses.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, group: torch.Tensor | None = None
) -> torch.Tensor:
    """Reward-model loss −log σ(r_chosen − r_rejected), the negative log-likelihood of the
    human preference: the log-likelihood log σ(Δ) is to be maximised, so we minimise its
    negative.

    With `group` (a prompt index per pair), the loss is averaged over each prompt's pairs
    first and then over prompts, so a prompt with C(9,2) = 36 pairs weighs as much as one
    with C(4,2) = 6 (InstructGPT's 1/C(K,2) normalisation).
    """
    per_pair = -F.logsigmoid(chosen - rejected)
    if group is None:
        return per_pair.mean()
    _, index = torch.unique(group, return_inverse=True)
    groups = int(index.max()) + 1
    sums = torch.zeros(groups, dtype=per_pair.dtype, device=per_pair.device).index_add(
        0, index, per_pair
    )
    counts = torch.bincount(index, minlength=groups).to(per_pair.dtype)
    return (sums / counts).mean()


def dpo_loss(
    chosen_logratio: torch.Tensor,
    rejected_logratio: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Direct preference optimisation on pairs, no reward model. Per pair, with
    Δ = log π(y|x) − log π_ref(y|x) summed over the response's tokens:
        sigmoid (DPO): z = β·(Δ_chosen − Δ_rejected),  −(1−ε)·log σ(z) − ε·log σ(−z)
                       (ε, label smoothing: the chance that a pair's label is flipped)
        ipo:           (Δ_chosen − Δ_rejected − 1/(2β))², a finite target for the gap
    Returns the mean loss and, for logging, the implicit rewards β·Δ of the chosen and the
    rejected, their margin, and the accuracy (pairs whose chosen has the larger reward)."""
    gap = chosen_logratio - rejected_logratio
    if loss_type == "sigmoid":
        z = beta * gap
        losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    elif loss_type == "ipo":
        losses = (gap - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss '{loss_type}' (sigmoid or ipo)")
    with torch.no_grad():
        chosen, rejected = beta * chosen_logratio, beta * rejected_logratio
        stats = {
            "chosen_reward": chosen.mean(),
            "rejected_reward": rejected.mean(),
            "reward_margin": (chosen - rejected).mean(),
            "accuracy": (gap > 0).float().mean(),
        }
    return losses.mean(), stats
