"""PPO for language models: fine-tuning the policy against a reward model's scores.

One step = phase 1, a rollout (rollout.py), then phase 2: rewards are the sequence score on
the last token minus β·KL(π‖π_ref) on every token, advantages come from GAE and are
whitened, and `ppo_epochs` passes over shuffled minibatches minimise
L = L_policy + c1·L_value − c2·H, with gradient accumulation and clipping. Without a critic
(`advantage: rloo | grpo`) a response's advantage is its reward against the other samples
of its prompt and there is no value head or value loss; `kl_in: loss` moves the KL from the
rewards to a term of the loss. All of the math is in losses.py; this module orchestrates.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator

from rlhfkit.config import StageConfig
from rlhfkit.errors import RlhfkitError
from rlhfkit.models.lora import lora_settings
from rlhfkit.trackers import Tracker
from rlhfkit.train.distributed import Processes, clip_grad_norm, resolve_device
from rlhfkit.train.ppo.kl import AdaptiveKL, FixedKL
from rlhfkit.train.ppo.losses import (
    entropy_anchor_loss,
    entropy_from_logits,
    gae,
    group_advantages,
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
from rlhfkit.train.ppo.policy import Policy
from rlhfkit.train.ppo.rollout import Rollout, response_logits, token_logp


class PPOConfig(StageConfig):
    """Settings of `rlhfkit ppo`; unknown keys and impossible values are errors."""

    setting = "PPO setting"
    may_change_on_resume = frozenset({"steps", "target_reward", "report_to"})
    renamed = {"model": "policy"}

    policy: str = Field(
        "smollm2-135m-instruct",
        description="the policy to train: a model, or a policy directory to stack on",
    )
    reward: str = Field(
        "scorer:profanity",
        description="a reward spec: rm:DIR, scorer:NAME, classifier:NAME_OR_DIR:LABEL or "
        "python:module:function",
    )
    prompts: str = Field(
        "builtin:rtp",
        description="a prompt source: a JSONL or other file, a datasets directory, "
        "builtin:NAME or hf:NAME",
    )
    split: Literal["all", "train", "eval"] = Field(
        "train",
        description="train, eval or all: which side of the prompts' held-out split to train on",
    )
    eval_fraction: float = Field(
        0.2, ge=0, lt=1, description="share of the prompts in the eval split"
    )
    mode: Literal["raw", "chat", "auto"] = Field(
        "auto",
        description="raw: continue the prompt text; chat: through the chat template; auto: "
        "raw for builtin:rtp and rendered conversations, else chat",
    )
    device: str = Field("auto", description="auto (cuda if there is one), cpu, cuda, cuda:N")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: mixed precision")
    lora: bool = True
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    steps: int = Field(20, ge=1, description="PPO steps (rollout + update) at most")
    batch_size: int = Field(16, ge=1, description="rollouts per step")
    minibatches: int = Field(2, ge=1, description="per PPO epoch, one optimiser step each")
    grad_accumulation: int = Field(1, ge=1, description="micro-batches per minibatch")
    ppo_epochs: int = Field(2, ge=1, description="passes over a step's rollouts")
    lr: float = Field(1e-4, gt=0)
    max_new_tokens: int = Field(24, ge=1)
    max_prompt_tokens: int = Field(256, ge=8, description="longer prompts lose their start")
    min_new_tokens: int = Field(0, ge=0)
    temperature: float = Field(1.0, gt=0)
    init_kl_coef: float = Field(
        0.05, ge=0, description="β, the KL penalty's coefficient (its start with adaptive_kl)"
    )
    adaptive_kl: bool = Field(False, description="adapt β toward kl_target")
    kl_target: float = Field(
        6.0, gt=0, description="with adaptive_kl: the KL per sequence aimed at"
    )
    kl_horizon: int = Field(
        10000, ge=1, description="with adaptive_kl: rollouts over which β adapts"
    )
    kl_estimator: Literal["k1", "k3"] = Field(
        "k1", description="k1: log π − log π_ref; k3: (ρ − 1) − log ρ with ρ = π_ref/π"
    )
    clip_eps: float = Field(0.2, gt=0, description="the PPO-clip range ε")
    value_clip: float | None = Field(
        0.2, gt=0, description="clip range of the value loss; null: unclipped"
    )
    vf_coef: float = Field(0.1, ge=0, description="c1: weight of the value loss")
    ent_coef: float = Field(
        0.0, ge=0, description="c2: weight of the entropy bonus (0: entropy only logged)"
    )
    entropy_anchor: float = Field(
        0.0,
        ge=0,
        description="c·(H(π) − H(π_ref))², mean entropies over a minibatch's response tokens: "
        "holds the policy's entropy at the reference's, which the KL leash does not",
    )
    gamma: float = Field(1.0, gt=0, le=1, description="GAE's discount γ")
    lam: float = Field(0.95, ge=0, le=1, description="GAE's λ")
    max_grad_norm: float = Field(1.0, gt=0)
    whiten_advantages: bool = Field(
        True, description="advantages to mean 0, std 1 over the batch's real tokens"
    )
    samples_per_prompt: int = Field(
        1, ge=1, description="samples of each prompt in a step (a group, for rloo and grpo)"
    )
    advantage: Literal["gae", "rloo", "grpo"] = Field(
        "gae",
        description="gae: GAE with a value head; rloo: a response's reward minus the mean of "
        "its prompt's other samples'; grpo: (reward − group mean) / group std. rloo and grpo "
        "train no value head",
    )
    score_baseline: Literal["none", "leave_one_out"] | None = Field(
        None,
        description="gae with samples_per_prompt > 1, said explicitly: leave_one_out scores "
        "each sample against its prompt's other samples before GAE, none leaves scores be",
    )
    kl_in: Literal["reward", "loss"] = Field(
        "reward",
        description="reward: −β·KL on each token's reward (the kl_estimator); "
        "loss: β·KL (k3) added to the loss, as in GRPO",
    )
    normalise_reward: bool = Field(
        False, description="rewards to mean 0, std 1 on the first step's (reference) samples"
    )
    reward_clip: float | None = Field(10.0, gt=0, description="scores clipped to ± this")
    no_eos_penalty: float | None = Field(None, description="score of a response without EOS")
    target_reward: float | None = Field(None, description="stop once the mean score reaches it")
    max_kl: float = Field(50.0, gt=0, description="stop if the mean KL exceeds it")
    report_to: list[Tracker] | None = Field(
        None, description="tensorboard, wandb, mlflow (default: tensorboard if installed)"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _one_baseline(self) -> PPOConfig:
        """A baseline is chosen once: critic-free advantages bring their own, and a group of
        samples under GAE says whether it centres the scores (rlhfkit once did so silently)."""
        k = self.samples_per_prompt
        if self.advantage != "gae":
            if k < 2:
                raise ValueError(
                    f"advantage {self.advantage} compares the samples of a prompt: it needs "
                    f"samples_per_prompt ≥ 2, not {k}"
                )
            if self.score_baseline not in (None, "none"):
                raise ValueError(
                    f"score_baseline is for advantage gae; {self.advantage} has its baseline "
                    "from the prompt's group already"
                )
        elif k > 1 and self.score_baseline is None:
            raise ValueError(
                f"samples_per_prompt {k} with advantage gae: say score_baseline: leave_one_out "
                "(each sample scored against its prompt's others, as before this setting) or none"
            )
        elif k == 1 and self.score_baseline == "leave_one_out":
            raise ValueError("score_baseline leave_one_out needs samples_per_prompt ≥ 2")
        return self

    @property
    def has_critic(self) -> bool:
        """Whether the policy has a value head to train (GAE needs one; rloo and grpo not)."""
        return self.advantage == "gae"

    @model_validator(mode="after")
    def _divisible(self) -> PPOConfig:
        if self.batch_size % self.samples_per_prompt:
            raise ValueError(
                f"batch_size {self.batch_size} is not a whole number of prompts × "
                f"samples_per_prompt {self.samples_per_prompt}"
            )
        if self.batch_size % self.minibatches:
            raise ValueError(
                f"batch_size {self.batch_size} does not split into {self.minibatches} minibatches"
            )
        if (self.batch_size // self.minibatches) % self.grad_accumulation:
            raise ValueError(
                f"a minibatch of {self.batch_size // self.minibatches} does not "
                f"split into {self.grad_accumulation} micro-batches"
            )
        return self

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        """A name torch knows; whether this machine has it is checked when PPO starts, so a
        run's config loads anywhere (to evaluate its policy on another machine, say)."""
        if device != "auto":
            try:
                torch.device(device)
            except RuntimeError:
                raise ValueError(f"{device!r} is not a torch device") from None
        return device

    def check_hardware(self) -> None:
        """This machine can train as asked: the device exists, and bf16 is not emulated."""
        device = resolve_device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RlhfkitError(
                f"PPO setting 'device': {self.device!r}: this machine has no CUDA device"
            )
        if (
            self.precision == "bf16"
            and device.type == "cpu"
            and not torch.ops.mkldnn._is_mkldnn_bf16_supported()
        ):
            # Measured on an AVX2-only CPU: 85 s a PPO step against 7 s in fp32.
            raise RlhfkitError(
                "PPO setting 'precision': bf16 on a CPU needs AVX-512 (this one emulates bf16, "
                "about 12× slower than fp32): use fp32"
            )

    @property
    def one_pass(self) -> bool:
        """One minibatch in one micro-batch: the update's first forward pass sees every
        rollout under the weights that sampled it, so it doubles as the rollout's."""
        return self.minibatches == 1 and self.grad_accumulation == 1

    def lora_args(self) -> dict | None:
        return lora_settings(self.lora_r, self.lora_alpha) if self.lora else None

    def kl_controller(self) -> FixedKL | AdaptiveKL:
        if self.adaptive_kl:
            return AdaptiveKL(self.init_kl_coef, self.kl_target, self.kl_horizon)
        return FixedKL(self.init_kl_coef)


