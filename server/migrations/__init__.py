"""Alembic migrations of the server database (run with ``curbwatch server migrate``)."""
