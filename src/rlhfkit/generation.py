"""Sampling N completions per prompt from a causal LM, batched with left padding.

`sample` is the one sampler: it turns a batch of prompt texts into responses cut after their
first stop token, on prepacked weights. `generate` (completions for labelers) sorts prompts
by length so each batch pads little and restores their order at the end; the RL stages
(train/ppo/rollout.py) add what PPO needs on top. Every completion keeps its token count and
whether it ended with EOS (a response without EOS can be penalised).
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


def adds_special_tokens(mode: str) -> bool:
    """Raw text gets the tokenizer's special tokens; chat templates already hold them."""
    return mode == "raw"


def prompt_lengths(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], mode: str
) -> list[int]:
    add_special = adds_special_tokens(mode)
    return [len(tokenizer(t, add_special_tokens=add_special).input_ids) for t in texts]


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on the first real token of a left-padded row."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def truncate_after_eos(tokens: torch.Tensor, stops: Sequence[int], pad_id: int):
    """Keep each row up to and including its first stop token; pad the rest. Returns the
    tokens, the response mask and whether each row finished."""
    is_stop = torch.isin(tokens, torch.tensor(list(stops), device=tokens.device))
    seen = is_stop.long().cumsum(dim=1)
    # real = before the first stop, or the first stop itself
    mask = (seen == 0) | ((seen == 1) & is_stop)
    return tokens.masked_fill(~mask, pad_id), mask.float(), is_stop.any(dim=1)


@dataclass(frozen=True)
class Sampled:
    """Left-padded prompts and `n` responses to each (consecutive rows), every response cut
    after its first stop token and padded after it."""

    prompt_ids: torch.Tensor  # [prompts, P]
    prompt_mask: torch.Tensor  # [prompts, P]
    response_ids: torch.Tensor  # [prompts · n, R]
    response_mask: torch.Tensor  # [prompts · n, R] float: 1 up to and including the stop token
    finished: torch.Tensor  # [prompts · n] bool: ended with a stop token, not at the limit

    def samples(self, tokenizer: PreTrainedTokenizerBase) -> list[Sample]:
        """The responses as text, in row order."""
        out = []
        for tokens, mask, finished in zip(
            self.response_ids, self.response_mask, self.finished, strict=True
        ):
            length = int(mask.sum())
            text = tokenizer.decode(tokens[:length], skip_special_tokens=True)
            out.append(Sample(text, length, bool(finished)))
        return out


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    params: SamplingParams,
    n: int = 1,
    max_prompt_tokens: int = 256,
    min_new_tokens: int = 0,
    synced: bool = False,
) -> Sampled:
    """`n` responses to each of `texts` (prompts already formatted for `params.mode`), in one
    batch. A prompt longer than `max_prompt_tokens` loses its start. `synced`: the processes
    of a sharded model gather each layer's weights together, so each must keep stepping
    until every process's responses have ended."""
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"  # keep a prompt's end
    batch = tokenizer(
        list(texts),
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=max_prompt_tokens,
        add_special_tokens=adds_special_tokens(params.mode),
    ).to(next(model.parameters()).device)
    stops = stop_token_ids(model, tokenizer)
    sampling = (
        dict(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        if params.temperature > 0
        else dict(do_sample=False)
    )
    with prepacked_linears(model, len(texts) * n):
        out = model.generate(
            **batch,
            max_new_tokens=params.max_new_tokens,
            min_new_tokens=min_new_tokens,
            num_return_sequences=n,
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id,
            synced_gpus=synced,
            **sampling,
        )
    prompt_ids = batch["input_ids"]
    response, mask, finished = truncate_after_eos(
        out[:, prompt_ids.shape[1] :], stops, tokenizer.pad_token_id
    )
    return Sampled(prompt_ids, batch["attention_mask"], response, mask, finished)


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
    texts = [format_prompt(tokenizer, p, params.mode) for p in prompts]
    context = getattr(model.config, "max_position_embeddings", None) or 2048
    max_prompt = context - params.max_new_tokens
    lengths = prompt_lengths(tokenizer, texts, params.mode)
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    per_batch = max(1, batch_size // n)
    results: list[list[Sample]] = [[] for _ in texts]
    for start in range(0, len(order), per_batch):
        chunk = order[start : start + per_batch]
        sampled = sample(model, tokenizer, [texts[i] for i in chunk], params, n, max_prompt)
        for row, completion in enumerate(sampled.samples(tokenizer)):
            results[chunk[row // n]].append(completion)
        if on_batch:
            on_batch(chunk, [results[i] for i in chunk])
    return results
