"""`rlhfkit dpo`: direct preference optimisation on the pairs `feedback pairs` writes, with no
reward model and no sampling: the policy is pushed to raise log π(chosen) − log π_ref(chosen)
above the same for the rejected answer (the loss is in reward/losses.py).

The reference is the model as loaded, before training: its log-probability of every
sequence is computed once, before the first step, and kept (in the checkpoint too), so one
copy of the weights serves as policy and reference, with LoRA or without. Each distinct
(prompt, completion) is encoded once as the prompt (put as it was when the completions were
sampled: `mode` raw or chat) followed by the completion; only the completion's tokens count.
Prompts are split into train and held out exactly as `train-rm` splits them, so DPO's
held-out pair accuracy (its implicit reward β·Δ ranking the pair's chosen first) and the
reward model's are measured on the same pairs. A step reads each distinct completion once,
however many of its pairs hold it; with `batching: by_prompt` its pairs come from as few
prompts as they can, so 8 pairs of one prompt cost about its K completions' passes rather
than 16 (InstructGPT trains its reward model on whole prompts for that reason). Measured on
the comparison's pairs, that halves the time a step and about halves what a step learns, so
the default draws a step's pairs from anywhere (`shuffled`). A checkpoint after each epoch
(and every `checkpoint_every` steps) lets `--resume` continue; the result is a policy
directory (models/stack.py) with `stage: dpo`, which eval, ppo and serve-model load.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from rlhfkit.errors import RlhfkitError
from rlhfkit.files import atomic_write, check_ours
from rlhfkit.models.stack import load_policy_model, save_policy, with_fresh_adapter
from rlhfkit.progress import Progress
from rlhfkit.reward.data import group_pairs, read_pairs, split_by_prompt
from rlhfkit.reward.losses import dpo_loss
from rlhfkit.train.loop import (
    Schedule,
    ScheduledTrainer,
    ScheduledTrainerConfig,
    begin_run,
    descend,
    fit,
)
from rlhfkit.train.sft import IGNORE, collate, labelled_logps

MADE_BY = "dpo"


class DPOConfig(ScheduledTrainerConfig):
    """Settings of `rlhfkit dpo`, and of a pipeline's `dpo:` section."""

    setting = "DPO setting"

    policy: str = Field(
        "smollm2-135m-instruct",
        description="the policy to train; the model as loaded is also the reference",
    )
    batch_size: int = Field(8, ge=1, description="pairs per step")
    max_length: int = Field(256, ge=8, description="tokens of prompt and completion together")
    held_out_fraction: float = Field(
        0.1, ge=0, lt=1, description="as train-rm's: the same prompts' pairs held out"
    )
    mode: Literal["raw", "chat"] = Field(
        "raw", description="how the prompts were put to the model when the pairs were sampled"
    )
    beta: float = Field(0.1, gt=0, description="strength of the pull to the reference")
    loss: Literal["sigmoid", "ipo"] = Field(
        "sigmoid", description="sigmoid: −log σ(β·margin); ipo: (margin − 1/(2β))²"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="chance a label is flipped")
    batching: Literal["shuffled", "by_prompt"] = Field(
        "shuffled",
        description="shuffled: a step's pairs from anywhere; by_prompt: from as few prompts as "
        "they can, each completion read once for all its pairs (half the time a step, about "
        "half the learning a step, measured)",
    )


@dataclass(frozen=True)
class EncodedPairs:
    """Every distinct (prompt, completion) as token ids and labels, once, and the pairs as
    (chosen, rejected) indices into them, split into train and held out."""

    sequences: list[tuple[list[int], list[int]]]
    train: list[tuple[int, int]]
    held_out: list[tuple[int, int]]
    train_prompts: tuple[int, ...]  # the prompt (its group's index) of each training pair


