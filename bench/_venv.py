"""A separate virtual environment for a benchmark's peer (TRL pins other versions than we do),
with the same pinned torch and rlhfkit itself, so both run on identical kernels."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LORA_R, LORA_ALPHA = 16, 32  # the adapter both sides of a peer bench train


def ensure_venv(name: str, packages: list[str]) -> Path:
    """Create bench/.venv-NAME once (torch==2.13.0 first, then `packages` and rlhfkit); return
    its python."""
    venv = ROOT / "bench" / f".venv-{name}"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    wanted = " ".join(packages)
    if not stamp.exists() or stamp.read_text() != wanted:
        print(f"setting up {venv} with {wanted} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "torch==2.13.0"], check=True)
        # one resolution for both, so neither side's pins are silently broken
        subprocess.run([*pip, *packages, "-e", str(ROOT)], check=True)
        subprocess.run([str(python), "-m", "rlhfkit", "install-data", "--quiet"], check=True)
        stamp.write_text(wanted)
    return python


def run_in(python: Path, script: Path, *args: str) -> str:
    """Run a script under another interpreter; its stdout comes back."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [str(python), str(script), *args], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        sys.exit(f"{script.name} {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    return done.stdout


def run_side(run, args) -> None:
    """In the child process of one side: train with `run(args)` on --threads threads, then
    print its result with the threads used and this process's peak RSS, as one JSON line."""
    import json
    import resource

    import torch

    torch.set_num_threads(args.threads)
    result = run(args)
    result["threads"] = torch.get_num_threads()
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(result))


def run_both(script: Path, what: str) -> tuple[dict, dict, float]:
    """TRL's side, then ours, each a fresh process of bench/.venv-trl18 running `script` with
    this command's arguments and `--run NAME`; their results and the load average before."""
    import json

    python = ensure_venv("trl18", ["trl==1.8.0"])
    load = os.getloadavg()[0]  # anything else running skews the times
    results = {}
    for name in ("trl", "ours"):
        print(f"{what} with {name} …", flush=True)
        output = run_in(python, script, *sys.argv[1:], "--run", name)
        results[name] = json.loads(output.strip().splitlines()[-1])
    return results["trl"], results["ours"], load


def peft_lora():
    """That adapter as peft's config, for TRL: rlhfkit's targets, no dropout."""
    from peft import LoraConfig

    from rlhfkit.models.lora import LORA_TARGETS

    return LoraConfig(
        task_type="CAUSAL_LM",
        r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.0,
        target_modules=LORA_TARGETS,
    )


def step_clock(ends: list[float]):
    """A TRL trainer callback that appends the time at the start of training and at the end
    of every step to `ends`: a step's seconds are the differences."""
    import time

    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_train_begin(self, *_, **__):
            ends.append(time.perf_counter())

        def on_step_end(self, *_, **__):
            ends.append(time.perf_counter())

    return Clock()
