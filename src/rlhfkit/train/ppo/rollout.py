"""Phase 1 of PPO, the rollout: the policy writes completions. Sample responses (with
generation.sample, the sampler `rlhfkit generate` uses), score them, and record what the
update needs: old log-probabilities, reference log-probabilities, values.

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

from rlhfkit.generation import SamplingParams, format_prompt, prompt_lengths, sample
from rlhfkit.train.ppo.policy import Policy


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
    """Responses after their prompts, as the policy reads them back. `synced`: the policy is
    sharded across processes (generation.sample)."""
    texts = [format_prompt(tokenizer, p, mode) for p in prompts]
    too_long = sum(n > max_prompt_tokens for n in prompt_lengths(tokenizer, texts, mode))
    # Pure sampling (no top-k/top-p) so the sampled tokens follow π exactly: PPO's ratios
    # and the KL estimate assume it.
    params = SamplingParams(
        temperature=temperature, top_p=1.0, top_k=0, max_new_tokens=max_new_tokens, mode=mode
    )
    sampled = sample(model, tokenizer, texts, params, 1, max_prompt_tokens, min_new_tokens, synced)
    return Responses(
        input_ids=torch.cat([sampled.prompt_ids, sampled.response_ids], dim=1),
        attention_mask=torch.cat([sampled.prompt_mask, sampled.response_mask.long()], dim=1),
        response_mask=sampled.response_mask,
        finished=sampled.finished,
        prompt_length=sampled.prompt_ids.shape[1],
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
        values = None if values is None else values[:, -keep:-1] * mask
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
