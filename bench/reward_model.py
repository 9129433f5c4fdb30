"""Reward-model training throughput and accuracy: TRL's RewardTrainer vs rlhfkit, same data.

    .venv/bin/python bench/reward_model.py [--epochs 2] [--batch-size 16] [--max-length 64]

Both train MiniLM (the packaged `minilm-l6`) with a scalar head on the same training pairs,
the same token ids (prompt and completion as a sentence pair, truncated to --max-length),
batch size (pairs per step), epochs, learning rate and schedule, dropout off, fp32, in
fresh processes of one virtual environment (bench/.venv-trl, made on first use, holding
trl==1.16.0 beside rlhfkit). Both models are then scored by the same code on the same
held-out prompts. The data is the chatterbot relevance preference with K = 4 candidate
replies a prompt (own ≻ same topic ≻ two off-topic; 5 pairs a prompt): learnable, but not
to 100%.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def data(args):
    from rlhfkit.data.synthetic import relevance_pairs
    from rlhfkit.reward.data import group_pairs, split_by_prompt

    train, held_out = split_by_prompt(group_pairs(relevance_pairs(k=4, seed=0)), 0.2)
    return train[: args.prompts], held_out


def accuracy(model, tokenizer, held_out, max_length) -> float:
    from rlhfkit.reward.evaluate import pair_metrics, score_pairs
    from rlhfkit.reward.model import RewardModel

    scorer = RewardModel(model.eval(), tokenizer, {"kind": "encoder", "max_length": max_length})
    return pair_metrics(score_pairs(scorer, held_out))["accuracy"]


def run_ours(args) -> dict:
    from rlhfkit.data.jsonl import write_jsonl
    from rlhfkit.reward.model import RewardModel
    from rlhfkit.train.reward_model import RMConfig, train_reward_model

    train, held_out = data(args)
    with tempfile.TemporaryDirectory() as tmp:
        pairs = Path(tmp) / "pairs.jsonl"
        write_jsonl(
            pairs,
            (
                {"prompt": g.prompt, "chosen": g.completions[c], "rejected": g.completions[r]}
                for g in train
                for c, r in g.pairs
            ),
        )
        config = RMConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            max_length=args.max_length,
            held_out_fraction=0.0,
            normalise=False,
            schedule="linear",
            warmup_ratio=0.1,
            seed=0,
        )
        started = time.perf_counter()
        info = train_reward_model(pairs, Path(tmp) / "rm", config)
        wall = time.perf_counter() - started
        model = RewardModel.load(Path(tmp) / "rm")
        acc = accuracy(model.model, model.tokenizer, held_out, args.max_length)
    return {
        "pairs": info["data"]["pairs"] * args.epochs,
        "train_seconds": info["training"]["train_seconds"],
        "wall_seconds": wall,
        "accuracy": acc,
    }


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from rlhfkit.models import load_classifier

    train, held_out = data(args)
    torch.manual_seed(0)
    model, tokenizer = load_classifier("minilm-l6", num_labels=1)

    def ids(prompt, completion):
        return tokenizer(prompt, completion, truncation=True, max_length=args.max_length)[
            "input_ids"
        ]

    rows = [
        {
            "chosen_ids": ids(g.prompt, g.completions[c]),
            "rejected_ids": ids(g.prompt, g.completions[r]),
        }
        for g in train
        for c, r in g.pairs
    ]
    with tempfile.TemporaryDirectory() as tmp:
        config = RewardConfig(
            output_dir=tmp,
            per_device_train_batch_size=args.batch_size,
            num_train_epochs=args.epochs,
            learning_rate=args.lr,
            lr_scheduler_type="linear",
            warmup_steps=int(0.1 * math.ceil(len(rows) / args.batch_size) * args.epochs),
            max_grad_norm=1.0,
            bf16=False,
            gradient_checkpointing=False,
            disable_dropout=True,
            max_length=None,
            report_to=[],
            save_strategy="no",
            eval_strategy="no",
            logging_steps=1000,
            seed=0,
            use_cpu=True,
            dataloader_num_workers=0,
        )
        started = time.perf_counter()
        trainer = RewardTrainer(
            model=model,
            args=config,
            processing_class=tokenizer,
            train_dataset=Dataset.from_list(rows),
        )
        result = trainer.train()
        wall = time.perf_counter() - started
    return {
        "pairs": len(rows) * args.epochs,
        "train_seconds": result.metrics["train_runtime"],
        "wall_seconds": wall,
        "accuracy": accuracy(trainer.model, tokenizer, held_out, args.max_length),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--prompts", type=int, default=None, help="limit training prompts")
    parser.add_argument("--run", choices=["ours", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        result = (run_ours if args.run == "ours" else run_trl)(args)
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(result))
        return

    from _venv import ensure_venv, run_in

    python = ensure_venv("trl", ["trl==1.16.0"])
    passed = [a for a in sys.argv[1:]]
    results = {}
    for name in ("trl", "ours"):
        print(f"training with {name} …", flush=True)
        results[name] = json.loads(
            run_in(python, Path(__file__), *passed, "--run", name).strip().splitlines()[-1]
        )
    print(
        f"\nMiniLM reward model, relevance pairs (K=4), batch {args.batch_size} pairs, "
        f"max length {args.max_length}, {args.epochs} epoch(s), lr {args.lr}, fp32, CPU"
    )
    print(f"{'':<22}{'pairs/s':>9}{'train s':>9}{'wall s':>8}{'held-out acc':>14}{'peak RSS':>10}")
    for name, label in (("trl", "TRL RewardTrainer"), ("ours", "rlhfkit train-rm")):
        r = results[name]
        print(
            f"{label:<22}{r['pairs'] / r['train_seconds']:>9.1f}{r['train_seconds']:>9.1f}"
            f"{r['wall_seconds']:>8.1f}{r['accuracy']:>14.3f}{r['peak_rss_gb']:>8.2f}GB"
        )
    ratio = (results["ours"]["pairs"] / results["ours"]["train_seconds"]) / (
        results["trl"]["pairs"] / results["trl"]["train_seconds"]
    )
    print(f"throughput ratio rlhfkit / TRL: {ratio:.2f}× (goal ≥ 1.5× at equal or better accuracy)")


if __name__ == "__main__":
    main()
