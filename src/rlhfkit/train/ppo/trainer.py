"""The PPO run: prompts in a seeded order, a step at a time, through the one training loop
(train/loop.py) with its checkpoints that resume exactly, and PPO's own stopping rules (a
reward threshold, an exploding KL).

A checkpoint holds, beside what the loop keeps, the trainable weights (adapter and value
head), the optimiser, the KL controller and the reward normalisation; it is written after
every step. Under `accelerate launch` each process trains on its share of every step's
prompts (train/distributed.py); the main process alone logs, checkpoints and saves the
policy.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from rlhfkit.errors import RlhfkitError
from rlhfkit.files import atomic_write, check_ours, claim_directory
from rlhfkit.models.stack import save_policy
from rlhfkit.progress import Progress
from rlhfkit.train.checkpoint import CHECKPOINT, read_state, read_tensors
from rlhfkit.train.distributed import (
    Processes,
    full_state,
    is_shard,
    load_full_state,
    load_optimizer_state,
    optimizer_state,
)
from rlhfkit.train.loop import Trainer, adamw, fit, resume_state, run_key
from rlhfkit.train.ppo.policy import Policy
from rlhfkit.train.ppo.step import PPOConfig, RewardScale, train_step

VALUE_HEAD = "value_head.safetensors"


def batch_prompts(
    prompts: list[str], step: int, batch_size: int, seed: int, repeat: int = 1
) -> list[str]:
    """The prompts of a step, each `repeat` times in a row: a fresh seeded permutation per
    pass over the data, so the data position is a function of the step alone."""
    if repeat > 1:
        once = batch_prompts(prompts, step, batch_size // repeat, seed)
        return [p for p in once for _ in range(repeat)]
    per_pass = max(1, len(prompts) // batch_size)
    epoch, index = divmod(step, per_pass)
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed + epoch))
    rows = order[index * batch_size : (index + 1) * batch_size].tolist()
    if len(rows) < batch_size:  # fewer prompts than a batch: cycle them
        rows = (rows * (batch_size // max(1, len(rows)) + 1))[:batch_size]
    return [prompts[i] for i in rows]


def read_checkpoint(path: Path) -> dict:
    """A checkpoint as the nested dict it was written from (tensors and values)."""
    return read_state(path)


class PPOTrainer(Trainer):
    """PPO steps: each samples this process's share of a step's prompts, scores them and
    updates the policy (step.py); a checkpoint after every step."""

    made_by, title = "ppo", "PPO"

    def __init__(self, config: PPOConfig, out: Path, processes: Processes, reward: Callable,
                 prompts: list[str], mode: str, policy: Policy, progress: Progress):  # fmt: skip
        self.settings, self.out, self.processes = config, out, processes
        self.reward, self.prompts, self.mode, self.policy = reward, prompts, mode, policy
        self.progress, self.total_steps = progress, config.steps
        self.optimizer = adamw(policy.parameter_groups(), config.lr, 0.0)
        self.kl_controller = config.kl_controller()
        self.reward_scale = RewardScale(config.normalise_reward)
        self.generator = torch.Generator().manual_seed(config.seed)

    def update(self, step: int) -> dict:
        config, processes = self.settings, self.processes
        prompts = batch_prompts(
            self.prompts, step, config.batch_size, config.seed, config.samples_per_prompt
        )
        stats, _ = train_step(
            self.policy,
            self.optimizer,
            self.reward,
            processes.shard(prompts),
            self.kl_controller,
            config,
            self.mode,
            self.generator,
            processes,
            self.reward_scale,
        )
        replicas = [p for p in self.policy.trainable_parameters() if not is_shard(p)]
        if not processes.same_everywhere(replicas):
            raise RlhfkitError(f"the processes' weights differ after step {step + 1}")
        if processes.is_main and stats["truncated_prompts"]:
            self.progress.warn(
                f"step {step + 1}: {stats['truncated_prompts']} prompts longer than "
                f"{config.max_prompt_tokens} tokens lost their start"
            )
        return stats

    def failure(self, record: dict) -> str | None:
        losses = [record[k] for k in ("policy_loss", "value_loss") if k in record]
        if not all(math.isfinite(x) for x in losses):
            return f"non-finite loss at step {record['step']}"
        if record["kl"] > self.settings.max_kl:
            limit = self.settings.max_kl
            return f"KL {record['kl']:.1f} exceeded max_kl {limit} at step {record['step']}"
        return None

    def stop(self, record: dict) -> str | None:
        target = self.settings.target_reward
        if target is not None and record["reward_mean"] >= target:
            return f"mean reward {record['reward_mean']:.3f} reached the target"
        return None

    def describe(self, record: dict) -> str:
        return (
            f"PPO: reward {record['reward_mean']:+.3f}, KL {record['kl']:.2f}, "
            f"{record['tokens_per_s']:.0f} tok/s"
        )

    def state_dict(self) -> dict:
        return {
            "trainable": full_state(self.policy, keep=self.processes.is_main),
            "optimizer": optimizer_state(self.policy, self.optimizer),
            "kl": self.kl_controller.state_dict(),
            "reward_scale": self.reward_scale.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        load_full_state(self.policy, state["trainable"])
        load_optimizer_state(self.policy, self.optimizer, state["optimizer"])
        self.kl_controller.load_state_dict(state["kl"])
        self.reward_scale.load_state_dict(state["reward_scale"])


def run_ppo(
    config: PPOConfig,
    out: str | Path,
    resume: bool = False,
    reward=None,
    progress: Progress | None = None,
) -> dict:
    """Train; write metrics.jsonl, the trackers' logs, the checkpoint and the final adapter
    and value head to `out` (new, empty, or a PPO run's: see files.claim_directory).
    `reward` overrides `config.reward` with any callable reward. The main process alone
    reports each step to `progress`."""
    out = Path(out)
    progress = progress or Progress()
    config.check_hardware()
    processes = Processes(config.device)
    check_ours(out, "ppo")  # claimed below, once everything has loaded
    run = run_key(config)
    saved = resume_state(out, "a PPO", resume, run, config)
    if saved is not None and len(saved["rng"]) != processes.world_size:
        raise RlhfkitError(
            f"{out / CHECKPOINT} was written by {len(saved['rng'])} processes, not "
            f"{processes.world_size}: resume with as many"
        )
    _check_split(config, processes.world_size)
    trainer = _set_up(config, out, processes, reward, progress)
    if processes.is_main:
        claim_directory(out, "ppo")
        atomic_write(out / "config.json", json.dumps(config.model_dump(), indent=2))
    finished = fit(trainer, saved, run, progress)
    save_ppo_policy(trainer.policy, out / "policy", config, processes.is_main)
    processes.barrier()  # the policy is on disk before any process reports success
    return {
        "steps": finished.steps,
        "stopped": finished.stopped,
        "main": processes.is_main,
        **finished.last,
    }


def _set_up(
    config: PPOConfig, out: Path, processes: Processes, reward, progress: Progress
) -> PPOTrainer:
    """The reward, the prompts, and the seeded policy with its optimiser and controllers."""
    from rlhfkit.data.prompts import load_prompts, resolve_mode
    from rlhfkit.reward import load_reward

    reward = reward or load_reward(config.reward)  # a bad spec fails before the model loads
    records = load_prompts(config.prompts, config.split, config.eval_fraction)
    mode = resolve_mode(config.mode, config.prompts, records)
    prompts = [p.prompt for p in records]
    torch.manual_seed(config.seed)  # the same initial adapter in every process (and GPU)
    random.seed(config.seed)
    np.random.seed(config.seed)
    policy = Policy.load(
        config.policy, config.lora_args(), processes.device, config.precision, config.has_critic
    )
    if processes.sharded:
        policy.shard()
    if processes.world_size > 1:  # but each process samples its own responses
        torch.manual_seed(config.seed + processes.rank)
    return PPOTrainer(config, out, processes, reward, prompts, mode, policy, progress)


def _check_split(config: PPOConfig, world_size: int) -> None:
    """Each process takes an equal share of a step's rollouts and splits it the same way."""
    share, rest = divmod(config.batch_size, world_size)
    if rest or share % (config.minibatches * config.grad_accumulation):
        raise RlhfkitError(
            f"batch_size {config.batch_size} does not split into {world_size} processes × "
            f"{config.minibatches} minibatches × {config.grad_accumulation} micro-batches"
        )
    if share % config.samples_per_prompt:
        raise RlhfkitError(
            f"each of {world_size} processes gets {share} rollouts, not a whole number of "
            f"prompts × samples_per_prompt {config.samples_per_prompt}"
        )


def save_ppo_policy(policy: Policy, path: Path, config: PPOConfig, write: bool = True) -> None:
    """The trained policy directory (models/stack.py) with the value head, if it has one.
    Every process of a sharded run calls it (to gather the weights); those with `write`
    write."""
    weights = full_state(policy.model, False, keep=write) if policy.sharded else None
    tensors = {}
    if policy.value_head is not None:
        tensors[VALUE_HEAD] = full_state(policy.value_head, keep=write)
    if not write:
        return
    # What evaluation needs: the base model, and the prompts trained on, to keep them out.
    keys = ("lora", "mode", "prompts", "split", "eval_fraction", "reward")
    info = {"base": config.policy, "stage": "ppo", **{k: getattr(config, k) for k in keys}}
    save_policy(policy.model, policy.tokenizer, path, info, weights, tensors)


def read_value_head(policy_dir: Path) -> dict[str, torch.Tensor]:
    """The value head `save_policy` wrote (weight and bias), read without unpickling."""
    policy_dir = Path(policy_dir)
    if not (policy_dir / VALUE_HEAD).exists() and (policy_dir / "value_head.pt").exists():
        raise RlhfkitError(
            f"{policy_dir / 'value_head.pt'} was written by an older rlhfkit in a format that "
            "is no longer loaded (pickle can run code): train the policy again"
        )
    return read_tensors(policy_dir / VALUE_HEAD)
