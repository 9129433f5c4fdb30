"""The labeling web app: accounts, sessions, project settings and members, leases, skips,
adjudications, gold rankings, and how long each ranking took.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _created_at() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False)


def _reference(name: str, table: str, **kwargs) -> sa.Column:
    return sa.Column(
        name, sa.Integer, sa.ForeignKey(f"{table}.id", ondelete="CASCADE"), nullable=False, **kwargs
    )


def upgrade() -> None:
    # Existing rows get the defaults a project made on the command line has had all along.
    # Plain ADD COLUMN, never a batch copy: on SQLite a copy drops the old table, and with
    # foreign keys on, dropping `projects` deletes every prompt, completion and ranking.
    op.add_column(
        "projects", sa.Column("mode", sa.String(16), nullable=False, server_default="ranking")
    )
    op.add_column("projects", sa.Column("overlap", sa.Integer, nullable=False, server_default="1"))
    op.add_column(
        "projects",
        sa.Column("allow_ties", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.add_column("rankings", sa.Column("seconds", sa.Float))  # None: imported, not timed
    op.create_table(
        "settings",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        _reference("labeler_id", "labelers", unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        _created_at(),
    )
    op.create_table(
        "web_sessions",
        sa.Column("id", sa.String(64), primary_key=True),  # SHA-256 of the cookie's token
        _reference("user_id", "users", index=True),
        _created_at(),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "members",
        _reference("project_id", "projects", primary_key=True),
        _reference("labeler_id", "labelers", primary_key=True),
        sa.Column("read_at", sa.DateTime(timezone=True)),  # when they read the instructions
    )
    op.create_table(
        "leases",
        sa.Column("id", sa.Integer, primary_key=True),
        _reference("prompt_id", "prompts", index=True),
        _reference("labeler_id", "labelers", index=True),
        _created_at(),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("prompt_id", "labeler_id"),
    )
    op.create_table(
        "skips",
        sa.Column("id", sa.Integer, primary_key=True),
        _reference("prompt_id", "prompts", index=True),
        _reference("labeler_id", "labelers", index=True),
        sa.Column("kind", sa.String(8), nullable=False),  # "skip" | "flag"
        sa.Column("reason", sa.Text, nullable=False),
        _created_at(),
        sa.UniqueConstraint("prompt_id", "labeler_id"),
    )
    op.create_table(
        "adjudications",
        sa.Column("id", sa.Integer, primary_key=True),
        _reference("prompt_id", "prompts", index=True),
        _reference("user_id", "users"),
        sa.Column("ranks", sa.JSON, nullable=False),  # {completion id: rank}
        _created_at(),
    )
    op.create_table(
        "gold",
        _reference("prompt_id", "prompts", primary_key=True),
        _reference("user_id", "users"),
        sa.Column("ranks", sa.JSON, nullable=False),  # {completion id: rank}
        _created_at(),
    )


def downgrade() -> None:
    for table in ("gold", "adjudications", "skips", "leases", "members", "web_sessions", "users"):
        op.drop_table(table)
    op.drop_table("settings")
    op.drop_column("rankings", "seconds")
    for column in ("allow_ties", "overlap", "mode"):
        op.drop_column("projects", column)