class RewardScale:
    """An affine map fitted once, on the first step's rewards — sampled before any update,
    so from the reference model — to give them mean 0 and std 1; the identity when off.
    Fixed afterwards, so rewards stay comparable across steps."""

    def __init__(self, enabled: bool):
        self.enabled, self.shift, self.scale = enabled, None, None

    def __call__(self, raw: torch.Tensor, whole_batch: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return raw
        if self.shift is None:
            self.shift = float(whole_batch.mean())
            self.scale = max(float(whole_batch.std()), 1e-6) if len(whole_batch) > 1 else 1.0
        return (raw - self.shift) / self.scale

    def state_dict(self) -> dict:
        return {"shift": self.shift, "scale": self.scale}

    def load_state_dict(self, state: dict) -> None:
        self.shift, self.scale = state["shift"], state["scale"]


def shape_scores(scores: torch.Tensor, finished: torch.Tensor, config: PPOConfig) -> torch.Tensor:
    """The sequence scores PPO sees: a fixed score for responses that never ended, then
    clipped to ±reward_clip."""
    scores = scores.float().clone()
    if config.no_eos_penalty is not None:
        scores[~finished] = config.no_eos_penalty
    if config.reward_clip is not None:
        scores = scores.clamp(-config.reward_clip, config.reward_clip)
    return scores


def advantages_and_returns(
    batch: Rollout, scores: torch.Tensor, beta: float, config: PPOConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-token KL, advantages and returns (None without a critic) of a rollout batch.
    gae: per-token rewards through GAE with the value head. rloo, grpo: one advantage for
    every token of a response, from its reward against its prompt's group (consecutive
    rows). Whitened over this process's rollouts (as TRL and CleanRL do), except grpo's,
    which its group's std has scaled already."""
    mask = batch.response_mask
    kl = kl_penalty(batch.logp, batch.ref_logp, config.kl_estimator) * mask
    beta_in_reward = beta if config.kl_in == "reward" else 0.0
    returns = None
    if config.advantage == "gae":
        rewards = token_rewards(scores, kl, mask, beta_in_reward)
        advantages, returns = gae(rewards, batch.values, mask, config.gamma, config.lam)
    else:
        rewards = sequence_rewards(scores, kl, mask, beta_in_reward)
        per_response = group_advantages(rewards, config.samples_per_prompt, config.advantage)
        advantages = per_response[:, None] * mask
    if config.whiten_advantages and config.advantage != "grpo":
        advantages = masked_whiten(advantages, mask)
    return kl, advantages, returns


def ppo_update(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    batch: Rollout,
    scores: torch.Tensor,
    beta: float,
    config: PPOConfig,
    generator: torch.Generator | None = None,
    processes: Processes | None = None,
) -> dict[str, float]:
    """Phase 2 on one rollout batch (this process's share of it, under data parallelism);
    returns the step's statistics. A batch without log π_old (`rollout(old_logp=False)`,
    only with `config.one_pass`) gets it, and V_old, from the first forward pass here; the
    caller's batch is left as it was."""
    if batch.logp is None and not config.one_pass:
        raise ValueError("a rollout without log π_old needs one minibatch of one micro-batch")
    targets = (
        advantages_and_returns(batch, scores, beta, config) if batch.logp is not None else None
    )
    policy.train(False)  # dropout stays off: PPO's ratio must compare like with like
    totals: dict[str, float] = {}
    updates = 0
    device = batch.response_mask.device
    # The reference does not change during the update: its entropy is computed once.
    ref_entropy = (
        reference_entropy(policy, batch, config.temperature) if config.entropy_anchor else None
    )
    for micro_batches in shuffled_minibatches(len(batch.prompts), config, generator, device):
        optimizer.zero_grad()
        for rows in micro_batches:
            logits, logp, values = response_forward(policy, batch, rows, config.temperature)
            if batch.logp is None:  # rows is every rollout, under the sampling weights
                batch = with_old_logp(batch, rows, logp, values)
                targets = advantages_and_returns(batch, scores, beta, config)
            _, advantages, returns = targets
            loss, stats = minibatch_loss(
                logits,
                logp,
                values,
                batch,
                rows,
                advantages,
                returns,
                config,
                beta,
                None if ref_entropy is None else ref_entropy[rows],
            )
            (loss / config.grad_accumulation).backward()
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach())
            updates += 1
        apply_gradients(policy, optimizer, config, processes)
    kl, _, returns = targets
    means = {k: v / updates for k, v in totals.items()}
    return {**means, **rollout_statistics(batch, scores, beta, kl, returns)}


