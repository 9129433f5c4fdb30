"""Phase 1 of PPO (the seed's "Create Completions"): sample responses, score them, and
record what the update needs: old log-probabilities, reference log-probabilities, values.

Details that decide whether it works (docs/architecture.md, "PPO: the details that decide
whether it works"): left-padded prompts with position ids from the attention mask; logits
divided by the sampling temperature before log-softmax, for policy and reference alike; each
response cut after its first EOS and padded after it with a pad token distinct from EOS (so
EOS is kept and learned); dropout off throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlhfkit.generation import format_prompt, stop_token_ids
from rlhfkit.models.packed import prepacked_linears
from rlhfkit.rl.policy import Policy


@dataclass
class Rollout:
    prompts: list[str]
    responses: list[str]
    input_ids: torch.Tensor  # [B, P + R]: left-padded prompt, then response
    attention_mask: torch.Tensor
    response_mask: torch.Tensor  # [B, R]: 1 on response tokens up to and including EOS
    logp: torch.Tensor | None  # [B, R] log π_old of each response token (temperature-scaled)
    ref_logp: torch.Tensor  # [B, R] log π_ref of the same tokens
    values: torch.Tensor | None  # [B, R]; both None: left to the update's first forward
    finished: torch.Tensor  # [B] bool: the response ended with EOS
    prompt_length: int
    truncated_prompts: int = 0  # prompts cut from the left to fit max_prompt_tokens

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_length :]


def response_logits(logits: torch.Tensor, response_length: int, temperature: float) -> torch.Tensor:
    """Logits that predicted each response token (position t−1 predicts token t), divided by
    the sampling temperature so log π is the probability the token was sampled with. Works
    on all positions' logits or on the last response_length + 1 (`logits_to_keep`)."""
    return logits[:, -response_length - 1 : -1] / temperature


def token_logp(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[..., None])[..., 0]


def truncate_after_eos(tokens: torch.Tensor, stops: Sequence[int], pad_id: int):
    """Keep each row up to and including its first stop token; pad the rest. Returns the
    tokens, the response mask and whether each row finished."""
    is_stop = torch.isin(tokens, torch.tensor(list(stops), device=tokens.device))
    seen = is_stop.long().cumsum(dim=1)
    # real = before the first stop, or the first stop itself
    mask = (seen == 0) | ((seen == 1) & is_stop)
    return tokens.masked_fill(~mask, pad_id), mask.float(), is_stop.any(dim=1)


@dataclass
class Responses:
    """Sampled responses after their left-padded prompts, cut after the first EOS."""

    input_ids: torch.Tensor  # [B, P + R]
    attention_mask: torch.Tensor
    response_mask: torch.Tensor  # [B, R]
    finished: torch.Tensor  # [B] bool
    prompt_length: int
    truncated_prompts: int

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_length :]


@torch.no_grad()
def sample_responses(
    model,
    tokenizer,
    prompts: Sequence[str],
    mode: str = "raw",
    max_new_tokens: int = 24,
    temperature: float = 1.0,
    max_prompt_tokens: int = 256,
    min_new_tokens: int = 0,
    synced: bool = False,
) -> Responses:
    """`synced`: the processes of a sharded model gather each layer's weights together, so
    each must keep stepping until every process's responses have ended."""
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    texts = [format_prompt(tokenizer, p, mode) for p in prompts]
    add_special = mode == "raw"  # chat templates carry their own special tokens
    too_long = sum(
        len(tokenizer(t, add_special_tokens=add_special).input_ids) > max_prompt_tokens
        for t in texts
    )
    batch = tokenizer(
        texts,
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=max_prompt_tokens,
        add_special_tokens=add_special,
    )
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    stops = stop_token_ids(model, tokenizer)
    # Pure sampling (no top-k/top-p) so the sampled tokens follow π exactly: PPO's ratios
    # and the KL estimate assume it.
    with prepacked_linears(model, len(texts)):
        out = model.generate(
            **batch,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id,
            synced_gpus=synced,
        )
    prompt_length = batch["input_ids"].shape[1]
    response, response_mask, finished = truncate_after_eos(
        out[:, prompt_length:], stops, tokenizer.pad_token_id
    )
    return Responses(
        input_ids=torch.cat([batch["input_ids"], response], dim=1),
        attention_mask=torch.cat([batch["attention_mask"], response_mask.long()], dim=1),
        response_mask=response_mask,
        finished=finished,
        prompt_length=prompt_length,
        truncated_prompts=too_long,
    )


@torch.no_grad()
def rollout(
    policy: Policy,
    prompts: Sequence[str],
    mode: str = "raw",
    max_new_tokens: int = 24,
    temperature: float = 1.0,
    max_prompt_tokens: int = 256,
    min_new_tokens: int = 0,
    old_logp: bool = True,
    synced: bool = False,
) -> Rollout:
    """`old_logp=False` skips the policy's forward pass: with one minibatch, the update's
    first forward sees the same weights and computes log π_old and V_old itself. `synced`:
    the policy is sharded across processes (sample_responses)."""
    policy.eval()
    with policy.gathered(), policy.autocast():
        sampled = sample_responses(
            policy.model,
            policy.tokenizer,
            prompts,
            mode,
            max_new_tokens,
            temperature,
            max_prompt_tokens,
            min_new_tokens,
            synced,
        )
    input_ids, attention_mask = sampled.input_ids, sampled.attention_mask
    response, mask = sampled.response_ids, sampled.response_mask
    keep = response.shape[1] + 1
    logp = values = None
    if old_logp:
        logits, values = policy(input_ids, attention_mask, keep)
        logp = token_logp(response_logits(logits, keep - 1, temperature), response) * mask
        values = values[:, -keep:-1] * mask
    ref = policy.reference_logits(input_ids, attention_mask, keep)
    ref_logp = token_logp(response_logits(ref, keep - 1, temperature), response)
    return Rollout(
        prompts=list(prompts),
        responses=policy.tokenizer.batch_decode(response, skip_special_tokens=True),
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=mask,
        logp=logp,
        ref_logp=ref_logp * mask,
        values=values,
        finished=sampled.finished,
        prompt_length=sampled.prompt_length,
        truncated_prompts=sampled.truncated_prompts,
    )
