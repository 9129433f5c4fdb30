"""Load on the labeling app: N labelers ranking at once against `rlhfkit serve` in a process
of its own, on SQLite and (when a server is reachable) PostgreSQL, each alone and with a
bulk `rlhfkit feedback import` writing to the same store at the same time.

    .venv/bin/python bench/labeling_load.py [--labelers 20] [--seconds 30] [--think 1.0]
                                           [--postgres URL]

Prints, for each store and mode: rankings stored per second, the p50/p95 latency of a
submission (POST, committed before it answers) and of fetching the next item (GET), errors,
and a check that every acknowledged ranking is stored exactly once and no prompt went past
its overlap. Two paces: each labeler reading an item for `--think` seconds before ranking it
(people take far longer; this is the latency a labeler feels), and as fast as the server
answers (no think time: the most the machine sustains, and a queue of 20 waiting requests).
The load generator shares the machine's cores with the server.
`--postgres` (or RLHFKIT_TEST_POSTGRES) names a server on which a database may be created.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from sqlalchemy import select, text

from rlhfkit.feedback.scratch import scratch_database
from rlhfkit.feedback.store import Labeler, Member, Project, Ranking, Store, ensure_project
from rlhfkit.web import accounts
from rlhfkit.web.admin import add_prompts

PASSWORD = "load test password"
OVERLAP = 3
BIN = Path(sys.executable).parent


def csrf(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]*)"', page).group(1)


def prepare(url: str, labelers: int, prompts: int) -> int:
    store = Store(url)
    with store.session() as session:
        project_id = ensure_project(session, "load", overlap=OVERLAP)
        project = session.get(Project, project_id)
        rows = [
            (f"prompt {i}: how would you answer?", [f"answer {i}.{j}" for j in range(4)], None)
            for i in range(prompts)
        ]
        add_prompts(session, project, rows)
        for i in range(labelers):
            user = accounts.add_user(session, f"labeler{i:02d}", "labeler", PASSWORD)
            session.add(Member(project_id=project_id, labeler_id=user.labeler_id))
    if store.engine.dialect.name == "postgresql":
        # Statistics as autovacuum leaves them a minute after the prompts came in: without
        # them the planner takes the fresh tables for empty and plans some lookups badly.
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(text("ANALYZE"))
    store.close()
    return project_id


def import_file(folder: Path, rankings: int) -> Path:
    """A bulk file of rankings by AI labelers, for the import that runs beside the labelers."""
    rng = random.Random(0)
    path = folder / "bulk.jsonl"
    with path.open("w") as f:
        for i in range(rankings):
            completions = [f"bulk {i // 4} completion {j}" for j in range(4)]
            record = {
                "prompt": f"bulk prompt {i // 4}",
                "completions": completions,
                "ranks": rng.sample([1, 2, 3, 4], 4),
                "labeler": f"ai-{i % 4}",
                "labeler_kind": "ai",
            }
            f.write(json.dumps(record) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(url: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen(
        [BIN / "rlhfkit", "serve", "--store", url, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(f"{base}/login", timeout=1)
            return server, base
        except httpx.HTTPError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError(f"rlhfkit serve did not start: {server.stderr.read().decode()}")


class Labeling:
    """One labeler's loop: fetch the next item, rank it, until the deadline."""

    def __init__(self, base: str, name: str, project_id: int, deadline: float, think: float):
        self.base, self.name, self.project_id, self.deadline = base, name, project_id, deadline
        self.think = think
        self.posts: list[float] = []
        self.gets: list[float] = []
        self.acknowledged: list[int] = []
        self.errors: list[str] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=60) as client:
            page = client.get("/login").text
            client.post(
                "/login",
                data={"name": self.name, "password": PASSWORD, "csrf_token": csrf(page)},
            )
            page = client.get(f"/p/{self.project_id}/instructions").text
            client.post(f"/p/{self.project_id}/instructions", data={"csrf_token": csrf(page)})
            while time.monotonic() < self.deadline:
                started = time.perf_counter()
                answer = client.get(f"/p/{self.project_id}/label")
                self.gets.append(time.perf_counter() - started)
                found = re.search(r'action="/p/\d+/label/(\d+)"', answer.text)
                if answer.status_code != 200 or not found:
                    self.errors.append(f"GET {answer.status_code}")
                    return
                prompt_id = int(found.group(1))
                ids = re.findall(r'name="rank_(\d+)"', answer.text)
                data = {"csrf_token": csrf(answer.text)}
                data.update({f"rank_{c}": str(i + 1) for i, c in enumerate(ids)})
                time.sleep(self.think * random.uniform(0.5, 1.5))  # reading the item
                started = time.perf_counter()
                posted = client.post(f"/p/{self.project_id}/label/{prompt_id}", data=data)
                self.posts.append(time.perf_counter() - started)
                if posted.status_code == 303:
                    self.acknowledged.append(prompt_id)
                else:
                    self.errors.append(f"POST {posted.status_code}")


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 1 else float("nan")


