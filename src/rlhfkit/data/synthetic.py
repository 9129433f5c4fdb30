"""A learnable preference built from packaged data, for tests, benchmarks and demos.

Relevance in the chatterbot corpus: for each conversation's opening line, its own reply is
preferred over a reply from another conversation on the same topic, which is preferred over
replies on other topics. Sentence encoders learn most of it, but not all: some same-topic
replies answer the line as well as its own.
"""

from __future__ import annotations

import random
from itertools import combinations

import yaml

from rlhfkit.data.records import Pair
from rlhfkit.packages import package_dir


def _conversations() -> dict[str, list[tuple[str, str]]]:
    folder = package_dir("chatterbot_corpus") / "data" / "english"
    topics = {}
    for path in sorted(folder.glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        turns = [
            (c[0].strip(), c[1].strip())
            for c in data.get("conversations") or []
            if len(c) >= 2 and isinstance(c[0], str) and isinstance(c[1], str)
        ]
        if turns:
            topics[path.stem] = turns
    return topics


def relevance_pairs(k: int = 4, seed: int = 0) -> list[Pair]:
    """For each distinct opening line, k candidate replies ranked own (1) ≻ same topic (2, when
    k ≥ 4) ≻ other topics (3, tied), and their pairs; C(k,2) minus the ties per prompt."""
    rng = random.Random(seed)
    topics = _conversations()
    pairs: list[Pair] = []
    seen: set[str] = set()
    for topic, turns in topics.items():
        for line, reply in turns:
            if line in seen:
                continue
            seen.add(line)
            ranked = [(reply, 1)]
            same = [r for q, r in turns if q != line and r != reply]
            if k >= 4 and same:
                ranked.append((rng.choice(same), 2))
            others = rng.sample([t for t in topics if t != topic], k - len(ranked))
            ranked += [(rng.choice(topics[t])[1], 3) for t in others]
            texts = [text for text, _ in ranked]
            if len(set(texts)) < len(texts):
                continue  # a reply drawn twice: skip the prompt rather than rank a text twice
            for (a, ra), (b, rb) in combinations(ranked, 2):
                if ra != rb:
                    pairs.append(Pair(line, a, b) if ra < rb else Pair(line, b, a))
    return pairs
