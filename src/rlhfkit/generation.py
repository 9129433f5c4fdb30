"""Sampling N completions per prompt from a causal LM, batched with left padding.

Prompts are sorted by length so each batch pads little, and restored to their order at
the end. Every completion keeps its token count and whether it ended with EOS, which the
RL stages need (a response without EOS can be penalised).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhfkit.errors import RlhfkitError
from rlhfkit.models.packed import prepacked_linears

MODES = ("raw", "chat", "auto")  # auto: the stage picks by prompt set (data.prompts)


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy decoding; top_k 0 and top_p 1 mean no truncation."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 32
    mode: str = "chat"  # "raw": continue the prompt text; "chat": answer it as a user turn

    def __post_init__(self):
        if self.temperature < 0:
            raise RlhfkitError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise RlhfkitError("top-p must be in (0, 1]")
        if self.top_k < 0:
            raise RlhfkitError("top-k must be >= 0")
        if self.max_new_tokens < 1:
            raise RlhfkitError("max new tokens must be >= 1")
        if self.mode not in MODES:
            raise RlhfkitError(f"mode must be one of {', '.join(MODES)}, not '{self.mode}'")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Sample:
    text: str
    tokens: int  # generated tokens, EOS included
    finished: bool  # ended with EOS rather than at max_new_tokens


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, mode: str) -> str:
    if mode == "raw":
        return prompt
    if mode != "chat":
        raise RlhfkitError(f"mode '{mode}' must be resolved to raw or chat before generating")
    if not tokenizer.chat_template:
        raise RlhfkitError("this model's tokenizer has no chat template; use --mode raw")
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = model.generation_config.eos_token_id if model.generation_config else None
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    n: int = 4,
    params: SamplingParams = SamplingParams(),
    batch_size: int = 32,
    seed: int = 0,
    on_batch: Callable[[list[int], list[list[Sample]]], None] | None = None,
) -> list[list[Sample]]:
    """`n` samples for each prompt, in prompt order. `batch_size` counts sequences; `on_batch`
    receives each finished batch (prompt indices, their samples), e.g. to save as it goes."""
    if n < 1:
        raise RlhfkitError("n must be >= 1")
    torch.manual_seed(seed)
    stops = stop_token_ids(model, tokenizer)
    texts = [format_prompt(tokenizer, p, params.mode) for p in prompts]
    # Chat templates already hold the special tokens the model expects.
    add_special = params.mode == "raw"
    context = getattr(model.config, "max_position_embeddings", None) or 2048
    max_prompt = context - params.max_new_tokens
    lengths = [len(tokenizer(t, add_special_tokens=add_special).input_ids) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    per_batch = max(1, batch_size // n)
    results: list[list[Sample]] = [[] for _ in texts]
    sampling = (
        dict(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        if params.temperature > 0
        else dict(do_sample=False)
    )
    device = next(model.parameters()).device
    for start in range(0, len(order), per_batch):
        chunk = order[start : start + per_batch]
        tokenizer.truncation_side = "left"  # keep the end of an over-long prompt
        batch = tokenizer(
            [texts[i] for i in chunk],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_prompt,
            add_special_tokens=add_special,
        ).to(device)
        with prepacked_linears(model, len(chunk) * n):
            out = model.generate(
                **batch,
                max_new_tokens=params.max_new_tokens,
                num_return_sequences=n,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        for row, tokens in enumerate(new_tokens):
            is_stop = torch.isin(tokens, torch.tensor(stops, device=tokens.device))
            finished = bool(is_stop.any())
            length = (
                int(is_stop.nonzero()[0, 0]) + 1
                if finished
                else int((tokens != tokenizer.pad_token_id).sum())
            )
            text = tokenizer.decode(tokens[:length], skip_special_tokens=True)
            results[chunk[row // n]].append(Sample(text, length, finished))
        if on_batch:
            on_batch(chunk, [results[i] for i in chunk])
    return results