def encode_pairs(tokenizer, groups_train, groups_held, mode: str, max_length: int) -> EncodedPairs:
    """Token ids and labels of each distinct sequence (the completion's tokens labelled, the
    prompt's IGNORE), cut to `max_length` from the end; the pairs by sequence index."""
    from rlhfkit.generation import adds_special_tokens, format_prompt

    sequences, index = [], {}

    def sequence(prompt: str, completion: str) -> int:
        key = (prompt, completion)
        if key not in index:
            text = format_prompt(tokenizer, prompt, mode)
            prompt_ids = tokenizer(text, add_special_tokens=adds_special_tokens(mode)).input_ids
            completion_ids = tokenizer(completion, add_special_tokens=False).input_ids
            ids = (prompt_ids + completion_ids)[:max_length]
            labels = ([IGNORE] * len(prompt_ids) + completion_ids)[:max_length]
            if all(label == IGNORE for label in labels[1:]):
                raise RlhfkitError(
                    f"a prompt fills max_length {max_length} tokens, leaving nothing of its "
                    "completion: raise --max-length"
                )
            index[key] = len(sequences)
            sequences.append((ids, labels))
        return index[key]

    def pairs_of(groups) -> list[tuple[int, int]]:
        return [
            (sequence(g.prompt, g.completions[c]), sequence(g.prompt, g.completions[r]))
            for g in groups
            for c, r in g.pairs
        ]

    train_prompts = tuple(k for k, g in enumerate(groups_train) for _ in g.pairs)
    return EncodedPairs(sequences, pairs_of(groups_train), pairs_of(groups_held), train_prompts)


def sequence_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """log π of each row's labelled tokens (its completion), summed."""
    return labelled_logps(model, batch)[0].sum(-1)


def logps_of(
    model, sequences, which: list[int], pad_id: int, batch_size: int, on_batch=None
) -> torch.Tensor:
    """`sequence_logps` of the sequences `which`, `batch_size` at a time (`on_batch(n)` after
    each)."""
    out = []
    for start in range(0, len(which), batch_size):
        rows = [sequences[i] for i in which[start : start + batch_size]]
        out.append(sequence_logps(model, collate(rows, pad_id)))
        if on_batch:
            on_batch(len(rows))
    return torch.cat(out) if out else torch.zeros(0)


def untrained(data: EncodedPairs, config: DPOConfig) -> dict | None:
    """The held-out numbers before training, when the policy is the reference: every Δ is 0
    (the loss log 2 for DPO, (1/(2β))² for IPO; no pair ranked right)."""
    if not data.held_out:
        return None
    zeros = torch.zeros(len(data.held_out))
    loss, stats = dpo_loss(zeros, zeros, config.beta, config.label_smoothing, config.loss)
    return {"loss": loss.item(), "accuracy": stats["accuracy"].item()}


@torch.no_grad()
def held_out_numbers(model, data: EncodedPairs, reference, pad_id: int, config: DPOConfig):
    """Loss and pair accuracy of the implicit reward on the held-out pairs (None without)."""
    if not data.held_out:
        return None
    model.eval()
    which = sorted({i for pair in data.held_out for i in pair})
    values = logps_of(model, data.sequences, which, pad_id, 16).tolist()
    logps = dict(zip(which, values, strict=True))
    chosen = torch.tensor([logps[c] - reference[c] for c, _ in data.held_out])
    rejected = torch.tensor([logps[r] - reference[r] for _, r in data.held_out])
    loss, stats = dpo_loss(chosen, rejected, config.beta, config.label_smoothing, config.loss)
    return {"loss": loss.item(), "accuracy": stats["accuracy"].item()}


class DPOTrainer(ScheduledTrainer):
    """DPO on the training pairs against reference log-probabilities computed once; the
    held-out pairs at each epoch's end."""

    made_by, title = MADE_BY, "DPO"

    def __init__(self, model, data: EncodedPairs, pad_id: int, config: DPOConfig, out):
        by_prompt = data.train_prompts if config.batching == "by_prompt" else None
        schedule = Schedule(len(data.train), config.batch_size, config.epochs, config.seed,
                            config.max_steps, by_prompt)  # fmt: skip
        super().__init__(model, config, out, schedule)
        self.data, self.pad_id = data, pad_id
        self.reference: list[float] = []  # log π_ref of every sequence

    def update(self, step: int) -> dict:
        self.model.train()
        batch = [self.data.train[i] for i in self.schedule.batch(step)]
        which = sorted({i for pair in batch for i in pair})
        values = logps_of(self.model, self.data.sequences, which, self.pad_id, len(which))
        logps = dict(zip(which, values, strict=True))
        reference, config = self.reference, self.settings
        chosen = torch.stack([logps[c] - reference[c] for c, _ in batch])
        rejected = torch.stack([logps[r] - reference[r] for _, r in batch])
        loss, stats = dpo_loss(chosen, rejected, config.beta, config.label_smoothing, config.loss)
        norm = descend(loss, self.params, self.optimizer, config.max_grad_norm)
        return {"loss": loss.item(), "grad_norm": norm, **{k: v.item() for k, v in stats.items()}}

    def held_out(self) -> dict | None:
        return held_out_numbers(self.model, self.data, self.reference, self.pad_id, self.settings)

    def extra_state(self) -> dict:
        return {"reference": self.reference}


