"""Fingerprints of fixed-seed training runs, to prove a restructuring changed nothing.

Runs SFT, DPO, two reward models (MiniLM fully trained, SmolLM2 with LoRA) and PPO (GAE with
a value head, and GRPO) for a few steps on the packaged models, with one thread, and writes
for each the metrics it logged (times left out) and the SHA-256 of every tensor it saved.
Run it before and after a change, then compare:

    python bench/equivalence.py --out /tmp/before.json     # on the old code
    python bench/equivalence.py --out /tmp/after.json      # on the new code
    python bench/equivalence.py --compare /tmp/before.json /tmp/after.json

The same machine and thread count are needed for equal numbers: matrix products round
differently on other CPUs. About 6 minutes on a 2-core AMD EPYC.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import sys
import tempfile
from pathlib import Path

import torch

TIMES = {"seconds", "train_seconds", "pairs_per_s", "tokens_per_s", "sample_seconds",
         "rollout_seconds", "update_seconds", "step_seconds", "reward_seconds"}  # fmt: skip


def first(*names: str):
    """The first of `module:attribute` names that imports (the API before and after a move)."""
    for name in names:
        module, attribute = name.split(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {names}")


def fingerprint(folder: Path) -> dict:
    """Every metrics line without its times, and every saved tensor's SHA-256, by file."""
    from safetensors import safe_open

    out: dict = {"metrics": [], "tensors": {}}
    metrics = folder / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            record = json.loads(line)
            out["metrics"].append({k: v for k, v in record.items() if k not in TIMES})
    for path in sorted(folder.rglob("*.safetensors")):
        if path.name == "checkpoint.safetensors":
            continue  # its header holds settings and times; the tensors it saves are below
        with safe_open(path, framework="pt") as f:
            for name in sorted(f.keys()):  # noqa: SIM118 (not a dict)
                data = f.get_tensor(name).contiguous().view(torch.uint8).numpy().tobytes()
                key = f"{path.relative_to(folder)}:{name}"
                out["tensors"][key] = hashlib.sha256(data).hexdigest()
    return out


def exclamations(prompts, completions):
    """A reward known in advance: how excited the response sounds, 0 to 3."""
    return torch.tensor([float(min(c.count("!"), 3)) for c in completions])


def write_pairs(path: Path, pairs) -> Path:
    path.write_text(
        "".join(
            json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
            for p in pairs
        )
    )
    return path


def run_all(work: Path) -> dict:
    from rlhfkit.data.synthetic import relevance_pairs

    pairs = relevance_pairs(k=3)
    pairs_file = write_pairs(work / "pairs.jsonl", pairs[:96])
    sft_file = work / "sft.jsonl"
    sft_file.write_text(
        "".join(json.dumps({"prompt": p.prompt, "response": p.chosen}) + "\n" for p in pairs[:48])
    )
    results = {}

    SFTConfig = first("rlhfkit.train.sft:SFTConfig", "rlhfkit.sft:SFTConfig")
    train_sft = first("rlhfkit.train.sft:train_sft", "rlhfkit.sft:train_sft")
    train_sft(sft_file, work / "sft", SFTConfig(epochs=2, batch_size=8, max_steps=8, seed=0))
    results["sft"] = fingerprint(work / "sft")

    DPOConfig = first("rlhfkit.train.dpo:DPOConfig", "rlhfkit.dpo:DPOConfig")
    train_dpo = first("rlhfkit.train.dpo:train_dpo", "rlhfkit.dpo:train_dpo")
    train_dpo(pairs_file, work / "dpo", DPOConfig(batch_size=8, max_steps=6, eval_fraction=0.2))
    results["dpo"] = fingerprint(work / "dpo")

    RMConfig = first("rlhfkit.train.reward_model:RMConfig", "rlhfkit.reward.train:RMConfig")
    train_rm = first(
        "rlhfkit.train.reward_model:train_reward_model", "rlhfkit.reward.train:train_reward_model"
    )
    train_rm(pairs_file, work / "rm", RMConfig(epochs=2, eval_fraction=0.2, batch_size=16))
    results["rm-minilm"] = fingerprint(work / "rm")
    lora = RMConfig(base="smollm2-135m-instruct", lora=True, epochs=1, batch_size=16,
                    eval_fraction=0.2, max_length=64)  # fmt: skip
    train_rm(write_pairs(work / "few.jsonl", pairs[:40]), work / "rm-lora", lora)
    results["rm-smollm2-lora"] = fingerprint(work / "rm-lora")

    PPOConfig = first("rlhfkit.train.ppo:PPOConfig", "rlhfkit.rl.ppo:PPOConfig")
    run_ppo = first("rlhfkit.train.ppo:run_ppo", "rlhfkit.rl.trainer:run_ppo")
    common = dict(prompts="builtin:dialogues", batch_size=8, minibatches=2, ppo_epochs=2,
                  lr=1e-3, lora_r=8, max_new_tokens=10, steps=3, seed=0)  # fmt: skip
    run_ppo(PPOConfig(**common), work / "ppo-gae", reward=exclamations)
    results["ppo-gae"] = fingerprint(work / "ppo-gae")
    grpo = PPOConfig(**{**common, "advantage": "grpo", "samples_per_prompt": 4, "kl_in": "loss"})
    run_ppo(grpo, work / "ppo-grpo", reward=exclamations)
    results["ppo-grpo"] = fingerprint(work / "ppo-grpo")
    return results


def compare(before: Path, after: Path) -> int:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    for runs in (a, b):  # times left out again, in case TIMES has grown since
        for run in runs.values():
            run["metrics"] = [
                {k: v for k, v in r.items() if k not in TIMES} for r in run["metrics"]
            ]
    differ = 0
    for run in sorted(set(a) | set(b)):
        if a.get(run) == b.get(run):
            n = len(a[run]["tensors"])
            print(f"{run}: identical ({len(a[run]['metrics'])} metrics lines, {n} tensors)")
            continue
        differ += 1
        if run not in a or run not in b:
            print(f"{run}: only in {'after' if run not in a else 'before'}")
            continue
        for part in ("metrics", "tensors"):
            if a[run][part] != b[run][part]:
                print(f"{run}: {part} differ")
                if part == "metrics":
                    for x, y in zip(a[run][part], b[run][part], strict=False):
                        if x != y:
                            print(f"  before {x}\n  after  {y}")
                            break
                else:
                    keys = set(a[run][part]) ^ set(b[run][part])
                    keys |= {k for k in a[run][part] if a[run][part][k] != b[run][part].get(k)}
                    print("  " + ", ".join(sorted(keys)[:5]))
    print("identical" if not differ else f"{differ} runs differ")
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the fingerprints here")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    if not args.out:
        parser.error("--out or --compare")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        results = run_all(Path(work))
    args.out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
