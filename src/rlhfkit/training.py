"""What every trainer shares: metrics (one JSON record per step in metrics.jsonl, mirrored
to TensorBoard) and the optimiser."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch


class MetricsLog:
    def __init__(self, out: Path):
        self.file = (Path(out) / "metrics.jsonl").open("a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(out) / "tensorboard"))
        except ImportError:  # tensorboard is optional at run time
            self.tb = None

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb:
            self.tb.close()


def adamw(params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdamW, fused where this torch build can (on CPU it takes the step from ~170 ms to
    ~10 ms for MiniLM's 23M parameters)."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
