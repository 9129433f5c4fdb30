"""How well a reward model orders held-out pairs: accuracy, margin, calibration."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rlhfkit.reward.data import PromptPairs
from rlhfkit.reward.losses import pairwise_loss


@dataclass
class PairScores:
    chosen: torch.Tensor
    rejected: torch.Tensor
    group: torch.Tensor  # prompt index of each pair


def flatten(
    groups: list[PromptPairs],
) -> tuple[list[str], list[str], list[int], list[int], list[int]]:
    """Texts to score once each, and for every pair the positions of its two texts."""
    prompts, completions, chosen, rejected, group = [], [], [], [], []
    for g, item in enumerate(groups):
        offset = len(completions)
        prompts += [item.prompt] * len(item.completions)
        completions += item.completions
        for c, r in item.pairs:
            chosen.append(offset + c)
            rejected.append(offset + r)
            group.append(g)
    return prompts, completions, chosen, rejected, group


def score_pairs(reward, groups: list[PromptPairs], batch_size: int = 64) -> PairScores:
    prompts, completions, chosen, rejected, group = flatten(groups)
    scores = (
        reward(prompts, completions)
        if not hasattr(reward, "score")
        else reward.score(prompts, completions, batch_size=batch_size, normalise=False)
    )
    return PairScores(scores[chosen], scores[rejected], torch.tensor(group))


def expected_calibration_error(margins: np.ndarray, bins: int = 10) -> float:
    """ECE of P(chosen ≻ rejected) = σ(margin): pairs binned by confidence max(p, 1 − p) in
    [0.5, 1]; Σ_b (n_b / N)·|accuracy_b − mean confidence_b|. A pair counts as correct when
    the model prefers the chosen completion."""
    p = 1.0 / (1.0 + np.exp(-margins))
    confidence = np.maximum(p, 1 - p)
    correct = (margins > 0).astype(float)
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def pair_metrics(scores: PairScores) -> dict[str, float]:
    margins = (scores.chosen - scores.rejected).double()
    return {
        "pairs": len(margins),
        "accuracy": float((margins > 0).double().mean()) if len(margins) else float("nan"),
        "loss": float(pairwise_loss(scores.chosen, scores.rejected, scores.group)),
        "mean_margin": float(margins.mean()),
        "ece": expected_calibration_error(margins.numpy()),
        "nll": float(-F.logsigmoid(margins).mean()),
    }


def evaluate_reward(spec: str, pairs_path, store=None, project: str | None = None) -> dict:
    """Metrics of a reward (any spec) on a pairs file; with a store and project, also its
    accuracy against each labeler's own pairs."""
    from rlhfkit.reward.data import group_pairs, read_pairs
    from rlhfkit.reward.specs import load_reward

    reward = load_reward(spec)
    report = {
        "reward": spec,
        "pairs_file": str(pairs_path),
        "overall": pair_metrics(score_pairs(reward, group_pairs(read_pairs(pairs_path)))),
    }
    if store is not None and project:
        from rlhfkit.data.records import Pair
        from rlhfkit.feedback.pairs import build_pairs
        from rlhfkit.feedback.store import get_project

        with store.session(read_only=True) as session:
            own = build_pairs(
                session, get_project(session, project), per_labeler=True, min_tau=None
            ).pairs
        report["labelers"] = []
        for name in sorted({p["labeler"] for p in own}):
            mine = [
                Pair(p["prompt"], p["chosen"], p["rejected"]) for p in own if p["labeler"] == name
            ]
            metrics = pair_metrics(score_pairs(reward, group_pairs(mine)))
            report["labelers"].append(
                {"labeler": name, "pairs": metrics["pairs"], "accuracy": metrics["accuracy"]}
            )
    return report
