"""KL coefficient controllers: a fixed β, or one adapted towards a target KL."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FixedKL:
    beta: float

    def update(self, kl: float, steps: int) -> float:
        return self.beta

    def state_dict(self) -> dict:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        self.beta = state["beta"]


@dataclass
class AdaptiveKL:
    """Proportional control of β (Ziegler et al. 2019): e = clip(KL/target − 1, ±0.2),
    β ← β·(1 + e·steps/horizon). KL above target raises β, below target lowers it."""

    beta: float
    target: float
    horizon: int

    def update(self, kl: float, steps: int) -> float:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * steps / self.horizon
        return self.beta

    def state_dict(self) -> dict:
        return {"beta": self.beta, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.beta, self.target, self.horizon = state["beta"], state["target"], state["horizon"]
