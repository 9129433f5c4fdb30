"""Training a reward model on (chosen, rejected) pairs with −log σ(r_chosen − r_rejected).

One batch holds whole prompts: their completions are scored in one forward pass and the loss
is averaged over each prompt's pairs, then over prompts (InstructGPT). The split into train
and eval is by prompt. Every evaluation that improves eval accuracy writes the model
directory, so it always holds the best model so far; training stops early when accuracy
has not improved for `patience` evaluations, and at once (keeping that directory) on a
non-finite loss.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from rlhfkit.config import StageConfig
from rlhfkit.data.jsonl import read_jsonl
from rlhfkit.errors import RlhfkitError
from rlhfkit.files import check_ours, claim_directory
from rlhfkit.progress import Progress
from rlhfkit.reward.data import (
    PromptPairs,
    group_pairs,
    pack_batches,
    read_pairs,
    source_sha256,
    split_by_prompt,
)
from rlhfkit.reward.evaluate import flatten, pair_metrics, score_pairs
from rlhfkit.reward.losses import pairwise_loss
from rlhfkit.reward.model import RewardModel
from rlhfkit.trackers import Tracker
from rlhfkit.training import MetricsLog, adamw


class RMConfig(StageConfig):
    """Settings of `rlhfkit train-rm`; unknown keys and impossible values are errors."""

    setting = "reward model setting"

    base: str = Field(
        "minilm-l6",
        description="the backbone: minilm-l6, smollm2-135m-instruct, a directory or a hub id",
    )
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(16, ge=1, description="pairs per step, whole prompts at a time")
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="learning-rate schedule after the warm-up"
    )
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="share of the steps spent warming up")
    max_grad_norm: float = Field(1.0, gt=0)
    max_length: int = Field(128, ge=8)
    reads: Literal["prompt_and_completion", "completion"] = Field(
        "prompt_and_completion",
        description="completion: score the response alone (criteria such as toxicity)",
    )
    eval_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of the prompts held out, by a salted hash of the prompt"
    )
    eval_every: int | None = Field(None, ge=1, description="steps; default once per epoch")
    patience: int = Field(2, ge=1, description="evaluations without improvement before stopping")
    dropout: bool = Field(False, description="train with dropout on (off by default)")
    lora: bool = Field(
        False, description="train a LoRA adapter on a causal LM base, merged on save"
    )
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    normalise: bool = Field(
        True, description="fit a gain and bias that give the reference completions mean 0, std 1"
    )
    reference: str | None = Field(
        None,
        description="JSONL of {prompt, completion} or {prompt, completions}: the "
        "completions normalised to mean 0, std 1 (default: the training completions)",
    )
    fields: dict[str, str] = Field(
        default_factory=dict, description="the data's columns by our names, e.g. prompt: question"
    )
    report_to: list[Tracker] | None = Field(
        None, description="tensorboard, wandb, mlflow (default: tensorboard if installed)"
    )
    seed: int = 0


def read_reference(path: str | Path) -> tuple[list[str], list[str]]:
    """(prompts, completions) from a JSONL of {prompt, completion} or {prompt, completions}
    (what `rlhfkit generate --out` writes)."""
    prompts, completions = [], []
    for number, obj in read_jsonl(path):
        texts = obj.get("completions", [obj.get("completion")])
        if not isinstance(obj.get("prompt"), str) or not all(isinstance(t, str) for t in texts):
            raise RlhfkitError(
                f"{path}:{number}: expected {{prompt, completion}} or {{prompt, completions}}"
            )
        prompts += [obj["prompt"]] * len(texts)
        completions += texts
    if len(completions) < 2:
        raise RlhfkitError(f"{path}: need at least two reference completions to normalise")
    return prompts, completions


def _count_truncated(reward: RewardModel, groups: list[PromptPairs]) -> tuple[int, int]:
    prompts, completions, *_ = flatten(groups)
    lengths = reward.token_lengths(prompts, completions)
    return sum(n > reward.max_length for n in lengths), len(prompts)


@dataclass
class _TrainState:
    """What the training loop carries from one step and evaluation to the next."""

    step: int = 0
    pairs_seen: int = 0
    train_seconds: float = 0.0  # forward, backward and update; evaluation excluded
    best_accuracy: float = -1.0
    best_step: int | None = None
    stale: int = 0  # evaluations since the best one


def train_reward_model(
    pairs_path: str | Path,
    out: str | Path,
    config: RMConfig | None = None,
    progress: Progress | None = None,
) -> dict:
    """Train, save the best model to `out`, return its summary (also in out/reward.json),
    reporting the steps, each evaluation and any warning to `progress`."""
    config = config or RMConfig()
    out = Path(out)
    check_ours(out, "train-rm")  # a folder of the user's is refused before any work
    progress = progress or Progress()
    groups, train, held_out = _split_pairs(pairs_path, config, progress)
    reward = _new_model(config, groups, progress)
    reward.info.update(
        data=_data_summary(pairs_path, groups, train, held_out), config=config.model_dump()
    )
    rng = random.Random(config.seed)
    total_steps = len(pack_batches(train, config.batch_size)) * config.epochs
    trainable = [p for p in reward.model.parameters() if p.requires_grad]
    optimizer, scheduler = _optimiser(trainable, config, total_steps)
    claim_directory(out, "train-rm")
    log = MetricsLog(out, config, "train-rm")
    progress.start("training", total_steps)
    progress.note(f"{len(train)} training prompts, {len(held_out)} held out")
    state = _TrainState()
    try:
        # The untrained head's accuracy first: the baseline to beat.
        stop = _evaluate(reward, held_out, state, config, out, log, progress)
        for epoch in range(config.epochs):
            if stop:
                break
            for batch in pack_batches(train, config.batch_size, rng):
                record = _train_step(
                    reward, batch, epoch, state, trainable, optimizer, scheduler, config, out
                )
                log.write(record)
                progress.advance(
                    1, f"training: loss {record['loss']:.3f}, {record['pairs_per_s']:.0f} pairs/s"
                )
                if config.eval_every and state.step % config.eval_every == 0:
                    stop = _evaluate(reward, held_out, state, config, out, log, progress)
                    if stop:
                        break
            if not stop and not config.eval_every:
                stop = _evaluate(reward, held_out, state, config, out, log, progress)
        if not held_out:  # nothing chose a best model: the last one is it
            reward.info["metrics"] = {"step": state.step}
            reward.save(out)
    finally:
        log.close()
    return _finish(out, config, train, state, stopped_early=stop and state.step < total_steps)


def _split_pairs(
    pairs_path: str | Path, config: RMConfig, progress: Progress
) -> tuple[list[PromptPairs], list[PromptPairs], list[PromptPairs]]:
    """All the pairs grouped by prompt, and those groups split into (train, held out)."""
    groups = group_pairs(read_pairs(pairs_path, config.fields))
    train, held_out = split_by_prompt(groups, config.eval_fraction)
    if not train:
        raise RlhfkitError("no training prompts left after the eval split; lower --eval-fraction")
    if config.eval_fraction > 0 and not held_out:
        progress.warn("no prompt fell in the eval split: early stopping is off")
    return groups, train, held_out


def _new_model(config: RMConfig, groups: list[PromptPairs], progress: Progress) -> RewardModel:
    """The base model with a fresh, seeded head (and LoRA adapter if asked); warns about
    texts too long for it."""
    torch.manual_seed(config.seed)
    lora = (
        dict(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        )
        if config.lora
        else None
    )
    reward = RewardModel.from_base(config.base, config.max_length, lora, config.reads)
    truncated, total = _count_truncated(reward, groups)
    if truncated:
        progress.warn(
            f"{truncated} of {total} texts are longer than "
            f"{config.max_length} tokens and were truncated"
        )
    return reward


def _data_summary(
    pairs_path: str | Path,
    groups: list[PromptPairs],
    train: list[PromptPairs],
    held_out: list[PromptPairs],
) -> dict:
    """What the model was trained on, for its reward.json."""
    return {
        "pairs_file": str(pairs_path),
        "sha256": source_sha256(pairs_path),
        "pairs": sum(len(g.pairs) for g in groups),
        "prompts": len(groups),
        "train_prompts": len(train),
        "eval_prompts": len(held_out),
    }


def _optimiser(trainable: list[torch.nn.Parameter], config: RMConfig, total_steps: int):
    """AdamW and its learning-rate schedule (warm-up, then the configured shape)."""
    from transformers import get_scheduler

    optimizer = adamw(trainable, config.lr, config.weight_decay)
    scheduler = get_scheduler(
        "constant_with_warmup" if config.schedule == "constant" else config.schedule,
        optimizer,
        num_warmup_steps=int(config.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    return optimizer, scheduler


def _train_step(
    reward: RewardModel,
    batch: list[PromptPairs],
    epoch: int,
    state: _TrainState,
    trainable: list[torch.nn.Parameter],
    optimizer,
    scheduler,
    config: RMConfig,
    out: Path,
) -> dict:
    """One update on a batch of whole prompts; counts it in `state` and returns its metrics.
    A non-finite loss stops training, keeping the best model saved so far."""
    reward.model.train(config.dropout)
    tick = time.perf_counter()
    prompts, completions, chosen, rejected, group = flatten(batch)
    scores = reward.raw(prompts, completions)
    loss = pairwise_loss(scores[chosen], scores[rejected], torch.tensor(group))
    state.step += 1
    if not torch.isfinite(loss):
        kept = (
            f"the best model so far (step {state.best_step}) is kept in {out}"
            if state.best_step is not None
            else "no model was saved"
        )
        raise RlhfkitError(
            f"loss became {loss.item()} at step {state.step}: training stopped; {kept}"
        )
    optimizer.zero_grad()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
    optimizer.step()
    scheduler.step()
    state.pairs_seen += len(chosen)
    state.train_seconds += time.perf_counter() - tick
    margins = (scores[chosen] - scores[rejected]).detach()
    return {
        "step": state.step,
        "epoch": epoch + 1,
        "loss": loss.item(),
        "accuracy": float((margins > 0).float().mean()),
        "lr": scheduler.get_last_lr()[0],
        "grad_norm": float(grad_norm),
        "pairs_per_s": state.pairs_seen / state.train_seconds,
    }


def _evaluate(
    reward: RewardModel,
    held_out: list[PromptPairs],
    state: _TrainState,
    config: RMConfig,
    out: Path,
    log: MetricsLog,
    progress: Progress,
) -> bool:
    """Score the held-out pairs and log them; save the model when it is the best so far.
    Returns True when `patience` evaluations in a row have not improved on the best."""
    if not held_out:
        return False
    metrics = pair_metrics(score_pairs(reward, held_out))
    record = {"step": state.step, **{f"eval_{k}": v for k, v in metrics.items()}}
    log.write(record)
    progress.note(
        f"step {state.step}: held-out accuracy {metrics['accuracy']:.3f}, "
        f"loss {metrics['loss']:.3f}"
    )
    if metrics["accuracy"] > state.best_accuracy:
        state.best_accuracy, state.best_step, state.stale = metrics["accuracy"], state.step, 0
        reward.info["metrics"] = {
            "step": state.step,
            **{f"eval_{k}": v for k, v in metrics.items()},
        }
        reward.save(out)
    else:
        state.stale += 1
    return state.stale >= config.patience


def _finish(
    out: Path, config: RMConfig, train: list[PromptPairs], state: _TrainState, stopped_early: bool
) -> dict:
    """The best model, as saved, with how training went and its normalisation, saved again;
    returns its summary."""
    final = RewardModel.load(out)
    final.info.update(
        training={
            "steps": state.step,
            "train_seconds": state.train_seconds,
            "pairs_per_s": state.pairs_seen / state.train_seconds if state.step else None,
            "stopped_early": bool(stopped_early),
        }
    )
    if config.normalise:
        prompts, completions = (
            read_reference(config.reference) if config.reference else flatten(train)[:2]
        )
        final.set_normalisation(final.score(prompts, completions, normalise=False))
    final.info.pop("path", None)
    final.save(out)
    return final.info
