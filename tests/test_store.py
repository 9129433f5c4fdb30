"""The feedback store on SQLite and PostgreSQL: schema, idempotent and atomic import, export."""

import sqlite3
from contextlib import contextmanager

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, func, insert, select

from conftest import SEED_COMPLETIONS, SEED_PROMPT, seed_rankings, write_jsonl
from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback import transfer
from rlhfkit.feedback.store import (
    Base,
    Completion,
    Labeler,
    Preference,
    Project,
    Prompt,
    Ranking,
    RankingItem,
    Registry,
    Store,
    Thumb,
    get_project,
    text_key,
)
from rlhfkit.feedback.transfer import export_records, import_file, import_records, read_records

TABLES = (Project, Prompt, Completion, Labeler, Ranking, RankingItem, Thumb, Preference)


def row_counts(store):
    with store.session() as session:
        return {
            t.__tablename__: session.scalar(select(func.count()).select_from(t)) for t in TABLES
        }


def test_migrations_create_exactly_the_models_schema(store):
    with store.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def test_reopening_a_store_keeps_its_data(store_url, tmp_path):
    first = Store(store_url)
    import_file(first, "p", write_jsonl(tmp_path / "r.jsonl", seed_rankings()))
    first.close()
    again = Store(store_url)  # migrations already at head: nothing to do, nothing lost
    assert row_counts(again)["rankings"] == 3
    again.close()


def test_import_is_idempotent(store, tmp_path):
    path = write_jsonl(tmp_path / "seed.jsonl", seed_rankings())
    counts = import_file(store, "hot", path)
    assert counts["rankings created"] == 3 and counts["completions created"] == 3
    before = row_counts(store)
    assert before["ranking_items"] == 9 and before["labelers"] == 3 and before["prompts"] == 1
    again = import_file(store, "hot", path)
    assert again == {"rankings unchanged": 3}
    assert row_counts(store) == before


def test_a_new_ranking_by_the_same_labeler_replaces_the_old(store, tmp_path):
    import_file(store, "hot", write_jsonl(tmp_path / "a.jsonl", seed_rankings()))
    revised = {**seed_rankings()[2], "ranks": [2, 1, 3]}
    assert import_file(store, "hot", write_jsonl(tmp_path / "b.jsonl", [revised])) == {
        "rankings updated": 1
    }
    rows = list(export_records(store, "hot", "rankings"))
    assert [r["ranks"] for r in rows if r["labeler"] == "H3"] == [[2, 1, 3]]
    assert row_counts(store)["ranking_items"] == 9


