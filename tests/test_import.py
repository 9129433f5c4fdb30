"""Importing into a store many writers share: concurrency, bulk writes, labelers that must be
named, degenerate records, and stores or files that are not what they seem."""

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine, event, func, select, text

from conftest import SEED_COMPLETIONS, SEED_PROMPT, seed_rankings, write_jsonl
from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.labelers import auto_label
from rlhfkit.feedback.pairs import build_pairs
from rlhfkit.feedback.store import (
    Completion,
    Labeler,
    Preference,
    Prompt,
    Ranking,
    RankingItem,
    Registry,
    Store,
    Thumb,
    get_project,
)
from rlhfkit.feedback.summary import agreement_summary
from rlhfkit.feedback.transfer import export_records, import_file

RLHFKIT = os.path.join(os.path.dirname(sys.executable), "rlhfkit")
TABLES = (Prompt, Completion, Labeler, Ranking, RankingItem, Thumb, Preference)


def row_counts(store):
    with store.session() as session:
        return {
            t.__tablename__: session.scalar(select(func.count()).select_from(t)) for t in TABLES
        }


def rankings(prompts, labeler, tag=""):
    """A ranking of 4 completions for each prompt number, the same for the same arguments."""
    return [
        {
            "prompt": f"Prompt {i}: what do you make of number {i}?",
            "completions": [f"Answer {k} to prompt {i}{tag}" for k in range(4)],
            "ranks": [1 + (i + k) % 4 for k in range(4)],
            "labeler": labeler,
        }
        for i in prompts
    ]


def ranks_of(exported: dict) -> dict[str, int]:
    """An exported ranking as completion -> rank (completions come in the store's order)."""
    return dict(zip(exported["completions"], exported["ranks"], strict=True))


def hh_pairs(n, start=0):
    turn = "\n\nHuman: Tell me about {i}.\n\nAssistant:"
    return [
        {
            "chosen": turn.format(i=i) + f" A kind answer about {i}.",
            "rejected": turn.format(i=i) + f" A rude answer about {i}.",
        }
        for i in range(start, start + n)
    ]


# --- 1. concurrent writers ------------------------------------------------------------------


