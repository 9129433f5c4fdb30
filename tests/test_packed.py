"""Prepacked linear layers for sampling on a CPU compute what the model computes, LoRA
adapters merged in (or left out while disabled), and leave the model as it was."""

import pytest
import torch
from torch import nn

from conftest import tiny_llama
from rlhfkit.generation import SamplingParams, generate
from rlhfkit.models import load_causal_lm, with_lora
from rlhfkit.models.packed import prepacked_linears


def _lora_model():
    torch.manual_seed(0)
    model = tiny_llama()
    model = with_lora(model, "CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    with torch.no_grad():  # a trained adapter, not the fresh one that changes nothing
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model.eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_packed_layers_compute_the_same_logits_with_the_adapter_on_and_off():
    model = _lora_model()
    ids = torch.randint(0, 64, (3, 7))
    plain_on = _logits(model, ids)
    with model.disable_adapter():
        plain_off = _logits(model, ids)
    assert not torch.allclose(plain_on, plain_off, atol=1e-3)  # the adapter matters here

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    with prepacked_linears(model, rows=3):
        swapped = [m for m in model.modules() if "forward" in vars(m)]
        # 2 layers × (q, v with LoRA; k, o, gate, up, down) + the output layer
        assert len(swapped) == 2 * 7 + 1
        packed_on = _logits(model, ids)
    with model.disable_adapter(), prepacked_linears(model, rows=3):
        packed_off = _logits(model, ids)
    torch.testing.assert_close(packed_on, plain_on, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed_off, plain_off, atol=1e-5, rtol=1e-5)
    assert not any("forward" in vars(m) for m in linears)  # restored


def test_packed_layers_refuse_gradients_and_leave_training_untouched():
    model = _lora_model()
    ids = torch.randint(0, 64, (2, 5))
    with prepacked_linears(model, rows=2), pytest.raises(RuntimeError, match="no_grad"):
        model(input_ids=ids)
    model(input_ids=ids).logits.sum().backward()  # after the block, autograd as ever
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)


def test_layers_that_are_not_fp32_on_the_cpu_are_left_alone():
    torch.manual_seed(0)
    model = tiny_llama()
    model = model.to(torch.bfloat16)
    with prepacked_linears(model, rows=2):
        assert not any("forward" in vars(m) for m in model.modules())
    with torch.autocast("cpu", dtype=torch.bfloat16), prepacked_linears(model.float(), rows=2):
        assert not any("forward" in vars(m) for m in model.modules())


@pytest.mark.slow
def test_greedy_decoding_of_smollm2_is_the_same_packed_or_not():
    model, tokenizer = load_causal_lm("smollm2-135m-instruct")
    prompts = ["The cat sat on the", "Once upon a time, in a small village by the sea,"]
    params = SamplingParams(temperature=0, max_new_tokens=16, mode="raw")
    packed = generate(model, tokenizer, prompts, n=1, params=params)
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    plain = model.generate(
        **batch, do_sample=False, max_new_tokens=16, pad_token_id=tokenizer.pad_token_id
    )
    texts = tokenizer.batch_decode(plain[:, batch.input_ids.shape[1] :], skip_special_tokens=True)
    assert [s.text for [s] in packed] == texts


@pytest.mark.slow
def test_packed_sampling_is_on_policy_with_a_trained_adapter():
    """PPO's ratios assume the tokens were sampled from π: the log-probabilities generate saw
    while sampling under packed weights must be the policy's own, not the reference's."""
    from rlhfkit.train.ppo.policy import Policy
    from rlhfkit.train.ppo.rollout import response_logits, token_logp
    from rlhfkit.train.ppo.step import PPOConfig

    torch.manual_seed(0)
    policy = Policy.load("smollm2-135m-instruct", PPOConfig().lora_args()).eval()
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    tokenizer = policy.tokenizer
    tokenizer.padding_side = "left"
    batch = tokenizer(
        ["The man said that", "Why would you do such a"], return_tensors="pt", padding=True
    )
    with torch.no_grad(), prepacked_linears(policy.model, rows=2):
        out = policy.model.generate(
            **batch,
            do_sample=True,
            top_k=0,
            top_p=1.0,
            max_new_tokens=12,
            min_new_tokens=12,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=tokenizer.pad_token_id,
        )
    prompt_length = batch.input_ids.shape[1]
    response = out.sequences[:, prompt_length:]
    sampled = torch.stack(out.logits, 1).log_softmax(-1).gather(-1, response[..., None])[..., 0]
    mask = torch.ones_like(out.sequences)
    mask[:, :prompt_length] = batch.attention_mask

    def logp(logits):
        return token_logp(response_logits(logits, 12, 1.0), response)

    with torch.no_grad():
        policy_logp = logp(policy(out.sequences, mask, 13)[0])
        reference_logp = logp(policy.reference_logits(out.sequences, mask, 13))
    torch.testing.assert_close(sampled, policy_logp, atol=1e-4, rtol=0)
    assert (sampled - reference_logp).abs().max() > 0.1  # the adapter was in the sampling
