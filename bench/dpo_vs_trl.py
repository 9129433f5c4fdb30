"""Seconds per DPO step: TRL's DPOTrainer vs `rlhfkit dpo`, same model, pairs and settings.

    .venv/bin/python bench/dpo_vs_trl.py [--pairs runs/compare/pairs/pairs.jsonl]
                                         [--prompts 48] [--steps 30] [--threads 2]

Both train the packaged SmolLM2-135M with LoRA (r=16, alpha 32 on q/k/v/o_proj, no
dropout) on the pairs of the first --prompts prompts of a `feedback pairs` file (raw text,
no chat template), 10% of the prompts held out exactly as `train-rm` holds them out, 8
pairs a step for --steps steps, β 0.1, the sigmoid loss, lr 1e-4 constant, gradient norm
clipped at 1, sequences cut to 128 tokens, fp32 on --threads CPU threads. Each precomputes
the reference's log-probabilities once (TRL: `precompute_ref_log_probs`, over its train and
eval pairs; rlhfkit: over each distinct sequence of both), and that pass counts in both
totals. TRL appends EOS to every completion (one token more a sequence); rlhfkit keeps the
completion as sampled. Each run is a fresh process of one virtual environment
(bench/.venv-trl18, made on first use, holding trl==1.8.0 beside rlhfkit), so peak RSS
(ru_maxrss) is that run's alone.

Step times are means over steps 2 … N−1 (the first warms up; rlhfkit's last also scores the
held-out pairs). The held-out pair accuracy is the implicit reward's (β·Δ of the chosen
above the rejected's) after training, on the held-out prompts' pairs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _venv import LORA_ALPHA, LORA_R, peft_lora, step_clock  # noqa: E402

MODEL = "smollm2-135m-instruct"
BATCH, MAX_LENGTH, BETA, LR, HELD_OUT = 8, 128, 0.1, 1e-4, 0.1
ROOT = Path(__file__).resolve().parent.parent


def subset(args):
    """The first --prompts prompts' pairs, split into train and held out as train-rm does."""
    from rlhfkit.reward.data import group_pairs, read_pairs, split_by_prompt

    groups = group_pairs(read_pairs(args.pairs))[: args.prompts]
    return split_by_prompt(groups, HELD_OUT)


def rows(groups) -> list[dict]:
    return [
        {"prompt": g.prompt, "chosen": g.completions[c], "rejected": g.completions[r]}
        for g in groups
        for c, r in g.pairs
    ]


