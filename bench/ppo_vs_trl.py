"""Seconds per PPO step: TRL's PPOTrainer vs rlhfkit, same model, prompts and settings.

    .venv/bin/python bench/ppo_vs_trl.py [--full] [--bf16] [--steps 4] [--ppo-epochs 1]
                                         [--threads 2]

Both train the packaged SmolLM2-135M (LoRA r=16, alpha 32 on q/k/v/o_proj, or with --full
a full fine-tune against a frozen reference copy) on the same RTP prompts (the ones
rlhfkit's run would draw, given to TRL as its data set; raw text, no chat template),
8 rollouts of 24 sampled tokens (temperature 1) a step, 1 minibatch, --ppo-epochs passes,
fp32 (with --bf16, both in bf16 mixed precision) on --threads CPU threads. The reward is
the same for both: SmolLM2 with a fresh seq-classification head (num_labels=1, same seed),
which TRL also uses as the initial value model (its critic is a second model; rlhfkit's is
a value head on the policy). Each run is a fresh process of one virtual environment
(bench/.venv-trl18, made on first use, holding trl==1.8.0 beside rlhfkit), so peak RSS
(ru_maxrss) is that run's alone.

A step is one rollout, scoring and PPO update. The first is a warm-up and left out of the
means. TRL: the time between its on_step_end callbacks (the whole loop, logging included).
rlhfkit: `seconds` of metrics.jsonl (rollout, reward, update), and the time between the
steps it reports to its progress (adds the per-step checkpoint write). "generate" is
sampling alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _venv import LORA_ALPHA, LORA_R, peft_lora, step_clock  # noqa: E402

MODEL = "smollm2-135m-instruct"
BATCH, RESPONSE_LENGTH = 8, 24


def prompts(args) -> list[str]:
    """The prompts rlhfkit's run takes, step by step, in its order."""
    from rlhfkit.data.prompts import load_prompts
    from rlhfkit.train.ppo.trainer import batch_prompts

    texts = [p.prompt for p in load_prompts("builtin:rtp", "train", 0.2)]
    return [p for step in range(args.steps) for p in batch_prompts(texts, step, BATCH, 0)]


def reward_model():
    import torch

    from rlhfkit.models import load_classifier

    torch.manual_seed(0)  # the same fresh score head in both runs
    return load_classifier(MODEL, num_labels=1)


def timed(module, name: str, sink: list[float]) -> None:
    """Record how long each call of module.name takes."""
    inner = getattr(module, name)

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            sink.append(time.perf_counter() - started)

    setattr(module, name, wrapper)


def run_ours(args) -> dict:
    import torch

    import rlhfkit.train.ppo.rollout
    from rlhfkit.progress import Progress
    from rlhfkit.train.ppo.step import PPOConfig
    from rlhfkit.train.ppo.trainer import run_ppo

    model, tokenizer = reward_model()

    @torch.no_grad()
    def reward(prompts: list[str], responses: list[str]) -> torch.Tensor:
        texts = [p + r for p, r in zip(prompts, responses, strict=True)]
        return model(**tokenizer(texts, return_tensors="pt", padding=True)).logits[:, 0]

    config = PPOConfig(
        policy=MODEL,
        lora=not args.full,
        lora_r=LORA_R,
        lora_alpha=LORA_ALPHA,
        steps=args.steps,
        batch_size=BATCH,
        minibatches=1,
        ppo_epochs=args.ppo_epochs,
        max_new_tokens=RESPONSE_LENGTH,
        temperature=1.0,
        prompts="builtin:rtp",
        mode="raw",
        seed=0,
        device="cpu",
        precision="bf16" if args.bf16 else "fp32",
    )
    generate, ends = [], []

    class StepEnds(Progress):
        def advance(self, n=1, description=None):
            ends.append(time.perf_counter())

    timed(rlhfkit.train.ppo.rollout, "sample_responses", generate)
    with tempfile.TemporaryDirectory() as out:
        run_ppo(config, out, reward=reward, progress=StepEnds())
        lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    return {
        "steps": [json.loads(line)["seconds"] for line in lines],
        "loop": [b - a for a, b in zip(ends, ends[1:], strict=False)],
        "generate": generate,
    }