def shuffled_minibatches(
    n: int, config: PPOConfig, generator: torch.Generator | None, device: torch.device
) -> Iterator[list[torch.Tensor]]:
    """For each of `ppo_epochs` passes over the `n` rollouts in a fresh random order, each
    minibatch as its micro-batches' row indices."""
    minibatch = n // config.minibatches
    micro = minibatch // config.grad_accumulation
    for _ in range(config.ppo_epochs):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, minibatch):
            yield [order[m : m + micro] for m in range(start, start + minibatch, micro)]


def response_forward(
    policy: Policy, batch: Rollout, rows: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The policy's temperature-scaled logits, log π and values on the response tokens of
    rollouts `rows`, with gradients."""
    length = batch.response_mask.shape[1]
    logits, values = policy(batch.input_ids[rows], batch.attention_mask[rows], length + 1)
    logits = response_logits(logits, length, temperature)
    values = None if values is None else values[:, -length - 1 : -1]
    return logits, token_logp(logits, batch.response_ids[rows]), values


@torch.no_grad()
def reference_entropy(policy: Policy, batch: Rollout, temperature: float) -> torch.Tensor:
    """The reference's entropy at each response position of the rollouts (the states the
    policy visited), [rollouts, response length]."""
    length = batch.response_mask.shape[1]
    logits = policy.reference_logits(batch.input_ids, batch.attention_mask, length + 1)
    return entropy_from_logits(response_logits(logits, length, temperature).float())


def with_old_logp(
    batch: Rollout, rows: torch.Tensor, logp: torch.Tensor, values: torch.Tensor | None
) -> Rollout:
    """A copy of `batch` with log π_old and V_old (if there is a critic) from a forward pass
    over all of its rollouts in the order `rows`."""
    unshuffle = torch.argsort(rows)
    mask = batch.response_mask
    if values is not None:
        values = values.detach()[unshuffle] * mask
    return dataclasses.replace(batch, logp=logp.detach()[unshuffle] * mask, values=values)


def minibatch_loss(
    logits: torch.Tensor,
    logp: torch.Tensor,
    values: torch.Tensor | None,
    batch: Rollout,
    rows: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor | None,
    config: PPOConfig,
    beta: float = 0.0,
    ref_entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = L_policy + c1·L_value − c2·H on rollouts `rows` (no value loss without a critic;
    + β·KL with the KL in the loss; + the entropy anchor, given the reference's entropy at
    the same positions), and its parts to watch."""
    mask = batch.response_mask[rows]
    pg, stats = policy_loss(logp, batch.logp[rows], advantages[rows], mask, config.clip_eps)
    parts = {"policy_loss": pg}
    vf = torch.zeros((), device=pg.device)
    if values is not None:
        vf = value_loss(values, batch.values[rows], returns[rows], mask, config.value_clip)
        parts["value_loss"] = vf
    # Without a coefficient the entropy is only watched: no graph for it.
    with nullcontext() if config.ent_coef or ref_entropy is not None else torch.no_grad():
        entropy = masked_mean(entropy_from_logits(logits.float()), mask)
    loss = ppo_loss(pg, vf, entropy, config.vf_coef, config.ent_coef)
    if config.kl_in == "loss":
        # k3 because its gradient on π's own samples pulls toward π_ref; k1's averages zero.
        kl = masked_mean(kl_penalty(logp, batch.ref_logp[rows], "k3"), mask)
        loss = loss + beta * kl
        parts["kl_loss"] = kl
    if ref_entropy is not None:
        gap = entropy - masked_mean(ref_entropy, mask)
        loss = loss + entropy_anchor_loss(gap, config.entropy_anchor)
        stats["entropy_gap"] = gap.detach()
    return loss, {**parts, "entropy": entropy, **stats}


