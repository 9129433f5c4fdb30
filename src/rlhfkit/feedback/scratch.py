"""A throwaway PostgreSQL database, for the tests and the benchmarks that run on a real
server: created empty, its URL handed out, and dropped afterwards."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError


@contextmanager
def scratch_database(server_url: str, prefix: str = "rlhfkit_scratch") -> Iterator[str]:
    """A new database on the server of `server_url` (whose role may create databases)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        _drop(admin, name)
        admin.dispose()


def _drop(admin, name: str, attempts: int = 30) -> None:
    # FORCE ends the connections the role may end; an autovacuum worker still in the
    # database is not one of them without superuser rights, but it leaves within seconds.
    for attempt in range(attempts):
        try:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except SQLAlchemyError:
            if attempt == attempts - 1:
                raise
            time.sleep(1)
