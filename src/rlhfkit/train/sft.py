"""`rlhfkit sft`: supervised fine-tuning of a causal LM on (prompt, response) pairs, the loss
on the response tokens only: Constitutional AI's stage 1 trains on its revisions with it.

Each example is the prompt as a user turn in the model's chat template, then the response
and the end-of-turn token; the loss is the mean negative log-likelihood of the response's
tokens (the prompt's are masked). Examples are split into train and held out by their
prompt's hash (the rule every stage uses), and the held-out loss is measured before
training and after each epoch. LoRA by default. A checkpoint after every epoch (and every
`checkpoint_every` steps) lets `--resume` continue; the result is a policy directory
(models/stack.py) that `eval`, `ppo --policy`, `serve-model` and `cai`/`label judge` load.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import Field

from rlhfkit.data.prompts import split_of
from rlhfkit.data.sources import read_source
from rlhfkit.errors import RlhfkitError
from rlhfkit.files import atomic_write, check_ours
from rlhfkit.generation import position_ids
from rlhfkit.models.stack import load_policy_model, save_policy, with_fresh_adapter
from rlhfkit.progress import Progress
from rlhfkit.train.loop import (
    Schedule,
    ScheduledTrainer,
    ScheduledTrainerConfig,
    begin_run,
    descend,
    fit,
)

MADE_BY = "sft"
IGNORE = -100  # label of a position the loss skips


class SFTConfig(ScheduledTrainerConfig):
    """Settings of `rlhfkit sft`, and of a pipeline's `sft:` section."""

    setting = "SFT setting"

    policy: str = Field("smollm2-135m-instruct", description="the model to fine-tune")
    epochs: int = Field(2, ge=1)
    lr: float = Field(2e-4, gt=0)
    held_out_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="share of the examples held out, by a salted hash of the prompt",
    )


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str


def read_examples(
    path: str | Path, fields: dict[str, str] | None = None
) -> tuple[list[Example], int]:
    """(prompt, response) examples of a source (data/sources.py), and how many had an empty
    response (skipped); a record without text in `prompt` or `response` is an error naming
    it."""
    examples, empty = [], 0
    for number, obj in read_source(path, fields):
        prompt, response = obj.get("prompt"), obj.get("response")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RlhfkitError(f"{path}:{number}: 'prompt' must be a non-empty string")
        if not isinstance(response, str):
            raise RlhfkitError(f"{path}:{number}: 'response' must be a string")
        if not response.strip():
            empty += 1
            continue
        examples.append(Example(prompt, response.strip()))
    if not examples:
        raise RlhfkitError(f"{path}: no example with a non-empty response")
    return examples, empty


def is_held_out(prompt: str, eval_fraction: float) -> bool:
    """Whether SFT holds this example out, by a salted hash of its prompt: the revisions'
    prompts all come from one side of the run's own train/eval split (the same hash
    unsalted), which would hold out none of them."""
    return split_of("sft:" + prompt, eval_fraction) == "eval"


def encode(tokenizer, example: Example, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels: the prompt's positions labelled IGNORE, the response's (and the
    end-of-turn token's) with their own ids; cut to `max_length` from the end of the
    response, so the prompt is kept whole where it fits."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": example.prompt}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    response_ids = tokenizer(example.response, add_special_tokens=False).input_ids
    response_ids.append(tokenizer.eos_token_id)
    ids = (prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + response_ids)[:max_length]
    return ids, labels


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded ids, attention mask and labels (IGNORE on padding): every row ends at the
    last position, so the labelled tokens, each row's tail, are the batch's last ones."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), IGNORE)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):
        start = width - len(row_ids)
        ids[i, start:] = torch.tensor(row_ids)
        labels[i, start:] = torch.tensor(row_labels)
        mask[i, start:] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def labelled_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """log p of each labelled token (token t predicted from the positions before it), and
    the mask of the labelled positions; both [batch, n], n the most labelled tokens of a
    row. A row's labelled tokens are its tail (the response), and `collate` pads on the
    left, so logits are needed at the last n + 1 positions only: the projection onto the
    vocabulary and the softmax over it, most of a small model's work, shrink to the
    responses."""
    labels, mask = batch["labels"], batch["attention_mask"]
    n = max(1, int((labels != IGNORE).sum(dim=1).max()))
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=mask,
        position_ids=position_ids(mask),
        logits_to_keep=n + 1,
    ).logits[:, :-1]
    targets = labels[:, -n:]
    logits = logits.float()
    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    labelled = targets != IGNORE
    return (picked - logits.logsumexp(-1)) * labelled, labelled


