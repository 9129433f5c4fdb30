"""Constitutional AI's stage 1: each round of critique and revision of a prompt's answer.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "revisions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "prompt_id",
            sa.Integer,
            sa.ForeignKey("prompts.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("round", sa.Integer, nullable=False),
        sa.Column("principle", sa.String(200), nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("critique", sa.Text, nullable=False),
        sa.Column("revision", sa.Text, nullable=False),
        sa.Column("model", sa.String(500), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("prompt_id", "round"),
    )


def downgrade() -> None:
    op.drop_table("revisions")