def apply_gradients(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    config: PPOConfig,
    processes: Processes | None,
) -> None:
    """One optimiser step on the minibatch's gradients, averaged over processes and clipped."""
    if processes:
        processes.average_gradients(policy.trainable_parameters())
    clip_grad_norm(policy.trainable_parameters(), config.max_grad_norm)
    optimizer.step()


def rollout_statistics(
    batch: Rollout,
    scores: torch.Tensor,
    beta: float,
    kl: torch.Tensor,
    returns: torch.Tensor | None,
) -> dict[str, float]:
    """What the rollout batch looked like: scores, KL to the reference, how well the values
    it was scored with predicted its returns (with a critic), response lengths."""
    mask = batch.response_mask
    kl_per_sequence = (kl * mask).sum(dim=1)
    stats = {
        "score_mean": float(scores.mean()),
        "score_std": float(scores.std()),
        "kl": float(kl_per_sequence.mean()),
        "kl_per_token": float(masked_mean(kl, mask)),
        "beta": beta,
        "response_length": float(mask.sum(dim=1).mean()),
        "finished": float(batch.finished.float().mean()),
    }
    if returns is not None:
        real = mask.bool()
        with torch.no_grad():
            unexplained = torch.var((returns - batch.values)[real])
            stats["explained_variance"] = float(
                1 - unexplained / torch.var(returns[real]).clamp(min=1e-8)
            )
    return stats


