"""Training a reward model on (chosen, rejected) pairs with −log σ(r_chosen − r_rejected).

One batch holds whole prompts: their completions are scored in one forward pass and the loss
is averaged over each prompt's pairs, then over prompts (InstructGPT). The split into train
and eval is by prompt. Every evaluation that improves eval accuracy writes the model
directory, so it always holds the best model so far; training stops early when accuracy
has not improved for `patience` evaluations, and at once (keeping that directory) on a
non-finite loss.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from rlhfkit.config import StageConfig
from rlhfkit.data.jsonl import read_jsonl
from rlhfkit.data.sources import source_sha256
from rlhfkit.errors import RlhfkitError
from rlhfkit.files import check_ours, claim_directory
from rlhfkit.models.lora import lora_settings
from rlhfkit.progress import Progress
from rlhfkit.reward.data import (
    PromptPairs,
    group_pairs,
    pack_batches,
    read_pairs,
    split_by_prompt,
)
from rlhfkit.reward.evaluate import flatten, pair_metrics, score_pairs
from rlhfkit.reward.losses import pairwise_loss
from rlhfkit.reward.model import RewardModel
from rlhfkit.trackers import Tracker
from rlhfkit.train.checkpoint import CHECKPOINT
from rlhfkit.train.distributed import load_optimizer_state, optimizer_state
from rlhfkit.train.loop import (
    Trainer,
    adamw,
    descend,
    fit,
    load_trainable_weights,
    resume_state,
    run_key,
    trainable_weights,
)


class RMConfig(StageConfig):
    """Settings of `rlhfkit train-rm`; unknown keys and impossible values are errors."""

    setting = "reward model setting"
    may_change_on_resume = frozenset({"report_to"})
    renamed = {"eval_fraction": "held_out_fraction", "reference": "normalise_on"}

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
    held_out_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of the prompts whose pairs are held out (a salted hash)"
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
    normalise_on: str | None = Field(
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


class RewardModelTrainer(Trainer):
    """The pairwise loss on batches of whole prompts (`pack_batches`, in a fresh order each
    epoch), a learning-rate schedule, the held-out pairs before the first step and at each
    evaluation; every evaluation that improves held-out accuracy saves the model to OUT/model
    (so it holds the best one so far), and `patience` evaluations without improvement stop
    the run early. A checkpoint after each evaluation lets `--resume` continue."""

    made_by, title = "train-rm", "training"
    evaluation_line = True

    def __init__(self, reward: RewardModel, train, held_out, config: RMConfig, out, progress):
        self.reward, self.held_out, self.progress = reward, held_out, progress
        self.train, self.settings, self.out = train, config, Path(out)
        # The learning-rate schedule spans the epochs at their unshuffled batch count.
        self.schedule_steps = len(pack_batches(train, config.batch_size)) * config.epochs
        self.epochs = self._epochs()
        self.total_steps = sum(len(batches) for batches in self.epochs)
        self.params = [p for p in reward.model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = _optimiser(self.params, config, self.schedule_steps)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.pairs_seen = 0
        self.train_seconds = 0.0  # forward, backward and update; evaluation excluded
        self.best_accuracy, self.best_step, self.stale = -1.0, None, 0

    def _epochs(self) -> list[list[list[PromptPairs]]]:
        """Each epoch's batches: one seeded stream of jittered, shuffled packings."""
        rng = random.Random(self.settings.seed)
        return [
            pack_batches(self.train, self.settings.batch_size, rng)
            for _ in range(self.settings.epochs)
        ]

    def _epoch_of(self, step: int) -> tuple[int, int]:
        """(epoch, index within it) of step `step` (0-based)."""
        for epoch, batches in enumerate(self.epochs):
            if step < len(batches):
                return epoch, step
            step -= len(batches)
        raise IndexError(step)

    def update(self, step: int) -> dict:
        epoch, index = self._epoch_of(step)
        batch = self.epochs[epoch][index]
        self.reward.model.train(self.settings.dropout)
        tick = time.perf_counter()
        prompts, completions, chosen, rejected, group = flatten(batch)
        scores = self.reward.raw(prompts, completions)
        loss = pairwise_loss(scores[chosen], scores[rejected], torch.tensor(group))
        if not torch.isfinite(loss):  # no update on it: the model on disk stays the best
            return {"loss": loss.item()}
        norm = descend(loss, self.params, self.optimizer, self.settings.max_grad_norm)
        self.scheduler.step()
        self.pairs_seen += len(chosen)
        self.train_seconds += time.perf_counter() - tick
        margins = (scores[chosen] - scores[rejected]).detach()
        return {
            "epoch": epoch + 1,
            "loss": loss.item(),
            "accuracy": float((margins > 0).float().mean()),
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": norm,
            "pairs_per_s": self.pairs_seen / self.train_seconds,
        }

    def kept(self, saved: int) -> str:
        if self.best_step is None:
            return "no model was saved"
        return f"the best model so far (step {self.best_step}) is kept in {self.out}"

    def describe(self, record: dict) -> str:
        return f"training: loss {record['loss']:.3f}, {record['pairs_per_s']:.0f} pairs/s"

    def evaluation_due(self, steps_done: int) -> bool:
        every = self.settings.eval_every
        if every:
            return steps_done % every == 0
        epoch, index = self._epoch_of(steps_done - 1)
        return index == len(self.epochs[epoch]) - 1

    checkpoint_due = evaluation_due

    def evaluate(self, steps_done: int) -> dict | None:
        """The held-out pairs' numbers; the model is saved when it is the best so far."""
        if not self.held_out:
            return None
        metrics = pair_metrics(score_pairs(self.reward, self.held_out))
        self.progress.note(
            f"step {steps_done}: held-out accuracy {metrics['accuracy']:.3f}, "
            f"loss {metrics['loss']:.3f}"
        )
        numbers = {f"eval_{k}": v for k, v in metrics.items()}
        if metrics["accuracy"] > self.best_accuracy:
            self.best_accuracy, self.best_step, self.stale = metrics["accuracy"], steps_done, 0
            self.reward.info["metrics"] = {"step": steps_done, **numbers}
            self.reward.save(self.out)
        else:
            self.stale += 1
        return numbers

    def stop(self, record: dict) -> str | None:
        if self.stale >= self.settings.patience:
            return f"no better held-out accuracy in {self.stale} evaluations"
        return None

    def state_dict(self) -> dict:
        return {
            "weights": trainable_weights(self.reward.model),
            "optimizer": optimizer_state(self.reward.model, self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "pairs_seen": self.pairs_seen,
            "train_seconds": self.train_seconds,
            "best": [self.best_accuracy, self.best_step, self.stale],
            "info_metrics": self.reward.info.get("metrics"),
        }

    def load_state_dict(self, state: dict) -> None:
        load_trainable_weights(self.reward.model, state["weights"], self.out / CHECKPOINT)
        load_optimizer_state(self.reward.model, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.pairs_seen, self.train_seconds = state["pairs_seen"], state["train_seconds"]
        self.best_accuracy, self.best_step, self.stale = state["best"]
        if state["info_metrics"] is not None:
            self.reward.info["metrics"] = state["info_metrics"]


def train_reward_model(
    pairs_path: str | Path,
    out: str | Path,
    config: RMConfig | None = None,
    progress: Progress | None = None,
    resume: bool = False,
) -> dict:
    """Train, save the best model to `out`, return its summary (also in out/reward.json),
    reporting the steps, each evaluation and any warning to `progress`."""
    config = config or RMConfig()
    out = Path(out)
    check_ours(out, "train-rm")  # a folder of the user's is refused before any work
    progress = progress or Progress()
    groups, train, held_out = _split_pairs(pairs_path, config, progress)
    data = _data_summary(pairs_path, groups, train, held_out)
    run = run_key(config, data["sha256"])
    saved = resume_state(out, "a reward model's", resume, run, config)
    if resume and saved is None and "training" in _saved_info(out):
        raise RlhfkitError(
            f"{out} holds a finished reward model: nothing to resume (train another in a new "
            "--out, or leave out --resume to train this one again)"
        )
    reward = _new_model(config, groups, progress)
    reward.info.update(data=data, config=config.model_dump())
    trainer = RewardModelTrainer(reward, train, held_out, config, out, progress)
    claim_directory(out, "train-rm")
    progress.note(f"{len(train)} training prompts, {len(held_out)} held out")
    finished = fit(trainer, saved, run, progress)
    if not held_out:  # nothing chose a best model: the last one is it
        reward.info["metrics"] = {"step": finished.steps}
        reward.save(out)
    stopped_early = finished.stopped != "steps" and finished.steps < trainer.schedule_steps
    summary = _finish(out, config, train, trainer, finished.steps, stopped_early)
    # A finished reward model cannot be trained on (its schedule spans its epochs): the
    # checkpoint, three times the model's size, has served its purpose.
    (out / CHECKPOINT).unlink(missing_ok=True)
    return summary


def _saved_info(out: Path) -> dict:
    """The reward.json of the model in `out` (its "training" is written when a run ends)."""
    path = out / "model" / "reward.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def _split_pairs(
    pairs_path: str | Path, config: RMConfig, progress: Progress
) -> tuple[list[PromptPairs], list[PromptPairs], list[PromptPairs]]:
    """All the pairs grouped by prompt, and those groups split into (train, held out)."""
    groups = group_pairs(read_pairs(pairs_path, config.fields))
    train, held_out = split_by_prompt(groups, config.held_out_fraction)
    if not train:
        raise RlhfkitError(
            "no training prompts left after the eval split; lower --held-out-fraction"
        )
    if config.held_out_fraction > 0 and not held_out:
        progress.warn("no prompt fell in the eval split: early stopping is off")
    return groups, train, held_out


def _new_model(config: RMConfig, groups: list[PromptPairs], progress: Progress) -> RewardModel:
    """The base model with a fresh, seeded head (and LoRA adapter if asked); warns about
    texts too long for it."""
    torch.manual_seed(config.seed)
    lora = lora_settings(config.lora_r, config.lora_alpha) if config.lora else None
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


def _finish(
    out: Path,
    config: RMConfig,
    train: list[PromptPairs],
    trainer: RewardModelTrainer,
    steps: int,
    stopped_early: bool,
) -> dict:
    """The best model, as saved, with how training went and its normalisation, saved again;
    returns its summary."""
    final = RewardModel.load(out)
    final.info.update(
        training={
            "steps": steps,
            "train_seconds": trainer.train_seconds,
            "pairs_per_s": trainer.pairs_seen / trainer.train_seconds if steps else None,
            "stopped_early": bool(stopped_early),
        }
    )
    if config.normalise:
        prompts, completions = (
            read_reference(config.normalise_on) if config.normalise_on else flatten(train)[:2]
        )
        final.set_normalisation(final.score(prompts, completions, normalise=False))
    final.info.pop("path", None)
    final.save(out)
    return final.info