def response_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood of the labelled tokens, and how many there are."""
    logps, labelled = labelled_logps(model, batch)
    return -logps.sum(), int(labelled.sum())


@torch.no_grad()
def held_out_loss(model, rows, pad_id: int, batch_size: int) -> float | None:
    """Mean NLL per response token over the held-out examples (None without any)."""
    if not rows:
        return None
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(rows), batch_size):
        nll, n = response_nll(model, collate(rows[start : start + batch_size], pad_id))
        total, tokens = total + float(nll), tokens + n
    return total / max(tokens, 1)


class SFTTrainer(ScheduledTrainer):
    """Fine-tuning on the training examples; the held-out loss at each epoch's end."""

    made_by, title = MADE_BY, "supervised fine-tuning"

    def __init__(self, model, train: list, held: list, pad_id: int, config: SFTConfig, out):
        schedule = Schedule(len(train), config.batch_size, config.epochs, config.seed,
                            config.max_steps)  # fmt: skip
        super().__init__(model, config, out, schedule)
        self.train, self.held, self.pad_id = train, held, pad_id
        self.before: float | None = None  # the held-out loss before training

    def update(self, step: int) -> dict:
        self.model.train()
        rows = [self.train[i] for i in self.schedule.batch(step)]
        nll, tokens = response_nll(self.model, collate(rows, self.pad_id))
        loss = nll / max(tokens, 1)
        norm = descend(loss, self.params, self.optimizer, self.settings.max_grad_norm)
        return {"loss": loss.item(), "grad_norm": norm}

    def held_out(self) -> dict | None:
        loss = held_out_loss(self.model, self.held, self.pad_id, self.settings.batch_size)
        return None if loss is None else {"loss": loss}

    def extra_state(self) -> dict:
        return {"before": self.before}


def train_sft(
    data: str | Path,
    out: str | Path,
    config: SFTConfig | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> dict:
    """Fine-tune, write `out/policy` and `out/sft.json` (held-out loss before and after, the
    counts); returns that summary."""
    config = config or SFTConfig()
    out = Path(out)
    check_ours(out, MADE_BY)
    examples, empty = read_examples(data, config.fields)
    progress = progress or Progress()
    saved, run = begin_run(out, MADE_BY, "an SFT", config, data, resume)
    model, tokenizer = load_policy_model(config.policy)
    if config.lora:
        model = with_fresh_adapter(model, config.lora_r, config.lora_alpha)
    train, held = [], []
    for example in examples:
        row = encode(tokenizer, example, config.max_length)
        if not any(label != IGNORE for label in row[1][1:]):
            continue  # the prompt filled max_length: nothing of the response is left
        (held if is_held_out(example.prompt, config.held_out_fraction) else train).append(row)
    if not train:
        raise RlhfkitError(f"{data}: every example is held out; lower --held-out-fraction")
    trainer = SFTTrainer(model, train, held, tokenizer.pad_token_id, config, out)
    if saved is None:
        trainer.before = held_out_loss(model, held, trainer.pad_id, config.batch_size)
    started = time.monotonic()
    finished = fit(trainer, saved, run, progress)
    after = trainer.evals[-1].get("loss") if trainer.evals else None
    summary = {
        "data": str(data),
        "model": config.policy,
        "examples": {"train": len(train), "held_out": len(held), "empty_skipped": empty},
        "held_out_loss": {"before": trainer.before, "after": after},
        "steps": finished.steps,
        "seconds": round(time.monotonic() - started, 1),
        "config": config.model_dump(),
    }
    save_sft_policy(model, tokenizer, out / "policy", config, summary)
    atomic_write(out / "sft.json", json.dumps(summary, indent=2) + "\n")
    return summary


def held_out_line(summary: dict) -> str:
    """The held-out loss before and after, from `train_sft`'s summary, in words."""
    loss = summary["held_out_loss"]
    if loss["before"] is None or loss["after"] is None:
        return "no held-out examples"
    return f"held-out loss {loss['before']:.3f} -> {loss['after']:.3f}"


def save_sft_policy(model, tokenizer, path: Path, config: SFTConfig, summary: dict) -> None:
    """The policy directory, with what it sits on and what trained it."""
    info = {
        "base": config.policy,
        "stage": "sft",
        "lora": config.lora,
        "data": summary["data"],
        "held_out_fraction": config.held_out_fraction,
        "held_out_loss": summary["held_out_loss"],
    }
    save_policy(model, tokenizer, path, info)
