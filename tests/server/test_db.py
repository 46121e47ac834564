"""Migrations: upgrade head gives exactly the ORM schema, and downgrade removes it, on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from curbwatch.server.db import migrate
from curbwatch.server.tables import Base


def test_migrated_schema_matches_the_tables(engine: Engine) -> None:
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    unique = inspect(engine).get_unique_constraints("events")
    assert [c["column_names"] for c in unique] == [["device_id", "seq"]]


def test_downgrade_and_upgrade_again(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate(url)
    _downgrade(url)
    from curbwatch.server.db import make_engine

    engine = make_engine(url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    migrate(url)
    assert {"devices", "events", "evidence", "dead_letters"} <= set(inspect(engine).get_table_names())
    engine.dispose()


def _downgrade(url: str) -> None:
    from alembic import command

    from curbwatch.server.db import alembic_config

    command.downgrade(alembic_config(url), "base")
