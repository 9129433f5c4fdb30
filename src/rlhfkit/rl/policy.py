"""The policy for language-model PPO: a causal LM with a LoRA adapter and a value head.

The reference model is the same weights with the adapter switched off (the seed's "Memory
Constraints": one copy of the LLM, about half the memory). A full fine-tune mode keeps a
separate frozen copy as the reference instead.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from rlhfkit.models import load_causal_lm

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on the first real token of a left-padded row."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


class Policy(nn.Module):
    """`forward(input_ids, attention_mask) -> (logits, values)` for every position; the value
    at position t estimates the return from the state that ends at token t."""

    def __init__(self, model, tokenizer, lora: dict | None = None):
        super().__init__()
        self.tokenizer = tokenizer
        if lora is not None:
            import warnings

            from peft import LoraConfig, get_peft_model

            with warnings.catch_warnings():  # peft asks transformers a deprecated question
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
                model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))
            self.reference_model = None  # the adapter switched off
        else:
            self.reference_model = copy.deepcopy(model).eval().requires_grad_(False)
        self.model = model
        hidden = model.config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)  # a zero value head does not disturb early steps
        nn.init.zeros_(self.value_head.bias)

    @classmethod
    def load(cls, name: str, lora: dict | None = None) -> Policy:
        model, tokenizer = load_causal_lm(name)
        return cls(model, tokenizer, lora)

    @property
    def uses_lora(self) -> bool:
        return self.reference_model is None

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int = 0
    ):
        """Logits of the last `logits_to_keep` positions (0: all) and values of all of them.
        PPO needs logits only where the response is predicted: skipping the prompt's saves
        much of the vocabulary projection, the costliest layer of a small model."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            logits_to_keep=logits_to_keep,
            position_ids=position_ids(attention_mask),
            output_hidden_states=True,
            use_cache=False,
        )
        values = self.value_head(out.hidden_states[-1]).squeeze(-1)
        return out.logits, values

    @torch.no_grad()
    def reference_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int = 0
    ):
        model = self.reference_model or self.model
        with self.adapter_disabled():
            return model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                logits_to_keep=logits_to_keep,
                position_ids=position_ids(attention_mask),
                use_cache=False,
            ).logits

    @contextmanager
    def adapter_disabled(self):
        with self.model.disable_adapter() if self.uses_lora else nullcontext():
            yield

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
