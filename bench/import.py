"""Bulk import speed: synthetic rankings and HH-RLHF pairs into a fresh SQLite store and, when
one is reachable, a fresh PostgreSQL database.

    .venv/bin/python bench/import.py [--rankings 20000] [--pairs 20000] [--postgres URL]

Prints records per second for each file and store: a first import (everything new), then the
same file again (everything unchanged: the idempotent path). The time covers what
`rlhfkit feedback import` does: reading and checking the file, and writing it.
`--postgres` (or RLHFKIT_TEST_POSTGRES) names a server on which a database may be created.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import string
import tempfile
import time
from pathlib import Path

from rlhfkit.feedback.scratch import scratch_database
from rlhfkit.feedback.store import Store
from rlhfkit.feedback.transfer import import_file


def sentence(rng: random.Random, words: int) -> str:
    """Random lower-case words of 2-9 letters: texts of realistic length, all distinct."""
    letters = string.ascii_lowercase
    return " ".join("".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(words)) + "."


def ranking_records(n: int, rng: random.Random) -> list[dict]:
    """n rankings of 4 completions: n/4 prompts, each ranked by 4 labelers."""
    prompts = [f"Question {i}: {sentence(rng, 12)}" for i in range(n // 4)]
    completions = {p: [sentence(rng, 25) for _ in range(4)] for p in prompts}
    return [
        {
            "prompt": prompt,
            "completions": completions[prompt],
            "ranks": rng.sample([1, 2, 3, 4], 4),
            "labeler": f"labeler-{k}",
        }
        for prompt in prompts
        for k in range(4)
    ]


def hh_records(n: int, rng: random.Random) -> list[dict]:
    """n HH-RLHF pairs: a two-turn dialogue, then two different last replies."""
    records = []
    for i in range(n):
        dialogue = (
            f"\n\nHuman: {sentence(rng, 15)} ({i})\n\nAssistant: {sentence(rng, 40)}"
            f"\n\nHuman: {sentence(rng, 15)}\n\nAssistant:"
        )
        records.append(
            {
                "chosen": f"{dialogue} {sentence(rng, 60)}",
                "rejected": f"{dialogue} {sentence(rng, 60)}",
            }
        )
    return records


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def timed_imports(url: str, name: str, files: dict[str, tuple[Path, int]]) -> None:
    store = Store(url)
    for kind, (path, n) in files.items():
        for attempt in ("new", "again"):
            started = time.perf_counter()
            counts = import_file(store, kind, path, labeler="hh-raters")
            seconds = time.perf_counter() - started
            summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
            print(
                f"{name:<10} {kind:<9} {attempt:<5} {n:>7} records in {seconds:6.2f} s = "
                f"{n / seconds:8.0f} records/s  ({summary})"
            )
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rankings", type=int, default=20_000)
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--postgres", default=os.environ.get("RLHFKIT_TEST_POSTGRES"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            "rankings": (
                write(Path(tmp) / "rankings.jsonl", ranking_records(args.rankings, rng)),
                args.rankings,
            ),
            "hh-rlhf": (write(Path(tmp) / "hh.jsonl", hh_records(args.pairs, rng)), args.pairs),
        }
        for kind, (path, n) in files.items():
            print(f"{kind}: {n} records, {path.stat().st_size / 1e6:.1f} MB")
        timed_imports(f"sqlite:///{Path(tmp) / 'bench.db'}", "sqlite", files)
        if args.postgres:
            with scratch_database(args.postgres, "rlhfkit_bench") as url:
                timed_imports(url, "postgresql", files)
        else:
            print("PostgreSQL: not measured (give --postgres URL or set RLHFKIT_TEST_POSTGRES)")


if __name__ == "__main__":
    main()