def run_ours(args) -> dict:
    from rlhfkit.data.jsonl import write_jsonl
    from rlhfkit.progress import Progress
    from rlhfkit.train.dpo import DPOConfig, train_dpo

    train, held = subset(args)
    times: dict[str, list[float]] = {}

    class Clock(Progress):
        def start(self, title, total=None, completed=0):
            self.title = title
            times[title] = [time.perf_counter()]

        def advance(self, n=1, description=None):
            times[self.title].append(time.perf_counter())

    config = DPOConfig(
        policy=MODEL,
        mode="raw",
        beta=BETA,
        batch_size=BATCH,
        lr=LR,
        max_length=MAX_LENGTH,
        held_out_fraction=HELD_OUT,
        max_steps=args.steps,
        lora_r=LORA_R,
        lora_alpha=LORA_ALPHA,
        batching=args.batching,
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory() as out:
        pairs = Path(out) / "pairs.jsonl"
        write_jsonl(pairs, rows(train) + rows(held))
        started = time.perf_counter()
        summary = train_dpo(pairs, Path(out) / "dpo", config, progress=Clock())
        total = time.perf_counter() - started
    reference = times["reference log-probabilities"]
    ticks = times["DPO"]
    return {
        "reference_s": reference[-1] - reference[0],
        "steps": [b - a for a, b in zip(ticks, ticks[1:], strict=False)],
        "total_s": total,
        "accuracy": summary["held_out"]["after"]["accuracy"],
        "held_out_pairs": summary["counts"]["held_out_pairs"],
        "train_pairs": summary["counts"]["train_pairs"],
    }


def run_trl(args) -> dict:
    from datasets import Dataset, load_from_disk
    from trl import DPOConfig, DPOTrainer

    from rlhfkit.models import load_causal_lm

    train, held = subset(args)
    model, tokenizer = load_causal_lm(MODEL)  # pad distinct from EOS, as rlhfkit loads it
    ends: list[float] = []

    with tempfile.TemporaryDirectory() as tmp:
        config = DPOConfig(
            output_dir=tmp,
            per_device_train_batch_size=BATCH,
            per_device_eval_batch_size=16,
            precompute_ref_log_probs=True,
            precompute_ref_batch_size=16,  # as rlhfkit's reference pass
            gradient_accumulation_steps=1,
            max_steps=args.steps,
            learning_rate=LR,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            beta=BETA,
            loss_type=["sigmoid"],
            max_length=MAX_LENGTH,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            logging_steps=10**6,
            disable_tqdm=True,
            seed=args.seed,
        )

        def on_disk(name: str, groups):
            """TRL caches the reference log-probs beside a dataset's files: it needs some."""
            Dataset.from_list(rows(groups)).save_to_disk(f"{tmp}/{name}")
            return load_from_disk(f"{tmp}/{name}")

        train_set, held_set = on_disk("train", train), on_disk("held", held)
        started = time.perf_counter()
        trainer = DPOTrainer(
            model=model,
            ref_model=None,
            args=config,
            train_dataset=train_set,
            eval_dataset=held_set,
            processing_class=tokenizer,
            peft_config=peft_lora(),
            callbacks=[step_clock(ends)],
        )
        prepared = time.perf_counter()  # tokenised and the reference's log-probs precomputed
        trainer.train()
        trained = time.perf_counter()
        accuracy = trainer.evaluate()["eval_rewards/accuracies"]
    return {
        "reference_s": prepared - started,
        "steps": [b - a for a, b in zip(ends, ends[1:], strict=False)],
        "total_s": trained - started,
        "accuracy": accuracy,
        "held_out_pairs": len(rows(held)),
        "train_pairs": len(rows(train)),
    }


def middle(xs: list[float]) -> float:
    """The mean of steps 2 … N−1 (all of them if there are fewer than 3)."""
    return statistics.mean(xs[1:-1] if len(xs) > 2 else xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = ROOT / "runs" / "compare" / "pairs" / "pairs.jsonl"
    parser.add_argument("--pairs", type=Path, default=default, help="a feedback pairs file")
    parser.add_argument("--prompts", type=int, default=48, help="the first N prompts' pairs")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--batching", choices=["shuffled", "by_prompt"], default="shuffled", help="rlhfkit's"
    )
    parser.add_argument("--run", choices=["ours", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.pairs.is_file():
        sys.exit(f"{args.pairs}: no such pairs file (make one: rlhfkit compare, or rlhfkit run)")
    from _venv import run_both, run_side

    if args.run:
        run_side(run_ours if args.run == "ours" else run_trl, args)
        return
    trl, ours, load = run_both(Path(__file__), "DPO")
    print(f"\n1-minute load average before / after: {load:.1f} / {os.getloadavg()[0]:.1f}")
    print(
        f"SmolLM2-135M DPO, LoRA r={LORA_R}, {ours['train_pairs']} train and "
        f"{ours['held_out_pairs']} held-out pairs ({args.prompts} prompts of {args.pairs}), "
        f"{BATCH} pairs a step, {args.steps} steps, ≤ {MAX_LENGTH} tokens, fp32, CPU, "
        f"{args.threads} threads"
    )
    print(f"{'':<22}{'reference s':>12}{'s/step':>8}{'total s':>9}{'peak RSS':>10}{'acc.':>7}")
    for label, r in (("TRL 1.8.0 DPOTrainer", trl), ("rlhfkit dpo", ours)):
        print(
            f"{label:<22}{r['reference_s']:>12.1f}{middle(r['steps']):>8.2f}{r['total_s']:>9.1f}"
            f"{r['peak_rss_gb']:>8.2f}GB{r['accuracy']:>7.3f}"
        )
    ratio = middle(ours["steps"]) / middle(trl["steps"])
    print(f"time per step rlhfkit / TRL: {ratio:.2f}× (goal ≤ 0.6×)")
    print(f"total rlhfkit / TRL: {ours['total_s'] / trl['total_s']:.2f}×")
    gap = ours["accuracy"] - trl["accuracy"]
    print(f"held-out pair accuracy rlhfkit − TRL: {gap:+.3f} (goal within ±0.03)")


if __name__ == "__main__":
    main()
