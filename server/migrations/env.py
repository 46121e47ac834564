"""Alembic environment: runs on the connection :func:`curbwatch.server.db.migrate` passes in."""

from __future__ import annotations

from alembic import context

from curbwatch.server.db import make_engine
from curbwatch.server.tables import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        # Called by the alembic command line rather than by migrate().
        engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
        with engine.begin() as own:
            _run(own)
        engine.dispose()
        return
    _run(connection)


def _run(connection: object) -> None:
    # Batch mode lets later migrations alter tables on SQLite, which has no ALTER for constraints.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
