"""Statistics of texts themselves, with no model: the evaluation reports them, and critique
and revision use them to catch an answer that loops."""

from __future__ import annotations

from collections.abc import Sequence


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n: unique word n-grams over all n-grams of all the texts (words split on
    whitespace, lower-cased); 0 when there are none."""
    grams = [
        tuple(words[i : i + n])
        for words in (t.lower().split() for t in texts)
        for i in range(len(words) - n + 1)
    ]
    return len(set(grams)) / len(grams) if grams else 0.0
