"""Peak memory of PPO with LoRA (the reference is the same weights, adapter off) against a
full fine-tune with a separate frozen reference copy: same model, prompts and batch.

    .venv/bin/python bench/ppo_memory.py [--steps 2] [--batch-size 8] [--max-new-tokens 16]
    .venv/bin/python bench/ppo_memory.py --sharding   # also: full fine-tune on 2 processes

Each mode runs in a fresh process; peak resident memory (RSS) is what the OS reports for
it, so it includes the Python and torch runtime both pay (printed as the baseline).
`--sharding` adds the full fine-tune on two processes, replicated (configs/accelerate/
cpu.yaml) and sharded with FSDP2 (fsdp-cpu.yaml), with each process's peak. Both run
with glibc returning large freed blocks to the OS at once (MALLOC_MMAP_THRESHOLD_): FSDP
allocates and frees a layer's gathered weights again and again, and glibc's default of
keeping freed memory would count those as if still held.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile


def measure(args) -> dict:
    import time

    from rlhfkit.train.ppo.step import PPOConfig
    from rlhfkit.train.ppo.trainer import run_ppo

    if args.run == "baseline":  # the runtime and libraries alone, no model
        import rlhfkit.train.ppo.trainer  # noqa: F401

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
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        run_ppo(config, args.out or scratch)  # processes of one run share args.out
        seconds = (time.perf_counter() - started) / args.steps
    return {"seconds_per_step": seconds}


def launched(accelerate_config: str, argv: list[str]) -> list[dict]:
    """The full fine-tune under `accelerate launch`: one result per process."""
    import socket
    from pathlib import Path

    config = Path(__file__).parent.parent / "configs" / "accelerate" / accelerate_config
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])  # free once this socket closes
    with tempfile.TemporaryDirectory() as out:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
        done = subprocess.run(
            [*launch, "--main_process_port", port, __file__, *argv, "--run", "full", "--out", out],
            capture_output=True,
            text=True,
            env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(256 * 1024)},
        )
    if done.returncode:
        sys.exit(f"{accelerate_config} failed:\n{done.stderr[-3000:]}")
    lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
    return sorted((json.loads(x) for x in lines), key=lambda r: r["rank"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--sharding", action="store_true", help="also 2 processes, FSDP2")
    parser.add_argument("--run", choices=["baseline", "lora", "full"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        result = measure(args)
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        result["rank"] = int(os.environ.get("RANK", "0"))
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
        f"(expected: about half)"
    )
    if not args.sharding:
        return
    argv = [a for a in sys.argv[1:] if a != "--sharding"]
    for config, label in (("cpu.yaml", "replicated"), ("fsdp-cpu.yaml", "FSDP2 sharded")):
        ranks = launched(config, argv)
        peaks = ", ".join(f"rank {r['rank']} {r['peak_rss_gb']:.2f} GB" for r in ranks)
        print(
            f"full fine-tune, 2 processes, {label:<14}: peak RSS {peaks}; "
            f"{ranks[0]['seconds_per_step']:.1f} s/step"
        )


if __name__ == "__main__":
    main()
