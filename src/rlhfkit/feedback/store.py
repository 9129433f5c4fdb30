"""The feedback store: projects, prompts, completions, labelers, rankings, thumbs, pairs.

SQLAlchemy 2 on any URL (SQLite by default, PostgreSQL with the same code); the schema is
created and upgraded by the Alembic migrations in `migrations/` when a store is opened.
Texts are identified by their SHA-256 so uniqueness holds for texts of any length.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from rlhfkit.errors import RlhfkitError

DEFAULT_STORE = "sqlite:///rlhfkit.db"
LABELER_KINDS = ("human", "ai")


def default_store_url() -> str:
    return os.environ.get("RLHFKIT_STORE") or DEFAULT_STORE


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    criterion: Mapped[str] = mapped_column(String(200), default="helpfulness")
    instructions: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    # How the labeling app hands the project's prompts out (rankings imported from files
    # need none of these): rank each prompt's completions, or thumbs up/down on each;
    # `overlap` distinct labelers per prompt; whether two completions may share a rank.
    mode: Mapped[str] = mapped_column(String(16), default="ranking")
    overlap: Mapped[int] = mapped_column(Integer, default=1)
    allow_ties: Mapped[bool] = mapped_column(Boolean, default=False)


class Prompt(Base):
    __tablename__ = "prompts"
    __table_args__ = (
        UniqueConstraint("project_id", "text_key"),
        # The labeling queue scans a project's open prompts in id order and stops at the
        # first it can hand out: this index holds those and only those, so the scan never
        # walks over the finished ones.
        Index(
            "ix_prompts_open",
            "project_id",
            "id",
            sqlite_where=text("closed_at IS NULL"),
            postgresql_where=text("closed_at IS NULL"),
        ),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    text: Mapped[str] = mapped_column(Text)
    text_key: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str | None] = mapped_column(String(200))
    # A conversation's prompt (imported from TRL's format): its messages as JSON; `text` is
    # their rendering with a chat template.
    messages: Mapped[str | None] = mapped_column(Text)
    split: Mapped[str | None] = mapped_column(String(16))  # "train" | "eval" | None
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    # When the labeling queue stopped handing the prompt out (its project's overlap reached,
    # or passed on by enough labelers); None while it may still need labels.
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completions: Mapped[list[Completion]] = relationship(
        back_populates="prompt", order_by="Completion.id"
    )

    def messages_field(self) -> dict[str, Any]:
        """What an exported record holds beside the prompt's text: its messages, as they
        were imported, when it is a conversation; else nothing."""
        return {"prompt_messages": json.loads(self.messages)} if self.messages else {}


class Completion(Base):
    __tablename__ = "completions"
    __table_args__ = (UniqueConstraint("prompt_id", "text_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(Text)
    text_key: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(500))  # None: imported, origin unknown
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # sampling parameters
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    prompt: Mapped[Prompt] = relationship(back_populates="completions")


class Labeler(Base):
    __tablename__ = "labelers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default="human")  # "human" | "ai"
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Ranking(Base):
    """One labeler's ranking of (some of) one prompt's completions."""

    __tablename__ = "rankings"
    __table_args__ = (UniqueConstraint("prompt_id", "labeler_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    labeler_id: Mapped[int] = mapped_column(
        ForeignKey("labelers.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    seconds: Mapped[float | None] = mapped_column(Float)  # labeling time; None: imported
    items: Mapped[list[RankingItem]] = relationship(
        cascade="all, delete-orphan", order_by="RankingItem.completion_id"
    )
    labeler: Mapped[Labeler] = relationship()


class RankingItem(Base):
    __tablename__ = "ranking_items"
    ranking_id: Mapped[int] = mapped_column(
        ForeignKey("rankings.id", ondelete="CASCADE"), primary_key=True
    )
    completion_id: Mapped[int] = mapped_column(
        ForeignKey("completions.id", ondelete="CASCADE"), primary_key=True
    )
    rank: Mapped[int] = mapped_column(Integer)  # 1 = best; equal ranks are ties


class Thumb(Base):
    __tablename__ = "thumbs"
    __table_args__ = (UniqueConstraint("completion_id", "labeler_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    completion_id: Mapped[int] = mapped_column(
        ForeignKey("completions.id", ondelete="CASCADE"), index=True
    )
    labeler_id: Mapped[int] = mapped_column(
        ForeignKey("labelers.id", ondelete="CASCADE"), index=True
    )
    label: Mapped[str] = mapped_column(String(8))  # "up" | "down"
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    labeler: Mapped[Labeler] = relationship()
    completion: Mapped[Completion] = relationship()


class Preference(Base):
    """An imported pairwise judgement: `chosen` preferred over `rejected` by a labeler."""

    __tablename__ = "preferences"
    __table_args__ = (UniqueConstraint("chosen_id", "rejected_id", "labeler_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    chosen_id: Mapped[int] = mapped_column(
        ForeignKey("completions.id", ondelete="CASCADE"), index=True
    )
    rejected_id: Mapped[int] = mapped_column(ForeignKey("completions.id", ondelete="CASCADE"))
    labeler_id: Mapped[int] = mapped_column(
        ForeignKey("labelers.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    chosen: Mapped[Completion] = relationship(foreign_keys=[chosen_id])
    rejected: Mapped[Completion] = relationship(foreign_keys=[rejected_id])
    labeler: Mapped[Labeler] = relationship()


# --- the labeling app's tables (rlhfkit.web) ---------------------------------------------


class Setting(Base):
    """Values the app keeps with its data, such as the key it signs tokens with."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class User(Base):
    """A person who logs in: a labeler of kind human, who may also be an admin."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    labeler_id: Mapped[int] = mapped_column(
        ForeignKey("labelers.id", ondelete="CASCADE"), unique=True
    )
    role: Mapped[str] = mapped_column(String(16))  # "admin" | "labeler"
    password_hash: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    labeler: Mapped[Labeler] = relationship(lazy="joined")


class WebSession(Base):
    """A login. The cookie holds a random token; only its SHA-256 is stored, so a copy of
    the database logs nobody in."""

    __tablename__ = "web_sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Member(Base):
    """A labeler assigned to a project: the only projects whose prompts they see."""

    __tablename__ = "members"
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    labeler_id: Mapped[int] = mapped_column(
        ForeignKey("labelers.id", ondelete="CASCADE"), primary_key=True
    )
    read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # instructions


class Lease(Base):
    """A prompt handed to a labeler until `expires_at`: it counts toward the prompt's overlap
    while it lasts, so two labelers asking at once never push a prompt past it."""

    __tablename__ = "leases"
    __table_args__ = (UniqueConstraint("prompt_id", "labeler_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    labeler_id: Mapped[int] = mapped_column(
        ForeignKey("labelers.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Skip(Base):
    """A labeler passed on a prompt ("skip") or reported it as unrankable ("flag")."""

    __tablename__ = "skips"
    __table_args__ = (UniqueConstraint("prompt_id", "labeler_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    labeler_id: Mapped[int] = mapped_column(
        ForeignKey("labelers.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Adjudication(Base):
    """An admin's ranking that settles a prompt: it replaces the labelers' consensus in the
    pairs. Never deleted; a prompt's newest one counts, the rest are its history."""

    __tablename__ = "adjudications"
    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    ranks: Mapped[dict[str, int]] = mapped_column(JSON)  # completion id (as text) -> rank
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Gold(Base):
    """A prompt whose ranking is known: handed to each labeler once, unannounced, to measure
    them; it counts toward no overlap, no agreement between labelers and no pairs."""

    __tablename__ = "gold"
    prompt_id: Mapped[int] = mapped_column(
        ForeignKey("prompts.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    ranks: Mapped[dict[str, int]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Revision(Base):
    """One round of Constitutional AI's stage 1 on a prompt: the answer criticised (the
    model's first answer in round 1, the previous revision after), the principle drawn, the
    model's critique and its revision."""

    __tablename__ = "revisions"
    __table_args__ = (UniqueConstraint("prompt_id", "round"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    round: Mapped[int] = mapped_column(Integer)  # 1, 2, …
    principle: Mapped[str] = mapped_column(String(200))
    response: Mapped[str] = mapped_column(Text)
    critique: Mapped[str] = mapped_column(Text)
    revision: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


SQLITE_BUSY_TIMEOUT_S = 60  # how long a writer waits for another writer's transaction
READ_ONLY = "rlhfkit_read_only"  # execution option: an SQLite transaction that only reads
MIGRATIONS = Path(__file__).parent / "migrations"
# The tables of the first migration. A database with tables is a store only when it holds
# these and is marked by one of our migrations; any other is someone else's, left untouched.
STORE_TABLES = frozenset(
    {
        "projects",
        "labelers",
        "prompts",
        "completions",
        "rankings",
        "ranking_items",
        "thumbs",
        "preferences",
    }
)
_MIGRATION_LOCK = 0x726C68666B6974  # a PostgreSQL advisory lock key ("rlhfkit")


def safe_url(url: str) -> str:
    """The URL for a message, its password hidden (even in a URL that does not parse)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


def _reason(error: SQLAlchemyError) -> str:
    """The database's own message, its first line: never the SQL or the row's values."""
    message = str(getattr(error, "orig", None) or error).strip()
    return message.splitlines()[0] if message else type(error).__name__


def _on_sqlite_connect(dbapi_connection, _record) -> None:
    # SQLAlchemy emits BEGIN itself (`_on_sqlite_begin`), not pysqlite: pysqlite begins
    # deferred, and a deferred transaction that reads and then writes fails at once with
    # "database is locked" when another writer got in between, whatever the busy timeout.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _on_sqlite_begin(connection) -> None:
    # A writing transaction takes the write lock when it starts, waiting its turn.
    read_only = connection.get_execution_options().get(READ_ONLY, False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _create_engine(url: str) -> Engine:
    try:
        sqlite = make_url(url).get_backend_name() == "sqlite"
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S} if sqlite else {}
        )
    except ImportError as e:  # the driver, e.g. psycopg, is not installed
        extra = " (pip install 'rlhfkit[postgres]')" if "psycopg" in str(e) else ""
        raise RlhfkitError(f"cannot open store '{safe_url(url)}': {e}{extra}") from None
    except (ArgumentError, NoSuchModuleError) as e:
        raise RlhfkitError(f"cannot open store '{safe_url(url)}': {e}") from None
    except ValueError:  # raised by the URL parser only for a port that is not a number
        raise RlhfkitError(
            f"cannot open store '{safe_url(url)}': its port is not a number"
        ) from None
    if sqlite:
        event.listen(engine, "connect", _on_sqlite_connect)
        event.listen(engine, "begin", _on_sqlite_begin)
    return engine


def _alembic_config():
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@functools.cache
def _migrations():
    """The Alembic scripts, parsed once: opening a store asks for them twice."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config())


def check_store(connection: Connection, url: str) -> set[str]:
    """Refuse, before anything is written, a database that is not a feedback store or that a
    newer rlhfkit has migrated; return the store's migration revisions (none: a new store,
    from an empty database)."""
    tables = set(inspect(connection).get_table_names())
    if not tables:
        return set()
    marks: set[str] = set()
    if "alembic_version" in tables:
        marks = set(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())
        unknown = sorted(marks - {s.revision for s in _migrations().walk_revisions()})
        if unknown:
            raise RlhfkitError(
                f"store '{safe_url(url)}' is marked with migration '{unknown[0]}', which this "
                "rlhfkit does not know (a newer rlhfkit made it, or it is not an rlhfkit "
                "store); nothing was changed"
            )
    if "alembic_version" not in tables or not STORE_TABLES.issubset(tables):
        shown = sorted(tables)
        listing = ", ".join(shown[:5]) + (", …" if len(shown) > 5 else "")
        raise RlhfkitError(
            f"'{safe_url(url)}' is not an rlhfkit feedback store (it holds other tables: "
            f"{listing}); nothing was changed"
        )
    return marks


def _use_wal(engine: Engine) -> None:
    """Write-ahead logging: readers never wait for the writer, nor the writer for them.
    A store opened read-only keeps its journal mode (changing it is a write) and can
    still be read."""
    connection = engine.raw_connection()
    try:
        connection.cursor().execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as e:
        if not getattr(e, "sqlite_errorname", "").startswith("SQLITE_READONLY"):
            raise
    finally:
        connection.close()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    from alembic import command

    config = _alembic_config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Two processes opening a new store at once: the second waits, then finds it made.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class Store:
    """A feedback store at an SQLAlchemy URL; opening it creates or upgrades the schema.

    Many processes may write to one store at once: SQLite runs in WAL mode with a busy
    timeout and writing transactions that take the write lock when they begin; PostgreSQL
    needs neither."""

    def __init__(self, url: str | None = None):
        self.url = url or default_store_url()
        self.engine = _create_engine(self.url)
        self._reader = self.engine.execution_options(**{READ_ONLY: True})
        self._writers = threading.Lock() if self.engine.dialect.name == "sqlite" else None
        try:
            with self._reader.connect() as connection:
                marks = check_store(connection, self.url)
            if self.engine.dialect.name == "sqlite":
                _use_wal(self.engine)  # only now that the file is known to be ours
            if marks != set(_migrations().get_heads()):
                migrate(self.engine)  # takes the write lock: only when there is work
        except (SQLAlchemyError, sqlite3.Error) as e:  # sqlite3's: from _use_wal
            self.engine.dispose()
            raise RlhfkitError(f"cannot open store '{safe_url(self.url)}': {_reason(e)}") from None
        except RlhfkitError:
            self.engine.dispose()
            raise

    @property
    def display_url(self) -> str:
        """The URL to show people: its password hidden."""
        return safe_url(self.url)

    @contextmanager
    def session(self, read_only: bool = False) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back on any error, which the
        database reports in one line. `read_only` lets SQLite readers skip the write lock."""
        bind = self._reader if read_only else self.engine
        # Within one process, SQLite writers queue on a lock that wakes the next at once;
        # left to SQLite's busy handler, they sleep in growing steps (up to 100 ms), and 20
        # labelers' p95 latency was seconds. Other processes still meet the busy timeout.
        queue = self._writers if self._writers and not read_only else nullcontext()
        try:
            with queue, Session(bind, expire_on_commit=False) as session, session.begin():
                yield session
        except SQLAlchemyError as e:
            raise RlhfkitError(f"store '{safe_url(self.url)}': {_reason(e)}") from None

    def close(self) -> None:
        self.engine.dispose()


# --- small queries shared by the stages ------------------------------------------------


def get_project(session: Session, name: str, create: bool = False) -> Project:
    """The project `name`; with `create`, made if new, even while another process makes it."""
    if create:
        ensure_project(session, name)
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        known = session.scalars(select(Project.name).order_by(Project.name)).all()
        hint = f"; projects: {', '.join(known)}" if known else "; the store has no projects"
        raise RlhfkitError(f"no project '{name}' in the store{hint}")
    return project


class Registry:
    """Get-or-create for prompts, completions and labelers within one transaction, one row
    at a time, remembering what it has seen: for the generate stage's completions and the
    tests (imports write in bulk). `created_completions` counts the completions it added."""

    def __init__(self, session: Session, project: Project):
        self.session, self.project = session, project
        self._prompts: dict[str, Prompt] = {}
        self._completions: dict[tuple[int, str], Completion] = {}
        self._labelers: dict[str, Labeler] = {}
        self.created_completions = 0

    def prompt(
        self,
        text: str,
        external_id: str | None = None,
        split: str | None = None,
        messages: str | None = None,
    ) -> Prompt:
        key = text_key(text)
        prompt = self._prompts.get(key)
        if prompt is None:
            query = select(Prompt).where(
                Prompt.project_id == self.project.id, Prompt.text_key == key
            )
            row = {"project_id": self.project.id, "text": text, "text_key": key}
            extra = {"external_id": external_id, "split": split, "messages": messages}
            prompt, _ = self._get_or_insert(query, Prompt, {**row, **extra})
        prompt.external_id = prompt.external_id or external_id
        prompt.messages = prompt.messages or messages
        prompt.split = prompt.split or split
        self._prompts[key] = prompt
        return prompt

    def completion(
        self,
        prompt: Prompt,
        text: str,
        model: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> Completion:
        key = (prompt.id, text_key(text))
        completion = self._completions.get(key)
        if completion is None:
            query = select(Completion).where(
                Completion.prompt_id == prompt.id, Completion.text_key == key[1]
            )
            row = {"prompt_id": prompt.id, "text": text, "text_key": key[1]}
            completion, created = self._get_or_insert(
                query, Completion, {**row, "model": model, "params": params}
            )
            self.created_completions += created
        self._completions[key] = completion
        return completion

    def labeler(self, name: str, kind: str | None = None) -> Labeler:
        """The labeler `name`, made of `kind` (default human) if new; a `kind` given for an
        existing labeler must be theirs."""
        query = select(Labeler).where(Labeler.name == name)
        row = {"name": name, "kind": kind or "human"}
        labeler = self._labelers.get(name) or self._get_or_insert(query, Labeler, row)[0]
        check_labeler_kind(name, labeler.kind, kind)
        self._labelers[name] = labeler
        return labeler

    def _get_or_insert(self, query: Any, model: type[Base], row: dict[str, Any]) -> tuple:
        """(the row `query` finds, whether this call inserted it). ON CONFLICT DO NOTHING:
        another process may be adding the same row right now, and then theirs is found."""
        found = self.session.scalar(query)
        if found is not None:
            return found, False
        table = model.__table__
        insert = insert_statement(self.session, table).on_conflict_do_nothing()
        new = self.session.execute(insert.returning(table.c.id), {**row, "created_at": _now()})
        inserted = new.first() is not None  # no row back: theirs came first
        return self.session.scalar(query), inserted


def check_labeler_kind(name: str, kind: str, given: str | None) -> None:
    if given is not None and given != kind:
        raise RlhfkitError(
            f"labeler '{name}' is in the store as {kind}, not {given}; "
            "give another name or leave 'labeler_kind' out"
        )


def insert_statement(session: Session, table: Table) -> Any:
    """An INSERT that takes ON CONFLICT clauses, for SQLite or PostgreSQL."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise RlhfkitError(f"the feedback store needs SQLite or PostgreSQL, not {dialect}")
    return insert(table)


def insert_rows(
    session: Session,
    table: Table,
    rows: list[dict[str, Any]],
    conflict: Sequence[str] = (),
    update: Sequence[str] = (),
    returning: Sequence[str] = (),
) -> list[Any]:
    """INSERT a chunk of rows (all with the same keys) in one statement. A row that would
    break a unique constraint is skipped; with `update`, a row whose `conflict` columns match
    one already there sets its `update` columns instead. Returns the `returning` columns of
    the rows inserted or updated."""
    if not rows:
        return []
    statement = insert_statement(session, table)
    if session.get_bind().dialect.name == "postgresql":
        # The rows travel as one array per column, unnested by the server: psycopg takes
        # ~30 ms to parse a 1,000-row VALUES list, and ~25 µs a row to pipeline executemany.
        columns = list(rows[0])
        arrays = [
            func.unnest(bindparam(f"rows_{c}", type_=ARRAY(table.c[c].type))) for c in columns
        ]
        statement = statement.from_select(columns, select(*arrays))
        parameters: Any = {f"rows_{c}": [row[c] for row in rows] for c in columns}
    else:
        parameters = rows
    if update:
        excluded = statement.excluded
        statement = statement.on_conflict_do_update(
            index_elements=list(conflict), set_={c: excluded[c] for c in update}
        )
    else:
        statement = statement.on_conflict_do_nothing()
    if not returning:
        session.execute(statement, parameters)
        return []
    return session.execute(statement.returning(*(table.c[c] for c in returning)), parameters).all()


def ensure_project(session: Session, name: str, **fields: Any) -> int:
    """The project's id, creating it with `fields` if new; safe when another process creates
    it at the same moment."""
    values = {k: v for k, v in fields.items() if v is not None}
    row = {"criterion": "helpfulness", "instructions": "", **values, "created_at": _now()}
    table = Project.__table__
    session.execute(
        insert_statement(session, table).on_conflict_do_nothing(), {"name": name, **row}
    )
    return session.scalar(select(Project.id).where(Project.name == name))


def create_project(
    store: Store, name: str, criterion: str, instructions: str | None = None
) -> None:
    """Create a project, or set the criterion (and instructions, if given) of an existing one."""
    with store.session() as session:
        project = get_project(session, name, create=True)
        project.criterion = criterion
        if instructions is not None:
            project.instructions = instructions


def project_summaries(store: Store) -> list[dict[str, Any]]:
    """Each project, by name, with its number of prompts, completions and rankings."""

    def per_project(session: Session, table: Any = None) -> dict[int, int]:
        query = select(Prompt.project_id, func.count(table.id if table else Prompt.id))
        if table is not None:
            query = query.join(table, table.prompt_id == Prompt.id)
        return {project: n for project, n in session.execute(query.group_by(Prompt.project_id))}

    with store.session(read_only=True) as session:
        prompts = per_project(session)
        completions = per_project(session, Completion)
        rankings = per_project(session, Ranking)
        projects = session.execute(
            select(Project.id, Project.name, Project.criterion).order_by(Project.name)
        ).all()
    return [
        {
            "name": name,
            "criterion": criterion,
            "prompts": prompts.get(id_, 0),
            "completions": completions.get(id_, 0),
            "rankings": rankings.get(id_, 0),
        }
        for id_, name, criterion in projects
    ]