def train_step(
    policy,
    optimizer,
    reward,
    prompts: list[str],
    kl_controller,
    config: PPOConfig,
    mode: str,
    generator: torch.Generator | None = None,
    processes: Processes | None = None,
    reward_scale: RewardScale | None = None,
) -> tuple[dict, Rollout]:
    """Rollout, score and update on one batch of prompts (this process's share of the step's
    batch); the statistics returned are the whole batch's."""
    from rlhfkit.train.ppo.rollout import rollout

    processes = processes or Processes()
    started = time.perf_counter()
    batch = rollout(
        policy,
        prompts,
        mode,
        config.max_new_tokens,
        config.temperature,
        config.max_prompt_tokens,
        config.min_new_tokens,
        old_logp=not config.one_pass,
        synced=processes.sharded,
    )
    generated = time.perf_counter()
    raw = reward(batch.prompts, batch.responses).float().to(policy.device)
    all_raw = processes.gather(raw)
    scaled = reward_scale(raw, all_raw) if reward_scale else raw
    scores = shape_scores(scaled, batch.finished, config)
    if config.score_baseline == "leave_one_out":
        scores = leave_one_out(scores, config.samples_per_prompt)
    stats = ppo_update(
        policy, optimizer, batch, scores, kl_controller.beta, config, generator, processes
    )
    stats.update(
        seconds=time.perf_counter() - started,
        rollout_seconds=generated - started,
        tokens=float(batch.response_mask.sum()),
        truncated_prompts=batch.truncated_prompts,
    )
    stats = processes.mean(stats)
    world = processes.world_size
    all_scores = processes.gather(scores)
    kl_controller.update(stats["kl"], len(all_raw))
    stats.update(
        reward_mean=float(all_raw.mean()),
        reward_std=float(all_raw.std()),
        score_mean=float(all_scores.mean()),
        score_std=float(all_scores.std()),
        tokens_per_s=stats.pop("tokens") * world / stats["seconds"],
        truncated_prompts=round(stats["truncated_prompts"] * world),
    )
    return stats, batch
