"""Generation throughput: the same prompts sampled one sequence at a time, one prompt (its
N samples) at a time, and in large left-padded batches.

    .venv/bin/python bench/generate.py [--prompts 16] [-n 4] [--max-new-tokens 32]

Prints useful tokens per second (generated tokens up to and including EOS) for each mode.
"""

from __future__ import annotations

import argparse
import time

import torch

from rlhfkit.data.prompts import load_prompts
from rlhfkit.generation import SamplingParams, generate
from rlhfkit.models import load_causal_lm


def run(model, tokenizer, prompts, n, params, batch_size):
    if batch_size < n:  # one sequence per call: each prompt repeated, one sample at a time
        prompts, n = [p for p in prompts for _ in range(n)], 1
    started = time.perf_counter()
    samples = generate(model, tokenizer, prompts, n=n, params=params, batch_size=batch_size)
    seconds = time.perf_counter() - started
    tokens = sum(s.tokens for group in samples for s in group)
    return tokens, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("-n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    model, tokenizer = load_causal_lm(args.model)
    prompts = [p.prompt for p in load_prompts("builtin:rtp", limit=args.prompts)]
    params = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens, mode="raw")
    run(model, tokenizer, prompts[:2], 2, params, 4)  # warm-up
    print(
        f"model {args.model}, {len(prompts)} RealToxicityPrompts × {args.n} samples, "
        f"≤{args.max_new_tokens} new tokens, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    modes = [
        ("one sequence at a time", 1),
        (f"one prompt at a time (batch {args.n})", args.n),
        (f"batched ({args.batch_size} sequences)", args.batch_size),
    ]
    results = {}
    for name, batch_size in modes:
        tokens, seconds = run(model, tokenizer, prompts, args.n, params, batch_size)
        results[name] = tokens / seconds
        print(
            f"{name:<36} {tokens:>6} tokens in {seconds:6.1f} s = {tokens / seconds:7.1f} tokens/s"
        )
    first, last = results[modes[0][0]], results[modes[-1][0]]
    print(f"batched / one-at-a-time speed-up: {last / first:.1f}×")


if __name__ == "__main__":
    main()
