"""The feedback store: projects, prompts, completions, labelers, rankings, thumbs, pairs.

SQLAlchemy 2 on any URL (SQLite by default, PostgreSQL with the same code); the schema is
created and upgraded by the Alembic migrations in `migrations/` when a store is opened.
Texts are identified by their SHA-256 so uniqueness holds for texts of any length.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import Engine, make_url
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


class Prompt(Base):
    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("project_id", "text_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    text: Mapped[str] = mapped_column(Text)
    text_key: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str | None] = mapped_column(String(200))
    split: Mapped[str | None] = mapped_column(String(16))  # "train" | "eval" | None
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    completions: Mapped[list[Completion]] = relationship(
        back_populates="prompt", order_by="Completion.id"
    )


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


def _safe(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _sqlite_foreign_keys(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class Store:
    """A feedback store at an SQLAlchemy URL; opening it creates or upgrades the schema."""

    def __init__(self, url: str | None = None):
        self.url = url or default_store_url()
        try:
            self.engine = create_engine(self.url)
        except (ArgumentError, NoSuchModuleError, ImportError) as e:
            raise RlhfkitError(f"cannot open store '{_safe(self.url)}': {e}") from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_foreign_keys)
        try:
            migrate(self.engine)
        except SQLAlchemyError as e:
            reason = str(getattr(e, "orig", e)).strip().splitlines()[0]
            raise RlhfkitError(f"cannot open store '{_safe(self.url)}': {reason}") from None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back on any error."""
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()


# --- small queries shared by the stages ------------------------------------------------


def get_project(session: Session, name: str, create: bool = False, **fields: Any) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        if not create:
            known = session.scalars(select(Project.name).order_by(Project.name)).all()
            hint = f"; projects: {', '.join(known)}" if known else "; the store has no projects"
            raise RlhfkitError(f"no project '{name}' in the store{hint}")
        project = Project(name=name, **{k: v for k, v in fields.items() if v is not None})
        session.add(project)
        session.flush()
    return project


class Registry:
    """Get-or-create for prompts, completions and labelers within one transaction,
    remembering what it has seen so a large import does one query per new row."""

    def __init__(self, session: Session, project: Project):
        self.session, self.project = session, project
        self._prompts: dict[str, Prompt] = {}
        self._completions: dict[tuple[int, str], Completion] = {}
        self._labelers: dict[str, Labeler] = {}
        self.created = {"prompts": 0, "completions": 0, "labelers": 0}

    def prompt(self, text: str, external_id: str | None = None, split: str | None = None) -> Prompt:
        key = text_key(text)
        prompt = self._prompts.get(key) or self.session.scalar(
            select(Prompt).where(Prompt.project_id == self.project.id, Prompt.text_key == key)
        )
        if prompt is None:
            prompt = Prompt(
                project_id=self.project.id,
                text=text,
                text_key=key,
                external_id=external_id,
                split=split,
            )
            self.session.add(prompt)
            self.session.flush()
            self.created["prompts"] += 1
        else:
            prompt.external_id = prompt.external_id or external_id
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
        completion = self._completions.get(key) or self.session.scalar(
            select(Completion).where(
                Completion.prompt_id == prompt.id, Completion.text_key == key[1]
            )
        )
        if completion is None:
            completion = Completion(
                prompt_id=prompt.id, text=text, text_key=key[1], model=model, params=params
            )
            self.session.add(completion)
            self.session.flush()
            self.created["completions"] += 1
        self._completions[key] = completion
        return completion

    def labeler(self, name: str, kind: str = "human") -> Labeler:
        labeler = self._labelers.get(name) or self.session.scalar(
            select(Labeler).where(Labeler.name == name)
        )
        if labeler is None:
            labeler = Labeler(name=name, kind=kind)
            self.session.add(labeler)
            self.session.flush()
            self.created["labelers"] += 1
        self._labelers[name] = labeler
        return labeler
