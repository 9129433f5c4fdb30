"""Checkpoints and saved value heads, without pickle.

A checkpoint is one safetensors file: every tensor (weights, optimiser moments, torch's
random states) by a path-like name, and everything else (step, settings, metrics, the KL
controller, Python's and NumPy's random states) as JSON in the file's header, where each
tensor is a reference to its name. Reading one parses a header and copies bytes, so a file
from someone else can be wrong but cannot run code.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from rlhfkit.errors import RlhfkitError
from rlhfkit.files import OLD_CHECKPOINT, atomic_file

CHECKPOINT = "checkpoint.safetensors"
FORMAT = "rlhfkit-checkpoint-1"
_TENSOR = "__tensor__"  # {"__tensor__": name} in the JSON stands for a stored tensor
_TUPLE = "__tuple__"  # {"__tuple__": [...]}: JSON has lists only, and some states need tuples


def _to_json(value: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    """`value` as JSON, its tensors moved into `tensors` under names built from their path."""
    if isinstance(value, torch.Tensor):
        tensors[name] = value.detach().cpu().contiguous()
        return {_TENSOR: name}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"a checkpoint's keys must be strings ({name})")
        return {k: _to_json(v, f"{name}/{k}", tensors) for k, v in value.items()}
    if isinstance(value, tuple):
        return {_TUPLE: [_to_json(v, f"{name}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_to_json(v, f"{name}/{i}", tensors) for i, v in enumerate(value)]
    return value


def _from_json(value: Any, tensor) -> Any:
    if isinstance(value, dict):
        if set(value) == {_TENSOR}:
            return tensor(value[_TENSOR])
        if set(value) == {_TUPLE}:
            return tuple(_from_json(v, tensor) for v in value[_TUPLE])
        return {k: _from_json(v, tensor) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v, tensor) for v in value]
    return value


def write_state(path: Path, state: dict) -> None:
    """Write a nested dict of tensors and JSON values atomically: a kill mid-write leaves
    the previous file intact."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _to_json(state, "", tensors)
    with atomic_file(path) as tmp:
        save_file(tensors, tmp, metadata={"format": FORMAT, "state": json.dumps(tree)})


def read_state(path: Path) -> dict:
    """The dict `write_state` wrote; anything else is a one-line error naming the file."""
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ValueError("no rlhfkit checkpoint header")
            return _from_json(json.loads(metadata["state"]), f.get_tensor)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise RlhfkitError(
            f"{path}: not a checkpoint of this rlhfkit ({str(e).splitlines()[0]}): start a new "
            "run directory"
        ) from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file of tensors (a value head); anything else is a one-line error."""
    try:
        with safe_open(path, framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError) as e:
        raise RlhfkitError(f"{path}: not a safetensors file ({str(e).splitlines()[0]})") from None


def refuse_old_checkpoint(out: Path) -> None:
    """A run directory with a pickled checkpoint was made by an older rlhfkit; unpickling it
    could run any code, so it is not loaded."""
    if (out / OLD_CHECKPOINT).exists():
        raise RlhfkitError(
            f"{out / OLD_CHECKPOINT} was written by an older rlhfkit in a format that is no "
            "longer loaded (pickle can run code): start a new run directory"
        )


def rng_state(generator: torch.Generator) -> dict:
    """This process's random states: sampling (on the CPU, and on its GPU if it uses one),
    minibatch order, Python and NumPy (their arrays as lists, for JSON)."""
    numpy = np.random.get_state(legacy=False)
    numpy["state"]["key"] = numpy["state"]["key"].tolist()
    state = {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "python": random.getstate(),
        "numpy": numpy,
    }
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])
    generator.set_state(state["generator"])
    random.setstate(state["python"])
    numpy = state["numpy"]
    key = np.array(numpy["state"]["key"], dtype=np.uint32)
    np.random.set_state({**numpy, "state": {**numpy["state"], "key": key}})