def measure(url: str, label: str, args, bulk: Path | None, think: float) -> None:
    project_id = prepare(url, args.labelers, args.prompts)
    server, base = serve(url)
    importer = None
    try:
        if bulk is not None:
            importer = subprocess.Popen(
                [BIN / "rlhfkit", "feedback", "import", bulk, "--project", "bulk", "--store", url],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        deadline = time.monotonic() + args.seconds
        runs = [
            Labeling(base, f"labeler{i:02d}", project_id, deadline, think)
            for i in range(args.labelers)
        ]
        threads = [threading.Thread(target=r.run) for r in runs]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        imported = ""
        if importer is not None:
            code = importer.wait()
            imported = f"; the import {'finished' if code == 0 else 'FAILED'}"
    finally:
        server.terminate()
        server.wait(30)
    store = Store(url)
    with store.session(read_only=True) as session:
        stored = session.execute(
            select(Labeler.name, Ranking.prompt_id)
            .join(Labeler, Ranking.labeler_id == Labeler.id)
            .where(Labeler.name.like("labeler%"))
        ).all()
    store.close()
    acknowledged = sorted((r.name, p) for r in runs for p in r.acknowledged)
    per_prompt = Counter(p for _, p in stored)
    posts = [t for r in runs for t in r.posts]
    gets = [t for r in runs for t in r.gets]
    errors = [e for r in runs for e in r.errors]
    exact = sorted(stored) == acknowledged
    print(
        f"{label:<40} {len(acknowledged) / elapsed:7.1f} rankings/s   "
        f"POST p50 {percentile(posts, 50):6.1f} ms  p95 {percentile(posts, 95):6.1f} ms   "
        f"GET p50 {percentile(gets, 50):6.1f} ms  p95 {percentile(gets, 95):6.1f} ms   "
        f"errors {len(errors)}   stored exactly once: {'yes' if exact else 'NO'}   "
        f"past overlap: {sum(n > OVERLAP for n in per_prompt.values())}{imported}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labelers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--think", type=float, default=1.0)
    parser.add_argument("--prompts", type=int, default=5000)
    parser.add_argument("--import-rankings", type=int, default=40000)
    parser.add_argument("--postgres", default=os.environ.get("RLHFKIT_TEST_POSTGRES"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        bulk = import_file(Path(folder), args.import_rankings)
        print(
            f"{args.labelers} labelers ranking 4 completions, "
            f"{args.seconds:g} s each run; the import: {args.import_rankings} rankings"
        )
        for think in dict.fromkeys((args.think, 0.0)):  # --think 0: that pace alone
            for with_import in (False, True):
                pace = f"think {think:g} s" if think else "no think time"
                mode = f"{pace}, {'with import' if with_import else 'alone'}"
                stores = [("SQLite", f"sqlite:///{Path(folder) / f'{think}-{with_import}.db'}")]
                if args.postgres:
                    stores.append(("PostgreSQL", None))
                for kind, url in stores:
                    extra = bulk if with_import else None
                    if url is not None:
                        measure(url, f"{kind}, {mode}", args, extra, think)
                        continue
                    with scratch_database(args.postgres, "rlhfkit_bench") as url:
                        measure(url, f"{kind}, {mode}", args, extra, think)


if __name__ == "__main__":
    main()
