"""Numbers as text, for every table rlhfkit prints or draws: one rule for a missing number."""

from __future__ import annotations

import math

DASH = "–"  # what a table shows where it has no number


def dash(x: float | None, spec: str = "") -> str:
    """`x` in the format `spec` (".3f", "+.0%"), or DASH where there is no number: None (as
    JSON writes NaN), NaN or an infinity."""
    if x is None or not math.isfinite(x):
        return DASH
    return format(x, spec)
