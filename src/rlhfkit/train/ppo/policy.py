"""The policy for language-model PPO: a causal LM with a LoRA adapter and a value head
(none for the critic-free advantages, rloo and grpo).

The reference model is the same weights with the adapter switched off, so memory holds one
copy of the LLM, not two: about half the memory of a separate frozen reference. A full
fine-tune mode keeps a separate frozen copy as the reference instead.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from rlhfkit.generation import position_ids
from rlhfkit.models import with_lora
from rlhfkit.models.stack import load_policy_model


def _add_adapters_in_fp32(model) -> None:
    """Under bf16 autocast a LoRA layer adds its adapter's output to the base layer's in
    bf16, whose 8-bit mantissa can round a young adapter's small change away. Returning the
    base output in fp32 makes that sum fp32."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.base_layer.register_forward_hook(lambda _, __, output: output.float())


def _contiguous_input(_, args: tuple) -> tuple:
    """The output layer reads the last positions only (`logits_to_keep`), a slice that is not
    contiguous; a matrix product with it runs batched, row by row, 1.7× slower (its forward
    and backward pass at 8 × 25 positions of SmolLM2: 410 → 245 ms) than on a copy."""
    return (args[0].contiguous(), *args[1:])


class Policy(nn.Module):
    """`forward(input_ids, attention_mask) -> (logits, values)` for every position; the value
    at position t estimates the return from the state that ends at token t (values are None
    without a value head)."""

    def __init__(
        self,
        model,
        tokenizer,
        lora: dict | None = None,
        precision: str = "fp32",
        value_head: bool = True,
    ):
        super().__init__()
        self.tokenizer = tokenizer
        self.precision = precision
        model.get_output_embeddings().register_forward_pre_hook(_contiguous_input)
        if lora is not None:
            model = with_lora(model, "CAUSAL_LM", **lora)
            self.reference_model = None  # the adapter switched off
            if precision == "bf16":
                _add_adapters_in_fp32(model)
        else:
            self.reference_model = copy.deepcopy(model).eval().requires_grad_(False)
        self.model = model
        self.sharded = False
        self.value_head = None
        if value_head:
            self.value_head = nn.Linear(model.config.get_text_config().hidden_size, 1)
            nn.init.zeros_(self.value_head.weight)  # a zero head does not disturb early steps
            nn.init.zeros_(self.value_head.bias)

    @classmethod
    def load(
        cls,
        name: str,
        lora: dict | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        value_head: bool = True,
    ) -> Policy:
        model, tokenizer = load_policy_model(name)  # a stack's adapters merged in
        return cls(model, tokenizer, lora, precision, value_head).to(device)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def autocast(self):
        """bf16 mixed precision where asked for: weights, optimiser state and the loss math
        stay fp32; matrix products run in bf16 (about 2× faster on a CPU with AVX512-BF16)."""
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        )

    @property
    def uses_lora(self) -> bool:
        return self.reference_model is None

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int = 0
    ):
        """Logits of the last `logits_to_keep` positions (0: all) and values of all of them.
        PPO needs logits only where the response is predicted: skipping the prompt's saves
        much of the vocabulary projection, the costliest layer of a small model."""
        with self.autocast():
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                logits_to_keep=logits_to_keep,
                position_ids=position_ids(attention_mask),
                output_hidden_states=self.value_head is not None,
                use_cache=False,
            )
            if self.value_head is None:
                return out.logits, None
            values = self.value_head(out.hidden_states[-1]).squeeze(-1)
        return out.logits, values.float()

    @torch.no_grad()
    def reference_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int = 0
    ):
        model = self.reference_model or self.model
        with self.adapter_disabled(), self.autocast():
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

    def parameter_groups(self) -> list[dict]:
        """The optimiser's groups: the LM's trainable weights (sharded, under FSDP) and the
        value head's (never sharded). A fused step takes one kind at a time, and the same
        groups with or without sharding keep checkpoints interchangeable."""
        lm = [p for p in self.model.parameters() if p.requires_grad]
        if self.value_head is None:
            return [{"params": lm}]
        return [{"params": lm}, {"params": list(self.value_head.parameters())}]

    def shard(self) -> None:
        """FSDP2 across the processes of a run: each keeps 1/N of every weight (and of the
        optimiser state and gradients built on them) and gathers a layer's weights only while
        it runs. Every decoder layer is a unit of its own; the causal LM's root unit holds the
        rest (its tied embeddings together), so that the paths which bypass `forward` —
        `generate` and the reference — still gather what they use. The value head, a few
        hundred weights, stays whole in every process (its gradients are all-reduced)."""
        from torch.distributed.fsdp import fully_shard

        for model in filter(None, (self.model, self.reference_model)):
            lm = model.get_base_model() if model is self.model and self.uses_lora else model
            layer_types = set(lm._no_split_modules or ())
            for module in lm.modules():
                if type(module).__name__ in layer_types:
                    fully_shard(module)
            fully_shard(lm)
        self.sharded = True

    @contextmanager
    def gathered(self):
        """While sampling, a sharded policy gathers each layer's weights once and keeps them,
        instead of once per generated token; they are sharded again afterwards."""
        if not self.sharded:
            yield
            return
        from torch.distributed.fsdp import FSDPModule

        root, *layers = [m for m in self.model.modules() if isinstance(m, FSDPModule)]
        for unit in (root, *layers):
            unit.set_reshard_after_forward(False, recurse=False)
        try:
            yield
        finally:
            for unit in (root, *layers):
                unit.reshard()
            for unit in layers:  # the root keeps FSDP's own setting for roots: False
                unit.set_reshard_after_forward(True, recurse=False)