def test_two_concurrent_imports_of_overlapping_files_both_succeed(store_url, tmp_path):
    """Two `rlhfkit feedback import` processes at once, into one new store, with 1,500 prompts
    (and their completions) in common and rankings of the same labeler on them: each import
    writes for about a second, so the second one's write begins while the first's is open."""
    shared = rankings(range(1500, 3000), "both")
    first = write_jsonl(tmp_path / "a.jsonl", rankings(range(3000), "a") + shared)
    second = write_jsonl(tmp_path / "b.jsonl", rankings(range(1500, 4500), "b") + shared[::-1])
    runs = [
        subprocess.Popen(
            [RLHFKIT, "feedback", "import", path, "--project", "p", "--store", store_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for path in (first, second)
    ]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    assert [code for code, _ in results] == [0, 0], results
    store = Store(store_url)
    assert row_counts(store) == {
        "prompts": 4500,
        "completions": 4500 * 4,
        "labelers": 3,
        "rankings": 3000 + 3000 + 1500,
        "ranking_items": (3000 + 3000 + 1500) * 4,
        "thumbs": 0,
        "preferences": 0,
    }
    store.close()


def test_sqlite_stores_use_write_ahead_logging_and_wait_for_the_write_lock(sqlite_url):
    store = Store(sqlite_url)
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 30_000
    began = []
    event.listen(store.engine, "before_cursor_execute", lambda *a: began.append(a[2]))
    with store.session() as session:
        session.execute(select(Labeler.id))
    with store.session(read_only=True) as session:
        session.execute(select(Labeler.id))
    assert [s for s in began if s.startswith("BEGIN")] == ["BEGIN IMMEDIATE", "BEGIN"]
    store.close()


# --- 3. bulk writes -------------------------------------------------------------------------


def statements_of(store, action) -> int:
    executed = []

    def count(conn, cursor, statement, parameters, context, executemany):
        executed.append(statement)

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        action()
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
    return len(executed)


def test_the_number_of_statements_does_not_grow_with_the_records(store, tmp_path):
    """Rows are written and looked up in chunks of 1,000: 400 rankings (1,600 completions and
    items) take at most a few statements more than 40; one statement a row would add 360+."""

    def import_(name, records):
        path = write_jsonl(tmp_path / f"{name}.jsonl", records)
        return lambda: import_file(store, name, path)

    few = statements_of(store, import_("few", rankings(range(40), "x")))
    many = statements_of(store, import_("many", rankings(range(1000, 1400), "x")))
    assert many <= few + 4, (few, many)
    again = statements_of(store, import_("many", rankings(range(1000, 1400), "x")))
    assert again <= few, (few, again)  # only look-ups: nothing to write, no write transaction
    small = write_jsonl(tmp_path / "hh-small.jsonl", hh_pairs(40))
    large = write_jsonl(tmp_path / "hh-large.jsonl", hh_pairs(400, start=1000))
    few_hh = statements_of(store, lambda: import_file(store, "hh1", small, "people"))
    many_hh = statements_of(store, lambda: import_file(store, "hh2", large, "people"))
    assert many_hh <= few_hh + 2, (few_hh, many_hh)
    assert row_counts(store)["preferences"] == 440


def test_a_prompt_keeps_the_first_id_given_it(store, tmp_path):
    """Within a file as across imports: the first id a prompt is given stays."""
    named = [{"prompt": "p", "id": "first"}, {"prompt": "p", "id": "second"}]
    import_file(store, "p", write_jsonl(tmp_path / "a.jsonl", named + rankings([1], "x")))
    import_file(store, "p", write_jsonl(tmp_path / "b.jsonl", [{"prompt": "p", "id": "third"}]))
    ids = {r["prompt"]: r["id"] for r in export_records(store, "p", "completions")}
    assert ids["p"] == "first"


class LengthReward:
    """Longer completions are better: an automatic labeler's reward without a model."""

    name = "length"

    def __call__(self, prompts, completions):
        return torch.tensor([float(len(c)) for c in completions])


def test_auto_label_writes_in_bulk_and_counts_as_before(store, tmp_path):
    """The statements of labeling 400 prompts are those of labeling 40, give or take a few:
    the rankings are made first, then written in chunks, not one prompt at a time."""
    for name, prompts in (("few", range(40)), ("many", range(1000, 1400))):
        import_file(store, name, write_jsonl(tmp_path / f"{name}.jsonl", rankings(prompts, "x")))
    label = {
        name: (lambda n=name: auto_label(store, n, LengthReward(), "ai"))
        for name in ("few", "many")
    }
    few = statements_of(store, label["few"])
    many = statements_of(store, label["many"])
    assert many <= few + 6, (few, many)
    assert auto_label(store, "many", LengthReward(), "ai") == {"rankings unchanged": 400}
    noisy = auto_label(store, "few", LengthReward(), "ai", noise=1.0, seed=3)
    assert set(noisy) <= {"rankings updated", "rankings unchanged"}
    assert noisy["rankings updated"] > 0 and sum(noisy.values()) == 40
    exported = [r for r in export_records(store, "few", "rankings") if r["labeler"] == "ai"]
    assert len(exported) == 40 and {r["labeler_kind"] for r in exported} == {"ai"}


def test_reimport_changes_nothing_and_a_new_ranking_or_label_replaces_the_old(store, tmp_path):
    thumbs = [
        {
            "prompt": "Prompt 1: what do you make of number 1?",
            "completion": "Answer 0 to prompt 1",
            "label": "up",
            "labeler": "t",
        },
    ]
    records = rankings(range(300), "x") + thumbs + hh_pairs(300)
    path = write_jsonl(tmp_path / "all.jsonl", records)
    first = import_file(store, "p", path, "hh")
    assert first == {
        "prompts created": 600,
        "completions created": 300 * 4 + 300 * 2,
        "labelers created": 3,
        "rankings created": 300,
        "thumbs created": 1,
        "pairs created": 300,
    }
    before = row_counts(store)
    assert import_file(store, "p", path, "hh") == {
        "rankings unchanged": 300,
        "thumbs unchanged": 1,
        "pairs unchanged": 300,
    }
    assert row_counts(store) == before
    revised = rankings(range(5), "x")
    for record in revised[:2]:
        record["ranks"] = [4, 3, 2, 1]
    thumbs[0]["label"] = "down"
    counts = import_file(store, "p", write_jsonl(tmp_path / "new.jsonl", revised + thumbs))
    assert counts == {"rankings updated": 2, "rankings unchanged": 3, "thumbs updated": 1}
    assert row_counts(store) == before
    exported = {r["prompt"]: ranks_of(r) for r in export_records(store, "p", "rankings")}
    assert [exported[r["prompt"]] for r in revised[:3]] == [
        dict(zip(r["completions"], ranks, strict=True))
        for r, ranks in zip(revised, [[4, 3, 2, 1], [4, 3, 2, 1], [3, 4, 1, 2]], strict=False)
    ]
    assert len(exported) == 300
    assert [t["label"] for t in export_records(store, "p", "thumbs")] == ["down"]


# --- 2. every record names its labeler ------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        {"prompt": "p", "completions": ["a", "b"], "ranks": [1, 2]},
        {"prompt": "p", "completion": "a", "label": "up"},
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        hh_pairs(1)[0],
    ],
    ids=["ranking", "thumbs", "pair", "hh-rlhf"],
)
def test_a_record_without_a_labeler_is_an_error_unless_one_is_given(store, tmp_path, record):
    path = write_jsonl(tmp_path / "rankings.jsonl", [{**record, "labeler": "ann"}, record])
    with pytest.raises(RlhfkitError, match=r"rankings\.jsonl:2: 'labeler' is missing"):
        import_file(store, "p", path)
    assert set(row_counts(store).values()) == {0}
    import_file(store, "p", path, labeler="bob")
    with store.session() as session:
        assert set(session.scalars(select(Labeler.name))) == {"ann", "bob"}


