"""LoRA adapters: the one place their settings are built, for every trainer.

An adapter trains a low-rank update B·A beside each wrapped linear layer, B starting at
zero so the wrapped model is unchanged until it trains; switching the adapter off gives
back the model it started from (PPO's reference, DPO's too). Dropout inside the adapter is
off: with it, the policy's log-probabilities would differ from the ones it sampled with.
"""

from __future__ import annotations

import warnings

# The attention projections of Llama-like models (SmolLM2, Qwen2, Mistral, ...).
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def lora_settings(r: int, alpha: int) -> dict:
    """peft's LoraConfig arguments for an adapter of rank `r` and scale `alpha`/`r`."""
    return dict(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=LORA_TARGETS)


def with_lora(model, task_type: str, **lora):
    """The model wrapped with a fresh peft LoRA adapter (`task_type`: CAUSAL_LM, SEQ_CLS)."""
    from peft import LoraConfig, get_peft_model

    with warnings.catch_warnings():  # peft asks transformers a deprecated question
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        return get_peft_model(model, LoraConfig(task_type=task_type, **lora))
