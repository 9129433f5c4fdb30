"""The labeling queue's open prompts: when a prompt stopped being handed out, and an index of
the prompts that have not, so finding the next one never scans a project's finished prompts.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing prompts start open: the queue checks each prompt's labels all the same, and
    # `rlhfkit serve` closes the finished ones when it starts.
    op.add_column("prompts", sa.Column("closed_at", sa.DateTime(timezone=True)))
    op.create_index(
        "ix_prompts_open",
        "prompts",
        ["project_id", "id"],
        sqlite_where=sa.text("closed_at IS NULL"),
        postgresql_where=sa.text("closed_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_prompts_open", table_name="prompts")
    op.drop_column("prompts", "closed_at")
