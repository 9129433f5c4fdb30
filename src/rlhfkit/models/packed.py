"""Faster sampling on a CPU: the model's linear layers run on oneDNN, with each weight
reordered once, before decoding starts, into the blocked layout oneDNN's kernels read fastest.

Decoding multiplies a handful of rows by every weight of the model for each new token, so
its speed is how fast the weights stream from memory. For so few rows, the default (MKL)
matrix product reads them at a fraction of the memory's bandwidth; oneDNN on prepacked
weights reads them 1.5 to 3 times as fast (at 8 rows on a 2-core AVX2 machine: SmolLM2's
576 × 1536 layers 0.50 → 0.34 ms, its 49,152 × 576 output layer 23 → 8 ms). A LoRA layer
is packed with its adapter merged, W + s·B·A, into a new tensor (W itself is never touched),
or as W alone while the adapter is disabled, which is how the reference model samples.

Inference only: the packed copies carry no gradients and are made afresh on every entry,
so they always match the current weights. Layers whose weights are not plain fp32 CPU
tensors (a GPU, bf16, FSDP shards) and models under autocast are left as they are.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def _packable(weight: torch.Tensor) -> bool:
    plain = type(weight) is nn.Parameter  # not a DTensor shard
    return plain and weight.device.type == "cpu" and weight.dtype == torch.float32


def _lora_weight(layer) -> torch.Tensor | None:
    """The weight a peft LoRA linear layer applies now, adapters merged in; None where it is
    no plain linear layer with plain adapters (DoRA and other variants keep their own path)."""
    base = layer.base_layer
    if not isinstance(base, nn.Linear) or not _packable(base.weight):
        return None
    weight = base.weight.detach()
    if layer.disable_adapters or layer.merged:
        return weight
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A:
            continue
        if adapter in layer.lora_variant or not _packable(layer.lora_A[adapter].weight):
            return None
        weight = weight + layer.get_delta_weight(adapter)
    return weight


def _packed_forward(weight: torch.Tensor, bias: torch.Tensor | None, rows: int):
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)
    bias = None if bias is None else bias.detach()

    def forward(x: torch.Tensor) -> torch.Tensor:  # a call with more is loud, not ignored
        if torch.is_grad_enabled():
            raise RuntimeError("prepacked linear layers are for inference under torch.no_grad()")
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    return forward


def _layers_to_pack(model: nn.Module):
    """(layer, weight, bias) for every linear layer that can be packed; a LoRA layer counts as
    one, its adapters merged ("modules()" visits it before the linear layers inside it)."""
    from peft.tuners.lora import LoraLayer

    inside_lora = set()
    for module in model.modules():
        if isinstance(module, LoraLayer):
            inside_lora.update(m for m in module.modules() if m is not module)
            weight = _lora_weight(module)
            if weight is not None:
                yield module, weight, module.base_layer.bias
        elif (
            isinstance(module, nn.Linear) and module not in inside_lora and _packable(module.weight)
        ):
            yield module, module.weight, module.bias


@contextmanager
def prepacked_linears(model: nn.Module, rows: int):
    """Within the block, `model`'s linear layers (LoRA layers with their adapters merged) run
    on weights prepacked for about `rows` rows at a time: for sampling, under no_grad."""
    if not torch.backends.mkldnn.is_available() or torch.is_autocast_enabled("cpu"):
        yield
        return
    swapped = []
    with torch.no_grad():
        for layer, weight, bias in _layers_to_pack(model):
            layer.forward = _packed_forward(weight, bias, rows)
            swapped.append(layer)
    try:
        yield
    finally:
        for layer in swapped:
            del layer.forward  # the class's forward again
