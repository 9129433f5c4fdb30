"""The math of PPO as pure tensor functions: tensors in, tensors out, no models.

Each function is short and reads like its formula; trainers call these and never re-derive
them (the preference losses, the reward model's and DPO's, are in reward/losses.py).
Tested on hand-computed numbers in tests/test_losses.py.
"""

from __future__ import annotations

import torch

# Shapes: [batch, T] over response tokens (or an agent's moves), `mask` 1 on real steps and 0
# on padding after the end. Every mean below is a masked mean over real steps only.


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ x·m / Σ m (over `dim`, or everything)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of the real entries."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    return masked_mean((x - mean) ** 2, mask) * n / (n - 1).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x − mean) / std over the real entries; padding comes out 0. With shift_mean=False the
    mean is kept (whitening rewards must not move their mean)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation, right to left:
        δ_t = r_t + γ·V_{t+1} − V_t,   A_t = δ_t + γλ·A_{t+1},   returns R_t = A_t + V_t,
    with V and A zero past the last real step (the episode ends there)."""
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value, next_advantage = values[:, t], advantages[:, t]
    return advantages, advantages + values


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL(π‖π_ref) estimate from the sampled token's log-probabilities.
    k1 = log π − log π_ref                   (unbiased; can be negative per token)
    k3 = (ρ − 1) − log ρ,  ρ = π_ref / π      (unbiased, always ≥ 0, lower variance)"""
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator '{estimator}' (k1 or k3)")


def leave_one_out(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """s_i − mean of the other samples of the same prompt, for consecutive groups of
    `group_size`: a baseline that removes how easy or hard the prompt is (RLOO)."""
    if group_size == 1:
        return scores
    groups = scores.reshape(-1, group_size)
    others = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others).reshape(-1)


def group_normalise(scores: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """(s_i − group mean) / (group std + ε), std unbiased, for consecutive groups of
    `group_size` (GRPO): each prompt's samples ranked against each other on one scale."""
    groups = scores.reshape(-1, group_size)
    mean, std = groups.mean(dim=1, keepdim=True), groups.std(dim=1, keepdim=True)
    return ((groups - mean) / (std + eps)).reshape(-1)


def group_advantages(rewards: torch.Tensor, group_size: int, estimator: str) -> torch.Tensor:
    """A critic-free advantage per sample from its prompt's group: `rloo` leave_one_out,
    `grpo` group_normalise."""
    if estimator == "rloo":
        return leave_one_out(rewards, group_size)
    if estimator == "grpo":
        return group_normalise(rewards, group_size)
    raise ValueError(f"unknown group advantage '{estimator}' (rloo or grpo)")


def sequence_rewards(
    score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """R = score − β·Σ_t KL_t: a whole response's reward, for advantages without a critic."""
    return score - beta * (kl * mask).sum(dim=1)


def token_rewards(
    score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """r_t = −β·KL_t on every real token, plus the sequence's score on its last real token."""
    rewards = -beta * kl * mask
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)
    return rewards.scatter_add(1, last[:, None], score[:, None].to(rewards.dtype))


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip, as a loss to minimise: masked mean of max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)),
    ρ = π/π_old (the PPO-clip objective min(ρA, clip(ρ)A), which PPO maximises, negated).
    Also returns the clip fraction and approx KL ½·E[(log ρ)²] for monitoring."""
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": 0.5 * masked_mean(log_ratio**2, mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None = 0.2,
) -> torch.Tensor:
    """½·masked mean of max((V − R)², (V_clip − R)²), V_clip = V_old + clip(V − V_old, ±c):
    the value head may not move far from where it was when the rollout was scored."""
    unclipped = (values - returns) ** 2
    if clip is None:
        return 0.5 * masked_mean(unclipped, mask)
    v_clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.maximum(unclipped, (v_clipped - returns) ** 2), mask)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H = −Σ p·log p = logsumexp(z) − Σ softmax(z)·z, per position."""
    probabilities = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probabilities * logits).sum(dim=-1)


def entropy_anchor_loss(gap: torch.Tensor, coef: float) -> torch.Tensor:
    """c·(H(π) − H(π_ref))². Log-perplexity under the reference is H(π) + KL(π‖π_ref) a
    token; a change of temperature moves H in the first order but the KL only in the
    second, so the KL penalty alone lets the policy drift sharper or flatter almost for free."""
    return coef * gap**2


def ppo_loss(
    policy: torch.Tensor,
    value: torch.Tensor,
    entropy: torch.Tensor,
    vf_coef: float = 0.1,
    ent_coef: float = 0.0,
) -> torch.Tensor:
    """PPO's objective L^POLICY + c1·L^VF + c2·L^ENT, with L^VF a value *objective*, is to be
    maximised; as one loss to minimise, with `policy` and `value` the losses above and
    `entropy` a mean entropy (to keep high): L = L_policy + c1·L_value − c2·H."""
    return policy + vf_coef * value - ent_coef * entropy
