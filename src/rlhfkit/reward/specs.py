"""One reward interface for PPO, evaluation and labeling, reached by a spec string.

A reward is any callable `reward(prompts, completions) -> torch.Tensor` of shape [n] with a
`name`. Specs, usable on the CLI and in YAML:

    rm:DIR                          a reward model trained by `rlhfkit train-rm`
    classifier:NAME_OR_DIR:LABEL    a Hugging Face sequence classifier; reward = logit of LABEL
    scorer:profanity | scorer:hatesonar   the packaged toxicity classifiers (not-toxic logit)
    python:module:function          your own function(prompts, completions) -> floats
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch

from rlhfkit.errors import RlhfkitError

SPEC_HELP = (
    "rm:DIR, classifier:NAME_OR_DIR:LABEL, scorer:profanity, scorer:hatesonar or "
    "python:module:function"
)


class Reward(Protocol):
    name: str

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor: ...


class ClassifierReward:
    """The logit of one class of a sequence classifier, on the completion alone (a toxicity
    classifier judges the model's words, not the prompt's)."""

    def __init__(self, source: str, label: str, batch_size: int = 64):
        from rlhfkit.models import load_classifier

        self.model, self.tokenizer = load_classifier(source)
        labels = {str(v): int(k) for k, v in self.model.config.id2label.items()}
        if label in labels:
            self.index = labels[label]
        elif label.isdigit() and int(label) < self.model.config.num_labels:
            self.index = int(label)
        else:
            raise RlhfkitError(
                f"classifier '{source}' has no label '{label}'; its labels: " + ", ".join(labels)
            )
        self.name, self.batch_size = f"classifier:{source}:{label}", batch_size

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(completions), self.batch_size):
            batch = self.tokenizer(
                list(completions[i : i + self.batch_size]),
                padding=True,
                truncation=True,
                return_tensors="pt",
            )
            batch = batch.to(next(self.model.parameters()).device)
            out.append(self.model(**batch).logits[:, self.index].float().cpu())
        return torch.cat(out) if out else torch.zeros(0)


class PythonReward:
    def __init__(self, target: str):
        module_name, _, function_name = target.rpartition(":")
        if not module_name or not function_name:
            raise RlhfkitError(f"python reward '{target}' must be module:function")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise RlhfkitError(
                f"cannot import '{module_name}' for the python reward: {e}"
            ) from None
        self.function: Callable = getattr(module, function_name, None)
        if not callable(self.function):
            raise RlhfkitError(f"'{module_name}' has no function '{function_name}'")
        self.name = f"python:{target}"

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        values = self.function(list(prompts), list(completions))
        rewards = torch.as_tensor(np.asarray(values, dtype=np.float32)).reshape(-1)
        if len(rewards) != len(completions):
            raise RlhfkitError(
                f"{self.name} returned {len(rewards)} rewards for {len(completions)} completions"
            )
        return rewards


def load_reward(spec: str) -> Reward:
    """The reward a spec string names; a one-line RlhfkitError when it names nothing."""
    kind, _, rest = spec.partition(":")
    if kind == "rm" and rest:
        from rlhfkit.reward.model import RewardModel

        return RewardModel.load(rest)
    if kind == "classifier" and ":" in rest:
        source, label = rest.rsplit(":", 1)
        return ClassifierReward(source, label)
    if kind == "scorer" and rest:
        from rlhfkit.reward.scorers import load_scorer

        return load_scorer(rest)
    if kind == "python" and rest:
        return PythonReward(rest)
    raise RlhfkitError(f"unknown reward spec '{spec}'; expected {SPEC_HELP}")
