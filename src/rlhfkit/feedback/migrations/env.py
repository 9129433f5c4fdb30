"""Alembic environment: runs on the connection the Store hands over (see store.migrate)."""

from alembic import context

from rlhfkit.feedback.store import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying
)
with context.begin_transaction():
    context.run_migrations()
