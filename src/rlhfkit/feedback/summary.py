"""Agreement figures for a project in the store, as a JSON-ready dict, and the heatmap."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rlhfkit.feedback.agreement import (
    Rankings,
    krippendorff_alpha_ordinal,
    labeler_agreement,
    pairwise_matrix,
)
from rlhfkit.feedback.pairs import load_rankings
from rlhfkit.feedback.store import Store, get_project
from rlhfkit.files import atomic_write
from rlhfkit.plots import png_bytes, pyplot


def _clean(x: float) -> float | None:
    return None if math.isnan(x) else x


def agreement_summary(
    store: Store,
    project_name: str,
    method: str = "borda",
    min_tau: float = 0.2,
    heatmap: Path | None = None,
) -> dict[str, Any]:
    with store.session(read_only=True) as session:
        rankings = load_rankings(session, get_project(session, project_name))
    summary = {"project": project_name, **labelers_summary(rankings, method, min_tau)}
    if heatmap:
        save_heatmap(rankings, heatmap)
        summary["heatmap"] = str(heatmap)
    return summary


def labelers_summary(rankings: Rankings, method: str, min_tau: float) -> dict[str, Any]:
    """Agreement over all labelers (α, pairwise rate), each labeler's against the others'
    consensus, and each pair of labelers' rate."""
    matrix = pairwise_matrix(rankings)
    agree = sum(a for a, _ in matrix.values())
    comparisons = sum(t for _, t in matrix.values())
    return {
        "prompts": len(rankings),
        "krippendorff_alpha": _clean(krippendorff_alpha_ordinal(rankings)),
        "pairwise_agreement": agree / comparisons if comparisons else None,
        "comparisons": comparisons,
        "method": method,
        "min_tau": min_tau,
        "labelers": [a.as_dict() for a in labeler_agreement(rankings, method, min_tau)],
        "pairs_of_labelers": [
            {"a": a, "b": b, "agreements": n, "comparisons": t, "rate": n / t if t else None}
            for (a, b), (n, t) in sorted(matrix.items())
        ],
    }


def save_heatmap(rankings: Rankings, path: Path) -> None:
    """Labeler × labeler pairwise agreement rate; blank where two never ranked the same prompt.
    Written atomically: the report reads it."""
    import numpy as np

    plt = pyplot()

    matrix = pairwise_matrix(rankings)
    names = sorted({name for by_labeler in rankings.values() for name in by_labeler})
    index = {name: i for i, name in enumerate(names)}
    rates = np.full((len(names), len(names)), np.nan)
    counts = np.zeros((len(names), len(names)), dtype=int)
    for (a, b), (agree, total) in matrix.items():
        if total:
            for i, j in ((index[a], index[b]), (index[b], index[a])):
                rates[i, j], counts[i, j] = agree / total, total
    size = max(4.0, 0.6 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    if not names:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no rankings yet", ha="center", va="center")
        atomic_write(path, png_bytes(fig, dpi=120))
        return
    image = ax.imshow(rates, vmin=0, vmax=1, cmap="RdYlGn")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    if len(names) <= 20:
        for i in range(len(names)):
            for j in range(len(names)):
                if counts[i, j]:
                    ax.text(
                        j,
                        i,
                        f"{rates[i, j]:.2f}\nn={counts[i, j]}",
                        ha="center",
                        va="center",
                        fontsize=8,
                    )
    fig.colorbar(image, ax=ax, label="pairwise agreement rate")
    ax.set_title("Labeler agreement (share of item pairs ordered alike)")
    fig.tight_layout()
    atomic_write(path, png_bytes(fig, dpi=120))
