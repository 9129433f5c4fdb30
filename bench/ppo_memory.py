"""Peak memory of PPO with LoRA (the reference is the same weights, adapter off) against a
full fine-tune with a separate frozen reference copy: same model, prompts and batch.

    .venv/bin/python bench/ppo_memory.py [--steps 2] [--batch-size 8] [--max-new-tokens 16]

Each mode runs in a fresh process; peak resident memory (RSS) is what the OS reports for
it, so it includes the Python and torch runtime both pay (printed as the baseline).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile


def measure(args) -> dict:
    import time

    from rlhfkit.rl.ppo import PPOConfig
    from rlhfkit.rl.trainer import run_ppo

    if args.run == "baseline":  # the runtime and libraries alone, no model
        import rlhfkit.rl.trainer  # noqa: F401

        return {}
    config = PPOConfig(
        lora=args.run == "lora",
        steps=args.steps,
        batch_size=args.batch_size,
        minibatches=1,
        max_new_tokens=args.max_new_tokens,
        reward="scorer:profanity",
        prompts="builtin:rtp",
        seed=0,
    )
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        run_ppo(config, out)
        seconds = (time.perf_counter() - started) / args.steps
    return {"seconds_per_step": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--run", choices=["baseline", "lora", "full"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        result = measure(args)
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(result))
        return
    results = {}
    for mode in ("baseline", "lora", "full"):
        done = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--run", mode], capture_output=True, text=True
        )
        if done.returncode:
            sys.exit(f"{mode} failed:\n{done.stderr[-3000:]}")
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    base = results["baseline"]["peak_rss_gb"]
    print(
        f"SmolLM2-135M PPO, {args.steps} steps of {args.batch_size} rollouts × "
        f"{args.max_new_tokens} tokens, fp32, CPU"
    )
    print(f"runtime baseline (python, torch, transformers, no model): {base:.2f} GB")
    for mode, label in (("lora", "LoRA, shared reference"), ("full", "full fine-tune + copy")):
        r = results[mode]
        print(
            f"{label:<26} peak RSS {r['peak_rss_gb']:.2f} GB (above baseline "
            f"{r['peak_rss_gb'] - base:.2f} GB), {r['seconds_per_step']:.1f} s/step"
        )
    ratio = results["lora"]["peak_rss_gb"] / results["full"]["peak_rss_gb"]
    above = (results["lora"]["peak_rss_gb"] - base) / (results["full"]["peak_rss_gb"] - base)
    print(
        f"LoRA / full: {ratio:.2f} of the peak, {above:.2f} above the baseline "
        f"(the seed: about half)"
    )


if __name__ == "__main__":
    main()
