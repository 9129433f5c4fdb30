"""The feedback store: projects, prompts, completions, labelers, rankings, thumbs, pairs.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _created_at() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("criterion", sa.String(200), nullable=False),
        sa.Column("instructions", sa.Text, nullable=False),
        _created_at(),
    )
    op.create_table(
        "labelers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        _created_at(),
    )
    op.create_table(
        "prompts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "project_id",
            sa.Integer,
            sa.ForeignKey("projects.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("text_key", sa.String(64), nullable=False),
        sa.Column("external_id", sa.String(200)),
        sa.Column("split", sa.String(16)),
        _created_at(),
        sa.UniqueConstraint("project_id", "text_key"),
    )
    op.create_table(
        "completions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "prompt_id",
            sa.Integer,
            sa.ForeignKey("prompts.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("text_key", sa.String(64), nullable=False),
        sa.Column("model", sa.String(500)),
        sa.Column("params", sa.JSON),
        _created_at(),
        sa.UniqueConstraint("prompt_id", "text_key"),
    )
    op.create_table(
        "rankings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "prompt_id",
            sa.Integer,
            sa.ForeignKey("prompts.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column(
            "labeler_id",
            sa.Integer,
            sa.ForeignKey("labelers.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        _created_at(),
        sa.UniqueConstraint("prompt_id", "labeler_id"),
    )
    op.create_table(
        "ranking_items",
        sa.Column(
            "ranking_id",
            sa.Integer,
            sa.ForeignKey("rankings.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "completion_id",
            sa.Integer,
            sa.ForeignKey("completions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("rank", sa.Integer, nullable=False),
    )
    op.create_table(
        "thumbs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "completion_id",
            sa.Integer,
            sa.ForeignKey("completions.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column(
            "labeler_id",
            sa.Integer,
            sa.ForeignKey("labelers.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("label", sa.String(8), nullable=False),
        _created_at(),
        sa.UniqueConstraint("completion_id", "labeler_id"),
    )
    op.create_table(
        "preferences",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "chosen_id",
            sa.Integer,
            sa.ForeignKey("completions.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column(
            "rejected_id",
            sa.Integer,
            sa.ForeignKey("completions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "labeler_id",
            sa.Integer,
            sa.ForeignKey("labelers.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        _created_at(),
        sa.UniqueConstraint("chosen_id", "rejected_id", "labeler_id"),
    )


def downgrade() -> None:
    for table in (
        "preferences",
        "thumbs",
        "ranking_items",
        "rankings",
        "completions",
        "prompts",
        "labelers",
        "projects",
    ):
        op.drop_table(table)
