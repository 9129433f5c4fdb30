"""Policy directories, and how trained stages stack.

A directory rlhfkit trains a causal LM into (`sft`, `ppo`) holds the model's weights with
peft's layout (a LoRA adapter, or full weights), its tokenizer, and `rlhfkit_policy.json`:
what it sits on (`base`: a model name, or another such directory) and what trained it
(`stage`, data, settings). Loading one loads its base the same way first, so a stack
    base model → SFT adapter (merged) → PPO adapter (merged)
comes back as one plain model. A stage that trains on top of a directory starts from that
merged model and adds a fresh adapter: switching its adapter off gives exactly the model it
started from, which is the reference its KL penalty holds it to.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

POLICY_INFO = "rlhfkit_policy.json"


def read_policy_info(name: str | Path) -> dict | None:
    """The directory's record of what it sits on and what trained it; None for a plain model
    name or directory."""
    path = Path(name) / POLICY_INFO
    return json.loads(path.read_text()) if path.is_file() else None


def lineage(name: str | Path) -> list[dict]:
    """The records from the bottom of the stack up to this directory (empty for a plain
    model)."""
    info = read_policy_info(name)
    return [] if info is None else [*lineage(info["base"]), {**info, "path": str(name)}]


def load_policy_model(name: str | Path):
    """A causal LM by name or directory, every adapter of its stack merged in (sampling from
    merged weights is as fast as from the base model); and its tokenizer."""
    from rlhfkit.models.loading import load_causal_lm

    info = read_policy_info(name)
    if info is None or not info.get("lora"):
        return load_causal_lm(str(name))  # a plain model, or full weights saved whole
    from peft import PeftModel

    model, tokenizer = load_policy_model(info["base"])
    with warnings.catch_warnings():  # peft asks transformers a deprecated question
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        merged = PeftModel.from_pretrained(model, str(name)).merge_and_unload()
    return merged.eval(), tokenizer


def with_fresh_adapter(model, r: int, alpha: int):
    """The model with a new LoRA adapter (its B at zero, so the model is unchanged until it
    trains) on the projections PPO trains too."""
    from rlhfkit.models.lora import lora_settings, with_lora

    return with_lora(model, "CAUSAL_LM", **lora_settings(r, alpha))


def save_policy(
    model,
    tokenizer,
    path: Path,
    info: dict,
    weights: dict | None = None,
    tensors: dict[str, dict] | None = None,
) -> None:
    """A policy directory, whole or not at all (a crash mid-save leaves the previous one):
    the weights (the adapter, or the whole model; `weights` in place of the model's own,
    when they were gathered from shards), the tokenizer, `info` (at least `base`, `stage`,
    `lora`) as POLICY_INFO, and any other `tensors` (a value head) by file name."""
    from safetensors.torch import save_file

    from rlhfkit.files import atomic_directory

    with atomic_directory(path) as tmp:
        model.save_pretrained(tmp, state_dict=weights)
        tokenizer.save_pretrained(tmp)
        for name, state in (tensors or {}).items():
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp / name)
        (tmp / POLICY_INFO).write_text(json.dumps(info, indent=2))
