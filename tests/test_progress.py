"""One progress convention: plain lines at a steady interval off a terminal, and the layers
of the package importing one way (cli → pipeline → stages → the domain)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import rlhfkit
from conftest import seed_rankings, write_jsonl

RLHFKIT = os.path.join(os.path.dirname(sys.executable), "rlhfkit")
PACKAGE = Path(rlhfkit.__file__).parent


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def plain(interval: float):
    from rlhfkit.progress import PlainProgress

    clock, lines = Clock(), []
    return PlainProgress(lines.append, interval, clock), clock, lines


def test_plain_lines_come_every_interval_and_when_a_long_task_ends():
    progress, clock, lines = plain(interval=30)
    progress.start("PPO", 100)
    for step in range(1, 101):  # a step every 1.5 s
        clock.now = 1.5 * step
        progress.advance(1, f"PPO: step {step}")
    assert lines == [
        "PPO: step 20: 20/100 (20%), 30s",
        "PPO: step 40: 40/100 (40%), 1m00s",
        "PPO: step 60: 60/100 (60%), 1m30s",
        "PPO: step 80: 80/100 (80%), 2m00s",
        "PPO: step 100: 100/100 (100%), 2m30s",
    ]
    clock.now = 151.0
    progress.done("   10 steps (steps) (151 s)")
    assert lines[5:] == [
        "PPO: step 100: done, 100/100 (100%), 2m31s",
        "   10 steps (steps) (151 s)",
    ]


def test_a_short_task_prints_nothing_but_notes_warnings_and_summaries():
    progress, clock, lines = plain(interval=30)
    progress.note("== label")
    progress.start("labeler ai-1", 3)
    for _ in range(3):
        clock.now += 9.0  # 27 s in all: under the interval
        progress.advance()
    progress.start("labeler ai-2", None)  # a new task ends the one before, silently
    clock.now += 31.0
    progress.advance(5)  # an unknown total: the count alone
    progress.warn("a labeler ranked nothing")
    progress.done("   ai-1: 3 rankings (58 s)")
    assert lines == [
        "== label",
        "labeler ai-2: 5, 31s",
        "warning: a labeler ranked nothing",
        "labeler ai-2: done, 5, 31s",
        "   ai-1: 3 rankings (58 s)",
    ]


def test_a_resumed_task_counts_from_where_it_was():
    progress, clock, lines = plain(interval=0)
    progress.start("PPO (resumed)", 10, completed=6)
    progress.advance()
    assert lines == ["PPO (resumed): 7/10 (70%), 0s"]


def test_the_command_prints_progress_lines_when_its_output_is_piped(tmp_path):
    """The installed command with stdout and stderr piped (a log, CI): plain progress lines
    on stderr, no bar, and the result line last."""
    path = write_jsonl(tmp_path / "seed.jsonl", seed_rankings())
    done = subprocess.run(
        [RLHFKIT, "feedback", "import", path, "--store", f"sqlite:///{tmp_path / 's.db'}"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RLHFKIT_PROGRESS_SECONDS": "0"},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    size = path.stat().st_size
    assert f"reading seed.jsonl: {size}/{size} (100%), 0s" in lines
    assert any(line.startswith("writing: done, ") for line in lines), lines
    assert lines[-1].startswith(f"imported {path} into 'default': ")
    assert "\x1b" not in done.stderr and "━" not in done.stderr  # no terminal codes, no bar


def test_a_progress_interval_that_is_not_a_number_is_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("RLHFKIT_PROGRESS_SECONDS", "soon")
    path = write_jsonl(tmp_path / "seed.jsonl", seed_rankings())
    result = cli("feedback", "import", path, "--store", f"sqlite:///{tmp_path / 's.db'}", ok=False)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "RLHFKIT_PROGRESS_SECONDS" in result.stderr


def imports(path: Path) -> set[str]:
    """The modules a source file imports, anywhere in it (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_cli_holds_no_sql():
    """The CLI calls the domain's API: no queries, sessions or store internals of its own."""
    source = (PACKAGE / "cli.py").read_text()
    assert not any(name.startswith("sqlalchemy") for name in imports(PACKAGE / "cli.py"))
    assert ".session(" not in source and "select(" not in source
    from_store = {
        alias.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom) and node.module == "rlhfkit.feedback.store"
        for alias in node.names
    }
    assert from_store <= {"Store", "create_project", "project_summaries"}, from_store