def test_a_bad_line_means_nothing_from_the_file_is_written(store, tmp_path):
    lines = seed_rankings() + [
        {"prompt": "x", "completions": ["a", "b"], "ranks": [1, 3], "labeler": "H4"}
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(RlhfkitError, match=r"bad\.jsonl:4: 'ranks' must be ranks 1\.\.2"):
        import_file(store, "hot", path)
    assert set(row_counts(store).values()) == {0}


def test_a_failure_midway_through_writing_rolls_everything_back(store, tmp_path, monkeypatch):
    records = read_records(
        write_jsonl(
            tmp_path / "mixed.jsonl",
            seed_rankings()
            + [
                {
                    "prompt": SEED_PROMPT,
                    "completion": SEED_COMPLETIONS[0],
                    "label": "up",
                    "labeler": "T",
                },
                {"prompt": SEED_PROMPT, "chosen": "a", "rejected": "b", "labeler": "P"},
            ],
        )
    )

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    # The pairs are written last: after the project, texts, rankings and thumbs.
    monkeypatch.setattr(transfer._Writer, "preferences", disk_full)
    with pytest.raises(OSError):
        import_records(store, "hot", records)
    assert set(row_counts(store).values()) == {0}


def test_thumbs_pairs_and_hh_rlhf_import_and_round_trip(store, tmp_path):
    hh_prompt = "\n\nHuman: Is the sky blue?\n\nAssistant:"
    records = seed_rankings() + [
        {
            "prompt": SEED_PROMPT,
            "completion": SEED_COMPLETIONS[1],
            "label": "up",
            "labeler": "T1",
            "labeler_kind": "ai",
        },
        {
            "prompt": SEED_PROMPT,
            "completion": SEED_COMPLETIONS[2],
            "label": "down",
            "labeler": "T1",
            "labeler_kind": "ai",
        },
        {"prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away.", "labeler": "P1"},
        {"prompt": "Say hi", "chosen": "Hello.", "rejected": "Go away."},  # labeler: "mix"
        {"chosen": hh_prompt + " Yes, usually.", "rejected": hh_prompt + " No."},
    ]
    counts = import_file(store, "mix", write_jsonl(tmp_path / "mix.jsonl", records), "mix")
    assert counts["thumbs created"] == 2 and counts["pairs created"] == 3
    assert row_counts(store)["labelers"] == 3 + 1 + 2  # H1-3, T1, P1 and "mix"
    exported = {kind: list(export_records(store, "mix", kind)) for kind in transfer.EXPORT_KINDS}
    assert exported["thumbs"][1] == {
        "prompt": SEED_PROMPT,
        "completion": SEED_COMPLETIONS[2],
        "label": "down",
        "labeler": "T1",
        "labeler_kind": "ai",
    }
    assert {
        "prompt": hh_prompt,
        "chosen": "Yes, usually.",
        "rejected": "No.",
        "labeler": "mix",
        "labeler_kind": "human",
    } in exported["pairs"]
    assert exported["completions"][0]["completions"] == SEED_COMPLETIONS
    # What export writes, import reads back into an identical project.
    again = []
    for kind in ("rankings", "thumbs", "pairs"):
        again += exported[kind]
    import_file(store, "copy", write_jsonl(tmp_path / "copy.jsonl", again))
    for kind in transfer.EXPORT_KINDS:
        copied = list(export_records(store, "copy", kind))
        if kind == "completions":  # ids differ between projects; texts must not
            copied = [{**c, "id": None} for c in copied]
            exported[kind] = [{**c, "id": None} for c in exported[kind]]
        assert copied == exported[kind], kind


def test_unknown_project_is_a_clear_error(store):
    with pytest.raises(RlhfkitError, match="no project 'nope' in the store; the store has no"):
        list(export_records(store, "nope", "rankings"))


@pytest.mark.parametrize(
    "url, message",
    [
        ("sqlite:////no/such/dir/x.db", "unable to open database file"),
        ("nosuchdb://x", "cannot open store 'nosuchdb://x'"),
        ("not a url", "cannot open store"),
    ],
)
def test_a_store_that_cannot_be_opened_is_one_line(url, message):
    with pytest.raises(RlhfkitError, match=message) as error:
        Store(url)
    assert "\n" not in str(error.value)


def test_a_store_from_before_wal_opened_read_only_can_be_read(tmp_path, cli):
    """Switching a store to WAL is a write: a read-only opening keeps its journal and reads."""
    path = tmp_path / "old.db"
    store = Store(f"sqlite:///{path}")
    import_file(store, "p", write_jsonl(tmp_path / "r.jsonl", seed_rankings()))
    store.close()
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
    url = f"sqlite:///file:{path}?mode=ro&uri=true"
    read_only = Store(url)
    assert len(list(export_records(read_only, "p", "rankings"))) == 3
    read_only.close()
    listed = cli("project", "list", "--store", url)
    assert "p" in listed.output


def test_opening_a_store_parses_the_migration_scripts_at_most_once(store_url, monkeypatch):
    Store(store_url).close()  # made and migrated
    parsed = []
    original = ScriptDirectory.from_config.__func__

    def counting(cls, config, *args, **kwargs):
        parsed.append(config)
        return original(cls, config, *args, **kwargs)

    monkeypatch.setattr(ScriptDirectory, "from_config", classmethod(counting))
    for _ in range(2):
        Store(store_url).close()
    assert len(parsed) <= 1, parsed


@contextmanager
def insert_meanwhile(store, table, row):
    """Just before the store's first INSERT INTO `table`, another connection inserts `row`
    and commits: the race of two processes creating the same row, made deterministic."""
    other = create_engine(store.engine.url)
    inserted = []

    def other_insert_first(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith(f"INSERT INTO {table.name} ") and not inserted:
            with other.begin() as connection:
                connection.execute(insert(table), row)
            inserted.append(row)

    event.listen(store.engine, "before_cursor_execute", other_insert_first)
    try:
        yield
    finally:
        event.remove(store.engine, "before_cursor_execute", other_insert_first)
        other.dispose()
    assert inserted  # the race happened


def postgres_only(store):
    if store.engine.dialect.name != "postgresql":
        pytest.skip("SQLite writers take the write lock when they begin: they cannot race")


def test_get_project_creates_a_project_another_process_creates_meanwhile(store):
    postgres_only(store)
    row = {"name": "new", "criterion": "harmlessness", "instructions": ""}
    with insert_meanwhile(store, Project.__table__, row), store.session() as session:
        assert get_project(session, "new", create=True).criterion == "harmlessness"
    assert row_counts(store)["projects"] == 1


def test_registry_labeler_another_process_creates_meanwhile(store):
    postgres_only(store)
    with store.session() as session:
        get_project(session, "p", create=True)
    row = {"name": "ai-1", "kind": "ai"}
    with insert_meanwhile(store, Labeler.__table__, row), store.session() as session:
        assert Registry(session, get_project(session, "p")).labeler("ai-1", "ai").kind == "ai"
    assert row_counts(store)["labelers"] == 1
    mismatch = "labeler 'ai-1' is in the store as ai, not human"
    with pytest.raises(RlhfkitError, match=mismatch), store.session() as session:
        Registry(session, get_project(session, "p")).labeler("ai-1", "human")


def test_registry_prompt_and_completion_another_process_creates_meanwhile(store):
    """generate writes through the Registry while an import may add the same texts."""
    postgres_only(store)
    with store.session() as session:
        project_id = get_project(session, "p", create=True).id
    prompt_row = {"project_id": project_id, "text": "hi", "text_key": text_key("hi")}
    with insert_meanwhile(store, Prompt.__table__, prompt_row), store.session() as session:
        registry = Registry(session, get_project(session, "p"))
        prompt = registry.prompt("hi", split="train")
        prompt_id = prompt.id
    completion_row = {"prompt_id": prompt_id, "text": "hello", "text_key": text_key("hello")}
    with insert_meanwhile(store, Completion.__table__, completion_row), store.session() as session:
        registry = Registry(session, get_project(session, "p"))
        registry.completion(registry.prompt("hi"), "hello", model="m")
        assert registry.created_completions == 0  # the other process made it
        registry.completion(registry.prompt("hi"), "bye", model="m")
        assert registry.created_completions == 1
    counts = row_counts(store)
    assert (counts["prompts"], counts["completions"]) == (1, 2)
