"""Consensus of several labelers' rankings of one prompt's completions.

A ranking maps an item to its rank (1 = best, equal ranks are ties, items may be missing).
Both methods return a ranking of the same shape over every item any labeler ranked.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

Ranking = dict[Hashable, int]


def ranks_from_scores(scores: dict[Hashable, float]) -> Ranking:
    """Competition ranks, highest score first: scores 3, 2, 2, 1 give ranks 1, 2, 2, 4."""
    return {item: 1 + sum(other > s for other in scores.values()) for item, s in scores.items()}


def _items(rankings: Sequence[Ranking]) -> list[Hashable]:
    seen: dict[Hashable, None] = {}
    for ranking in rankings:
        seen.update(dict.fromkeys(ranking))
    return list(seen)


def borda(rankings: Sequence[Ranking]) -> Ranking:
    """Borda count: an item scores 1 for each item it beats and ½ for each it ties, per ranking."""
    scores = dict.fromkeys(_items(rankings), 0.0)
    for ranking in rankings:
        for item, rank in ranking.items():
            beaten = sum(other > rank for other in ranking.values())
            tied = sum(other == rank for other in ranking.values()) - 1
            scores[item] += beaten + 0.5 * tied
    return ranks_from_scores(scores)


def wins(rankings: Sequence[Ranking], a: Hashable, b: Hashable) -> int:
    """How many rankings put a strictly before b."""
    return sum(a in r and b in r and r[a] < r[b] for r in rankings)


def tideman(rankings: Sequence[Ranking]) -> Ranking:
    """Tideman's ranked pairs: lock majorities, strongest first, skipping any that would close
    a cycle; an item's rank is one more than the longest locked chain above it."""
    items = _items(rankings)
    majorities = []
    for i, a in enumerate(items):
        for b in items[i + 1 :]:
            ab, ba = wins(rankings, a, b), wins(rankings, b, a)
            if ab != ba:
                winner, loser = (a, b) if ab > ba else (b, a)
                majorities.append((abs(ab - ba), max(ab, ba), winner, loser))
    # Strongest margin first, then the larger majority; Python's stable sort keeps item order.
    majorities.sort(key=lambda m: (-m[0], -m[1]))
    beats: dict[Hashable, set[Hashable]] = {item: set() for item in items}

    def reaches(src: Hashable, dst: Hashable) -> bool:
        stack, seen = [src], set()
        while stack:
            node = stack.pop()
            if node == dst:
                return True
            if node not in seen:
                seen.add(node)
                stack.extend(beats[node])
        return False

    for _, _, winner, loser in majorities:
        if not reaches(loser, winner):
            beats[winner].add(loser)
    depth: dict[Hashable, int] = {}

    def rank(item: Hashable) -> int:
        if item not in depth:
            above = [w for w in items if item in beats[w]]
            depth[item] = 1 + max((rank(w) for w in above), default=0)
        return depth[item]

    return {item: rank(item) for item in items}


METHODS = {"borda": borda, "tideman": tideman}
