"""The reward model's loss as a pure tensor function, tested on hand-computed numbers in
tests/test_losses.py. Here rather than with PPO's math (rl/losses.py) so that training a
reward model does not depend on the RL package: `rl` imports `reward`, never the reverse.
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
