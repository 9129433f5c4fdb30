"""Figures as PNG bytes, so that a PNG file is written atomically (files.atomic_write) and a
page can embed the same bytes without reading the file back."""

from __future__ import annotations

import base64
import io


def pyplot():
    """matplotlib's pyplot on the Agg backend: files only, no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig, dpi: int) -> bytes:
    """The figure as a PNG; the figure is closed."""
    try:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi)
        return buffer.getvalue()
    finally:
        pyplot().close(fig)


def plot_curves_by_seed(records: dict[str, list[dict]], curves: list[tuple[str, str]]) -> bytes:
    """Training curves side by side, one panel per (metrics key, title) of `curves`, one
    line per run of `records` (a label → its metrics lines), as a PNG."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(3.4 * len(curves), 2.8), squeeze=False)
    for ax, (key, title) in zip(axes[0], curves, strict=True):
        for label, lines in records.items():
            logged = [r for r in lines if r.get(key) is not None]
            ax.plot([r["step"] for r in logged], [r[key] for r in logged], marker=".", label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("PPO step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return png_bytes(fig, dpi=110)


def page_image(png: bytes, alt: str) -> dict:
    """A PNG as a page's templates embed it: {"alt", "base64"} (report.html.j2, seeds.html.j2)."""
    return {"alt": alt, "base64": base64.b64encode(png).decode("ascii")}