def test_two_files_of_the_same_name_never_share_a_labeler(store, tmp_path):
    """Named after its file, the second `rankings.jsonl` replaced the first one's rankings."""
    for folder, ranks in (("alice", [1, 2]), ("bob", [2, 1])):
        (tmp_path / folder).mkdir()
        path = write_jsonl(
            tmp_path / folder / "rankings.jsonl",
            [{"prompt": "p", "completions": ["a", "b"], "ranks": ranks}],
        )
        with pytest.raises(RlhfkitError, match=r"rankings\.jsonl:1: 'labeler' is missing"):
            import_file(store, "p", path)
        import_file(store, "p", path, labeler=folder)
    assert {r["labeler"]: ranks_of(r) for r in export_records(store, "p", "rankings")} == {
        "alice": {"a": 1, "b": 2},
        "bob": {"a": 2, "b": 1},
    }


# --- 4. degenerate records, wrong labeler kinds ---------------------------------------------


def test_a_ranking_of_one_completion_is_skipped_and_counted(store, tmp_path):
    single = {"prompt": SEED_PROMPT, "completions": [SEED_COMPLETIONS[0]], "ranks": [1]}
    lonely = {"prompt": "A prompt that got one reply", "completions": ["The reply"], "ranks": [1]}
    records = seed_rankings() + [{**single, "labeler": "H4"}, {**lonely, "labeler": "H1"}]
    counts = import_file(store, "with", write_jsonl(tmp_path / "with.jsonl", records))
    assert counts["rankings of a single completion skipped"] == 2
    assert counts["rankings created"] == 3 and counts["prompts created"] == 1
    import_file(store, "without", write_jsonl(tmp_path / "without.jsonl", seed_rankings()))
    summaries = [agreement_summary(store, p) for p in ("with", "without")]
    for summary in summaries:
        del summary["project"]
    assert summaries[0] == summaries[1]  # no labeler H4, no extra unit or value
    with store.session() as session:
        pairs = [build_pairs(session, get_project(session, p)).pairs for p in ("with", "without")]
    assert [{**p, "prompt_id": None} for p in pairs[0]] == [
        {**p, "prompt_id": None} for p in pairs[1]
    ]
    assert len(pairs[0]) == 3


