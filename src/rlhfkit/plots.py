"""Figures as PNG bytes, so that a PNG file is written atomically (files.atomic_write) and a
page can embed the same bytes without reading the file back."""

from __future__ import annotations

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
