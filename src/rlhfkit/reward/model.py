"""A trained reward model: a backbone with a scalar head, its tokenizer, and `reward.json`
(base model, training-data hash, metrics, normalisation gain and bias), all in OUT/model/
beside the training's metrics.jsonl and TensorBoard logs.

Encoders (MiniLM) read (prompt, completion) as a sentence pair; causal LMs (SmolLM2) read
prompt + completion + EOS and score the last non-pad token. A model trained with
`reads: completion` reads the completion alone (its reward.json says so), for criteria that
are properties of the response itself, such as toxicity.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rlhfkit.errors import RlhfkitError
from rlhfkit.files import atomic_directory

INFO_FILE = "reward.json"
MODEL_DIR = "model"


class RewardModel:
    """Scores (prompt, completion) pairs: `model(prompts, completions) -> rewards [n]`,
    normalised by the stored gain and bias (1 and 0 until `set_normalisation`)."""

    def __init__(self, model, tokenizer, info: dict[str, Any]):
        self.model, self.tokenizer, self.info = model, tokenizer, info
        self.info.setdefault("normalisation", {"gain": 1.0, "bias": 0.0})
        self.name = f"rm:{info.get('path', '?')}"

    @property
    def causal(self) -> bool:
        return self.info["kind"] == "causal"

    @property
    def max_length(self) -> int:
        return int(self.info.get("max_length", 256))

    @property
    def reads_prompt(self) -> bool:
        return self.info.get("reads", "prompt_and_completion") == "prompt_and_completion"

    @classmethod
    def from_base(
        cls,
        base: str,
        max_length: int = 256,
        lora: dict | None = None,
        reads: str = "prompt_and_completion",
    ) -> RewardModel:
        """A new reward head on `base` (short name, dir or hub id); `lora` = peft LoraConfig
        arguments to train an adapter instead of every weight (causal bases); `reads`:
        prompt_and_completion, or completion alone."""
        from rlhfkit.models import is_causal, load_classifier, with_lora

        model, tokenizer = load_classifier(base, num_labels=1)
        kind = "causal" if is_causal(base) else "encoder"
        if lora:
            if kind != "causal":
                raise RlhfkitError(
                    "LoRA reward models need a causal LM base (e.g. smollm2-135m-instruct)"
                )
            model = with_lora(model, "SEQ_CLS", **lora)
        return cls(
            model,
            tokenizer,
            {"base": base, "kind": kind, "max_length": max_length, "lora": lora, "reads": reads},
        )

    def _tokenize(self, prompts: Sequence[str], completions: Sequence[str], **kwargs):
        if self.causal:
            eos = self.tokenizer.eos_token or ""
            starts = prompts if self.reads_prompt else [""] * len(completions)
            texts = [p + c + eos for p, c in zip(starts, completions, strict=True)]
            self.tokenizer.truncation_side = "left"  # keep the completion and its end
            return self.tokenizer(texts, **kwargs)
        if self.reads_prompt:  # a sentence pair
            return self.tokenizer(list(prompts), list(completions), **kwargs)
        return self.tokenizer(list(completions), **kwargs)

    def encode(self, prompts: Sequence[str], completions: Sequence[str]) -> dict[str, torch.Tensor]:
        device = next(self.model.parameters()).device
        batch = self._tokenize(
            prompts,
            completions,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: v.to(device) for k, v in batch.items()}

    def token_lengths(self, prompts: Sequence[str], completions: Sequence[str]) -> list[int]:
        """How long each input would be without truncation."""
        return [len(ids) for ids in self._tokenize(prompts, completions)["input_ids"]]

    def raw(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        """Unnormalised rewards with gradients (training)."""
        return self.model(**self.encode(prompts, completions)).logits[:, 0]

    @torch.no_grad()
    def score(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        batch_size: int = 64,
        normalise: bool = True,
    ) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        # Score in order of length so each batch pads little; put the rewards back in order.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(completions[i]))
        rewards = torch.zeros(len(prompts))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            rewards[chunk] = (
                self.raw([prompts[i] for i in chunk], [completions[i] for i in chunk]).float().cpu()
            )
        self.model.train(was_training)
        if normalise:
            n = self.info["normalisation"]
            rewards = n["gain"] * rewards + n["bias"]
        return rewards

    __call__ = score

    def set_normalisation(self, raw_rewards: torch.Tensor) -> None:
        """Gain and bias that map these rewards (of reference completions) to mean 0, std 1."""
        mean, std = raw_rewards.mean().item(), raw_rewards.std().item()
        if not std > 0:
            raise RlhfkitError("cannot normalise: the reference rewards are all equal")
        self.info["normalisation"] = {
            "gain": 1.0 / std,
            "bias": -mean / std,
            "reference_size": len(raw_rewards),
        }

    def save(self, out: str | Path) -> None:
        """Write the model to OUT/model atomically (a reader sees the old one or the new one);
        the rest of OUT (metrics, TensorBoard logs) is left alone."""
        with atomic_directory(Path(out) / MODEL_DIR) as tmp:
            model = self.model
            if hasattr(model, "merge_and_unload"):  # LoRA: save plain weights, loadable anywhere
                import copy

                model = copy.deepcopy(model).merge_and_unload()
            # where a plain transformers user looks: reward = gain · logit + bias
            model.config.reward_normalisation = dict(self.info["normalisation"])
            model.config.reward_reads = self.info.get("reads", "prompt_and_completion")
            model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            (tmp / INFO_FILE).write_text(json.dumps(self.info, indent=2, default=str))

    @classmethod
    def load(cls, path: str | Path) -> RewardModel:
        """Load from a directory `train-rm` wrote (or its `model/` inside)."""
        path = Path(path)
        if (path / MODEL_DIR / INFO_FILE).exists():
            path = path / MODEL_DIR
        if not (path / INFO_FILE).exists():
            raise RlhfkitError(
                f"no reward model in '{path}' (no {INFO_FILE}; train one with `rlhfkit train-rm`)"
            )
        from rlhfkit.models import load_classifier

        info = json.loads((path / INFO_FILE).read_text())
        info["path"] = str(path)
        model, tokenizer = load_classifier(str(path))
        return cls(model, tokenizer, info)