def test_a_labeler_kind_that_contradicts_the_store_is_an_error(store, tmp_path):
    ai = {"prompt": "p", "completions": ["a", "b"], "ranks": [1, 2], "labeler": "x"}
    import_file(store, "p", write_jsonl(tmp_path / "ai.jsonl", [{**ai, "labeler_kind": "ai"}]))
    human = write_jsonl(
        tmp_path / "human.jsonl", [{**ai, "ranks": [2, 1], "labeler_kind": "human"}]
    )
    with pytest.raises(RlhfkitError, match="labeler 'x' is in the store as ai, not human"):
        import_file(store, "p", human)
    unsaid = write_jsonl(tmp_path / "unsaid.jsonl", [{**ai, "ranks": [2, 1]}])
    assert import_file(store, "p", unsaid) == {"rankings updated": 1}  # kind not given: theirs
    both = write_jsonl(
        tmp_path / "both.jsonl",
        [{**ai, "labeler": "y", "labeler_kind": k} for k in ("human", "ai")],
    )
    with pytest.raises(RlhfkitError, match="labeler 'y' is given as both human and ai"):
        import_file(store, "p", both)
    with store.session() as session:  # the automatic labelers ask for their kind the same way
        registry = Registry(session, get_project(session, "p"))
        with pytest.raises(RlhfkitError, match="labeler 'x' is in the store as ai, not human"):
            registry.labeler("x", "human")
        assert registry.labeler("x").kind == "ai"
    with store.session() as session:
        assert [(lab.name, lab.kind) for lab in session.scalars(select(Labeler))] == [("x", "ai")]


# --- 4. stores that are not ours, or not writable --------------------------------------------


def read_only(store_url: str) -> str:
    if store_url.startswith("sqlite"):
        return f"sqlite:///file:{store_url.removeprefix('sqlite:///')}?mode=ro&uri=true"
    return f"{store_url}?options=-c%20default_transaction_read_only%3Don"


def test_a_store_error_while_writing_is_one_line_without_sql_or_values(store_url, tmp_path):
    Store(store_url).close()  # a store, made writable
    store = Store(read_only(store_url))
    path = write_jsonl(tmp_path / "r.jsonl", rankings(range(3), "secret-labeler"))
    with pytest.raises(RlhfkitError) as error:
        import_file(store, "p", path)
    message = str(error.value)
    assert "\n" not in message and "read" in message and "only" in message
    assert "secret-labeler" not in message and "Answer" not in message
    assert "SELECT" not in message and "VALUES" not in message
    store.close()


def test_a_foreign_database_is_refused_and_left_as_it_was(store_url):
    engine = create_engine(store_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)"))
        connection.execute(text("INSERT INTO customers VALUES (1, 'Ada')"))
    engine.dispose()
    database = Path(store_url.removeprefix("sqlite:///"))
    before = hashlib.sha256(database.read_bytes()).hexdigest() if database.exists() else None
    with pytest.raises(RlhfkitError, match=r"is not an rlhfkit feedback store .*customers") as e:
        Store(store_url)
    assert "\n" not in str(e.value)
    engine = create_engine(store_url)
    with engine.connect() as connection:
        tables = connection.dialect.get_table_names(connection)
    engine.dispose()
    assert tables == ["customers"]
    if before:
        assert hashlib.sha256(database.read_bytes()).hexdigest() == before