def train_dpo(
    pairs_path: str | Path,
    out: str | Path,
    config: DPOConfig | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> dict:
    """Train, write `out/policy` and `out/dpo.json` (held-out pair accuracy and loss before
    and after, the counts); returns that summary."""
    config = config or DPOConfig()
    out = Path(out)
    progress = progress or Progress()
    check_ours(out, MADE_BY)
    # an empty text, or chosen = rejected, is a one-line error
    pairs = read_pairs(pairs_path, config.fields)
    train_groups, held_groups = split_by_prompt(group_pairs(pairs), config.held_out_fraction)
    if config.held_out_fraction > 0 and not held_groups:
        raise RlhfkitError(
            f"{pairs_path}: too few prompts to hold any out at held_out_fraction "
            f"{config.held_out_fraction} (raise it, or 0 for none)"
        )
    if not train_groups:
        raise RlhfkitError(f"{pairs_path}: every prompt is held out; lower --held-out-fraction")
    saved, run = begin_run(out, MADE_BY, "a DPO", config, pairs_path, resume)
    model, tokenizer = load_policy_model(config.policy)
    data = encode_pairs(tokenizer, train_groups, held_groups, config.mode, config.max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    reference = None
    if saved is None:  # the reference: the model before any training, each sequence once
        progress.start("reference log-probabilities", len(data.sequences))
        with torch.no_grad():
            model.eval()
            every = list(range(len(data.sequences)))
            reference = logps_of(model, data.sequences, every, pad, 16, progress.advance).tolist()
    if config.lora:
        model = with_fresh_adapter(model, config.lora_r, config.lora_alpha)
    trainer = DPOTrainer(model, data, pad, config, out)
    trainer.reference = reference
    started = time.monotonic()
    finished = fit(trainer, saved, run, progress)
    last = trainer.evals[-1] if trainer.evals else {}
    after = {k: last[k] for k in ("loss", "accuracy")} if "accuracy" in last else None
    summary = {
        "pairs": str(pairs_path),
        "model": config.policy,
        "counts": {
            "train_pairs": len(data.train),
            "held_out_pairs": len(data.held_out),
            "train_prompts": len(train_groups),
            "held_out_prompts": len(held_groups),
        },
        "held_out": {"before": untrained(data, config), "after": after},
        "steps": finished.steps,
        "seconds": round(time.monotonic() - started, 1),
        "config": config.model_dump(),
    }
    save_dpo_policy(model, tokenizer, out / "policy", config, summary)
    atomic_write(out / "dpo.json", json.dumps(summary, indent=2) + "\n")
    return summary


def held_out_line(summary: dict) -> str:
    """The held-out pairs after training, from `train_dpo`'s summary, in words (before
    training every implicit reward is 0: no pair is ranked right yet)."""
    before, after = summary["held_out"]["before"], summary["held_out"]["after"]
    if before is None or after is None:
        return "no held-out pairs"
    return (
        f"held-out pair accuracy {after['accuracy']:.3f}, loss {before['loss']:.3f} -> "
        f"{after['loss']:.3f} ({summary['counts']['held_out_pairs']} pairs)"
    )


def save_dpo_policy(model, tokenizer, path: Path, config: DPOConfig, summary: dict) -> None:
    """The policy directory, with what it sits on and what trained it."""
    info = {
        "base": config.policy,
        "stage": "dpo",
        "lora": config.lora,
        "mode": config.mode,
        "pairs": summary["pairs"],
        "beta": config.beta,
        "loss": config.loss,
        "held_out": summary["held_out"],
    }
    save_policy(model, tokenizer, path, info)