def run_trl(args) -> dict:
    import trl.experimental.ppo.ppo_trainer as ppo_trainer
    from datasets import Dataset
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from rlhfkit.models import load_causal_lm

    # Pad token distinct from EOS (the unknown token), left padding, as rlhfkit loads it.
    policy, tokenizer = load_causal_lm(MODEL)
    value_model, _ = reward_model()
    scorer, _ = reward_model()
    rows = [tokenizer(p)["input_ids"] for p in prompts(args)]  # raw text, as ours tokenizes
    ends: list[float] = []

    generate: list[float] = []
    timed(ppo_trainer, "batch_generation", generate)
    with tempfile.TemporaryDirectory() as tmp:
        config = PPOConfig(
            output_dir=tmp,
            total_episodes=args.steps * BATCH,
            per_device_train_batch_size=BATCH,
            gradient_accumulation_steps=1,
            num_mini_batches=1,
            num_ppo_epochs=args.ppo_epochs,
            response_length=RESPONSE_LENGTH,
            temperature=1.0,
            learning_rate=1e-4,  # rlhfkit's default; TRL's is 3e-6
            stop_token="eos",
            missing_eos_penalty=None,
            num_sample_generations=0,
            bf16=args.bf16,
            gradient_checkpointing=False,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            seed=0,
        )
        PPOTrainer(
            args=config,
            processing_class=tokenizer,
            model=policy,
            ref_model=None,  # with LoRA the adapter switched off; else TRL copies the policy
            reward_model=scorer,
            value_model=value_model,
            train_dataset=Dataset.from_dict({"input_ids": rows}),
            peft_config=None if args.full else peft_lora(),
            callbacks=[step_clock(ends)],
        ).train()
    return {"steps": [b - a for a, b in zip(ends, ends[1:], strict=False)], "generate": generate}


def mean(xs: list[float]) -> float:
    """The mean without the warm-up step (if there is more than one)."""
    return statistics.mean(xs[1:] if len(xs) > 1 else xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full fine-tune instead of LoRA")
    parser.add_argument("--steps", type=int, default=4, help="PPO steps, the first a warm-up")
    parser.add_argument("--bf16", action="store_true", help="both in bf16 mixed precision")
    parser.add_argument("--ppo-epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--run", choices=["ours", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    from _venv import run_both, run_side

    if args.run:
        run_side(run_ours if args.run == "ours" else run_trl, args)
        return
    trl, ours, load = run_both(Path(__file__), "PPO")
    print(f"\n1-minute load average before / after: {load:.1f} / {os.getloadavg()[0]:.1f}")
    print(
        f"SmolLM2-135M PPO, {'full fine-tune' if args.full else f'LoRA r={LORA_R}'}, "
        f"{BATCH} rollouts × {RESPONSE_LENGTH} tokens a step, 1 minibatch, "
        f"{args.ppo_epochs} PPO epoch(s), {'bf16' if args.bf16 else 'fp32'}, CPU, "
        f"{args.threads} threads; "
        f"means of steps 2–{args.steps}"
    )
    print(f"{'':<26}{'s/step':>8}{'generate s':>12}{'peak RSS':>10}")
    rows = [
        ("TRL 1.8.0 PPOTrainer", mean(trl["steps"]), trl),
        ("rlhfkit run_ppo", mean(ours["steps"]), ours),
    ]
    if ours["loop"]:  # steps 2… already
        rows.append(("  + checkpoint write", statistics.mean(ours["loop"]), ours))
    for label, seconds, r in rows:
        print(f"{label:<26}{seconds:>8.2f}{mean(r['generate']):>12.2f}{r['peak_rss_gb']:>8.2f}GB")
    for name, r in (("TRL", trl), ("rlhfkit", ours)):
        print(f"{name} s/step, all steps: {', '.join(f'{s:.2f}' for s in r['steps'])}")
    ratio = mean(ours["steps"]) / mean(trl["steps"])
    print(f"time per step rlhfkit / TRL: {ratio:.2f}× (goal ≤ 0.5×)")


if __name__ == "__main__":
    main()