def test_a_store_marked_by_an_unknown_migration_is_refused(store_url):
    Store(store_url).close()
    engine = create_engine(store_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    engine.dispose()
    with pytest.raises(RlhfkitError, match="marked with migration '9999_from_the_future'") as e:
        Store(store_url)
    assert "\n" not in str(e.value)


def test_a_url_with_a_port_that_is_not_a_number_is_one_line():
    with pytest.raises(RlhfkitError) as error:
        Store("postgresql+psycopg://me:hunter2@localhost:54x2/db")
    assert str(error.value) == (
        "cannot open store 'postgresql+psycopg://me:***@localhost:54x2/db': "
        "its port is not a number"
    )


def test_a_file_that_is_not_a_database_is_one_line(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("These are my notes, not a database. " * 200)
    with pytest.raises(RlhfkitError, match="file is not a database") as error:
        Store(f"sqlite:///{path}")
    assert "\n" not in str(error.value)
    assert path.read_text() == "These are my notes, not a database. " * 200


# --- the command line: exactly one line on stderr --------------------------------------------


def one_line_error(result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.output


def test_cli_import_without_a_labeler_then_with_one(cli, tmp_path, sqlite_url):
    path = write_jsonl(tmp_path / "hh.jsonl", hh_pairs(3))
    result = cli("feedback", "import", path, "--store", sqlite_url, ok=False)
    one_line_error(result, "hh.jsonl:1: 'labeler' is missing")
    result = cli("feedback", "import", path, "--labeler", "raters", "--store", sqlite_url)
    assert result.stderr.strip().splitlines() == [
        f"imported {path} into 'default': 6 completions created, 1 labelers created, "
        "3 pairs created, 3 prompts created"
    ]


def test_cli_import_says_what_it_skipped(cli, tmp_path, sqlite_url):
    single = {"prompt": "p", "completions": ["only"], "ranks": [1], "labeler": "x"}
    path = write_jsonl(tmp_path / "r.jsonl", [*seed_rankings(), single])
    result = cli("feedback", "import", path, "--store", sqlite_url)
    assert result.stderr.count("\n") == 1
    assert "1 rankings of a single completion skipped" in result.stderr


def test_cli_one_line_errors(cli, tmp_path, sqlite_url):
    seed = write_jsonl(tmp_path / "seed.jsonl", seed_rankings())
    cli("feedback", "import", seed, "--store", sqlite_url)
    folder = tmp_path / "out"
    folder.mkdir()
    result = cli("feedback", "export", "--out", folder, "--store", sqlite_url, ok=False)
    one_line_error(result, f"{folder}: is a folder")
    result = cli(
        "feedback", "import", seed, "--project", "x", "--store", read_only(sqlite_url), ok=False
    )
    one_line_error(result, "attempt to write a readonly database")
    foreign = tmp_path / "app.db"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE orders (id INTEGER)")
    result = cli("project", "list", "--store", f"sqlite:///{foreign}", ok=False)
    one_line_error(result, "is not an rlhfkit feedback store (it holds other tables: orders)")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(json.dumps(seed_rankings()[0]).encode() + b'\n{"prompt": "caf\xe9"}\n')
    result = cli("feedback", "import", bad, "--store", sqlite_url, ok=False)
    one_line_error(result, "bad.jsonl:2: not UTF-8 text")


def test_the_installed_command_prints_one_line_for_a_store_it_cannot_write(tmp_path, sqlite_url):
    """The real console script: stderr exactly as a user sees it."""
    Store(sqlite_url).close()
    path = write_jsonl(tmp_path / "r.jsonl", rankings(range(2), "x"))
    done = subprocess.run(
        [RLHFKIT, "feedback", "import", path, "--store", read_only(sqlite_url)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "attempt to write a readonly database" in done.stderr
